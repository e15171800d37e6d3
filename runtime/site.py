""":class:`Site`: one site of a run, its public API and its lifecycle.

A site is a few parts, one per thread or concern, which this class starts, wires together
and stops: :class:`~.inbound.Inbound` (the listener and a reader per incoming connection),
:class:`~.sender.Sender` (a sender thread per outgoing link), :class:`~.engine.Engine` (the
one thread that runs the executors), :class:`~.client.ControlClient` (the connection to the
coordinator) and, on rank 0, the :class:`~.coordinator.Coordinator`. What is left here is
what a caller sees (``allreduce``, ``stats``, ``close``), the control messages that change
the site's state, and how the site fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from netstorm.awareness import Policy
from netstorm.dynamics import parse_dynamics
from netstorm.errors import NetstormError, PeerError, ProtocolError, SiteLost, SitesJoined
from netstorm.plan import Plan
from netstorm.registry import Planner, PlannerInfo, planner_info
from netstorm.view import NetworkView

from .client import ControlClient
from .collective import Collective, flat_float32
from .config import RuntimeConfig
from .control import Coordination, fingerprint
from .coordinator import Coordinator
from .deadlines import THREAD_STOP_S
from .emulate import Shaper
from .engine import WINDOW, Engine, Start, Stop, warm_kernels
from .failure import Failure
from .inbound import Inbound
from .links import Connection
from .messages import (
    Abort,
    Beat,
    Bye,
    Enter,
    Grow,
    Horizon,
    Join,
    LinkTiming,
    Lost,
    Message,
    Report,
    Shutdown,
    State,
    Table,
)
from .sender import PROBE_AGE_S, Sender
from .versions import Versions

__all__ = ["Door", "Handle", "Membership", "Site"]

log = logging.getLogger("netstorm.runtime")

#: The default re-plan threshold on links whose timing is noisy (not emulated in-process).
NOISY_THRESHOLD = 0.2


class Door(Protocol):
    """Rank 0's entrance for sites that join an elastic run mid-run."""

    def knock(self, conn: Connection, hello: Enter) -> None:
        """An authenticated connection whose hello is :class:`~.messages.Enter`: the door
        owns it now (on the listener's connection thread)."""

    def grow(self) -> tuple[list[int], list[int]]:
        """Every worker is at a boundary: admit the waiting sites. Returns the next
        membership and the sites that join (indices into the run's first topology)."""


class Membership(Protocol):
    """What a site tells the elastic run it is one membership of
    (:class:`~netstorm.runtime.elastic.ElasticSite`, through :meth:`Site.attach`)."""

    door: Door | None  #: rank 0's door (``None`` on other ranks)

    def failed(self, error: BaseException) -> None:
        """The site failed (a loss or growth ends it too); called once."""

    def announced(self, sites: tuple[int, ...]) -> None:
        """The sites waiting to join, as the coordinator announced them (before the
        horizon that came with the announcement is released)."""

    def state(self, msg: State) -> None:
        """A part of the workers' state, for this site (a newcomer)."""


class Handle:
    """An outstanding :meth:`Site.allreduce_async`; :meth:`wait` for it."""

    def __init__(self, site: Site, coll: Collective) -> None:
        self._site = site
        self._coll = coll

    @property
    def seq(self) -> int:
        """The collective's sequence number in this site's membership."""
        return self._coll.seq

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is in the array (raises what the collective raised)."""
        coll, site = self._coll, self._site
        limit = site.config.timeout_s if timeout is None else timeout
        if not coll.done.wait(limit):
            raise site.engine.stalled(coll, limit)
        if coll.error is not None:
            raise coll.error

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` once the collective is done (``error`` is ``None`` on success,
        and the result is in the array). ``fn`` runs on the runtime's engine thread (or
        here, if already done): it must be quick and must not wait for another collective."""
        self._coll.on_done(fn)


class Site:
    """One site of a run: see :func:`netstorm.runtime.init`.

    Parameters
    ----------
    config
        This process's settings (:class:`~.config.RuntimeConfig`).
    view
        The run's topology; rank i is its i-th site.
    planner, seed, planner_options
        The planner every site plans with (each plans every version itself).
    policy
        The re-plan policy (name or object); default the planner's own, ``static`` on an
        unshaped loopback.
    window, chunk_bytes
        Collectives started ahead of the last one done everywhere; the pipelining chunk.
    """

    def __init__(self, config: RuntimeConfig, view: NetworkView, planner: str | Planner, *,
                 seed: int = 0, policy: Policy | str | None = None, window: int = WINDOW,
                 chunk_bytes: int = 4_000_000,
                 planner_options: dict[str, Any] | None = None) -> None:
        if view.n != config.world_size:
            raise NetstormError(f"WORLD_SIZE is {config.world_size} but topology {view.name!r} "
                                f"has {view.n} sites (every site is a rank, relays too)")
        self.config, self.view, self.rank = config, view, config.rank
        self.name = view.sites[self.rank]
        self.is_worker = self.rank in view.workers
        self.chunk_bytes = chunk_bytes
        info = planner_info(planner)
        self.make_plan = info.planner_call(seed=seed, options=planner_options,
                                           fresh_state=True)
        #: added to collective numbers in the log: an elastic run's later memberships go on
        #: numbering from where the earlier ones stopped
        self.log_base = 0
        self.switch_log: list[dict[str, Any]] = []
        self.stats_rows: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._stop, self._shutdown, self._joined = (threading.Event() for _ in range(3))
        #: the elastic run this site is one membership of (:meth:`attach`)
        self.membership: Membership | None = None
        self._next_seq = 0
        self._last_plan: Plan | None = None
        self._start = 0.0  # the run's start on the wall clock (the table's)
        self._threads: list[threading.Thread] = []
        self._log = open(config.log, "a") if config.log else None
        self.failure = Failure(self.name, elastic=config.elastic, on_fail=self._failed,
                               running=lambda: self._joined.is_set() and not self._stop.is_set(),
                               tell=lambda msg, why: self.client.tell(msg, why))
        self.shaper = Shaper(view, self.rank, scale=config.time_scale,
                             pace=config.emulate == "inprocess",
                             delay=config.emulate in ("inprocess", "netns"))
        self.versions = Versions(view, self.rank, self.make_plan, chunk_bytes=chunk_bytes,
                                 timeout=config.timeout_s)
        self.sender = Sender(self.rank, view.sites, secret=config.secret,
                             timeout=config.timeout_s, shaper=self.shaper,
                             on_sent=lambda coll: self.engine.sent(coll), on_error=self.failure,
                             connections=config.connections, tls=config.tls)
        self.engine = Engine(self.name, view.sites, self.versions, self.sender,
                             wire_encoding=config.wire,
                             timeout_s=config.timeout_s, waits_for_caller=self.is_worker,
                             on_done=self._done, on_error=self.failure, on_watch=self._watch)
        self.inbound = Inbound(config, view, self.name, engine=self.engine,
                               shaper=self.shaper, spawn=self._spawn, fail=self.failure,
                               stopping=self._stop, ending=self._shutdown)
        self.port = self.inbound.port
        self.client = ControlClient(config, view.sites[0], on_message=self._on_message,
                                    on_lost=self.failure, ending=self._ending,
                                    spawn=self._spawn)
        warm_kernels()
        rule = self._rule(info, policy)
        # probing unused links only serves re-planning (and would disturb netstorm measure)
        self._probing = rule.name != "static" and not self._unshaped_loopback
        self.coordinator: Coordinator | None = None
        if self.rank == 0:
            self.coordinator = _coordinator(self, rule, window)
        self._spawn(self.inbound.serve_forever, "listener")
        self._spawn(self.engine.run, "engine")
        try:
            self._join()
        except BaseException:
            self._stop_threads()  # a site that cannot join leaves no thread or port behind
            raise

    def _rule(self, info: PlannerInfo, policy: Policy | str | None) -> Policy:
        """The run's re-plan policy (every rank derives the same one)."""
        if policy is None and self._unshaped_loopback:
            policy = "static"  # every link is the same memory copy: nothing to adapt to
        # links timed on a real or kernel-shaped network: the default hysteresis must exceed
        # what the measurements scatter by
        return info.run_policy(policy, noise=0.0 if self.shaper.pace else NOISY_THRESHOLD)

    @property
    def fingerprint(self) -> str:
        """What every site must agree on: the topology, and how payloads are encoded."""
        return fingerprint(self.view, self.config.wire)

    @property
    def _unshaped_loopback(self) -> bool:
        """Every site on this machine, no emulation: the links' timings measure the CPU's
        scheduling, not a network (re-planning on them only adds noise)."""
        return self.config.emulate == "none" and self.config.master_addr in ("127.0.0.1",
                                                                             "localhost")

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"{self.name}:{name}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _ending(self) -> bool:
        return self._shutdown.is_set() or self._stop.is_set()

    def _join(self) -> None:
        cfg = self.config
        self.client.join(Join((cfg.advertise, self.port), self.fingerprint, cfg.wire,
                              cfg.world_size, self.view.name))
        if not self._joined.wait(cfg.timeout_s) or self.failure.error is not None:
            self._stop_threads()
            raise self.failure.error or PeerError(
                f"site {self.name}: not every site joined within {cfg.timeout_s:g} s")
        if cfg.dynamics and self.shaper.pace:
            dyn = parse_dynamics(cfg.dynamics)
            if dyn is not None:
                dyn.validate(self.view)
                self.shaper.follow(dyn, self.view, self._start, self._stop)

    # -- the control plane --------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        """A message from the coordinator (on the control reader's thread)."""
        match msg:
            case Table(addresses=addresses, start=start, horizon=horizon):
                self.sender.addresses = list(addresses)
                self._start = start
                self.versions.release(horizon)
                self._joined.set()
            case Horizon():
                self._horizon(msg)
            case Beat():
                pass
            case Shutdown():
                self._shutdown.set()
            case Abort(reason=reason):
                self.failure(PeerError(f"run aborted: {reason}"), tell=False)
            case Grow(members=members, joined=joined):
                self.failure(SitesJoined(f"{len(joined)} site(s) joined", members, joined),
                           tell=False)
            case Lost(ranks=ranks, reason=reason):
                self.failure(SiteLost(f"{reason}: the run goes on without it", ranks),
                           tell=False)
            case State() if self.membership is not None:
                self.membership.state(msg)
            case _:
                raise ProtocolError(f"the coordinator sent site {self.name} a "
                                    f"{type(msg).__name__} message")

    def _horizon(self, msg: Horizon) -> None:
        if msg.entering is not None and self.membership is not None:  # before the release:
            self.membership.announced(msg.entering)  # a caller that sees its result sees it
        if msg.switch is not None:
            record = msg.switch.record()
            self.switch_log.append(record)
            self.record({"site": self.name, "switch": record})
        self.versions.release(msg.horizon, msg.switch)
        if self.config.elastic:  # a result is the caller's once it is everyone's (_done)
            with self.engine.lock:
                confirmed = self.engine.collectives.get(msg.done)
            if confirmed is not None and confirmed.reported:
                confirmed.finish()
        self.engine.release(msg.done)

    def _watch(self) -> None:
        """The engine's watchdog: a heartbeat to the coordinator, and the run fails when
        the coordinator went silent or a started collective is not done within the timeout
        (callers who never :meth:`Handle.wait`, such as a DDP hook's future, must not be
        left hanging)."""
        if self._joined.is_set() and not self._shutdown.is_set() and self.failure.error is None:
            silent = self.client.watch()
            if silent is not None:
                self.failure(silent)
                return
        late = self.engine.late()
        if late is not None:
            self.failure(self.engine.stalled(late, self.config.timeout_s))

    def _done(self, coll: Collective) -> None:
        """Collective ``coll`` is done here (the engine's thread): log it, report it, probe."""
        scale = self.config.time_scale  # reports are in the topology's time
        links = self.sender.measurements(scale)
        received = self.inbound.take_received(scale)
        row = {"seq": coll.seq, "time_s": coll.t_end - coll.t_start,
               "plan_version": coll.version, "numel": coll.numel}
        with self._lock:
            self.stats_rows.append(row)
        self.record({"site": self.name, "collective": self.log_base + coll.seq, **row,
                     "links": _link_records(self.view.sites, links, received)})
        if self.config.elastic:  # finished when the coordinator confirms it finished
            coll.reported = True  # everywhere: a lost site never leaves survivors apart
        else:
            coll.finish()
        self.client.send(Report(coll.seq, coll.numel, tuple(links), tuple(received)))
        if self._probing:
            self.sender.probe(self.view.capacity[self.rank],
                              PROBE_AGE_S / self.config.time_scale, coll.version, coll.seq)

    # -- failure ------------------------------------------------------------------------
    def _failed(self, exc: BaseException, first: bool) -> None:
        """The site fails (:class:`~.failure.Failure`): every collective raises ``exc``."""
        for coll in self.engine.in_flight():
            coll.finish(exc)
        self.versions.fail(exc)
        self._joined.set()
        self._shutdown.set()
        if first and self.membership is not None:
            self.membership.failed(exc)

    # -- public -------------------------------------------------------------------------
    def allreduce_async(self, array: Any) -> Handle:
        """Start an in-place mean all-reduce of ``array`` over the workers; see
        :meth:`allreduce`. Calls must come in the same order with the same sizes on every
        worker."""
        if not self.is_worker:
            raise NetstormError(f"site {self.name} is relay-only: it has no gradient")
        flat = flat_float32(array)
        called = time.perf_counter()  # a collective's time counts waiting for its plan too
        seq = self._next_seq
        self._next_seq += 1
        coll = self.engine.collective(seq, flat.size)
        with self._lock:
            self._last_plan = self.versions.compiled(coll.version, coll.numel).plan
            coll.executor.gradient = coll.executor.result = flat
            coll.started = True
            coll.t_start = called
        self.engine.post(Start(coll))
        return Handle(self, coll)

    def allreduce(self, array: Any) -> None:
        """Replace ``array`` by the mean of every worker's ``array``, in place.

        ``array`` is a C-contiguous float32 numpy array or CPU torch tensor. Every worker
        ends with the same bytes (the root's), bit-identical.

        Raises
        ------
        PeerError
            A peer died, went silent for ``NETSTORM_TIMEOUT`` seconds, or the run aborted.
        """
        self.allreduce_async(array).wait()

    @property
    def plan(self) -> Plan | None:
        """The plan of this site's latest collective (``None`` before the first)."""
        return self._last_plan

    @property
    def next_seq(self) -> int:
        """The sequence number the next :meth:`allreduce_async` gets."""
        return self._next_seq

    def record(self, rec: dict[str, Any]) -> None:
        """Append ``rec`` to this site's JSON lines log (``NETSTORM_LOG``), if it has one."""
        if self._log is not None:
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()

    def stats(self) -> dict[str, Any]:
        """Per-collective times and plan versions, plan switches, bytes sent per link."""
        with self._lock:
            return {"site": self.name, "rank": self.rank,
                    "collectives": list(self.stats_rows),
                    "switches": list(self.switch_log), "diverted": self.sender.diverted,
                    "bytes_sent": self.sender.bytes_sent()}

    def probes_received(self) -> dict[int, tuple[float, float]]:
        """Probe bytes received per source, and the seconds from the first probe's header to
        the last probe's end (what :func:`~netstorm.runtime.measure.measure` times)."""
        return self.inbound.probes_received()

    def attach(self, membership: Membership) -> None:
        """Make this site one membership of an elastic run (see :class:`Membership`); a
        failure that came first is passed on at once."""
        with self._lock:
            self.membership = membership
            error = self.failure.error
        if membership.door is not None:
            self.inbound.on_enter = membership.door.knock
        if error is not None:
            membership.failed(error)

    def send(self, msg: Message) -> None:
        """Send ``msg`` to the coordinator (elastic runs: :class:`~.messages.Ready`,
        :class:`~.messages.State`)."""
        self.client.send(msg)

    def announce(self, entering: tuple[int, ...]) -> None:
        """Rank 0 of an elastic run: the sites waiting to join, for the coordinator to
        announce on every horizon."""
        if self.coordinator is not None:
            self.coordinator.announce(entering)

    def serve(self) -> None:
        """Relay until the workers are done (what :func:`init` does on a relay-only rank)."""
        self._shutdown.wait()
        self.close()

    def wait_end(self) -> BaseException | None:
        """Block until the run ends here: ``None`` when the workers are done, else the error
        it failed with."""
        self._shutdown.wait()
        return self.failure.error

    def abandon(self) -> None:
        """Stop at once, without waiting for the others (an elastic site left behind)."""
        self._stop_threads()

    def close(self) -> None:
        """Leave the run: wait until every worker is done (a site may still relay for
        others), then stop every thread and close every socket."""
        if self._stop.is_set():
            return
        if self.is_worker and self.failure.error is None:
            self.client.tell(Bye(), "this worker is done")
        self._shutdown.wait(self.config.timeout_s)
        self._stop_threads()

    def _stop_threads(self) -> None:
        self._stop.set()
        self.engine.post(Stop())
        self.sender.close()
        self.inbound.close()
        self.client.close()
        if self.coordinator is not None:
            self.coordinator.close()
        if self._log is not None:
            self._log.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=THREAD_STOP_S)

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _link_records(names: tuple[str, ...], sent: list[LinkTiming],
                  received: list[LinkTiming]) -> list[dict[str, Any]]:
    """A collective's log rows of its links' timings (busy_s and rate_Bps in the topology's
    time: wall seconds times the time scale)."""
    return [{"src": names[src], "dst": names[dst], "bytes": b, "busy_s": sec,
             "rate_Bps": b / sec if sec > 0 else None, "timed_by": by}
            for by, rows in (("sender", sent), ("receiver", received))
            for src, dst, b, sec in rows]


def _coordinator(site: Site, rule: Policy, window: int) -> Coordinator:
    """Rank 0's coordinator for ``site``'s membership, taking the control connections its
    listener accepts."""
    def reporters(seq: int, numel: int) -> frozenset[int]:
        return site.versions.compiled(site.versions.version(seq), numel).reporters

    def admit() -> tuple[list[int], list[int]]:
        # (rank 0's listener is closed by now: the newcomers join rank 0's next site)
        door = None if site.membership is None else site.membership.door
        assert door is not None, "a ready reached a site with no door"
        return door.grow()

    decide = Coordination(site.view, site.fingerprint, site.make_plan, rule, window=window,
                          timeout_s=site.config.timeout_s, clock=time.monotonic,
                          wall=time.time, elastic=site.config.elastic, reporters=reporters,
                          noisy=not site.shaper.pace)
    coordinator = Coordinator(decide, close_listener=site.inbound.close_listener, admit=admit)
    site.inbound.on_join = coordinator.add
    return coordinator
