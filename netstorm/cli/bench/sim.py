"""Simulator benchmarks behind ``netstorm bench sim`` (figures, not pass/fail).

- **scaling**: transfers per second and wall time of :func:`~netstorm.sim.simulate` on
  ``random:N:1`` meshes (9, 32, 128, 512 sites), the compiled core against the executor
  path in the same run (the executor only where it finishes in reasonable time);
- **targets**: the issue's two whole commands, ``netstorm sim`` on ``random:128:5``
  (treepack, 20 iterations) and ``random:512:1`` (ps, 5 iterations), as child processes
  whose wall time and peak memory are measured alone;
- **agreement**: on every ``netstorm bench planner`` view (the CLI passes them) and
  planner, one simulated all-reduce by each engine against the cost model's prediction;
- **headline**: the paper's figure, netstorm9 with capacities redrawn every 180 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netstorm.builtin_topologies import builtin
from netstorm.cost import predict
from netstorm.dynamics import Redraw
from netstorm.errors import NetstormError
from netstorm.job import Job
from netstorm.plan_files import fixed_planner
from netstorm.registry import plan, planner_names
from netstorm.sim import SimResult, simulate

__all__ = ["run"]

#: ``(sites, planner, compiled iterations, executor iterations or 0 for none)``
_SCALING = ((9, "ps", 20, 20), (9, "treepack", 20, 20), (32, "ps", 20, 20),
            (32, "treepack", 20, 5), (128, "ps", 20, 2), (128, "treepack", 20, 2),
            (512, "ps", 5, 0))
_QUICK_SCALING = ((9, "ps", 5, 5), (9, "treepack", 5, 5), (32, "ps", 5, 2),
                  (32, "treepack", 5, 2))


def _rate(r: SimResult) -> float:
    """Transfers per second of simulation proper (the first plan's setup left out)."""
    return r.transfers / max(r.wall_s - r.setup_s, 1e-9)


def _scaling(quick: bool) -> list[dict[str, Any]]:
    job = Job.from_model("resnet50")
    simulate(builtin("random:4:1"), job, "treepack", iterations=1)  # load numba kernels
    rows: list[dict[str, Any]] = []
    for sites, planner, iterations, slow in (_QUICK_SCALING if quick else _SCALING):
        view = builtin(f"random:{sites}:1")
        base: dict[str, Any] | None = None
        for engine, its in (("compiled", iterations), ("executor", slow)):
            if not its:
                continue
            r = simulate(view, job, planner, iterations=its, engine=engine)
            row: dict[str, Any] = {"benchmark": "scaling", "sites": sites, "planner": planner,
                                   "engine": engine, "iterations": its,
                                   "transfers": r.transfers, "wall_s": r.wall_s,
                                   "setup_s": r.setup_s,
                                   "sim_s_per_iteration": (r.wall_s - r.setup_s) / its,
                                   "transfers_per_s": _rate(r)}
            if engine == "compiled":
                base = row
            elif base is not None:
                base["speedup_vs_executor"] = base["transfers_per_s"] / row["transfers_per_s"]
            rows.append(row)
    return rows


#: Runs the CLI, then prints the process's peak resident memory (VmHWM, in kB) to stderr:
#: unlike ``ru_maxrss`` it leaves out the memory of the parent the child was forked from.
_CHILD = ("import sys\nfrom netstorm.cli import main\ncode = main(sys.argv[1:])\n"
          "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
          "print(hwm[0].split()[1] if hwm else 'nan', file=sys.stderr)\nsys.exit(code)")


def _command(args: list[str]) -> dict[str, Any]:
    """Run ``netstorm sim ARGS --json`` alone; its wall time, peak memory and figures."""
    command = " ".join(["netstorm sim", *args])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "sim", *args, "--json",
                           "--no-progress"], capture_output=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"benchmark": "target", "command": command, "error": proc.returncode}
    result = json.loads(proc.stdout)["results"][0]
    return {"benchmark": "target", "command": command, "wall_s": wall,
            "peak_rss_gb": float(proc.stderr.split()[-1]) / 2**20,
            "transfers": result["transfers"],
            "transfers_per_s": result["transfers"] / (result["wall_s"] - result["setup_s"]),
            "simulated_s": result["iteration_time_s"]["mean"],
            "predicted_s": result["predicted_time_s"]}


def _targets() -> list[dict[str, Any]]:
    """The two commands, each by the compiled core and by the executor path (before)."""
    rows = []
    for args in (["--topology", "random:128:5", "--model", "resnet50", "--planner",
                  "treepack", "--iterations", "20"],
                 ["--topology", "random:512:1", "--model", "resnet50", "--planner", "ps",
                  "--iterations", "5"]):
        for engine in ("compiled", "executor"):
            rows.append({**_command([*args, "--engine", engine]), "engine": engine})
    return rows


def _agreement(views: Sequence[str]) -> list[dict[str, Any]]:
    job = Job.from_model("resnet50", compute_s=0.0)  # the all-reduce alone, as predicted
    rows: list[dict[str, Any]] = []
    for name in views:
        view = builtin(name)
        for planner in planner_names():
            try:
                made = plan(view, job, planner)
            except NetstormError as exc:
                rows.append({"benchmark": "agreement", "topology": name, "planner": planner,
                             "error": str(exc)})
                continue
            predicted = predict(made, view, job).time_s
            times = {engine: float(simulate(view, job, fixed_planner(made), iterations=1,
                                            aware=False, engine=engine).iteration_s[0])
                     for engine in ("compiled", "executor")}
            rows.append({"benchmark": "agreement", "topology": name, "planner": planner,
                         "predicted_s": predicted,
                         "simulated_over_predicted": times["compiled"] / predicted,
                         "executor_over_predicted": times["executor"] / predicted,
                         "change": times["compiled"] / times["executor"] - 1})
    return rows


def _headline(quick: bool) -> list[dict[str, Any]]:
    view, job = builtin("netstorm9"), Job.from_model("resnet50")
    dyn = Redraw(180.0, 20e6 / 8, 155e6 / 8, seed=1, at_start=True)
    iterations = 20 if quick else 200
    rows: list[dict[str, Any]] = []
    base: float | None = None
    for planner in ("ps", "mlnet", "tsengine", "netstorm", "treepack", "ring"):
        try:
            r = simulate(view, job, planner, iterations=iterations, dynamics=dyn)
        except NetstormError as exc:
            rows.append({"benchmark": "headline", "planner": planner, "error": str(exc)})
            continue
        total = r.total_s
        base = total if planner == "ps" else base
        after = r.error_after_changes(3)
        rows.append({"benchmark": "headline", "planner": planner, "iterations": iterations,
                     "total_time_s": total, "mean_iteration_s": float(np.mean(r.iteration_s)),
                     "speedup_vs_ps": (base / total) if base else None,
                     "replans": len(r.switches), "wall_s": r.wall_s,
                     "estimate_error_3rd_iteration_max": (
                         float(np.nanmax(after[:, 2])) if len(after) and
                         not np.isnan(after[:, 2]).all() else None)})
    # The paper's baseline is MXNet's PS; a single server is the most pessimistic reading.
    one = simulate(view, job, "ps", iterations=iterations, dynamics=dyn,
                   planner_options={"servers": 1})
    totals = {r["planner"]: r["total_time_s"] for r in rows if "total_time_s" in r}
    rows.append({"benchmark": "headline", "planner": "ps (1 server)",
                 "iterations": iterations, "total_time_s": one.total_s,
                 "mean_iteration_s": float(np.mean(one.iteration_s)),
                 "netstorm_speedup_vs_this": (one.total_s / totals["netstorm"]
                                              if "netstorm" in totals else None),
                 "wall_s": one.wall_s})
    return rows


def run(quick: bool = False, plot: str | Path | None = None,
        views: Sequence[str] = ("netstorm9",)) -> dict[str, Any]:
    """Simulator speed against sites (both engines), the issue's two target commands (not
    with ``quick``), engine agreement on ``views`` (``netstorm bench sim`` passes the
    planner benchmark's), and the paper's headline. With ``plot``, draw wall time against
    sites there."""
    scaling = _scaling(quick)
    results = scaling + ([] if quick else _targets()) + _agreement(views) + _headline(quick)
    if plot is not None:
        from netstorm.sim.plots import plot_scaling

        plot_scaling(scaling, plot)
    changes = [abs(r["change"]) for r in results if "change" in r]
    return {"benchmark": "sim", "max_engine_change": max(changes, default=0.0),
            "results": results}
