"""Which plan every collective runs at this site: the versions the coordinator released, and
each version's plan compiled for each all-reduce size (cached, planned off the data path)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import NamedTuple

import numpy as np

from netstorm.compiler import compile
from netstorm.controller import MakePlan
from netstorm.errors import PeerError
from netstorm.executor import SiteProgram
from netstorm.job import Job
from netstorm.plan import Plan
from netstorm.program import Message
from netstorm.view import NetworkView

from .messages import SwitchNote

__all__ = ["Compiled", "Versions"]

log = logging.getLogger("netstorm.runtime")


#: Plan versions before the newest whose compiled plans stay cached (each holds a site's
#: programs for every size seen: kept forever, they grew by one per re-plan).
KEEP_VERSIONS = 2


class Compiled(NamedTuple):
    """A plan version for one size, ready to run at this site."""

    plan: Plan
    program: SiteProgram
    #: where each awaited message lands in the collective's arena: (offset, elements)
    offsets: dict[Message, tuple[int, int]]
    #: the arena's size, elements: the awaited messages, then the executor's scratch
    arena: int
    #: the sites that take part for sure (the workers, relays awaiting a message): each
    #: reports the collective done; a relay left out of a plan never hears of it
    reporters: frozenset[int]


class Versions:
    """Plan versions at one site.

    Parameters
    ----------
    view
        The topology (version 1 is planned from it; later versions from the views the
        coordinator's switches carry).
    rank
        This site.
    make_plan
        ``make_plan(view, job) -> Plan``: the run's planner (deterministic, so every site
        makes the same plan).
    chunk_bytes, timeout
        The job's pipelining chunk; how long to wait for the coordinator to release a
        collective.

    Notes
    -----
    Collective ``seq`` may start once ``seq < horizon``; it runs the newest version whose
    switch takes effect at or before ``seq``. The coordinator only extends the horizon past
    a switch after announcing it, so every site runs every collective under one version.
    """

    def __init__(self, view: NetworkView, rank: int,
                 make_plan: MakePlan, *, chunk_bytes: int,
                 timeout: float) -> None:
        self.view = view
        self.rank = rank
        self.make_plan = make_plan
        self.chunk_bytes = chunk_bytes
        self.timeout = timeout
        self._cond = threading.Condition()
        self._views: dict[int, NetworkView] = {1: view}
        self._switches: list[tuple[int, int]] = [(0, 1)]  # (from seq, version)
        self._horizon = 0
        self._error: BaseException | None = None
        self._plans: dict[tuple[int, int], Compiled] = {}
        self._plan_lock = threading.Lock()
        self._sizes: set[int] = set()

    def release(self, horizon: int, switch: SwitchNote | None = None) -> None:
        """The coordinator released collectives below ``horizon``, after a ``switch`` if
        one came with it; a switch is planned at once, in the background, for every size
        seen."""
        with self._cond:
            if switch is not None:
                version = switch.version
                conf = switch.confidence
                self._views[version] = dataclasses.replace(
                    self.view, capacity=np.array(switch.capacity, dtype=float),
                    confidence=None if conf is None else np.array(conf, dtype=float),
                    _graph_cache={})
                self._switches.append((switch.from_seq, version))
                with self._plan_lock:  # keep the versions a lagging collective may still use
                    for key in [k for k in self._plans if k[0] < version - KEEP_VERSIONS]:
                        del self._plans[key]  # (one evicted too soon is planned again)
                threading.Thread(target=self._prefetch, args=(version,), daemon=True,
                                 name=f"plan-v{version}").start()
            self._horizon = max(self._horizon, horizon)
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """The run failed: every wait raises ``exc``."""
        with self._cond:
            self._error = self._error or exc
            self._cond.notify_all()

    def version(self, seq: int) -> int:
        """The plan version of collective ``seq``; waits until the coordinator released it.

        Raises
        ------
        PeerError
            Not released within the timeout (the coordinator is gone or stuck).
        """
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while seq >= self._horizon and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"collective {seq} not released by the coordinator "
                                    f"within {self.timeout:g} s")
                self._cond.wait(left)
            if self._error is not None:
                raise self._error
            return max(v for start, v in self._switches if start <= seq)

    def compiled(self, version: int, numel: int) -> Compiled:
        """Version ``version`` for ``numel`` elements (cached). Planning can take a second:
        it holds only the planning lock, so transfers and control messages go on."""
        key = (version, numel)
        with self._plan_lock:
            found = self._plans.get(key)
            if found is None:
                job = Job(buckets=numel * 4, chunk_bytes=self.chunk_bytes)
                view = self._views[version]
                plan = dataclasses.replace(self.make_plan(view, job), version=version)
                programs = compile(plan, job, self.view.workers, view=view)
                prog = SiteProgram(programs[self.rank])
                reporters = frozenset(r for r, p in programs.items()
                                      if r in self.view.workers or p.expects)
                offsets, at = {}, 0
                for m, k in prog.slot.items():
                    elems = prog.steps[prog.slot_step[k]].ref.elems
                    offsets[m] = (at, elems)
                    at += elems
                # the arena: every awaited message, then the partial sums sent on
                found = self._plans[key] = Compiled(plan, prog, offsets,
                                                    at + prog.scratch_elems, reporters)
                self._sizes.add(numel)
            return found

    def _prefetch(self, version: int) -> None:
        try:
            for numel in sorted(self._sizes):
                self.compiled(version, numel)
        except BaseException as exc:
            log.debug("planning version %d failed: %s", version, exc)
