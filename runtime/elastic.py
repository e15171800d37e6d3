"""Elastic runs: when a site dies, the others agree it left, re-plan without it and go on.

``NETSTORM_ELASTIC=1`` (``netstorm run --elastic``) makes :func:`netstorm.runtime.init` return
an :class:`ElasticSite`: the same calls as :class:`~netstorm.runtime.Site`, over a site that
is rebuilt whenever the membership changes.

How the survivors agree, and on what
------------------------------------
- Rank 0's coordinator decides that a site left: its control connection closed (a killed
  process) or it sent nothing for :func:`~netstorm.runtime.control.silence_limit` of the
  timeout (a stopped process, a cut link). It tells every other site ``lost`` and its part
  in that membership ends. A site's own error (a peer's data connection gone) is held
  until that verdict, and fails the run only when none comes.
- In an elastic run a collective's result becomes the caller's only once the coordinator
  confirms it finished on *every* site (one more control message per collective). The
  coordinator's messages reach every site in one order, so when ``lost`` arrives every
  survivor holds the same set of confirmed collectives: no survivor ever used a result that
  another survivor lacks.
- Every survivor then redoes, in call order, each collective it called that was not
  confirmed, from a copy of its input kept at the call, on a new site over the topology
  without the lost ranks (ranks renumbered in order; rank 0, the coordinator, stays rank 0
  on its port). Results are the exact mean over the surviving workers, bit-identical on
  each. A lost relay is re-planned around the same way (a topology it disconnects fails
  with the planner's error).
- The coordinator itself is not replaced: if rank 0 dies, every site stops, naming it.
  Two sites lost in one moment: the second is found missing when the survivors meet again,
  which fails the run after the timeout.

How a site joins
----------------
- A site of the run's topology that is not in the run (it left, or it was restarted:
  ``NETSTORM_JOIN=1``, ``netstorm run --rejoin``) knocks at rank 0 with an ``enter``
  hello on the authenticated port. Rank 0 keeps it waiting and the coordinator announces it
  on every ``horizon``.
- The workers call :meth:`ElasticSite.admit` between iterations. Every worker there has
  every result confirmed, so every worker holds the same announcements (they come on the
  confirmations): all stop at the same boundary, or none. When every worker has said
  ``admit``, rank 0 admits the waiting sites, and every site starts over on the grown
  membership (sites in the topology's order, rank 0 first, as after a loss).
- One old worker (the first) then sends its state, the ``state`` its training loop passed,
  to the newcomers through the coordinator (checked with a CRC); a newcomer's first
  :meth:`ElasticSite.admit` fills its own ``state`` in place and returns the workers' step.
  Newcomers must build the same all-reduces from there on (DDP: the same buckets).

Costs: one copy of each all-reduce's input while it is outstanding, one coordinator round
trip before a result is released, and one at each boundary where a site waits to join.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from netstorm.errors import NetstormError, PeerError, SiteLost, SitesJoined
from netstorm.plan import Plan
from netstorm.view import NetworkView

from .collective import flat_float32
from .config import RuntimeConfig
from .control import silence_limit
from .links import Connection, connect
from .site import Handle, Site, _warm_kernels, fingerprint

__all__ = ["ElasticHandle", "ElasticSite", "among", "without"]

#: A newcomer's state travels in control frames of at most this many bytes (before base64).
STATE_PART = 16 << 20

log = logging.getLogger("netstorm.runtime")


def without(view: NetworkView, ranks: tuple[int, ...]) -> NetworkView:
    """``view`` without the sites ``ranks``: the others keep their order, links and caps.

    Raises
    ------
    NetstormError
        Every site left, or a worker can no longer reach another."""
    return among(view, [i for i in range(view.n) if i not in set(ranks)])


def among(view: NetworkView, keep: Sequence[int]) -> NetworkView:
    """The sites ``keep`` of ``view`` (ascending): their links and caps, in their order.

    Raises
    ------
    NetstormError
        ``keep`` is empty, or a worker in it cannot reach another."""
    keep = list(keep)
    if not keep:
        raise NetstormError(f"every site of {view.name!r} left the run")
    if len(keep) == view.n:
        return view
    ranks = [i for i in range(view.n) if i not in set(keep)]
    index = np.ix_(keep, keep)
    renumber = {old: new for new, old in enumerate(keep)}
    less = NetworkView(
        sites=tuple(view.sites[i] for i in keep), capacity=view.capacity[index],
        latency=view.latency[index],
        egress=None if view.egress is None else view.egress[keep],
        ingress=None if view.ingress is None else view.ingress[keep],
        workers=tuple(renumber[w] for w in view.workers if w in renumber),
        name=f"{view.name} without {', '.join(view.sites[r] for r in sorted(ranks))}")
    for w in less.workers:  # every survivor finds this alike, before they try to meet
        seen, todo = {w}, [w]
        while todo:
            u = todo.pop()
            for v in np.nonzero(less.capacity[u] > 0)[0].tolist():
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        cut = [less.sites[v] for v in less.workers if v not in seen]
        if cut:
            raise NetstormError(f"without {', '.join(view.sites[r] for r in ranks)}, worker "
                                f"{less.sites[w]} cannot reach {', '.join(cut)}")
    return less


class _Call:
    """One all-reduce the caller made: its array, a copy of its input, its callbacks."""

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat
        self.kept = flat.copy()
        self.inner: Handle | None = None
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
    """An outstanding :meth:`ElasticSite.allreduce_async` (the :class:`Handle` contract)."""

    def __init__(self, call: _Call, timeout_s: float) -> None:
        self._call = call
        self._timeout_s = timeout_s

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is in the array (redone after a loss if need be)."""
        if not self._call.done.wait(self._timeout_s * 3 if timeout is None else timeout):
            raise NetstormError("elastic all-reduce not done: the run is stuck recovering")
        if self._call.error is not None:
            raise self._call.error

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` once the result is final (see :meth:`Handle.add_done_callback`)."""
        call = self._call
        with call.lock:
            if not call.done.is_set():
                call.callbacks.append(fn)
                return
        fn(call.error)


class ElasticSite:
    """A :class:`~netstorm.runtime.Site` that survives the loss of other sites and takes
    sites in mid-run.

    Parameters
    ----------
    config, view
        This process's settings and the run's topology (``config.rank`` indexes it). With
        ``config.join``, this site enters a run under way (see the module notes).
    make_site
        ``make_site(config, view) -> Site`` with the run's planner, policy and options bound.

    Attributes
    ----------
    losses
        One record per loss: the sites lost, when, and how long the new membership took to
        meet (``recovery_s``).
    joins
        One record per growth: the sites that joined and how long the boundary took.
    """

    def __init__(self, config: RuntimeConfig, view: NetworkView,
                 make_site: Callable[[RuntimeConfig, NetworkView], Site]) -> None:
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
        self._waiting: dict[int, Connection] = {}  # rank 0: sites knocking, by index
        self._newcomer = config.join
        if config.join:  # the workers wait for it once admitted: load the kernels first
            _warm_kernels()
        self._members = self._enter() if config.join else tuple(range(view.n))
        self.site = self._watch(make_site(self._config_for(self._members),
                                          among(view, self._members)))

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
            return [self._topology.sites[r] for r in sorted(self._waiting)]

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

    @property
    def newcomer(self) -> bool:
        """This site joined a run under way and has not had its first boundary yet."""
        return self._newcomer

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
            return self._receive(flat())
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            ElasticHandle(call, self._config.timeout_s).wait()
        with self._lock:
            if self._error is not None:
                raise self._error
            site, epoch = self.site, self._epoch
        if not site.entering:
            return step
        try:
            site.send_control({"type": "admit", "step": step})
        except NetstormError:
            pass  # this membership is ending anyway: its recovery decides
        with self._lock:
            if not self._changed.wait_for(lambda: self._epoch != epoch or self._error
                                          is not None, self._config.timeout_s * 3):
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
        to = [members.index(j) for j in joined if members.index(j) in view.workers]
        donor = next(w for w in view.workers if members[w] not in joined)
        if not to or self.rank != donor:
            return
        flat = state()
        data = flat.view(np.uint8)
        parts = max(1, -(-data.size // STATE_PART))
        crc = zlib.crc32(data.data)
        for i in range(parts):
            chunk = data[i * STATE_PART:(i + 1) * STATE_PART]
            self.site.send_control({"type": "state", "to": to, "step": step,
                                    "numel": flat.size, "crc": crc, "part": i,
                                    "parts": parts, "log_base": self.site.log_base,
                                    "data": base64.b64encode(chunk.tobytes()).decode()})
        log.info("site %s: sent %d bytes of state to %s", self.name, data.size,
                 ", ".join(view.sites[r] for r in to))

    def _receive(self, flat: np.ndarray) -> int:
        """A newcomer's first boundary: the workers' state into ``flat``; their step."""
        site = self.site
        got: dict[int, bytes] = {}
        deadline = time.monotonic() + self._config.timeout_s * 3
        while True:
            if self._error is not None:
                raise self._error
            try:
                msg = site.inbox.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PeerError(f"site {self.name}: joined, but no worker sent its "
                                    "state") from None
                continue
            if int(msg["numel"]) != flat.size:
                raise NetstormError(f"site {self.name}: the workers' state has "
                                    f"{msg['numel']} elements, this site's {flat.size} "
                                    "(a different model or optimizer?)")
            got[int(msg["part"])] = base64.b64decode(msg["data"])
            if len(got) == int(msg["parts"]):
                break
        data = b"".join(got[i] for i in range(len(got)))
        if zlib.crc32(data) != int(msg["crc"]) or len(data) != flat.nbytes:
            raise PeerError(f"site {self.name}: the workers' state arrived damaged")
        flat[:] = np.frombuffer(data, dtype=np.float32)
        site.log_base = int(msg["log_base"])
        log.warning("site %s: joined at step %d with the workers' state", self.name,
                 int(msg["step"]))
        return int(msg["step"])

    def _issue(self, call: _Call) -> None:
        call.inner = self.site.allreduce_async(call.flat)
        call.inner.add_done_callback(lambda error: self._done(call, error))

    def _config_for(self, members: tuple[int, ...]) -> RuntimeConfig:
        return dataclasses.replace(self._config, rank=members.index(self._me),
                                   world_size=len(members))

    def _watch(self, site: Site) -> Site:
        epoch = self._epoch

        def failed(error: BaseException) -> None:  # on the failing site's thread
            if isinstance(error, (SiteLost, SitesJoined)):
                threading.Thread(target=self._recover, args=(epoch, error), daemon=True,
                                 name=f"{site.name}:recover").start()
            else:
                self._give_up(error)

        site.on_failure = failed
        if self._me == 0:
            site.door = self
            self._announce(site)
        return site

    def _done(self, call: _Call, error: BaseException | None) -> None:
        """``call``'s collective ended (on its site's engine thread); a failed one is redone
        or given up by the site's failure (:meth:`_watch`)."""
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
            if isinstance(change, SiteLost):
                if old.rank in change.ranks:
                    self._give_up(NetstormError(f"site {old.name} was taken for lost by the "
                                                f"coordinator ({change}); it leaves the run"))
                    return
                gone = {self._members[r] for r in change.ranks}
                members = tuple(m for m in self._members if m not in gone)
            else:
                members = change.members
            self._epoch += 1  # before the new site: its failures belong to the new membership
            done = old.stats()
            for key in self._history:
                self._history[key] += done[key]
            try:
                old.abandon()
                view = among(self._topology, members)
                self._members = members
                self.site = self._watch(self._make(self._config_for(members), view))
                redone = [c.inner._coll.seq for c in self._calls if c.inner is not None]
                self.site.log_base = old.log_base + min(redone, default=old._next_seq)
            except BaseException as exc:  # any failure to meet again ends the run: say why
                self._give_up(NetstormError(f"site {old.name}: the run cannot go on ({change})"
                                            f": {type(exc).__name__}: {exc}"))
                return
            try:
                for call in self._calls:
                    call.flat[:] = call.kept
                    self._issue(call)
            except BaseException as exc:  # e.g. the survivors cannot be planned for
                self._give_up(NetstormError(f"site {old.name}: the run cannot go on ({change})"
                                            f": {type(exc).__name__}: {exc}"))
                return
            self._change = change
            self._changed.notify_all()
            took = time.monotonic() - started
            if isinstance(change, SitesJoined):
                record: dict[str, Any] = {
                    "joined": [self._topology.sites[r] for r in change.joined],
                    "recovery_s": took, "workers": len(view.workers)}
                self.joins.append(record)
                self.site._write({"site": self.name, "joined": record})
                log.warning("site %s: %s joined; %d workers (%.2f s)", self.name,
                            ", ".join(record["joined"]), len(view.workers), took)
                return
            record = {"lost": [old.view.sites[r] for r in change.ranks], "reason": str(change),
                      "redone": len(self._calls), "recovery_s": took,
                      "workers": len(view.workers)}
            self.losses.append(record)
            self.site._write({"site": self.name, "lost": record})
            log.warning("site %s: %s; %d collectives redone on %d workers (%.2f s)",
                        self.name, change, len(self._calls), len(view.workers), took)

    # -- joining ------------------------------------------------------------------------------
    @property
    def _fingerprint(self) -> str:
        return f"{fingerprint(self._topology)}/{self._config.wire}"

    def _enter(self) -> tuple[int, ...]:
        """A newcomer: knock at rank 0 and wait for the workers' next boundary. Returns the
        membership it joins. Knocks again (for ``timeout_s``) when rank 0 is between
        memberships; waits for the boundary as long as rank 0 keeps the connection."""
        cfg, topo = self._config, self._topology
        me = f"site {topo.sites[self._me]} (rank {self._me})"
        deadline = time.monotonic() + cfg.timeout_s
        while True:
            conn = connect((cfg.master_addr, cfg.master_port), rank=self._me,
                           secret=cfg.secret, timeout=cfg.timeout_s,
                           name=f"the coordinator (site {topo.sites[0]}, rank 0)",
                           retry_until=deadline, tls=cfg.tls)
            try:
                conn.send_control({"type": "enter", "fingerprint": self._fingerprint,
                                   "name": topo.name})
                header = conn.read_header(max_length=1 << 20)
                msg = None if header is None else conn.read_control(header)
            except NetstormError:
                msg = None
            finally:
                conn.close()
            if msg is not None and msg.get("type") == "abort":
                raise PeerError(f"{me}: refused by rank 0: {msg.get('reason')}")
            if msg is not None and msg.get("type") == "admit":
                log.info("%s: admitted", me)
                return tuple(int(r) for r in msg["members"])
            if time.monotonic() > deadline:
                raise PeerError(f"{me}: could not join: rank 0 closed every knock for "
                                f"{cfg.timeout_s:g} s (the run over, or not elastic?)")
            time.sleep(0.2)

    def _announce(self, site: Site | None = None) -> None:
        """Rank 0: the current coordinator (``site``'s) announces the sites waiting to join."""
        coordinator = (site or self.site).coordinator
        if coordinator is not None:
            coordinator.entering = tuple(sorted(self._waiting))

    def knock(self, conn: Connection, hello: dict[str, Any]) -> None:
        """Rank 0 (the :class:`~netstorm.runtime.site.Door`): a site asks to join. It waits,
        on this thread, until admitted or gone."""
        topo, who = self._topology, conn.peer
        with self._lock:
            problem = None
            if hello.get("fingerprint") != self._fingerprint:
                problem = (f"it loaded another topology or wire encoding "
                           f"({hello.get('name')!r}, rank 0 {topo.name!r})")
            elif not 0 < who < topo.n:
                problem = f"rank {who} is not a site of {topo.name!r} other than rank 0"
            elif not self._changed.wait_for(lambda: who not in self._members,
                                            silence_limit(self._config.timeout_s) + 2):
                # a restarted site may knock before its old self is found gone: as long
                # as that takes; a site still in the run after it is a second copy
                problem = f"site {topo.sites[who]} is in the run"
            elif who in self._waiting:
                problem = f"site {topo.sites[who]} is waiting to join already"
            if problem is None:
                self._waiting[who] = conn
                self._announce()
        if problem is not None:
            log.warning("site %s: refused %s: %s", self.name, conn.name, problem)
            try:
                conn.send_control({"type": "abort", "reason": problem})
            except NetstormError:
                pass
            conn.close()
            return
        log.warning("site %s: site %s waits to join", self.name, topo.sites[who])
        try:  # a newcomer says nothing more: this returns when it goes (or is admitted)
            conn.read_header(max_length=1 << 20)
        except NetstormError:
            pass
        with self._lock:
            if self._waiting.get(who) is conn:
                del self._waiting[who]
                self._announce()
                log.warning("site %s: site %s stopped waiting to join", self.name,
                            topo.sites[who])
        conn.close()

    def grow(self) -> tuple[list[int], list[int]]:
        """Rank 0 (the :class:`~netstorm.runtime.site.Door`): every worker is at the
        boundary; tell the waiting sites the next membership."""
        with self._lock:
            joined = sorted(self._waiting)
            members = sorted(set(self._members) | set(joined))
            for who in list(joined):
                conn = self._waiting.pop(who)
                try:
                    conn.send_control({"type": "admit", "members": members})
                except NetstormError as exc:  # gone since it knocked: not admitted
                    log.warning("site %s: site %s left before it was admitted: %s",
                                self.name, self._topology.sites[who], exc)
                    members.remove(who)
                    joined.remove(who)
        return members, joined

    def serve(self) -> None:
        """Relay until the workers are done, across membership changes (relay-only rank)."""
        while True:
            with self._lock:
                site, epoch = self.site, self._epoch
            error = site.wait_end()
            if not isinstance(error, (SiteLost, SitesJoined)):
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
