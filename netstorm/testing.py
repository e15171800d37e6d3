"""Conformance checks for planner authors (and our own tests).

>>> from netstorm.testing import check_planner
>>> check_planner("ring")          # a registered name, or your own callable

``check_planner`` runs the planner over a fixed set of views that exercise the hard cases
(sparse meshes that need relays, relay-only sites, per-site caps, asymmetric links, a single
worker) and checks that every plan is valid, that planning is deterministic for a fixed
seed, and that no predicted time beats the LP bound. ``run_programs`` runs a plan's compiled
programs in memory, every site's :class:`~netstorm.Executor` fed messages in a random order:
the third driver of the executor beside the simulator and the runtime, for tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from .bound import bound
from .builtin_topologies import builtin
from .check import check_plan
from .errors import PlanError
from .executor import Executor, Outgoing, index_programs, pick_path
from .job import Job
from .program import NodeProgram
from .registry import Planner, get_planner, plan
from .view import NetworkView

__all__ = ["check_plan", "check_planner", "conformance_views", "run_programs"]


def conformance_views() -> list[NetworkView]:
    """The views :func:`check_planner` uses (small, so the check runs in seconds)."""
    mbs = 1e6
    # a 5-site line with a relay-only middle site and asymmetric capacities
    line = np.zeros((5, 5))
    for u, (fwd, back) in enumerate([(40, 20), (90, 90), (10, 60), (55, 35)]):
        line[u, u + 1], line[u + 1, u] = fwd * mbs, back * mbs
    relay_line = NetworkView(sites=("a", "b", "relay", "c", "d"), capacity=line,
                             workers=(0, 1, 3, 4), name="relay-line")
    capped = builtin("random:5:7")
    capped = NetworkView(sites=capped.sites, capacity=capped.capacity,
                         latency=capped.latency, egress=np.full(5, 80 * mbs),
                         ingress=np.array([np.inf, 60 * mbs, np.inf, np.inf, 90 * mbs]),
                         name="capped-mesh")
    solo = NetworkView(sites=("only", "relay"), capacity=np.array([[0, 1e6], [1e6, 0]]),
                       workers=(0,), name="one-worker")
    return [builtin("netstorm9"), builtin("random:6:3"), builtin("waxman:8:2"),
            relay_line, capped, solo]


def check_planner(planner: str | Planner, views: Iterable[NetworkView] | None = None,
                  job: Job | None = None, **options: object) -> None:
    """Raise :class:`PlanError` if ``planner`` breaks the planner contract on any view.

    Checks, per view: the plan passes :func:`check_plan`; two calls with the same seed give
    the same plan (JSON-identical); the predicted time is not below :func:`netstorm.bound`.
    """
    name, func = get_planner(planner)
    job = job or Job(buckets=40_000_000, chunk_bytes=1_000_000)
    for view in conformance_views() if views is None else views:
        try:
            first = plan(view, job, func, seed=1, **options)
            second = plan(view, job, func, seed=1, **options)
        except PlanError as exc:
            raise PlanError(f"{exc} (view {view.name!r})") from None
        if first.to_json() != second.to_json():  # plan() has already run check_plan
            raise PlanError(f"planner {name!r} is not deterministic on {view.name}")
        low = bound(view, job).time_s
        if first.predicted_time_s is None or first.predicted_time_s < low * (1 - 1e-6):
            raise PlanError(f"planner {name!r} on {view.name}: predicted "
                            f"{first.predicted_time_s} s beats the bound {low} s")


def run_programs(programs: Mapping[int, NodeProgram],
                 gradients: Mapping[int, np.ndarray] | None = None, *,
                 seed: int | None = None, iteration: int = 0) -> dict[int, np.ndarray]:
    """Run one iteration of ``programs`` in memory; return every worker's averaged gradient.

    Parameters
    ----------
    programs
        One plan version's programs for every site (:func:`netstorm.compile`).
    gradients
        Each worker's flat local gradient (payload mode); ``None``: timing mode, which only
        checks that the dataflow completes, and returns ``{}``.
    seed
        ``None`` delivers messages first in, first out; a seed delivers the next message
        picked at random among all in flight (any interleaving a network could produce,
        and more), so route rules see changing queue depths.

    Raises
    ------
    PlanError
        If a site never finishes (a deadlock or a missing message) or a message is left
        undelivered.
    netstorm.ProtocolError
        If an executor rejects an arrival (unexpected, duplicate).
    """
    progs = index_programs(programs)
    rng = None if seed is None else np.random.default_rng(seed)
    flight: list[Outgoing] = []
    depth: Counter[tuple[int, int]] = Counter()
    data = gradients is not None
    results = {w: np.full_like(g, np.nan) for w, g in (gradients or {}).items()}

    execs = {s: Executor(p, iteration=iteration, data=data,
                         gradient=(gradients or {}).get(s), result=results.get(s))
             for s, p in progs.items()}

    def emit(outs: tuple[Outgoing, ...]) -> None:
        for out in outs:
            src = out.path[0]

            def queued(hop: int, src: int = src) -> int:
                return depth[(src, hop)]

            out = pick_path(out, queued)
            depth[(out.path[0], out.path[1])] += 1
            flight.append(out)

    for ex in execs.values():
        emit(ex.start())
    for ex in execs.values():
        emit(ex.local_ready())
    while flight:
        pick = 0 if rng is None else int(rng.integers(len(flight)))
        out = flight.pop(pick)
        depth[(out.path[0], out.path[1])] -= 1
        emit(execs[out.path[1]].arrive(out.message, out.payload, path=out.path,
                                       version=progs[out.path[1]].version,
                                       iteration=iteration))
    stuck = sorted(s for s, ex in execs.items() if not ex.done)
    if stuck:
        raise PlanError(f"sites {stuck} never finished: a step waits for a message that "
                        f"nobody sends")
    return results
