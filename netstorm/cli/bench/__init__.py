"""Benchmarks behind ``netstorm bench``: figures to report, never pass/fail.

One module per benchmark: :mod:`.planner`, :mod:`.sim`, :mod:`.kernels`, :mod:`.runtime`
(with the site script :mod:`.runtime_worker`), :mod:`.ddp`, :mod:`.faults`, :mod:`.soak`;
the bound's solve times are here.
"""

from __future__ import annotations

import time
from typing import Any

from ...bound import bound
from ...builtin_topologies import builtin
from ...errors import InputError
from ...job import Job

__all__ = ["format_table", "run"]


def _bound_times(quick: bool) -> dict[str, Any]:
    """Bound solve time on heterogeneous full meshes: the flow LP (exact, N^3 variables) where
    it is small, tree packing (exact to its reported gap) at every size."""
    job = Job.from_model("resnet50")
    rows = []
    for n in (9, 16) if quick else (9, 12, 16, 32):
        view = builtin(f"random:{n}:1")
        for method in ("flow-lp", "tree-packing") if n <= 12 else ("tree-packing",):
            started = time.perf_counter()
            result = bound(view, job, method=method, time_limit_s=600)
            rows.append({"sites": n, "method": method, "bound_time_s": result.time_s,
                         "gap": result.gap, "solve_s": time.perf_counter() - started})
    return {"benchmark": "bound", "topology": "random:N:1 (full mesh)", "model": "resnet50",
            "results": rows}


def run(what: str = "bound", quick: bool = False, plot: str | None = None) -> dict[str, Any]:
    """Run one benchmark and return its JSON-serialisable figures (``plot``: bench sim's
    figure of simulation time against sites)."""
    if what == "bound":
        return _bound_times(quick)
    if what == "kernels":
        from .kernels import run as kernels_bench

        return kernels_bench(n=2**20 if quick else 2**24)
    if what == "planner":
        from .planner import run as planner_bench

        return planner_bench(quick=quick)
    if what == "runtime":
        from .runtime import run as runtime_bench

        return runtime_bench(quick=quick)
    if what == "ddp":
        from .ddp import run as ddp_bench

        return ddp_bench(quick=quick)
    if what == "faults":
        from .faults import run as faults_bench

        return faults_bench(quick=quick)
    if what == "soak":
        from .soak import run as soak_bench

        return soak_bench(quick=quick)
    if what == "sim":
        from .planner import FULL_VIEWS, QUICK_VIEWS
        from .sim import run as sim_bench

        views = ("netstorm9", *(QUICK_VIEWS if quick else FULL_VIEWS))
        return sim_bench(quick=quick, plot=plot, views=views)
    raise InputError(f"unknown benchmark {what!r} (bound, ddp, faults, kernels, planner, "
                     f"runtime, sim, soak)")


def format_table(result: dict[str, Any]) -> str:
    """A readable table of a benchmark's ``results`` rows: one table per run of rows with the
    same ``"benchmark"``, its columns every key those rows have (first seen first); a
    ``summary`` that is a list of rows follows as its own table."""
    rows = list(result.get("results", []))
    summary = result.get("summary")
    if isinstance(summary, list) and all(isinstance(r, dict) for r in summary):
        rows += summary
    if not rows:
        return str(result)
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        if groups and groups[-1][0].get("benchmark") == row.get("benchmark"):
            groups[-1].append(row)
        else:
            groups.append([row])
    return "\n\n".join(_table(group) for group in groups)


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = [max(len(k), *(len(_cell(r.get(k))) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(_cell(r.get(k)).rjust(w) for k, w in zip(keys, widths, strict=True))
              for r in rows]
    return "\n".join(lines)


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)
