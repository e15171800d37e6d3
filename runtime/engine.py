"""A site's engine: the one thread that runs its executors, driven by typed events.

Readers post :class:`Arrive` (a message's payload landed; held for the link's emulated
delay), the caller posts :class:`Start` (a worker's local slice is ready), the links post
:class:`Sent` (a frame was written). The engine feeds each to its collective's
:class:`~netstorm.executor.Executor` and hands the sends it returns to the links; it alone
touches the executors, so they need no lock. It also keeps the collectives in flight and a
small pool of arenas to reuse, and runs the watchdog.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from netstorm.kernels import fused_reduce, pack

from netstorm.errors import PeerError, ProtocolError
from netstorm.executor import Outgoing, pick_path
from netstorm.program import Message

from . import wire
from .collective import Collective
from .deadlines import WATCHDOG_S
from .sender import Sender
from .versions import Versions

__all__ = ["ARENA_POOL", "WINDOW", "WIRE_NUMPY", "Arrive", "Engine", "Event", "Sent", "Start",
           "Stop", "warm_kernels"]

log = logging.getLogger("netstorm.runtime")

#: numpy element types of the wire encodings (bf16 travels as uint16 bit patterns).
WIRE_NUMPY: dict[str, Any] = {"fp32": None, "fp16": np.float16, "bf16": np.uint16}
#: Collectives a site may start ahead of the last one finished everywhere (the default).
WINDOW = 2
#: Free arenas a site keeps for reuse (a few per collective in flight).
ARENA_POOL = 2 * (WINDOW + 1)


@dataclass(frozen=True, slots=True)
class Arrive:
    """``message``'s payload of collective ``coll`` is in place; it may be taken at
    ``due`` (:func:`time.monotonic`: the link's emulated delay after it was read)."""

    coll: Collective
    message: Message
    payload: np.ndarray
    due: float = 0.0


@dataclass(frozen=True, slots=True)
class Start:
    """This worker's local slice of ``coll`` is ready (the caller's array)."""

    coll: Collective


@dataclass(frozen=True, slots=True)
class Sent:
    """A frame of ``coll`` was written."""

    coll: Collective


@dataclass(frozen=True, slots=True)
class Stop:
    """The engine's thread ends."""


Event = Arrive | Start | Sent | Stop


@dataclass(order=True)
class _Held:
    due: float
    order: int
    event: Arrive = field(compare=False)


class Engine:
    """The executors of one site, their collectives, arenas and sends.

    Parameters
    ----------
    name, sites
        This site's name and every site's (for errors).
    versions
        The plan of every collective (waits for the coordinator to release it).
    sender
        The outgoing links the sends go to.
    wire_encoding
        ``fp32``, ``fp16`` or ``bf16``: how payloads travel.
    timeout_s
        A started collective not done after this long fails the run.
    waits_for_caller
        This site is a worker: a collective is done here only once the caller started it.
    on_done
        ``on_done(coll)``: collective done at this site (on the engine's thread).
    on_error
        ``on_error(exc)``: an event failed, or a collective stalled.
    on_watch
        Called every :data:`~.deadlines.WATCHDOG_S` (the control plane's heartbeat).
    """

    def __init__(self, name: str, sites: tuple[str, ...], versions: Versions, sender: Sender,
                 *, wire_encoding: str,
                 timeout_s: float, waits_for_caller: bool,
                 on_done: Callable[[Collective], None],
                 on_error: Callable[[BaseException], None],
                 on_watch: Callable[[], None]) -> None:
        self.name, self.sites = name, sites
        self.versions = versions
        self.sender = sender
        self.encoding = None if wire_encoding == "fp32" else wire_encoding
        self.timeout_s = timeout_s
        self.waits_for_caller = waits_for_caller
        self.on_done = on_done
        self.on_error = on_error
        self.on_watch = on_watch
        self.lock = threading.Lock()
        self.collectives: dict[int, Collective] = {}
        #: arenas free for reuse, oldest first; at most ARENA_POOL of them (each plan version
        #: has arenas of its own size: an unbounded pool grew by one per re-plan)
        self.free_arenas: deque[np.ndarray] = deque()
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    # -- collectives --------------------------------------------------------------------
    def collective(self, seq: int, numel: int) -> Collective:
        """Collective ``seq``, made on first sight (a local call or a peer's first frame);
        waits until the coordinator released it.

        Raises
        ------
        ProtocolError
            A peer's collective ``seq`` has another size than this site's.
        """
        with self.lock:
            coll = self.collectives.get(seq)
        if coll is None:
            version = self.versions.version(seq)
            made = self.versions.compiled(version, numel)
            with self.lock:
                coll = self.collectives.get(seq)  # another thread may have made it meanwhile
                if coll is None:
                    arena = self._reuse(made.arena)
                    coll = self.collectives[seq] = Collective(seq, numel, version,
                                                              made.program, made.offsets,
                                                              arena)
        if coll.numel != numel:
            raise ProtocolError(f"collective {seq}: this site has {coll.numel} elements, "
                                f"a peer {numel} (every site must all-reduce the same "
                                f"sizes in the same order)")
        return coll

    def _reuse(self, size: int) -> np.ndarray:
        """A free arena of ``size`` elements, else a new one (the lock held)."""
        for i in range(len(self.free_arenas) - 1, -1, -1):
            if self.free_arenas[i].size == size:
                arena = self.free_arenas[i]
                del self.free_arenas[i]
                return arena
        return np.empty(size, dtype=np.float32)

    def release(self, done: int) -> None:
        """Collectives up to ``done`` finished everywhere: no frame of theirs is queued or
        can still come, so the arenas of those done here serve later collectives."""
        with self.lock:
            for seq in [s for s, c in self.collectives.items() if s <= done and c.done.is_set()]:
                self.free_arenas.append(self.collectives.pop(seq).arena)
                while len(self.free_arenas) > ARENA_POOL:
                    self.free_arenas.popleft()

    def in_flight(self) -> list[Collective]:
        with self.lock:
            return list(self.collectives.values())

    def stalled(self, coll: Collective, limit: float) -> PeerError:
        """The error of ``coll`` not done after ``limit`` seconds, naming the sites whose
        messages it still waits for."""
        missing = sorted({m.src for m in coll.executor.awaiting()})
        names = ", ".join(self.sites[s] for s in missing) or "none"
        return PeerError(f"site {self.name}: collective {coll.seq} not done after {limit:g} s "
                         f"(still waiting for messages of tree edges from: {names})")

    def late(self) -> Collective | None:
        """The oldest started collective past the timeout, if any."""
        now = time.perf_counter()
        late = [c for c in self.in_flight()
                if c.started and not c.done.is_set() and now - c.t_start > self.timeout_s]
        return min(late, key=lambda c: c.seq) if late else None

    # -- the thread ---------------------------------------------------------------------
    def post(self, event: Event) -> None:
        """Hand ``event`` to the engine (any thread)."""
        self._events.put(event)

    def sent(self, coll: Collective | None) -> None:
        """A link wrote a frame of ``coll`` (``None``: a probe)."""
        if coll is not None:
            self._events.put(Sent(coll))

    def run(self) -> None:
        """The engine's loop, until :class:`Stop`."""
        held: list[_Held] = []  # arrivals waiting out their link's emulated delay
        order = itertools.count()
        watch = time.monotonic() + WATCHDOG_S
        while True:
            wake = watch if not held else min(watch, held[0].due)
            due: list[Event] = []
            try:
                event = self._events.get(timeout=max(0.0, wake - time.monotonic()))
                if isinstance(event, Arrive) and event.due > time.monotonic():
                    heapq.heappush(held, _Held(event.due, next(order), event))
                else:
                    due.append(event)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= watch:
                watch = now + WATCHDOG_S
                self.on_watch()
            while held and held[0].due <= now:
                due.append(heapq.heappop(held).event)
            for ev in due:
                if isinstance(ev, Stop):
                    return
                try:
                    self._step(ev)
                except BaseException as exc:
                    self.on_error(exc)

    def _step(self, event: Event) -> None:
        coll = event.coll  # type: ignore[union-attr]
        if coll.error is not None:
            return
        ex = coll.executor
        if not coll.kicked:  # the collective's first event here, whichever it is
            coll.kicked = True
            self._dispatch(coll, ex.start())
        match event:
            case Arrive(message=message, payload=payload):
                self._dispatch(coll, ex.arrive(message, payload))
            case Start():
                self._dispatch(coll, ex.local_ready())
            case Sent():
                coll.pending -= 1
        self._maybe_done(coll)

    def _maybe_done(self, coll: Collective) -> None:
        if coll.done.is_set() or coll.reported or not coll.executor.done or coll.pending:
            return
        if self.waits_for_caller and not coll.started:
            return
        if self.encoding is not None and coll.executor.result is not None:
            # the roots kept float32 means but sent them rounded: round theirs alike, so
            # every worker holds the same bytes (a no-op where the result came off the wire)
            result = coll.executor.result
            fused_reduce(result, [pack(result, dtype=self.encoding)], 1.0)
        coll.t_end = time.perf_counter()
        self.on_done(coll)

    def _dispatch(self, coll: Collective, outs: tuple[Outgoing, ...]) -> None:
        """Queue the executor's sends on the links (the links fill in the checksums, off
        this thread)."""
        for out in outs:
            assert out.payload is not None
            send = out.send
            if send is not None:
                out = pick_path(out, self.sender.depth)
            data = out.payload if self.encoding is None else pack(out.payload,
                                                                   dtype=self.encoding)
            payload = memoryview(data).cast("B")  # type: ignore[arg-type]
            m = out.message
            header = wire.Header(wire.Kind.DATA, coll.version, coll.seq, coll.numel, m.shard,
                                 m.chunk, m.phase, m.src, m.dst, payload.nbytes, 0)
            coll.pending += 1
            if send is not None and out.path == send.paths[0]:  # may move while it waits
                self.sender.put(out.path[1], out.priority, header, payload, coll,
                                rule=send.rule, auxiliary=tuple(p[1] for p in send.paths[1:]))
            else:
                self.sender.put(out.path[1], out.priority, header, payload, coll)


def warm_kernels() -> None:
    """Load the reduction kernel now, not inside the first collective (numba's import and
    the cached machine code are most of a site's fixed memory and first-call time)."""
    one = np.zeros(1, dtype=np.float32)
    for k in (1, 2, 3):
        fused_reduce(one, [one] * k, 1.0)
