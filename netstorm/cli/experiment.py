"""The paper's experiment for real: time to accuracy per planner, from real processes, with the
simulator's prediction of the same run beside it.

``netstorm run -t netstorm9 -d redraw:180s:20Mbit/s:155Mbit/s -p ps,netstorm,treepack
--target 0.93 --plot fig.png`` trains the built-in DDP job (``netstorm.runtime.train``) once
per planner on the emulated WAN, then simulates the same job on the same network: the
gradient buckets the DDP hook all-reduced, the compute time per step each site measured, the
same dynamics and time scale. The real run gives the accuracy after every step; both sides
are read at the step where it first reached the target, so the comparison is about time
alone (the curve against steps is the same: same seeds, same model).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netstorm.runtime import launch
from netstorm.runtime.launch import LaunchConfig

from ..dynamics import parse_dynamics
from ..errors import InputError, NetstormError
from ..job import Job
from ..topology import load_topology

__all__ = ["draw", "format_table", "run", "sim_time_axis", "time_to"]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def time_to(times: list[float], accuracy: list[float | None], target: float) -> float | None:
    """The first time at which ``accuracy`` reached ``target`` (``None``: never)."""
    for t, a in zip(times, accuracy, strict=True):
        if a is not None and a >= target:
            return t
    return None


def sim_time_axis(config: LaunchConfig, planner: str, buckets: list[int],
                  compute_s: float, steps: int) -> list[float]:
    """Wall seconds after each of ``steps`` DDP steps, as the simulator predicts them.

    The emulated network runs ``time_scale`` times faster than the topology while compute
    does not: the simulation charges ``compute_s * time_scale`` on the unscaled topology and
    its clock is divided by the scale afterwards.
    """
    from netstorm.sim import simulate

    view = load_topology(config.topology)
    scale = float(config.time_scale)
    job = Job(buckets=tuple(buckets), compute_s=compute_s * scale)
    result = simulate(view, job, planner, iterations=steps, dynamics=parse_dynamics(
        config.dynamics), policy=config.policy, overlap=len(buckets) > 1)
    return list(np.cumsum(result.iteration_s) / scale)


def _one(config: LaunchConfig, planner: str, target: float, logs: Path) -> dict[str, Any]:
    one = dataclasses.replace(config, planner=planner, log_dir=str(logs),
                              env={**config.env, "NETSTORM_EVAL_EVERY": "1"})  # every step
    status, doc = launch.run(one)
    if status:
        raise NetstormError(f"planner {planner}: the run failed with status {status}")
    view = load_topology(config.topology)
    first = _records(logs / f"{view.sites[view.workers[0]]}.jsonl")
    steps = [r for r in first if "iteration" in r]
    times = [float(r["elapsed_s"]) for r in steps]
    accuracy = [r.get("accuracy") for r in steps]
    row: dict[str, Any] = {
        "planner": planner, "steps": len(steps), "wall_s": doc["wall_s"],
        "step_s": float(np.median([r["time_s"] for r in steps])) if steps else None,
        "time_s": times, "accuracy": accuracy, "switches": len(doc["switches"]),
        "time_to_target_s": time_to(times, accuracy, target)}
    compute = [r["compute_s"] for s in view.sites for r in _records(logs / f"{s}.jsonl")
               if "compute_s" in r]
    warmup = next((int(r["warmup"]) for r in first if "warmup" in r), 0)
    colls = [r for r in first if "collective" in r]
    passes = len(steps) + warmup  # every backward pass all-reduced every bucket
    if steps and compute and colls and len(colls) % passes == 0:
        per_step = len(colls) // passes
        # the last step's buckets (after DDP rebuilt them), in model order
        buckets = [4 * int(r["numel"]) for r in colls[-per_step:]][::-1]
        compute_s = float(np.median(compute))
        sim = sim_time_axis(config, planner, buckets, compute_s, len(steps))
        row.update(sim_time_s=sim, sim_time_to_target_s=time_to(sim, accuracy, target),
                   buckets=buckets, compute_s=compute_s)
    return row


def run(config: LaunchConfig, planners: Sequence[str], *, target: float,
        plot: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run the built-in training once per planner of ``planners``, in turn, as ``config``
    says otherwise; the experiment's summary (and the figure written to ``plot``)."""
    if not planners:
        raise InputError("--planner: no planner given")
    if not 0 < target <= 1:
        raise InputError(f"--target must be an accuracy in (0, 1], got {target}")
    if config.command:
        raise InputError("an experiment (several planners, --plot or --target) runs the "
                         "built-in training: give no script")
    rows = []
    with tempfile.TemporaryDirectory(prefix="netstorm-exp-") as tmp:
        base = Path(config.log_dir) if config.log_dir else Path(tmp)
        for planner in planners:
            rows.append(_one(config, planner, target, base / planner))
    doc = {"topology": config.topology, "dynamics": config.dynamics,
           "time_scale": config.time_scale, "target": target, "runs": rows,
           "ratios": _ratios(rows)}
    if plot:
        draw(doc, Path(plot))
    return 0, doc


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Time to target of every planner over treepack's (real and simulated)."""
    by = {r["planner"]: r for r in rows}
    ours = by.get("treepack")
    out: dict[str, dict[str, float | None]] = {}
    if ours is None:
        return out
    for name, r in by.items():
        if name == "treepack":
            continue
        ratio: dict[str, float | None] = {}
        for key in ("time_to_target_s", "sim_time_to_target_s"):
            a, b = r.get(key), ours.get(key)
            ratio[key.replace("time_to_target_s", "speedup")] = (
                a / b if a is not None and b else None)
        out[f"treepack vs {name}"] = ratio
    return out


def format_table(doc: dict[str, Any]) -> str:
    """The experiment's table (what ``netstorm run`` prints)."""
    def f(x: float | None, spec: str = ".1f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"time to {doc['target']:.0%} test accuracy on {doc['topology']} "
             f"(dynamics {doc['dynamics'] or 'none'}, time scale {doc['time_scale']:g})",
             f"{'planner':10} {'steps':>5} {'s/step':>7} {'real s':>7} {'sim s':>7} "
             f"{'sim/real':>8} {'switches':>8}"]
    for r in doc["runs"]:
        real, sim = r["time_to_target_s"], r.get("sim_time_to_target_s")
        lines.append(f"{r['planner']:10} {r['steps']:>5} {f(r['step_s'], '.3f'):>7} "
                     f"{f(real):>7} {f(sim):>7} "
                     f"{f(sim / real if sim and real else None, '.2f'):>8} {r['switches']:>8}")
    for name, ratio in doc["ratios"].items():
        lines.append(f"{name}: {f(ratio['speedup'], '.2f')}x real, "
                     f"{f(ratio['sim_speedup'], '.2f')}x simulated")
    return "\n".join(lines)


def draw(doc: dict[str, Any], path: Path) -> None:
    """Accuracy against training time, one line per planner (the paper's figure): solid the
    real processes, dashed the simulator's prediction."""
    from matplotlib.figure import Figure  # no pyplot: no backend chosen or changed

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, r in enumerate(doc["runs"]):
        color = f"C{i}"
        pts = [(t, a) for t, a in zip(r["time_s"], r["accuracy"], strict=True) if a is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=color, label=f"{r['planner']} (real)")
        if r.get("sim_time_s"):
            sim = [(t, a) for t, a in zip(r["sim_time_s"], r["accuracy"], strict=True)
                   if a is not None]
            ax.plot(*zip(*sim, strict=True), color=color, linestyle="--",
                    label=f"{r['planner']} (simulated)")
    ax.axhline(doc["target"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{doc['topology']}, dynamics {doc['dynamics'] or 'none'}, "
                 f"time scale {doc['time_scale']:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
