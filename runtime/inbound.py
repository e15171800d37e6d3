"""A site's receiving side: its listener, and a reader per incoming connection.

The listener accepts and authenticates connections (:func:`~.links.accept`); the first
frame says what each is for: :class:`~.messages.Data` (a peer's outgoing link: its frames
land in the collectives' arenas), :class:`~.messages.Join` (rank 0: a site's control
connection, for the coordinator) or :class:`~.messages.Enter` (rank 0 of an elastic run: a
site knocking to join). A data reader reads each frame's payload with ``recv_into`` straight
into where the executor reads it (decoding 16-bit payloads into float32 there), verifies its
checksum, and posts an :class:`~.engine.Arrive` held for the link's emulated delay.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
from netstorm.kernels import fused_reduce

from netstorm.errors import NetstormError, PeerError, ProtocolError
from netstorm.view import NetworkView

from . import wire
from .config import RuntimeConfig
from .emulate import Shaper
from .engine import WIRE_NUMPY, Arrive, Engine
from .links import Connection, accept
from .messages import MAX_HELLO, Data, Enter, Join
from .sender import PROBE_BYTES

__all__ = ["Inbound"]

log = logging.getLogger("netstorm.runtime")


class Inbound:
    """Site ``config.rank``'s listener and readers.

    Parameters
    ----------
    config, view, name
        The site's settings, the run's topology, this site's name.
    engine, shaper
        Where arrivals go; the emulated links' delays and ingress cap.
    spawn
        ``spawn(target, name, *args)`` starts a thread the site joins when it stops.
    fail
        ``fail(exc, hold)``: a connection's error; ``hold``: it may be a peer's death,
        which the coordinator's verdict explains (a close at a frame boundary), rather than
        this connection's own error (a frame cut off or malformed).
    stopping, ending
        The site stops (every error after is noise); the workers are done (a peer closing
        its connection is expected).
    on_join, on_enter
        Rank 0: a site's control connection (the coordinator's), a site knocking to join
        (the elastic door); ``None`` elsewhere (such hellos are refused).

    Notes
    -----
    The listener is bound in the constructor (a port in use is a clear error at once) and
    accepts from :meth:`serve_forever` on.
    """

    def __init__(self, config: RuntimeConfig, view: NetworkView, name: str, *,
                 engine: Engine, shaper: Shaper,
                 spawn: Callable[..., None],
                 fail: Callable[..., None],
                 stopping: threading.Event, ending: threading.Event) -> None:
        self.config = config
        self.view = view
        self.name = name
        self.engine = engine
        self.shaper = shaper
        self.spawn = spawn
        self.fail = fail
        self.stopping = stopping
        self.ending = ending
        self.on_join: Callable[[Connection, Join], None] | None = None
        self.on_enter: Callable[[Connection, Enter], None] | None = None
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._received: dict[int, list[float]] = {}  # src -> [bytes, busy s] (unpaced)
        self._probes: dict[int, list[float]] = {}  # src -> [bytes, first, last] (probes in)
        self._server = self._listen()
        self.port: int = self._server.getsockname()[1]

    def _listen(self) -> socket.socket:
        cfg = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.bind, cfg.listen_port))
        except OSError as exc:
            sock.close()
            raise PeerError(f"site {self.name} (rank {cfg.rank}): cannot listen on "
                            f"{cfg.bind}:{cfg.listen_port} ({exc.strerror or exc})") from exc
        sock.listen(128)
        return sock

    def serve_forever(self) -> None:
        """Accept connections until the listener closes (the listener's thread)."""
        while not self.stopping.is_set():
            try:
                raw, _ = self._server.accept()
            except OSError:
                return
            self.spawn(self._serve, "inbound", raw)

    def close_listener(self) -> None:
        """Stop accepting and free the port."""
        with contextlib.suppress(OSError):  # wakes the accept loop: close() alone does not,
            self._server.shutdown(socket.SHUT_RDWR)  # and the port would stay taken
        self._server.close()

    def close(self) -> None:
        self.close_listener()
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            conn.close()

    # -- hellos -------------------------------------------------------------------------
    def _serve(self, raw: socket.socket) -> None:
        cfg = self.config
        conn: Connection | None = None
        try:
            conn = accept(raw, rank=cfg.rank, secret=cfg.secret, timeout=cfg.timeout_s,
                          names=self.view.sites, tls=cfg.tls)
            conn.sock.settimeout(cfg.timeout_s)  # an authenticated peer must still say hello
            header = conn.read_header(max_length=MAX_HELLO)
            if header is None or header.kind != wire.Kind.CONTROL:
                raise ProtocolError(f"{conn.name}: first frame is not a hello")
            hello = conn.read_message(header)
            conn.sock.settimeout(None)
            handler = self._handler(conn, hello)
        except (NetstormError, OSError) as exc:
            log.warning("site %s: refused a connection: %s", self.name, exc)
            if conn is not None:
                conn.close()
            raw.close()
            return
        handler()

    def _handler(self, conn: Connection, hello: object) -> Callable[[], None]:
        """What serves ``conn`` after its hello (raises ProtocolError for a hello this site
        takes no connection of)."""
        match hello:
            case Enter() if self.on_enter is not None:  # the door checks who it is
                on_enter = self.on_enter
                return lambda: on_enter(conn, hello)
            case Enter():
                raise ProtocolError(f"{conn.name}: knocked to join, but this site has no "
                                    "door (rank 0 of an elastic run between memberships "
                                    "knocks it back: it knocks again)")
        if not 0 <= conn.peer < self.view.n:
            raise ProtocolError(f"{conn.name}: rank {conn.peer} is not a site of "
                                f"{self.view.name!r}")
        match hello:
            case Join() if self.on_join is not None:
                on_join = self.on_join
                return lambda: on_join(conn, hello)
            case Data():
                with self._lock:
                    self.connections.append(conn)
                return lambda: self._read(conn)
        where = "without" if self.on_join is None else "with"
        raise ProtocolError(f"{conn.name}: hello of type {type(hello).__name__} at a site "
                            f"{where} the coordinator")

    # -- data ---------------------------------------------------------------------------
    def _read(self, conn: Connection) -> None:
        """Read ``conn``'s frames until it closes."""
        try:
            closed = self._frames(conn)
        except BaseException as exc:
            if not self.stopping.is_set():
                if isinstance(exc, NetstormError) and conn.name not in str(exc):
                    named = type(exc)(f"{conn.name}: {exc}")
                    named.__cause__ = exc
                    exc = named
                self.fail(exc, hold=False)  # a frame cut off or malformed: the connection's own
            return
        if closed and not self.ending.is_set() and not self.stopping.is_set():
            # at a frame boundary: a peer gone, which the coordinator's verdict explains
            self.fail(PeerError(f"{conn.name} closed its connection mid-run"), hold=True)

    def _frames(self, conn: Connection) -> bool:
        """Read frames into their collectives until ``conn`` closes at a frame boundary
        (``True``) or the site stops (``False``)."""
        cfg = self.config
        src = conn.peer
        last = 0.0  # when the previous frame from src ended (busy spells do not overlap)
        probe = memoryview(bytearray(PROBE_BYTES))  # probes land here and are dropped
        encoded = WIRE_NUMPY[cfg.wire]
        staging = np.empty(0, dtype=encoded)  # 16-bit frames land here, grown to the largest
        while not self.stopping.is_set():
            header = conn.read_header(max_length=cfg.max_frame)
            if header is None:
                return True
            if header.kind == wire.Kind.PROBE:
                self._probe(conn, header, probe)
                continue
            if header.kind != wire.Kind.DATA:
                raise ProtocolError(f"{conn.name}: control frame on a data connection")
            if header.numel * 4 > cfg.max_frame * self.view.n:  # no arena on a whim
                raise ProtocolError(f"collective {header.seq} of {header.numel} elements: "
                                    "over the frame limit times the sites")
            coll = self.engine.collective(header.seq, header.numel)
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
            if not self.shaper.pace:  # time the link here too (see control.Coordination)
                with self._lock:
                    seen = self._received.setdefault(src, [0.0, 0.0])
                    seen[0] += header.length
                    seen[1] += end - max(first, last)
            last = end
            wire.verify(header, view)
            if packed is not payload:
                fused_reduce(payload, [packed], 1.0)  # decode into float32
            self.engine.post(Arrive(coll, header.message, payload,
                                    time.monotonic() + self.shaper.delay(src)))
        return False

    def _probe(self, conn: Connection, header: wire.Header, into: memoryview) -> None:
        if header.length > len(into):
            raise ProtocolError(f"{conn.name}: probe of {header.length} bytes")
        first = time.monotonic()
        conn.read_into(into[:header.length])
        end = time.monotonic()
        with self._lock:  # [bytes, first byte's wait began, last byte read]
            seen = self._probes.setdefault(conn.peer, [0.0, first, end])
            seen[0] += header.length
            seen[2] = end

    # -- measurements -------------------------------------------------------------------
    def take_received(self, scale: float) -> list[tuple[int, int, float, float]]:
        """``(src, this site, bytes, busy seconds)`` per link into this site since the last
        call (unpaced links only), in the topology's time."""
        rank = self.config.rank
        with self._lock:
            rows = [(src, rank, b, sec * scale) for src, (b, sec) in self._received.items()
                    if b > 0]
            self._received.clear()
        return rows

    def probes_received(self) -> dict[int, tuple[float, float]]:
        """Probe bytes received per source, and the seconds from the first probe's header to
        the last probe's end."""
        with self._lock:
            return {src: (b, last - first) for src, (b, first, last) in self._probes.items()}
