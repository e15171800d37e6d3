"""Drive the per-site executors on the simulated WAN: one iteration of compiled programs.

:func:`run_iteration` plays one iteration: every site computes, its
:class:`~netstorm.executor.Executor` fires each step as soon as its inputs are there, and
the sends it returns go through the :class:`~netstorm.sim.network.Network`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simpy

from netstorm.errors import InputError
from netstorm.executor import Executor, Outgoing, SiteProgram, pick_path
from netstorm.job import Job
from netstorm.layout import bucket_bounds

from .network import Divert, Network

__all__ = ["BACKWARD_FRACTION", "bucket_ready_s", "local_schedule", "run_iteration"]

#: Share of an iteration's compute spent in the backward pass (backward ~ 2x forward).
BACKWARD_FRACTION = 2 / 3


def bucket_ready_s(job: Job, compute_s: float,
                   backward_fraction: float = BACKWARD_FRACTION) -> list[float]:
    """Seconds after compute starts at which each bucket's gradient is ready (overlap mode).

    Notes
    -----
    With compute time ``C`` and backward fraction ``beta``, the forward pass takes
    ``(1 - beta) C``; the backward pass then produces the buckets in reverse model order,
    spending time on each in proportion to its bytes. Bucket b (sizes ``s_0..s_{B-1}`` in
    model order, total M) is ready at

    ``t_b = (1 - beta) C + beta C (s_b + s_{b+1} + ... + s_{B-1}) / M``,

    so the last bucket is ready first and bucket 0 exactly at ``C``.
    """
    if not 0 <= backward_fraction <= 1:
        raise InputError(f"backward_fraction must be in [0, 1], got {backward_fraction}")
    sizes = list(job.buckets)  # type: ignore[arg-type]
    total = float(sum(sizes))
    forward = (1 - backward_fraction) * compute_s
    ready, done = [0.0] * len(sizes), 0.0
    for b in reversed(range(len(sizes))):
        done += sizes[b]
        ready[b] = compute_s if b == 0 else forward + backward_fraction * compute_s * done / total
    return ready


def local_schedule(prog: SiteProgram, job: Job, compute_s: float, bounds: list[int],
                   backward_fraction: float = BACKWARD_FRACTION
                   ) -> list[tuple[float, list[int]]]:
    """When a worker's local slices are ready: ``(seconds after compute starts, steps)``,
    in the order a driver sets them up.

    ``bounds`` are the job's bucket bounds (:func:`~netstorm.layout.bucket_bounds`) when
    communication overlaps the backward pass, else ``[0]``: then every slice is ready when
    the compute ends. With overlap, each bucket's slices are ready at
    :func:`bucket_ready_s`, last bucket first.
    """
    if not prog.local:
        return []
    if len(bounds) <= 2:
        return [(compute_s, list(prog.local))]
    times = bucket_ready_s(job, compute_s, backward_fraction)
    groups: dict[int, list[int]] = {}
    for g in prog.local:
        b = bisect.bisect_right(bounds, prog.steps[g].ref.offset) - 1
        groups.setdefault(b, []).append(g)
    return [(times[b], groups[b]) for b in sorted(groups, reverse=True)]


def run_iteration(env: simpy.Environment, net: Network, progs: Mapping[int, SiteProgram],
                  job: Job, sites: list[int], *, payload: Mapping[int, np.ndarray] | None = None,
                  result: Mapping[int, np.ndarray] | None = None,
                  on_compute: Callable[[int, float, float], None] | None = None,
                  tag: Any = None, iteration: int = 0, overlap: bool = False,
                  backward_fraction: float = BACKWARD_FRACTION) -> simpy.Event:
    """Start one iteration now; the returned event fires when every site is done.

    Parameters
    ----------
    progs
        Every site's indexed program, one plan version
        (:func:`netstorm.executor.index_programs`).
    sites
        Sites that compute (the workers); each adds its local slice after
        ``job.compute_time(site)`` seconds.
    payload, result
        Payload mode: ``payload[w]`` is worker w's flat float32 gradient and the averaged
        chunks are written into ``result[w]`` (the executors do the arithmetic).
    on_compute
        Called ``(site, start, end)`` for each compute span (for traces).
    overlap, backward_fraction
        Overlap communication with the backward pass bucket by bucket (as DDP does): a
        step's local slice is ready when the bucket holding the chunk's first element is
        (:func:`bucket_ready_s`), instead of when the whole compute is done. Compile the
        programs with ``by_bucket=True`` so that no chunk spans two buckets.

    Notes
    -----
    One :class:`~netstorm.executor.Executor` per site runs the site's program; this driver
    only turns its sends into hop transfers on the :class:`~netstorm.sim.network.Network`
    (queued in the sends' priority order; under a route rule, paths picked at send time
    from the network's queue depths, and moved to an auxiliary path that drains while they
    wait) and its arrivals back into executor events.
    """
    done = env.event()
    data = payload is not None
    execs = {s: Executor(p, iteration=iteration, data=data,
                         gradient=payload.get(s) if payload is not None else None,
                         result=result.get(s) if result is not None else None)
             for s, p in progs.items()}
    left = [sum(not ex.done for ex in execs.values())]
    label = (tag,)  # a transfer's trace label (netstorm.sim.trace reads its first item)

    def emit(site: int, outs: tuple[Outgoing, ...]) -> None:
        for out in outs:
            divert: Divert | None = None
            if out.send is not None:
                out = pick_path(out, functools.partial(net.depth, site))
            if out.send is not None and out.path == out.send.paths[0]:
                divert = (out.send.rule, [(p[1], functools.partial(deliver, out._replace(path=p)))
                                          for p in out.send.paths[1:]])
            net.send(site, out.path[1], out.nbytes, functools.partial(deliver, out), label,
                     out.priority, divert)

    def deliver(out: Outgoing) -> None:
        site = out.path[1]
        ex = execs[site]
        before = ex.remaining
        emit(site, ex.receive(out.message, out.payload, out.path))
        if before and not ex.remaining:
            finished()

    def ready(site: int, local: list[int] | None) -> None:
        ex = execs[site]
        before = ex.remaining
        emit(site, ex.local_ready(local))
        if before and not ex.remaining:
            finished()

    def finished() -> None:
        left[0] -= 1
        if left[0] == 0:
            done.succeed(env.now)

    def at(seconds: float, action: Callable[[], None]) -> None:
        if seconds > 0:
            env.timeout(seconds).callbacks.append(lambda _e: action())
        else:
            action()

    def computed(report: Callable[[int, float, float], None], site: int) -> None:
        report(site, start, env.now)

    start = env.now
    for site, ex in execs.items():
        before = ex.remaining
        emit(site, ex.start())
        if before and not ex.remaining:
            finished()
    bounds = bucket_bounds(job) if overlap else [0]
    for site in sites:
        seconds = job.compute_time(site)
        if on_compute is not None:
            at(seconds, functools.partial(computed, on_compute, site))
        prog = progs.get(site)
        if prog is None:
            continue
        for delay, steps in local_schedule(prog, job, seconds, bounds, backward_fraction):
            at(delay, functools.partial(ready, site, steps))
    if left[0] == 0 and not done.triggered:
        done.succeed(env.now)
    return done
