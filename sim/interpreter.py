"""Interpret compiled :class:`~netstorm.schedule.NodeProgram` values on the simulated WAN.

One :class:`Programs` object indexes a plan's programs once (steps numbered globally, each
send resolved to the step that awaits it at the next hop); :func:`run_iteration` then plays
one iteration: every site computes, then fires each step as soon as its inputs are there,
and sends go through the :class:`~netstorm.sim.network.Network`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simpy

from netstorm.job import Job
from netstorm.schedule import NodeProgram, Step, bucket_bounds

from .network import Network

__all__ = ["BACKWARD_FRACTION", "Programs", "bucket_ready_s", "run_iteration"]

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
        raise ValueError(f"backward_fraction must be in [0, 1], got {backward_fraction}")
    sizes = list(job.buckets)  # type: ignore[arg-type]
    total = float(sum(sizes))
    forward = (1 - backward_fraction) * compute_s
    ready, done = [0.0] * len(sizes), 0.0
    for b in reversed(range(len(sizes))):
        done += sizes[b]
        ready[b] = compute_s if b == 0 else forward + backward_fraction * compute_s * done / total
    return ready


class Programs:
    """A plan's per-site programs, indexed for fast interpretation.

    Attributes
    ----------
    steps
        Every step, in site order then program order.
    site
        ``site[g]``: the site of global step ``g``.
    waits
        Initial number of inputs of each step (messages plus the local gradient).
    sends
        ``sends[g]``: ``(src, dst, nbytes, target step)`` for each send of step g.
    local
        ``local[site]``: steps of that site that add the local gradient.
    """

    def __init__(self, programs: Mapping[int, NodeProgram]) -> None:
        self.version = next(iter(programs.values())).plan_version if programs else 0
        self.steps: list[Step] = []
        self.site: list[int] = []
        where: dict[tuple[int, Any], int] = {}
        for s in sorted(programs):
            for step in programs[s].steps:
                g = len(self.steps)
                self.steps.append(step)
                self.site.append(s)
                for m in step.waits:
                    where[(s, m)] = g
        self.waits = [len(st.waits) + st.add_local for st in self.steps]
        self.sends = [[(send.path[0], send.path[1], st.ref.nbytes,
                        where[(send.path[1], send.message)]) for send in st.sends]
                      for st in self.steps]
        self.local: dict[int, list[int]] = {}
        for g, st in enumerate(self.steps):
            if st.add_local:
                self.local.setdefault(self.site[g], []).append(g)


def run_iteration(env: simpy.Environment, net: Network, progs: Programs, job: Job,
                  sites: list[int], *, payload: Mapping[int, np.ndarray] | None = None,
                  result: Mapping[int, np.ndarray] | None = None,
                  on_compute: Callable[[int, float, float], None] | None = None,
                  tag: Any = None, overlap: bool = False,
                  backward_fraction: float = BACKWARD_FRACTION) -> simpy.Event:
    """Start one iteration now; the returned event fires when every step has fired.

    Parameters
    ----------
    sites
        Sites that compute (the workers); each adds its local slice after
        ``job.compute_time(site)`` seconds.
    payload, result
        Payload mode: ``payload[w]`` is worker w's flat float32 gradient and the averaged
        chunks are written into ``result[w]``; sums use :func:`netstorm.kernels.fused_reduce`.
    on_compute
        Called ``(site, start, end)`` for each compute span (for traces).
    overlap, backward_fraction
        Overlap communication with the backward pass bucket by bucket (as DDP does): a
        step's local slice is ready when the bucket holding the chunk's first element is
        (:func:`bucket_ready_s`), instead of when the whole compute is done. Compile the
        programs with ``by_bucket=True`` so that no chunk spans two buckets.

    Notes
    -----
    A step fires when its ``waits`` have arrived and, if it adds the local gradient, the
    site's local slice is ready (compute done; with ``overlap``, its bucket done). Its
    sends are queued on their first hop's link in priority order.
    """
    done = env.event()
    pending = list(progs.waits)
    left = [len(pending)]
    steps, step_site, sends = progs.steps, progs.site, progs.sends
    inbox: list[list[np.ndarray]] | None = ([[] for _ in pending] if payload is not None
                                            else None)
    if payload is not None:
        from netstorm.kernels import fused_reduce

    def fire(g: int) -> None:
        value: np.ndarray | None = None
        if inbox is not None:
            assert payload is not None and result is not None  # payload mode
            step = steps[g]
            ref = step.ref
            inputs = inbox[g]
            inbox[g] = []
            if step.add_local:
                inputs.append(payload[step_site[g]][ref.offset:ref.offset + ref.elems])
            if step.kind in ("reduce", "root"):
                value = np.empty(ref.elems, dtype=np.float32)
                fused_reduce(value, inputs, step.scale)
            else:
                value = inputs[0]
            if step.store:
                result[step_site[g]][ref.offset:ref.offset + ref.elems] = value
        prio = steps[g].priority
        for src, dst, nbytes, target in sends[g]:
            net.send(src, dst, nbytes, _arrival(target, value), (tag, g), prio)
        left[0] -= 1
        if left[0] == 0:
            done.succeed(env.now)

    def _arrival(target: int, value: np.ndarray | None) -> Callable[[], None]:
        def arrive() -> None:
            if inbox is not None:
                assert value is not None  # payload mode: every step computes its value
                inbox[target].append(value)
            pending[target] -= 1
            if pending[target] == 0:
                fire(target)
        return arrive

    def ready(local: list[int]) -> None:
        for g in local:
            pending[g] -= 1
            if pending[g] == 0:
                fire(g)

    def at(seconds: float, action: Callable[[], None]) -> None:
        if seconds > 0:
            env.timeout(seconds).callbacks.append(lambda _e: action())
        else:
            action()

    def computed(report: Callable[[int, float, float], None], site: int) -> None:
        report(site, start, env.now)

    start = env.now
    for g, count in enumerate(pending):
        if count == 0:
            fire(g)
    bounds = bucket_bounds(job) if overlap else [0]
    for site in sites:
        seconds = job.compute_time(site)
        local = progs.local.get(site, [])
        if on_compute is not None:
            at(seconds, functools.partial(computed, on_compute, site))
        if overlap and len(bounds) > 2:
            times = bucket_ready_s(job, seconds, backward_fraction)
            groups: dict[int, list[int]] = {}
            for g in local:
                b = bisect.bisect_right(bounds, steps[g].ref.offset) - 1
                groups.setdefault(b, []).append(g)
            for b in sorted(groups, reverse=True):
                at(times[b], functools.partial(ready, groups[b]))
        else:
            at(seconds, functools.partial(ready, local))
    if not pending:
        done.succeed(env.now)
    return done
