"""The compiled core's network, driven from SimPy: the fast counterpart of
:class:`~netstorm.sim.network.Network` plus :func:`~netstorm.sim.interpreter.run_iteration`.

:class:`CompiledNetwork` owns the arrays of :mod:`netstorm.sim.core` (links, transfers,
events) for a whole run; :meth:`CompiledNetwork.iterate` is the SimPy process of one
iteration. SimPy stays the outer driver: the iteration runs in the core until it is done
or until SimPy's next event (a capacity change), which then happens in SimPy, and the core
goes on. Python is called back only there, at the iteration's end and when the buffer of
observations (handed to the estimator in one call) fills.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from netstorm.errors import NetstormError, ProtocolError
from netstorm.view import NetworkView

from . import core, tables
from .flat import ALT_HI, ALT_LO, RULE, FlatPrograms
from .network import true_capacities, window_caps

__all__ = ["BatchObserver", "CompiledNetwork"]

#: ``observe(src, dst, nbytes, seconds, end_time, capped)`` over arrays, in the order they
#: happened
#: (:meth:`netstorm.awareness.BandwidthEstimator.observe_many`).
BatchObserver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                          np.ndarray], None]

_OBSERVATIONS = 1 << 16


class CompiledNetwork:
    """The simulated WAN of :class:`~netstorm.sim.network.Network` (same parameters and
    semantics, no ``record``), run by the compiled core.

    Attributes
    ----------
    capacity, egress, ingress
        The true capacities now.
    transfers
        Hop transfers finished so far.
    """

    log: tuple = ()

    def __init__(self, env: simpy.Environment, view: NetworkView, *,
                 window_bytes: float | None = None, observe: BatchObserver | None = None
                 ) -> None:
        self.env = env
        self.n = n = view.n
        latency = np.array(view.latency, dtype=float)
        self._wcap = window_caps(latency, window_bytes)
        self.observe = observe
        self.k = tables.Links.new(latency)
        self.t = tables.Pool.new(0, 0)
        self.q = tables.Events.new(0, _OBSERVATIONS)
        self.c = tables.counters(n, False, observe is not None)
        self.clock = np.zeros(1)
        #: the programs last run, their executor state, and the transfers (each send, and a
        #: copy per route-rule move) and move candidates an iteration of them may need
        self._prepared: tuple[FlatPrograms, tables.Iteration, int, int] | None = None
        self.set_capacity(view.capacity, view.egress, view.ingress)

    # -- state sizes ------------------------------------------------------------------------
    def _reserve(self, transfers: int, entries: int = 0, events: int = 0) -> None:
        """Grow the tables so that ``transfers`` more transfers, ``entries`` route-rule move
        candidates and ``events`` pending events fit."""
        t, c = self.t, self.c
        free = int(c[tables.C_FREE])
        size = len(t.free)
        if free < transfers or len(t.ef) < entries:
            new = max(size + transfers - free, 2 * size) if free < transfers else size
            self.t = t.grown(free, new, max(entries, len(t.ef)))
            c[tables.C_FREE] = free + new - size
        if len(self.q.time) < events:
            self.q = self.q.grown(max(events, 2 * len(self.q.time)))

    # -- the Network interface ----------------------------------------------------------------
    @property
    def now(self) -> float:
        """The core's clock: when its last event happened (SimPy's may be an ulp off)."""
        return float(self.clock[0])

    @property
    def link_bytes(self) -> np.ndarray:
        return self.k.f[:, tables.L_BYTES].reshape(self.n, self.n)

    @property
    def link_busy(self) -> np.ndarray:
        return self.k.f[:, tables.L_BUSY].reshape(self.n, self.n)

    @property
    def transfers(self) -> int:
        return int(self.c[tables.C_TRANSFERS])

    def set_capacity(self, capacity: np.ndarray, egress: np.ndarray | None = None,
                     ingress: np.ndarray | None = None) -> None:
        """Change the true capacities now; transfers in flight continue at the new rates."""
        n = self.n
        self.capacity, self.egress, self.ingress = true_capacities(n, capacity, egress, ingress)
        self.k.f[:, tables.L_RATE_CAP] = np.minimum(self.capacity, self._wcap).ravel()
        self.k.res_cap[:n], self.k.res_cap[n:] = self.egress, self.ingress
        self.c[tables.C_SHARED] = bool(np.isfinite(self.k.res_cap).any())
        self.clock[0] = max(self.clock[0], self.env.now)
        core.flush_all(self.k, self.t, self.c, self.clock)

    def depth(self, src: int, dst: int) -> int:
        """Transfers on link ``src -> dst``: the one sending, if any, plus those queued."""
        link = src * self.n + dst
        return int(self.k.i[link, tables.L_QLEN]) + int(self.k.i[link, tables.L_ACTIVE] >= 0)

    def busy(self, src: int, dst: int) -> bool:
        """True while the link sends or has a queue."""
        return self.depth(src, dst) > 0

    def probe(self, src: int, dst: int, nbytes: float, programs: FlatPrograms) -> None:
        """Send ``nbytes`` on ``src -> dst`` now, delivered nowhere (a bandwidth probe)."""
        self._reserve(1, events=int(self.c[tables.C_EVENTS]) + 2)
        core.probe(programs.program, self.k, self.t, self.q, self.c, self.clock,
                   src * self.n + dst, float(nbytes))

    # -- iterations -----------------------------------------------------------------------------
    def iterate(self, programs: FlatPrograms, version: int) -> Generator[Any, Any, float]:
        """The SimPy process of one iteration of ``programs`` (plan ``version``), starting
        at the core's clock; its value is the time every site was done."""
        p, env = programs, self.env
        if self._prepared is None or self._prepared[0] is not p:  # a new plan version
            sends = p.program.sends
            rule = sends[:, RULE] != 0
            state = tables.Iteration(pending=np.zeros(len(p.program.steps), np.int64),
                                     got=np.zeros(len(p.program.slot_step), np.bool_),
                                     remaining=np.zeros(self.n, np.int64))
            moves = int((sends[rule, ALT_HI] - sends[rule, ALT_LO] - 1).sum())
            self._prepared = (p, state, p.transfers + int(rule.sum()), moves)
        _, it, transfers, moves = self._prepared
        self._reserve(transfers, moves,
                      int(self.c[tables.C_EVENTS]) + p.transfers + len(p.group_site) + 4)
        core.start_iteration(p, it, self.k, self.t, self.q, self.c, self.clock)
        while True:
            until = env.peek()
            status = core.run(p, it, self.k, self.t, self.q, self.c, self.clock, until)
            self._drain()
            if status == tables.DONE:
                if self.now > env.now:
                    yield env.timeout(self.now - env.now)
                return self.now
            if status == tables.ERROR:
                raise ProtocolError(f"compiled core: slot {int(self.c[tables.C_ERROR_AT])} of plan "
                                    f"version {version} filled twice")
            if status == tables.IDLE and math.isinf(until):
                raise NetstormError(f"simulation stalled at {self.now:.6g} s: transfers wait "
                                    f"on links of capacity 0 and no capacity change is due")
            if status != tables.OBS_FULL:
                yield env.timeout(max(until - env.now, 0.0))

    def _drain(self) -> None:
        count = int(self.c[tables.C_OBS])
        if not count or self.observe is None:
            return
        q = self.q
        link, obs = q.obs_link[:count], q.obs[:count]
        self.observe(link // self.n, link % self.n, obs[:, tables.O_BYTES].copy(),
                     obs[:, tables.O_SECS].copy(), obs[:, tables.O_END].copy(),
                     obs[:, tables.O_CAPPED] != 0)
        self.c[tables.C_OBS] = 0
