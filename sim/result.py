"""What one simulated run measured: :class:`SimResult` (and the JSON row of ``netstorm
sim``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from netstorm.controller import Switch

__all__ = ["SimResult"]


@dataclass(frozen=True, eq=False)
class SimResult:
    """What one simulated run measured.

    Attributes
    ----------
    iteration_s, comm_s
        Per-iteration wall (simulated) time, and the part after the slowest compute.
    start_s
        Simulated start time of each iteration.
    versions
        Plan version used by each iteration.
    switches
        Every plan switch (the initial plan is not one).
    link_bytes, link_busy_s
        Bytes sent and seconds busy per directed link over the whole run.
    transfers
        Hop transfers simulated (chunks times hops, probes included).
    estimate_error
        ``(mean, max)`` relative error of the estimator on the links the plan uses, at the
        end of each iteration (NaN when the estimator is off).
    changes_s
        Times of dynamic capacity changes that happened during the run.
    predicted_s
        The cost model's prediction for the first plan on the starting view.
    chunk_bytes
        The pipelining chunk of the first plan: its own ``chunk_bytes`` when it sets one,
        else the job's (:meth:`netstorm.Plan.job_for`).
    wall_s
        Wall-clock seconds the simulation took.
    setup_s
        The part of ``wall_s`` before the first iteration: the first plan, its prediction
        and its compilation.
    log, computes
        Transfers ``(src, dst, start, end, tag)`` and compute spans ``(site, start, end)``
        when recorded (``record=True``), for traces.
    workers
        Indices of the sites that contributed gradients.
    overlap
        Whether communication overlapped the backward pass.
    duration_s
        The simulated span the run was asked to cover (``None``: a number of iterations
        was asked for instead); the last iteration ends at or after it.
    """

    planner: str
    topology: str
    model: str
    sites: tuple[str, ...]
    iteration_s: np.ndarray
    comm_s: np.ndarray
    start_s: np.ndarray
    versions: tuple[int, ...]
    switches: tuple[Switch, ...]
    link_bytes: np.ndarray
    link_busy_s: np.ndarray
    transfers: int
    estimate_error: np.ndarray
    changes_s: tuple[float, ...]
    predicted_s: float
    wall_s: float
    log: tuple = ()
    computes: tuple = ()
    workers: tuple[int, ...] = ()
    overlap: bool = False
    chunk_bytes: int = 0
    duration_s: float | None = None
    setup_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Simulated time of the whole run."""
        return float(self.start_s[-1] + self.iteration_s[-1]) if len(self.start_s) else 0.0

    @property
    def utilisation(self) -> np.ndarray:
        """Busy fraction of every directed link over the run."""
        return self.link_busy_s / self.total_s if self.total_s > 0 else self.link_busy_s * 0

    def error_after_changes(self, k: int = 3) -> np.ndarray:
        """Max estimator error on in-use links at the end of the 1st..k-th iteration that
        ends after each capacity change (and before the next): shape ``(changes, k)``, NaN
        where the run ended or the next change came first."""
        ends = self.start_s + self.iteration_s
        rows = []
        changes = [t for t in self.changes_s if t > 0]
        for i, t in enumerate(changes):
            until = changes[i + 1] if i + 1 < len(changes) else np.inf
            after = np.nonzero((ends > t) & (ends <= until))[0][:k]
            row = np.full(k, np.nan)
            row[:len(after)] = self.estimate_error[after, 1]
            rows.append(row)
        return np.array(rows).reshape(-1, k)

    def summary(self) -> dict[str, Any]:
        """The JSON row of ``netstorm sim`` (DESIGN 11) plus extra figures."""
        util = self.utilisation
        used = self.link_bytes > 0
        after = self.error_after_changes()
        return {
            "planner": self.planner, "topology": self.topology, "model": self.model,
            "iterations": len(self.iteration_s), "duration_s": self.duration_s,
            "capacity_changes": len(self.changes_s),
            "iteration_time_s": {"mean": float(np.mean(self.iteration_s)),
                                 "median": float(np.median(self.iteration_s))},
            "comm_time_s": {"mean": float(np.mean(self.comm_s)),
                            "median": float(np.median(self.comm_s))},
            "total_time_s": self.total_s,
            "replans": len(self.switches), "overlap": self.overlap,
            "replan_times_s": [s.time_s for s in self.switches],
            "planning_s": float(sum(s.planning_s for s in self.switches)),
            "predicted_time_s": self.predicted_s,
            "chunk_bytes": self.chunk_bytes,
            "transfers": self.transfers,
            "wall_s": self.wall_s, "setup_s": self.setup_s,
            "link_utilisation": {f"{self.sites[u]}->{self.sites[v]}": float(util[u, v])
                                 for u, v in zip(*np.nonzero(used), strict=True)},
            "estimate_error_after_change": (
                [None if np.isnan(x) else float(x) for x in _nanmax(after)]
                if len(after) else None),
        }


def _nanmax(rows: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = np.full(rows.shape[1], np.nan)
        for j in range(rows.shape[1]):
            col = rows[:, j][~np.isnan(rows[:, j])]
            if col.size:
                out[j] = col.max()
    return out
