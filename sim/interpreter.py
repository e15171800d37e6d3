"""Interpret compiled :class:`~netstorm.schedule.NodeProgram` values on the simulated WAN.

One :class:`Programs` object indexes a plan's programs once (steps numbered globally, each
send resolved to the step that awaits it at the next hop); :func:`run_iteration` then plays
one iteration: every site computes, then fires each step as soon as its inputs are there,
and sends go through the :class:`~netstorm.sim.network.Network`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simpy

from netstorm.job import Job
from netstorm.schedule import NodeProgram, Step

from .network import Network

__all__ = ["Programs", "run_iteration"]


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
                  tag: Any = None) -> simpy.Event:
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

    Notes
    -----
    A step fires when its ``waits`` have arrived and, if it adds the local gradient, the
    site's compute is done. Its sends are queued on their first hop's link in program order.
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
        value = None
        if inbox is not None:
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
                inbox[target].append(value)
            pending[target] -= 1
            if pending[target] == 0:
                fire(target)
        return arrive

    def computed(site: int, start: float) -> None:
        if on_compute is not None:
            on_compute(site, start, env.now)
        for g in progs.local.get(site, ()):
            pending[g] -= 1
            if pending[g] == 0:
                fire(g)

    start = env.now
    for g, count in enumerate(pending):
        if count == 0:
            fire(g)
    for site in sites:
        seconds = job.compute_time(site)
        if seconds > 0:
            env.timeout(seconds).callbacks.append(lambda _e, s=site: computed(s, start))
        else:
            computed(site, start)
    if not pending:
        done.succeed(env.now)
    return done
