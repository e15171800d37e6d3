"""Elastic runs: when a site dies, the others agree it left, re-plan without it and go on.

``NETSTORM_ELASTIC=1`` (``netstorm run --elastic``) makes :func:`netstorm.runtime.init` return
an :class:`ElasticSite`: the same calls as :class:`~netstorm.runtime.Site`, over a site that
is rebuilt whenever the membership changes. It reaches each membership's site only through
the calls :class:`Member` declares, and the site reaches it through
:class:`~netstorm.runtime.site.Membership`.

How the survivors agree, and on what
------------------------------------
- Rank 0's coordinator decides that a site left: its control connection closed (a killed
  process) or it sent nothing for :func:`~netstorm.runtime.deadlines.silence_limit` of the
  timeout (a stopped process, a cut link). It tells every other site ``Lost`` and its part
  in that membership ends. A site's own error (a peer's data connection gone) is held
  until that verdict, and fails the run only when none comes.
- In an elastic run a collective's result becomes the caller's only once the coordinator
  confirms it finished on *every* site (one more control message per collective). The
  coordinator's messages reach every site in one order, so when ``Lost`` arrives every
  survivor holds the same set of confirmed collectives: no survivor ever used a result that
  another survivor lacks.
- Every survivor then redoes, in call order, each collective it called that was not
  confirmed, from a copy of its input kept at the call, on a new site over the topology
  without the lost ranks (ranks renumbered in order; rank 0, the coordinator, stays rank 0
  on its port). Results are the exact mean over the surviving workers, bit-identical on
  each. A lost relay is re-planned around the same way (a topology it disconnects fails
  with the planner's error). The next membership is a pure function of the last and of the
  change (:func:`next_membership`); the rebuild is the only step with I/O.
- The coordinator itself is not replaced: if rank 0 dies, every site stops, naming it.
  Two sites lost in one moment: the second is found missing when the survivors meet again,
  which fails the run after the timeout.

How a site joins (:mod:`netstorm.runtime.door`)
------------------------------------------------
- A site of the run's topology that is not in the run (it left, or it was restarted:
  ``NETSTORM_JOIN=1``, ``netstorm run --rejoin``) knocks at rank 0. Rank 0 keeps it waiting
  and the coordinator announces it on every horizon.
- The workers call :meth:`ElasticSite.admit` between iterations. Every worker there has
  every result confirmed, so every worker holds the same announcements (they come on the
  confirmations): all stop at the same boundary, or none. When every worker has said it is
  ready, rank 0 admits the waiting sites, and every site starts over on the grown
  membership (sites in the topology's order, rank 0 first, as after a loss).
- One old worker (the first) then sends its state, the ``state`` its training loop passed,
  to the newcomers through the coordinator (checked with a CRC); a newcomer's first
  :meth:`ElasticSite.admit` fills its own ``state`` in place and returns the workers' step.
  Newcomers must build the same all-reduces from there on (DDP: the same buckets).

Costs: one copy of each all-reduce's input while it is outstanding, one coordinator round
trip before a result is released, and one at each boundary where a site waits to join.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from netstorm.errors import NetstormError, SiteLost, SitesJoined
from netstorm.plan import Plan
from netstorm.view import NetworkView

from .collective import flat_float32
from .config import RuntimeConfig
from .control import fingerprint
from .deadlines import recovery_limit
from .door import Entrance, knock, receive_state, send_state
from .engine import warm_kernels
from .messages import Message, Ready, State
from .site import Door, Membership

__all__ = ["ElasticHandle", "ElasticSite", "Member", "next_membership", "without"]

log = logging.getLogger("netstorm.runtime")


class MemberHandle(Protocol):
    """A member's outstanding all-reduce (:class:`~netstorm.runtime.site.Handle`)."""

    @property
    def seq(self) -> int: ...

    def wait(self, timeout: float | None = None) -> None: ...

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None: ...


class Member(Protocol):
    """What an elastic run needs of each membership's site (:class:`~netstorm.runtime.Site`
    is one): the caller's calls, and the few an elastic run adds."""

    view: NetworkView
    rank: int
    name: str
    is_worker: bool
    log_base: int  #: added to collective numbers in the site's log

    @property
    def plan(self) -> Plan | None: ...

    @property
    def next_seq(self) -> int: ...

    def allreduce_async(self, array: Any) -> MemberHandle: ...

    def stats(self) -> dict[str, Any]: ...

    def attach(self, membership: Membership) -> None: ...

    def send(self, msg: Message) -> None: ...

    def announce(self, entering: tuple[int, ...]) -> None: ...

    def record(self, rec: dict[str, Any]) -> None: ...

    def wait_end(self) -> BaseException | None: ...

    def abandon(self) -> None: ...

    def close(self) -> None: ...


def without(view: NetworkView, ranks: tuple[int, ...]) -> NetworkView:
    """``view`` without the sites ``ranks``: the others keep their order, links and caps.

    Raises
    ------
    NetstormError
        Every site left, or a worker can no longer reach another."""
    return _among(view, [i for i in range(view.n) if i not in set(ranks)])


def _among(view: NetworkView, keep: list[int]) -> NetworkView:
    """The sites ``keep`` of ``view``, checked (every survivor finds this alike, before they
    try to meet)."""
    if not keep:
        raise NetstormError(f"every site of {view.name!r} left the run")
    if len(keep) == view.n:
        return view
    gone = ", ".join(view.sites[r] for r in range(view.n) if r not in set(keep))
    less = view.restricted(keep, name=f"{view.name} without {gone}")
    cut = less.unreachable_workers()
    if cut:
        src = cut[0][0]
        names = ", ".join(less.sites[v] for u, v in cut if u == src)
        raise NetstormError(f"without {gone}, worker {less.sites[src]} cannot reach {names}")
    return less


def next_membership(members: tuple[int, ...],
                    change: SiteLost | SitesJoined) -> tuple[int, ...]:
    """The membership after ``change``: ``members`` (indices into the run's first topology)
    without the lost ranks (ranks of ``members``), or the grown one."""
    if isinstance(change, SitesJoined):
        return tuple(change.members)
    gone = {members[r] for r in change.ranks}
    return tuple(m for m in members if m not in gone)


class _Call:
    """One all-reduce the caller made: its array, a copy of its input, its callbacks."""

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat
        self.kept = flat.copy()
        self.inner: MemberHandle | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.callbacks: list[Callable[[BaseException | None], None]] = []
        self.lock = threading.Lock()

    def finish(self, error: BaseException | None) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.error = error
            self.done.set()
            callbacks, self.callbacks = self.callbacks, []
        for fn in callbacks:
            fn(error)


class ElasticHandle:
    """An outstanding :meth:`ElasticSite.allreduce_async` (the ``Handle`` contract)."""

    def __init__(self, call: _Call, timeout_s: float) -> None:
        self._call = call
        self._timeout_s = timeout_s

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is in the array (redone after a loss if need be)."""
        limit = recovery_limit(self._timeout_s) if timeout is None else timeout
        if not self._call.done.wait(limit):
            raise NetstormError("elastic all-reduce not done: the run is stuck recovering")
        if self._call.error is not None:
            raise self._call.error

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` once the result is final (see the site's handle)."""
        call = self._call
        with call.lock:
            if not call.done.is_set():
                call.callbacks.append(fn)
                return
        fn(call.error)


class _Membership:
    """One membership's site as the elastic run sees it (the site's
    :class:`~netstorm.runtime.site.Membership`)."""

    def __init__(self, run: ElasticSite, epoch: int, door: Door | None) -> None:
        self.run = run
        self.epoch = epoch
        self.door = door
        self.entering: tuple[int, ...] = ()  # as last announced
        self.inbox: queue.Queue[State] = queue.Queue()  # a newcomer's state

    def failed(self, error: BaseException) -> None:  # on the failing site's thread
        if isinstance(error, SiteLost | SitesJoined):
            threading.Thread(target=self.run._recover, args=(self.epoch, error), daemon=True,
                             name="recover").start()
        else:
            self.run._give_up(error)

    def announced(self, sites: tuple[int, ...]) -> None:
        self.entering = sites

    def state(self, msg: State) -> None:
        self.inbox.put(msg)


class ElasticSite:
    """A :class:`~netstorm.runtime.Site` that survives the loss of other sites and takes
    sites in mid-run.

    Parameters
    ----------
    config, view
        This process's settings and the run's topology (``config.rank`` indexes it). With
        ``config.join``, this site enters a run under way (see the module notes).
    make_site
        ``make_site(config, view) -> Member`` with the run's planner, policy and options
        bound (a :class:`~netstorm.runtime.Site`).

    Attributes
    ----------
    site
        The current membership's site.
    losses
        One record per loss: the sites lost, when, and how long the new membership took to
        meet (``recovery_s``).
    joins
        One record per growth: the sites that joined and how long the boundary took.
    """

    def __init__(self, config: RuntimeConfig, view: NetworkView,
                 make_site: Callable[[RuntimeConfig, NetworkView], Member]) -> None:
        self._make = make_site
        self._config = config
        self._topology = view  # as first loaded: memberships are subsets of it
        self._me = config.rank  # this site's index in it
        self._epoch = 0
        self._calls: list[_Call] = []  # outstanding, in call order
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a new membership met
        self._change: SiteLost | SitesJoined | None = None  # the last one
        self.losses: list[dict[str, Any]] = []
        self.joins: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        #: the collectives and switches of the memberships before the current one
        self._history: dict[str, list[dict[str, Any]]] = {"collectives": [], "switches": []}
        self._newcomer = config.join
        printed = fingerprint(view, config.wire)
        self._door = None if self._me != 0 else Entrance(
            view, printed, config.timeout_s, changed=self._changed,
            members=lambda: self._members, announce=lambda w: self.site.announce(w))
        if config.join:  # the workers wait for it once admitted: load the kernels first
            warm_kernels()
        self._members = knock(config, view, printed) if config.join else tuple(range(view.n))
        self.site: Member
        self._now: _Membership
        self._meet(self._members)

    # what callers read from a Site
    @property
    def view(self) -> NetworkView:
        return self.site.view

    @property
    def rank(self) -> int:
        return self.site.rank

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def is_worker(self) -> bool:
        return self.site.is_worker

    @property
    def plan(self) -> Plan | None:
        return self.site.plan

    @property
    def waiting(self) -> list[str]:
        """Rank 0: the sites waiting to join, in topology order (empty elsewhere)."""
        with self._lock:
            ranks = sorted(self._door.waiting) if self._door is not None else []
            return [self._topology.sites[r] for r in ranks]

    @property
    def newcomer(self) -> bool:
        """This site joined a run under way and has not had its first boundary yet."""
        return self._newcomer

    def stats(self) -> dict[str, Any]:
        """:meth:`Site.stats` over every membership so far (collectives and switches of the
        earlier ones first; the current site's bytes), plus ``losses`` and ``joins``."""
        now = self.site.stats()
        return {**now, "collectives": self._history["collectives"] + now["collectives"],
                "switches": self._history["switches"] + now["switches"],
                "losses": list(self.losses), "joins": list(self.joins)}

    def allreduce_async(self, array: Any) -> ElasticHandle:
        """Start an in-place mean all-reduce over the workers alive when it completes."""
        call = _Call(flat_float32(array))
        with self._lock:
            if self._error is not None:
                raise self._error
            self._calls.append(call)
            try:
                self._issue(call)
            except SiteLost:
                pass  # this membership just ended: the recovery issues the call again
            except BaseException:
                self._calls.remove(call)
                raise
        return ElasticHandle(call, self._config.timeout_s)

    def allreduce(self, array: Any) -> None:
        """Replace ``array`` by the mean of every surviving worker's ``array``, in place."""
        self.allreduce_async(array).wait()

    def admit(self, state: Any | Callable[[], Any], step: int) -> int:
        """An iteration boundary: let waiting sites in. Every worker calls it at the same
        boundaries, with no all-reduce of its own outstanding.

        Parameters
        ----------
        state
            What a newcomer needs to go on (parameters, optimizer buffers): a C-contiguous
            float32 array or CPU tensor, the same bytes on every worker, or a callable that
            returns one (called only when a site joins). A newcomer's is overwritten with
            the workers'.
        step
            The iteration about to start.

        Returns
        -------
        int
            ``step``; on a newcomer's first call, the workers' step.
        """
        def flat() -> np.ndarray:
            return flat_float32(state() if callable(state) else state)

        if self._newcomer:
            self._newcomer = False
            got = receive_state(self._now.inbox, flat(), name=self.name,
                                timeout_s=self._config.timeout_s, failed=lambda: self._error)
            self.site.log_base = got.log_base
            log.warning("site %s: joined at step %d with the workers' state", self.name,
                        got.step)
            return got.step
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            ElasticHandle(call, self._config.timeout_s).wait()
        with self._lock:
            if self._error is not None:
                raise self._error
            site, now, epoch = self.site, self._now, self._epoch
        if not now.entering:
            return step
        try:
            site.send(Ready(step))
        except NetstormError as exc:  # this membership is ending anyway: its recovery decides
            log.info("site %s: could not say it is ready (%s); the recovery decides",
                     self.name, exc)
        with self._lock:
            if not self._changed.wait_for(lambda: self._epoch != epoch or self._error
                                          is not None, recovery_limit(self._config.timeout_s)):
                raise NetstormError(f"site {self.name}: sites waited to join, but the "
                                    "workers never met at the boundary")
            if self._error is not None:
                raise self._error
            change = self._change
        if isinstance(change, SitesJoined):
            self._send_state(flat, step, change.joined)
        return step

    def _send_state(self, state: Callable[[], np.ndarray], step: int,
                    joined: tuple[int, ...]) -> None:
        """The first old worker sends ``state()`` to the workers among ``joined``."""
        view, members = self.site.view, self._members
        to = tuple(members.index(j) for j in joined if members.index(j) in view.workers)
        donor = next(w for w in view.workers if members[w] not in joined)
        if not to or self.rank != donor:
            return
        flat = state()
        send_state(self.site.send, flat, to=to, step=step, log_base=self.site.log_base)
        log.info("site %s: sent %d bytes of state to %s", self.name, flat.nbytes,
                 ", ".join(view.sites[r] for r in to))

    def _issue(self, call: _Call) -> None:
        call.inner = self.site.allreduce_async(call.flat)
        call.inner.add_done_callback(lambda error: self._done(call, error))

    def _meet(self, members: tuple[int, ...]) -> None:
        """Start this site's part of membership ``members`` (the lock held, or in the
        constructor)."""
        config = dataclasses.replace(self._config, rank=members.index(self._me),
                                     world_size=len(members))
        site = self._make(config, _among(self._topology, list(members)))
        now = _Membership(self, self._epoch, self._door)
        self._members, self.site, self._now = members, site, now
        site.attach(now)
        if self._door is not None:
            site.announce(tuple(sorted(self._door.waiting)))

    def _done(self, call: _Call, error: BaseException | None) -> None:
        """``call``'s collective ended (on its site's engine thread); a failed one is redone
        or given up by the site's failure (:meth:`_Membership.failed`)."""
        if error is None:
            with self._lock:
                if call in self._calls:
                    self._calls.remove(call)
            call.finish(None)

    def _give_up(self, error: BaseException) -> None:
        with self._lock:
            self._error = self._error or error
            calls, self._calls = self._calls, []
            self._changed.notify_all()
        for call in calls:
            call.finish(error)

    def _recover(self, epoch: int, change: SiteLost | SitesJoined) -> None:
        """Meet the next membership on a new site: without the lost ranks, or with the
        sites that joined; redo what was not confirmed. Once per membership change (the
        first failed collective's thread)."""
        with self._lock:
            if epoch != self._epoch or self._error is not None:
                return  # already recovered from this change, or gave up
            started = time.monotonic()
            old = self.site
            if isinstance(change, SiteLost) and old.rank in change.ranks:
                self._give_up(NetstormError(f"site {old.name} was taken for lost by the "
                                            f"coordinator ({change}); it leaves the run"))
                return
            self._epoch += 1  # before the new site: its failures belong to the new membership
            done = old.stats()
            for key in self._history:
                self._history[key] += done[key]
            redone = [c.inner.seq for c in self._calls if c.inner is not None]
            try:
                old.abandon()
                self._meet(next_membership(self._members, change))
                self.site.log_base = old.log_base + min(redone, default=old.next_seq)
                for call in self._calls:
                    call.flat[:] = call.kept
                    self._issue(call)
            except BaseException as exc:  # any failure to meet again ends the run: say why
                self._give_up(NetstormError(f"site {old.name}: the run cannot go on ({change})"
                                            f": {type(exc).__name__}: {exc}"))
                return
            self._change = change
            self._changed.notify_all()
            self._note(change, old, time.monotonic() - started)

    def _note(self, change: SiteLost | SitesJoined, old: Member, took: float) -> None:
        """Record and log a membership change that took ``took`` seconds."""
        workers = len(self.site.view.workers)
        if isinstance(change, SitesJoined):
            record: dict[str, Any] = {
                "joined": [self._topology.sites[r] for r in change.joined],
                "recovery_s": took, "workers": workers}
            self.joins.append(record)
            self.site.record({"site": self.name, "joined": record})
            log.warning("site %s: %s joined; %d workers (%.2f s)", self.name,
                        ", ".join(record["joined"]), workers, took)
            return
        record = {"lost": [old.view.sites[r] for r in change.ranks], "reason": str(change),
                  "redone": len(self._calls), "recovery_s": took, "workers": workers}
        self.losses.append(record)
        self.site.record({"site": self.name, "lost": record})
        log.warning("site %s: %s; %d collectives redone on %d workers (%.2f s)",
                    self.name, change, len(self._calls), workers, took)

    def serve(self) -> None:
        """Relay until the workers are done, across membership changes (relay-only rank)."""
        while True:
            with self._lock:
                site, epoch = self.site, self._epoch
            error = site.wait_end()
            if not isinstance(error, SiteLost | SitesJoined):
                site.close()
                if error is not None:
                    raise error
                return
            self._recover(epoch, error)  # (a no-op when the site's watcher was first)
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Leave the run (see :meth:`Site.close`)."""
        self.site.close()

    def __enter__(self) -> ElasticSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
