"""Simulator benchmarks behind ``netstorm bench sim`` (figures, not pass/fail)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from netstorm.builtin_topologies import builtin
from netstorm.dynamics import Redraw
from netstorm.errors import NetstormError
from netstorm.job import Job

from .engine import simulate

__all__ = ["run"]


def _speed(quick: bool) -> list[dict[str, Any]]:
    view, job = builtin("netstorm9"), Job.from_model("resnet50", chunk_bytes=4_000_000)
    rows = []
    for planner in ("ps", "treepack"):
        simulate(view, job, planner, iterations=1)  # warm up numba and caches
        r = simulate(view, job, planner, iterations=5 if quick else 30)
        rows.append({"benchmark": "transfers/s", "topology": "netstorm9",
                     "planner": planner, "transfers": r.transfers, "wall_s": r.wall_s,
                     "transfers_per_s": r.transfers / r.wall_s})
    sites = 32 if quick else 128
    big = builtin(f"random:{sites}:1")
    for planner in ("ps", "ring"):
        started = time.perf_counter()
        r = simulate(big, job, planner, iterations=20)
        rows.append({"benchmark": f"{sites} sites x 20 iterations", "topology": big.name,
                     "planner": planner, "transfers": r.transfers,
                     "wall_s": time.perf_counter() - started,
                     "transfers_per_s": r.transfers / r.wall_s})
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


def run(quick: bool = False) -> dict[str, Any]:
    """Simulation speed (transfers per second; 128 sites x 20 iterations) and the paper's
    headline: netstorm9, redraw 20-155 Mbit/s every 180 s, ResNet-50, speedup over ps."""
    return {"benchmark": "sim", "results": _speed(quick) + _headline(quick)}
