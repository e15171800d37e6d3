"""`init()` and :class:`Site`: one site's executor driven by sockets.

Threads of a site process: the listener (accepts and authenticates connections), one reader
per incoming connection (frames straight into the collective's preallocated arena with
``recv_into``), one sender per outgoing overlay link (:class:`~netstorm.runtime.links.OutLink`),
the control reader, and the engine, which alone runs the executors: it takes arrivals (each
held for the link's emulated delay) and local-ready events, and hands the sends to the links.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from netstorm.kernels import fused_reduce, pack

from netstorm.awareness import Policy, ReplanPolicy
from netstorm.dynamics import parse_dynamics
from netstorm.errors import NetstormError, PeerError, ProtocolError, SiteLost, SitesJoined
from netstorm.executor import Outgoing, pick_path
from netstorm.job import Job
from netstorm.plan import Plan
from netstorm.plan_files import fixed_planner, load_plan
from netstorm.registry import Planner, planner_info
from netstorm.registry import plan as make_plan
from netstorm.topology import load_topology
from netstorm.view import NetworkView

from . import wire
from .collective import Collective, flat_float32
from .config import RuntimeConfig
from .control import ELASTIC_GRACE_S, HEARTBEAT_S, Coordinator, silence_limit
from .emulate import Shaper
from .links import Connection, accept, connect
from .sender import PROBE_AGE_S, PROBE_BYTES, Sender
from .versions import Versions

if TYPE_CHECKING:
    from .elastic import ElasticSite

__all__ = ["Door", "Handle", "Site", "init"]

log = logging.getLogger("netstorm.runtime")

#: Collectives a site may start ahead of the last one finished everywhere.
WINDOW = 2
#: numpy element types of the wire encodings (bf16 travels as uint16 bit patterns).
WIRE_NUMPY: dict[str, Any] = {"fp32": None, "fp16": np.float16, "bf16": np.uint16}
#: How often the engine looks for collectives past the timeout, seconds.
WATCHDOG_S = HEARTBEAT_S
#: Free arenas a site keeps for reuse (a few per collective in flight).
ARENA_POOL = 2 * (WINDOW + 1)
#: Seconds a site's own error waits for the coordinator's verdict on its cause (see _fail).
VERDICT_HOLD_S = 0.5
#: The default re-plan threshold on links whose timing is noisy (not emulated in-process).
NOISY_THRESHOLD = 0.2


class Door(Protocol):
    """Rank 0's entrance for sites that join an elastic run mid-run
    (:class:`~netstorm.runtime.elastic.ElasticSite` is one)."""

    def knock(self, conn: Connection, hello: dict[str, Any]) -> None:
        """An authenticated connection whose hello is ``enter``: the door owns it now."""

    def grow(self) -> tuple[list[int], list[int]]:
        """Every worker is at a boundary: admit the waiting sites. Returns the next
        membership and the sites that join (indices into the run's first topology)."""


def fingerprint(view: NetworkView) -> str:
    """A digest of what every site must agree on: names, workers, capacities, latencies."""
    h = hashlib.sha256()
    h.update(repr((view.sites, view.workers)).encode())
    for a in (view.capacity, view.latency, view.egress, view.ingress):
        h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=float).tobytes())
    return h.hexdigest()[:16]


class Handle:
    """An outstanding :meth:`Site.allreduce_async`; :meth:`wait` for it."""

    def __init__(self, site: Site, coll: Collective) -> None:
        self._site = site
        self._coll = coll

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is in the array (raises what the collective raised)."""
        self._site._wait(self._coll, timeout)

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` once the collective is done (``error`` is ``None`` on success,
        and the result is in the array). ``fn`` runs on the runtime's engine thread (or
        here, if already done): it must be quick and must not wait for another collective."""
        self._coll.on_done(fn)


class Site:
    """One site of a run: see :func:`init`."""

    def __init__(self, config: RuntimeConfig, view: NetworkView, planner: str | Planner, *,
                 seed: int = 0, policy: Policy | str | None = None, window: int = WINDOW,
                 chunk_bytes: int = 4_000_000,
                 planner_options: dict[str, Any] | None = None) -> None:
        if view.n != config.world_size:
            raise NetstormError(f"WORLD_SIZE is {config.world_size} but topology {view.name!r} "
                                f"has {view.n} sites (every site is a rank, relays too)")
        self.config = config
        self.view = view
        self.rank = config.rank
        self.name = view.sites[self.rank]
        self.is_worker = self.rank in view.workers
        self.seed = seed
        self.chunk_bytes = chunk_bytes
        self.options = dict(planner_options or {})
        self._wire = None if config.wire == "fp32" else config.wire
        self.info = planner_info(planner)
        self.elastic = config.elastic
        self._held: BaseException | None = None  # a peer error awaiting the coordinator's verdict
        #: added to collective numbers in the log: an elastic run's later memberships go on
        #: numbering from where the earlier ones stopped
        self.log_base = 0
        #: called once with the error the run failed with (an elastic site rebuilds on it)
        self.on_failure: Callable[[BaseException], None] | None = None
        #: rank 0 of an elastic run: takes the ``enter`` hellos of sites that join mid-run
        self.door: Door | None = None
        #: sites waiting to join (indices into the run's first topology), as last announced
        self.entering: tuple[int, ...] = ()
        #: ``state`` messages for this site (a newcomer's state, from a worker)
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.shaper = Shaper(view, self.rank, scale=config.time_scale,
                             pace=config.emulate == "inprocess",
                             delay=config.emulate in ("inprocess", "netns"))
        self._lock = threading.RLock()
        self.versions = Versions(view, self.rank, self._planner_call,
                                 chunk_bytes=chunk_bytes, timeout=config.timeout_s)
        self.sender = Sender(self.rank, view.sites, secret=config.secret,
                             timeout=config.timeout_s, shaper=self.shaper,
                             on_sent=self._sent, on_error=self._fail,
                             connections=config.connections, tls=config.tls)
        self.switch_log: list[dict[str, Any]] = []
        self._colls: dict[int, Collective] = {}
        self._received: dict[int, list[float]] = {}  # src -> [bytes, busy s] (unpaced links)
        self._probes: dict[int, list[float]] = {}  # src -> [bytes, first, last] (probes in)
        #: arenas free for reuse, oldest first; at most ARENA_POOL of them (each plan version
        #: has arenas of its own size: an unbounded pool grew by one per re-plan)
        self._arenas: deque[np.ndarray] = deque()
        self._next_seq = 0
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._inbound: list[Connection] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._shutdown = threading.Event()
        self._table = threading.Event()
        self.stats_rows: list[dict[str, Any]] = []
        self._last_plan: Plan | None = None
        self.coordinator: Coordinator | None = None
        self._log = open(config.log, "a") if config.log else None
        self._threads: list[threading.Thread] = []
        self._listen()
        _warm_kernels()
        rule = self._rule(policy)
        # probing unused links only serves re-planning (and would disturb netstorm measure)
        self._probing = rule.name != "static" and not self._unshaped_loopback
        if self.rank == 0:
            self.coordinator = Coordinator(view, self._fingerprint, self._planner_call, rule,
                                           window=window, workers=view.workers,
                                           noisy=not self.shaper.pace,
                                           timeout_s=config.timeout_s,
                                           elastic=config.elastic,
                                           on_lost=self._close_listener,
                                           on_grow=self._grow,
                                           reporters=self._reporters)
        self._spawn(self._accept_loop, "listener")
        self._spawn(self._engine, "engine")
        try:
            self._join()
        except BaseException:
            self._stop_threads()  # a site that cannot join leaves no thread or port behind
            raise

    def _rule(self, policy: Policy | str | None) -> Policy:
        """The run's re-plan policy (every rank derives the same one)."""
        if policy is None and self._unshaped_loopback:
            policy = "static"  # every link is the same memory copy: nothing to adapt to
        rule = policy if policy is not None and not isinstance(policy, str) \
            else self.info.policy(policy)
        if not self.shaper.pace and policy is None and isinstance(rule, ReplanPolicy):
            # links timed on a real or kernel-shaped network: the default hysteresis must
            # exceed what the measurements scatter by
            rule = dataclasses.replace(rule, threshold=max(rule.threshold, NOISY_THRESHOLD))
        return rule

    @property
    def _fingerprint(self) -> str:
        """What every site must agree on: the topology, and how payloads are encoded."""
        return f"{fingerprint(self.view)}/{self.config.wire}"

    @property
    def _unshaped_loopback(self) -> bool:
        """Every site on this machine, no emulation: the links' timings measure the CPU's
        scheduling, not a network (re-planning on them only adds noise)."""
        return self.config.emulate == "none" and self.config.master_addr in ("127.0.0.1",
                                                                             "localhost")

    # -- set-up -----------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"{self.name}:{name}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _listen(self) -> None:
        cfg = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.bind, cfg.listen_port))
        except OSError as exc:
            sock.close()
            raise PeerError(f"site {self.name} (rank {self.rank}): cannot listen on "
                            f"{cfg.bind}:{cfg.listen_port} ({exc.strerror or exc})") from exc
        sock.listen(128)
        self._server = sock
        self.port = sock.getsockname()[1]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._server.accept()
            except OSError:
                return
            self._spawn(self._serve_inbound, "inbound", raw)

    def _serve_inbound(self, raw: socket.socket) -> None:
        cfg = self.config
        conn: Connection | None = None
        try:
            conn = accept(raw, rank=self.rank, secret=cfg.secret, timeout=cfg.timeout_s,
                          names=self.view.sites, tls=cfg.tls)
            conn.sock.settimeout(cfg.timeout_s)  # an authenticated peer must still say hello
            header = conn.read_header(max_length=1 << 20)
            if header is None or header.kind != wire.Kind.CONTROL:
                raise ProtocolError(f"{conn.name}: first frame is not a hello")
            hello = conn.read_control(header)
            conn.sock.settimeout(None)
            kind = hello.get("type")
            if kind == "enter":  # the door checks who it is
                if self.door is None:
                    raise ProtocolError(f"{conn.name}: knocked to join, but this site has no "
                                        "door (rank 0 of an elastic run between memberships "
                                        "knocks it back: it knocks again)")
                self.door.knock(conn, hello)
                return
            if not 0 <= conn.peer < self.view.n:
                raise ProtocolError(f"{conn.name}: rank {conn.peer} is not a site of "
                                    f"{self.view.name!r}")
            if kind not in ("data", "join") or (kind == "join" and self.coordinator is None):
                raise ProtocolError(f"{conn.name}: hello of type {kind!r} at a site "
                                    f"{'without' if self.coordinator is None else 'with'} "
                                    "the coordinator")
        except (NetstormError, OSError) as exc:
            log.warning("site %s: refused a connection: %s", self.name, exc)
            if conn is not None:
                conn.close()
            raw.close()
            return
        if kind == "join":
            assert self.coordinator is not None
            self.coordinator.add(conn, hello)
        else:
            with self._lock:
                self._inbound.append(conn)
            self._read_data(conn)

    def _join(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout_s
        self._control = connect((cfg.master_addr, cfg.master_port), rank=self.rank,
                                secret=cfg.secret, timeout=cfg.timeout_s,
                                name=f"the coordinator (site {self.view.sites[0]}, rank 0, "
                                     f"{cfg.master_addr}:{cfg.master_port})",
                                retry_until=deadline, tls=cfg.tls)
        self._control.send_control({"type": "join", "address": [cfg.advertise, self.port],
                                    "fingerprint": self._fingerprint, "wire": cfg.wire,
                                    "world_size": cfg.world_size, "name": self.view.name})
        self._heard = time.monotonic()
        self._spawn(self._read_control, "control")
        if not self._table.wait(cfg.timeout_s) or self._error is not None:
            self._stop_threads()
            raise self._error or PeerError(
                f"site {self.name}: not every site joined within {cfg.timeout_s:g} s")
        if cfg.dynamics and self.shaper.pace:
            dyn = parse_dynamics(cfg.dynamics)
            if dyn is not None:
                dyn.validate(self.view)
                self.shaper.follow(dyn, self.view, self._start, self._stop)

    # -- control ----------------------------------------------------------------------------
    def _read_control(self) -> None:
        try:
            while True:
                header = self._control.read_header(max_length=1 << 26)
                if header is None:
                    if not self._shutdown.is_set():
                        self._fail(PeerError(f"the coordinator (site {self.view.sites[0]}, rank 0) "
                                            "closed its connection mid-run"))
                    return
                self._heard = time.monotonic()
                self._on_control(self._control.read_control(header))
        except BaseException as exc:
            if not self._stop.is_set():
                self._fail(exc)

    def _on_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "table":
            self.sender.addresses = [(str(h), int(p)) for h, p in msg["addresses"]]
            self._start = float(msg["start"])
            self.versions.release(int(msg["horizon"]))
            self._table.set()
        elif kind == "horizon":
            if "entering" in msg:  # before the release below: a caller that sees its
                self.entering = tuple(int(r) for r in msg["entering"])  # result sees this
            switch = msg.get("switch")
            if switch is not None:
                record = {k: switch[k] for k in (
                    "version", "from_seq", "after_seq", "reason", "planning_s")}
                self.switch_log.append(record)
                self._write({"site": self.name, "switch": record})
            self.versions.release(int(msg["horizon"]), switch)
            done = int(msg["done"])
            if self.elastic:  # a result is the caller's once it is everyone's (see _report)
                with self._lock:
                    confirmed = self._colls.get(done)
                if confirmed is not None and confirmed.reported:
                    confirmed.finish()
            with self._lock:
                for seq in [s for s, c in self._colls.items() if s <= done and c.done.is_set()]:
                    # finished everywhere: no frame of it is queued or can still come, so
                    # its arena serves the next collective of its size
                    self._arenas.append(self._colls.pop(seq).arena)
                    while len(self._arenas) > ARENA_POOL:
                        self._arenas.popleft()
        elif kind == "shutdown":
            self._shutdown.set()
        elif kind == "abort":
            self._fail(PeerError(f"run aborted: {msg.get('reason')}"), tell=False)
        elif kind == "grow":
            members = tuple(int(r) for r in msg["members"])
            joined = tuple(int(r) for r in msg["joined"])
            self._fail(SitesJoined(f"{len(joined)} site(s) joined", members, joined),
                       tell=False)
        elif kind == "state":
            self.inbox.put(msg)
        elif kind == "lost":
            ranks = tuple(int(r) for r in msg["ranks"])
            self._fail(SiteLost(f"{msg.get('reason')}: the run goes on without it", ranks),
                       tell=False)

    def _fail(self, exc: BaseException, *, tell: bool = True, held: bool = False) -> None:
        """Stop: every collective raises ``exc``; the coordinator aborts the run.

        A peer error of this site's own (a peer's connection gone, a stalled collective) is
        first held for the coordinator's verdict, which knows the cause: when rank 0 aborts on a
        silent site and exits, the others see rank 0's connections close a moment before
        they read why. In an elastic run the error is reported at once and the verdict
        decides, a loss (:class:`~netstorm.errors.SiteLost`, the run goes on without the
        site) or an abort; without a verdict within the hold, the run fails with ``exc``."""
        if tell and not held and isinstance(exc, PeerError) and not isinstance(exc, SiteLost) \
                and self._table.is_set() and not self._stop.is_set():
            with self._lock:
                waiting = self._held is not None or self._error is not None
                if not waiting:
                    self._held = exc
            if not waiting:
                log.debug("site %s: held for the coordinator's verdict: %s", self.name, exc)
                if self.elastic:
                    try:
                        self._control.send_control({"type": "error", "reason": str(exc)})
                    except NetstormError:
                        pass
                hold = ELASTIC_GRACE_S + 2 * HEARTBEAT_S if self.elastic else VERDICT_HOLD_S
                timer = threading.Timer(hold, self._fail, (exc,),
                                        {"tell": not self.elastic, "held": True})
                timer.daemon = True
                timer.start()
            return
        log.debug("site %s: %s", self.name, exc, exc_info=exc)
        with self._lock:
            first = self._error is None
            if first:
                self._error = exc
            colls = list(self._colls.values())
        for coll in colls:  # outside the lock: callbacks may call back into the site
            coll.finish(exc)
        self.versions.fail(exc)
        if first and tell and hasattr(self, "_control"):
            try:
                self._control.send_control({"type": "error", "reason": str(exc)})
            except NetstormError:
                pass
        self._table.set()
        self._shutdown.set()
        if first and self.on_failure is not None:
            self.on_failure(exc)

    # -- plans ------------------------------------------------------------------------------
    def _reporters(self, seq: int, numel: int) -> frozenset[int]:
        """The ranks that will report collective ``seq`` (the coordinator's count)."""
        return self.versions.compiled(self.versions.version(seq), numel).reporters

    def _reuse(self, size: int) -> np.ndarray:
        """A free arena of ``size`` elements, else a new one (call with the lock held)."""
        for i in range(len(self._arenas) - 1, -1, -1):
            if self._arenas[i].size == size:
                arena = self._arenas[i]
                del self._arenas[i]
                return arena
        return np.empty(size, dtype=np.float32)

    def _planner_call(self, view: NetworkView, job: Job) -> Plan:
        state = self.info.new_state(self.seed)
        return make_plan(view, job, self.info.func, seed=self.seed, state=state,
                         **self.options)

    def _collective(self, seq: int, numel: int) -> Collective:
        """Collective ``seq``, made on first sight (a local call or a peer's first frame)."""
        with self._lock:
            coll = self._colls.get(seq)
        if coll is None:
            version = self.versions.version(seq)
            made = self.versions.compiled(version, numel)
            with self._lock:
                coll = self._colls.get(seq)  # another thread may have made it meanwhile
                if coll is None:
                    arena = self._reuse(made.arena)
                    coll = self._colls[seq] = Collective(seq, numel, version, made.program,
                                                          made.offsets, arena)
        if coll.numel != numel:
            raise ProtocolError(f"collective {seq}: this site has {coll.numel} elements, "
                                f"a peer {numel} (every site must all-reduce the same "
                                f"sizes in the same order)")
        return coll

    def probes_received(self) -> dict[int, tuple[float, float]]:
        """Probe bytes received per source, and the seconds from the first probe's header to
        the last probe's end (what :func:`~netstorm.runtime.measure.measure` times)."""
        with self._lock:
            return {src: (b, last - first) for src, (b, first, last) in self._probes.items()}

    @property
    def plan(self) -> Plan | None:
        """The plan of this site's latest collective (``None`` before the first)."""
        return self._last_plan

    # -- data plane -------------------------------------------------------------------------
    def _read_data(self, conn: Connection) -> None:
        cfg = self.config
        src = conn.peer
        last = 0.0  # when the previous frame from src ended (busy spells do not overlap)
        probe = memoryview(bytearray(PROBE_BYTES))  # probes land here and are dropped
        encoded = WIRE_NUMPY[cfg.wire]
        staging = np.empty(0, dtype=encoded)  # 16-bit frames land here, grown to the largest
        closed = False
        try:
            while not self._stop.is_set():
                header = conn.read_header(max_length=cfg.max_frame)
                if header is None:
                    if not self._shutdown.is_set() and not self._stop.is_set():
                        closed = True  # at a frame boundary: a peer gone (hold for why)
                        raise PeerError(f"{conn.name} closed its connection mid-run")
                    return
                if header.kind == wire.Kind.PROBE:
                    if header.length > len(probe):
                        raise ProtocolError(f"{conn.name}: probe of {header.length} bytes")
                    first = time.monotonic()
                    conn.read_into(probe[:header.length])
                    end = time.monotonic()
                    with self._lock:  # [bytes, first byte's wait began, last byte read]
                        seen = self._probes.setdefault(src, [0.0, first, end])
                        seen[0] += header.length
                        seen[2] = end
                    continue
                if header.kind != wire.Kind.DATA:
                    raise ProtocolError(f"{conn.name}: control frame on a data connection")
                if header.numel * 4 > cfg.max_frame * self.view.n:  # no arena on a whim
                    raise ProtocolError(f"collective {header.seq} of {header.numel} elements: "
                                        "over the frame limit times the sites")
                coll = self._collective(header.seq, header.numel)
                if header.plan_version != coll.version:
                    raise ProtocolError(f"{conn.name}: collective {header.seq} frame of plan "
                                        f"version {header.plan_version}, this site runs "
                                        f"version {coll.version}")
                payload = coll.slot(header.message)
                if encoded is None:
                    packed = payload
                else:  # decoded below, before this reader reads the next frame into it
                    if staging.size < payload.size:
                        staging = np.empty(payload.size, dtype=encoded)
                    packed = staging[:payload.size]
                view = memoryview(packed).cast("B")  # type: ignore[arg-type]
                if len(view) != header.length:
                    raise ProtocolError(f"{conn.name}: message {header.message} of "
                                        f"{header.length} bytes, expected {len(view)} "
                                        f"(wire {cfg.wire})")
                first = time.monotonic()
                self.shaper.receive(view, conn.read_into)
                end = time.monotonic()
                if not self.shaper.pace:  # time the link here too (see Coordinator._observe)
                    with self._lock:
                        seen = self._received.setdefault(src, [0.0, 0.0])
                        seen[0] += header.length
                        seen[1] += end - max(first, last)
                last = end
                wire.verify(header, view)
                if packed is not payload:
                    fused_reduce(payload, [packed], 1.0)  # decode into float32
                self._events.put((time.monotonic() + self.shaper.delay(src), "arrive", coll,
                                  header.message, payload))
        except BaseException as exc:
            if not self._stop.is_set():
                if isinstance(exc, NetstormError) and conn.name not in str(exc):
                    named = type(exc)(f"{conn.name}: {exc}")
                    named.__cause__ = exc
                    exc = named
                # only a close at a frame boundary waits for the coordinator's verdict: a
                # frame cut off or malformed is this connection's own error
                self._fail(exc, held=not closed)

    def _sent(self, coll: Collective | None) -> None:
        if coll is not None:  # None: a probe
            self._events.put((0.0, "sent", coll))

    def _dispatch(self, coll: Collective, outs: tuple[Outgoing, ...]) -> None:
        for out in outs:
            assert out.payload is not None
            send = out.send
            if send is not None:
                out = pick_path(out, self.sender.depth)
            data = out.payload if self._wire is None else pack(out.payload, dtype=self._wire)
            payload = memoryview(data).cast("B")  # type: ignore[arg-type]
            m = out.message  # the link's thread fills in the checksum, off this thread
            header = wire.Header(wire.Kind.DATA, coll.version, coll.seq, coll.numel, m.shard,
                                 m.chunk, m.phase, m.src, m.dst, payload.nbytes, 0)
            coll.pending += 1
            if send is not None and out.path == send.paths[0]:  # may move while it waits
                self.sender.put(out.path[1], out.priority, header, payload, coll,
                                rule=send.rule, auxiliary=tuple(p[1] for p in send.paths[1:]))
            else:
                self.sender.put(out.path[1], out.priority, header, payload, coll)

    def _engine(self) -> None:
        held: list[tuple[float, int, tuple[Any, ...]]] = []
        order = 0
        watch = time.monotonic() + WATCHDOG_S
        while not self._stop.is_set():
            wake = watch if not held else min(watch, held[0][0])
            timeout = max(0.0, wake - time.monotonic())
            due: list[tuple[Any, ...]] = []
            try:
                event = self._events.get(timeout=timeout)
                if event[0] > time.monotonic():  # held for the link's emulated delay
                    order += 1
                    heapq.heappush(held, (event[0], order, event))
                else:
                    due.append(event)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= watch:
                watch = now + WATCHDOG_S
                self._watchdog()
            while held and held[0][0] <= now:
                due.append(heapq.heappop(held)[2])
            for ev in due:
                if ev[1] == "stop":
                    return
                try:
                    self._step(ev)
                except BaseException as exc:
                    self._fail(exc)

    def _watchdog(self) -> None:
        """Every :data:`WATCHDOG_S`: a heartbeat to the coordinator, and the run fails when
        the coordinator went silent or a started collective is not done within the timeout,
        so that callers who never :meth:`Handle.wait` (a DDP hook's future) are not left
        hanging."""
        if self._table.is_set() and not self._shutdown.is_set() and self._error is None:
            silent = time.monotonic() - self._heard
            if silent > silence_limit(self.config.timeout_s):
                self._fail(PeerError(f"the coordinator (site {self.view.sites[0]}, rank 0) "
                                     f"sent nothing for {silent:.1f} s: stopped, overloaded "
                                     "or cut off"))
                return
            try:
                self._control.send_control({"type": "beat"})
            except NetstormError:
                pass  # the control reader reports a broken connection
        limit = self.config.timeout_s
        now = time.perf_counter()
        with self._lock:
            late = [c for c in self._colls.values()
                    if c.started and not c.done.is_set() and now - c.t_start > limit]
        if late:
            self._fail(self._stalled(min(late, key=lambda c: c.seq), limit))

    def _stalled(self, coll: Collective, limit: float) -> PeerError:
        missing = sorted({m.src for m in coll.prog.slot
                          if not coll.executor._got[coll.prog.slot[m]]
                          and m in coll.prog.program.expects})
        names = ", ".join(self.view.sites[s] for s in missing) or "none"
        return PeerError(f"site {self.name}: collective {coll.seq} not done after {limit:g} s "
                         f"(still waiting for messages of tree edges from: {names})")

    def _step(self, event: tuple[Any, ...]) -> None:
        kind, coll = event[1], event[2]
        if coll.error is not None:
            return
        ex = coll.executor
        if not coll.kicked:  # the collective's first event here, whichever it is
            coll.kicked = True
            self._dispatch(coll, ex.start())
        if kind == "arrive":
            self._dispatch(coll, ex.arrive(event[3], event[4]))
        elif kind == "start":
            self._dispatch(coll, ex.local_ready())
        elif kind == "sent":
            coll.pending -= 1
        self._maybe_done(coll)

    def _maybe_done(self, coll: Collective) -> None:
        if coll.done.is_set() or coll.reported or not coll.executor.done or coll.pending:
            return
        if self.is_worker and not coll.started:
            return
        if self._wire is not None and coll.executor.result is not None:
            # the roots kept float32 means but sent them rounded: round theirs alike, so
            # every worker holds the same bytes (a no-op where the result came off the wire)
            result = coll.executor.result
            fused_reduce(result, [pack(result, dtype=self._wire)], 1.0)
        coll.t_end = time.perf_counter()
        scale = self.config.time_scale  # reports are in the topology's time
        links = self.sender.measurements(scale)
        with self._lock:
            received = [(src, self.rank, b, sec * scale)
                        for src, (b, sec) in self._received.items() if b > 0]
            self._received.clear()
            row = {"seq": coll.seq, "time_s": coll.t_end - coll.t_start,
                   "plan_version": coll.version, "numel": coll.numel}
            self.stats_rows.append(row)
        names = self.view.sites
        self._write({"site": self.name, "collective": self.log_base + coll.seq, **row, "links": [
            {"src": names[src], "dst": names[dst], "bytes": b, "busy_s": sec,
             "rate_Bps": b / sec if sec > 0 else None, "timed_by": by}
            for by, rows in (("sender", links), ("receiver", received))
            for src, dst, b, sec in rows]})
        # (busy_s and rate_Bps in the topology's time: wall seconds times the time scale)
        if self.elastic:  # finished when the coordinator confirms it finished everywhere:
            coll.reported = True  # a lost site never leaves survivors with different results
        else:
            coll.finish()
        self._control.send_control({"type": "report", "seq": coll.seq, "numel": coll.numel,
                                    "links": links, "received": received})
        self._probe(coll)

    def _probe(self, coll: Collective) -> None:
        if not self._probing:
            return
        self.sender.probe(self.view.capacity[self.rank], PROBE_AGE_S / self.config.time_scale,
                          coll.version, coll.seq)

    # -- public -----------------------------------------------------------------------------
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
        coll = self._collective(seq, flat.size)
        with self._lock:
            self._last_plan = self.versions.compiled(coll.version, coll.numel).plan
            coll.executor.gradient = coll.executor.result = flat
            coll.started = True
            coll.t_start = called
        self._events.put((0.0, "start", coll))
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

    def _wait(self, coll: Collective, timeout: float | None) -> None:
        limit = self.config.timeout_s if timeout is None else timeout
        if not coll.done.wait(limit):
            raise self._stalled(coll, limit)
        if coll.error is not None:
            raise coll.error

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()

    def stats(self) -> dict[str, Any]:
        """Per-collective times and plan versions, plan switches, bytes sent per link."""
        with self._lock:
            return {"site": self.name, "rank": self.rank,
                    "collectives": list(self.stats_rows),
                    "switches": list(self.switch_log), "diverted": self.sender.diverted,
                    "bytes_sent": self.sender.bytes_sent()}

    def serve(self) -> None:
        """Relay until the workers are done (what :func:`init` does on a relay-only rank)."""
        self._shutdown.wait()
        self.close()

    def wait_end(self) -> BaseException | None:
        """Block until the run ends here: ``None`` when the workers are done, else the error
        it failed with."""
        self._shutdown.wait()
        return self._error

    def abandon(self) -> None:
        """Stop at once, without waiting for the others (an elastic site left behind)."""
        self._stop_threads()

    def close(self) -> None:
        """Leave the run: wait until every worker is done (a site may still relay for
        others), then stop every thread and close every socket."""
        if self._stop.is_set():
            return
        if self.is_worker and self._error is None:
            try:
                self._control.send_control({"type": "bye"})
            except NetstormError:
                pass
        self._shutdown.wait(self.config.timeout_s)
        self._stop_threads()

    def _grow(self) -> tuple[list[int], list[int]]:
        """The coordinator's ``on_grow``: close the listener (the next membership joins
        rank 0's next site, on this port), then let the door admit the waiting sites."""
        assert self.door is not None
        self._close_listener()
        return self.door.grow()

    def send_control(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` to the coordinator (elastic runs: ``admit``, ``state``)."""
        self._control.send_control(msg)

    def _close_listener(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept loop: close() alone does not,
            self._server.shutdown(socket.SHUT_RDWR)  # and the port would stay taken
        self._server.close()

    def _stop_threads(self) -> None:
        self._stop.set()
        self._events.put((0.0, "stop", None))
        self.sender.close()
        for conn in list(self._inbound):
            conn.close()
        if hasattr(self, "_control"):
            self._control.close()
        if self.coordinator is not None:
            self.coordinator.close()
        self._close_listener()
        if self._log is not None:
            self._log.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2)

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warm_kernels() -> None:
    """Load the reduction kernel now, not inside the first collective (numba's import and
    the cached machine code are most of a site's fixed memory and first-call time)."""
    from netstorm.kernels import fused_reduce

    one = np.zeros(1, dtype=np.float32)
    for k in (1, 2, 3):
        fused_reduce(one, [one] * k, 1.0)


def init(topology: str | NetworkView | None = None, planner: str | Planner | None = None, *,
         seed: int = 0, policy: Policy | str | None = None, window: int = WINDOW,
         chunk_bytes: int = 4_000_000, planner_options: dict[str, Any] | None = None,
         **config: Any) -> Site | ElasticSite:
    """Join the run as this process's site (torchrun-style environment: see
    :mod:`netstorm.runtime.config`).

    Parameters
    ----------
    topology
        A topology file, a built-in name, or a :class:`~netstorm.NetworkView`; every rank
        must load the same one (checked). Rank i is the topology's i-th site. Default:
        ``NETSTORM_TOPOLOGY`` (``netstorm run`` sets it). ``"measure"`` times every ordered
        pair of the run's hosts first (:func:`~netstorm.runtime.measure.measure`,
        ``NETSTORM_MEASURE_SECONDS``, default 3) and plans on that: sites ``site0..``, all
        workers.
    planner, seed, planner_options
        The planner every site plans with (every site computes the same plans). Default:
        ``NETSTORM_PLANNER``, else ``treepack``.
    policy
        Re-plan policy (name or object); default ``NETSTORM_POLICY``, else the planner's own.
    window
        Collectives a site may start ahead of the last one finished everywhere; a plan
        switch takes effect that many collectives after it is decided.
    chunk_bytes
        The pipelining chunk plans are made for (a planner may pick its own).
    config
        Overrides of the environment (``rank``, ``master_addr``, ...): see
        :class:`~netstorm.runtime.config.RuntimeConfig`.

    Returns
    -------
    Site or ElasticSite
        On a worker (an :class:`~netstorm.runtime.elastic.ElasticSite` when
        ``NETSTORM_ELASTIC`` is set: the same calls, surviving other sites' loss). A
        relay-only rank relays inside ``init()`` until every worker has closed, then exits
        the process (status 0), so one script serves every rank.
    """
    topology = topology if topology is not None else os.environ.get("NETSTORM_TOPOLOGY")
    if topology is None:
        raise NetstormError("netstorm.runtime.init: no topology: pass topology= or set "
                            "NETSTORM_TOPOLOGY (netstorm run sets it)")
    planner = planner or os.environ.get("NETSTORM_PLANNER") or "treepack"
    policy = policy if policy is not None else os.environ.get("NETSTORM_POLICY") or None
    fixed = os.environ.get("NETSTORM_PLAN")
    if topology == "measure":  # the real network between the hosts, timed now
        from .measure import measure

        seconds = float(os.environ.get("NETSTORM_MEASURE_SECONDS") or 3.0)
        # (measure's own ``emulate`` is a view to emulate; it times the network unshaped)
        view = measure(seconds, **{k: v for k, v in config.items() if k != "emulate"})
        log.info("measured %d sites in %.1f s", view.n, seconds)
    else:
        view = topology if isinstance(topology, NetworkView) else load_topology(topology)
    cfg = RuntimeConfig.from_env(**config)
    if fixed:  # a plan file: every site runs it as it is (checked here against the view)
        planner = fixed_planner(load_plan(fixed, view), fixed)
        policy = "static"

    def make(cfg: RuntimeConfig, view: NetworkView) -> Site:
        return Site(cfg, view, planner, seed=seed, policy=policy, window=window,
                    chunk_bytes=chunk_bytes, planner_options=planner_options)

    site: Site | ElasticSite
    if cfg.elastic:
        from .elastic import ElasticSite

        site = ElasticSite(cfg, view, make)
    else:
        site = make(cfg, view)
    if not site.is_worker:
        _warn_if_torch_waits(site.name)
        site.serve()
        raise SystemExit(0)
    return site


def _warn_if_torch_waits(name: str) -> None:
    """A relay-only rank inside torch's default group: a DDP built on that group waits for
    this rank, which never trains, until gloo's timeout (half an hour). Say so at once."""
    dist = sys.modules.get("torch.distributed")
    ours = sys.modules.get("netstorm.runtime.torch")
    if getattr(ours, "workers_group_made", False):
        return  # the script built its DDP on the workers' group
    if dist is not None and dist.is_available() and dist.is_initialized():
        log.warning("site %s is relay-only but in torch's default process group: a DDP built "
                    "on that group waits for it forever; build DDP on "
                    "netstorm.runtime.torch.workers_group() (or use the netstorm backend)",
                    name)
