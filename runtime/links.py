"""Connections between sites: framed, authenticated TCP, and the per-link send queue.

A :class:`Connection` is one authenticated socket that reads and writes whole frames
(:mod:`netstorm.runtime.wire`); ``OSError`` becomes :class:`~netstorm.PeerError` here, at the
socket boundary, naming the peer. With TLS (``NETSTORM_TLS_CA``, see
:class:`~netstorm.runtime.config.TlsContexts`) :func:`connect` and :func:`accept` run a
mutual-TLS handshake first and the HMAC handshake inside it. An :class:`OutLink` owns the
connection for one overlay link ``site -> peer``: a thread sends its queue smallest priority
first (the program's send order), paced by the :class:`~netstorm.runtime.emulate.Shaper`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import heapq
import itertools
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from netstorm.errors import NetstormError, PeerError, ProtocolError

from . import wire
from .auth import client_handshake, server_handshake
from .deadlines import LINK_STOP_S
from .emulate import Shaper
from .messages import Message, decode, encode

if TYPE_CHECKING:
    from .config import TlsContexts

__all__ = ["Connection", "Frame", "OutLink", "accept", "connect", "tell"]

log = logging.getLogger("netstorm.runtime")


class Connection:
    """One authenticated TCP connection to ``peer`` (a rank), sending and receiving frames.

    A read that fails (a malformed frame, the peer gone, a frame cut off) closes the
    connection before it raises: its byte stream lost the framing and cannot be read on, and
    the peer learns it at once (not when the garbage collector frees the socket). Every error
    a read raises names the peer.

    On a TLS socket (:class:`ssl.SSLSocket`) every read and write is one non-blocking call
    under a lock: OpenSSL forbids two threads in one connection's ``SSL`` object at once,
    and a control connection is read by one thread while others write to it. A call that
    must wait for the socket waits outside the lock (``poll``), so the connection stays full
    duplex; the socket's timeout, as its users set it, bounds the wait.
    """

    def __init__(self, sock: socket.socket, peer: int, name: str) -> None:
        self.sock = sock
        self.peer = peer
        self.name = name
        self._send_lock = threading.Lock()
        self._tls_lock = threading.Lock() if isinstance(sock, ssl.SSLSocket) else None
        self._header = bytearray(wire.HEADER_SIZE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fail(self, what: str, exc: BaseException | None = None) -> PeerError:
        return PeerError(f"{self.name}: {what}" + (f" ({exc})" if exc else ""))

    def _broken(self, what: str, exc: BaseException | None = None) -> PeerError:
        """Close the connection (nothing more can be read from it); the error to raise."""
        self.close()
        return self._fail(what, exc)

    def _refuse(self, exc: ProtocolError) -> ProtocolError:
        """Close the connection after a malformed frame; the error to raise, naming the peer."""
        self.close()
        return ProtocolError(f"{self.name}: {exc}")

    def write(self, data: memoryview | bytes | bytearray) -> None:
        """Send all of ``data`` (no lock: one writer per connection, or hold :meth:`lock`)."""
        try:
            if self._tls_lock is None:
                self.sock.sendall(data)
            else:
                self._tls_sendall(data)
        except OSError as exc:
            raise self._fail("connection lost while sending", exc) from exc

    def _tls_call(self, op: Callable[[], int]) -> int:
        """Run ``op`` (one SSLSocket call) non-blocking under the TLS lock until it is done;
        wait for the socket outside the lock (see the class notes)."""
        assert self._tls_lock is not None
        sock = self.sock
        deadline: float | None = None
        while True:
            with self._tls_lock:
                timeout = sock.gettimeout()
                sock.settimeout(0.0)
                try:
                    return op()
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                finally:
                    sock.settimeout(timeout)
            now = time.monotonic()
            if timeout is not None and deadline is None:
                deadline = now + timeout
            # in slices: a close() from another thread is seen within a second at most
            wait = 1.0 if deadline is None else min(1.0, deadline - now)
            if wait <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
            fd = sock.fileno()
            if fd < 0:
                raise OSError(errno.EBADF, "connection closed")
            poller = select.poll()
            poller.register(fd, events)
            poller.poll(wait * 1000)

    def _tls_read(self, view: memoryview) -> int:
        """What the socket holds now, into ``view`` (up to 1 MiB: one lock hold reads many
        TLS records, a writer still gets its turn); 0 at the end of the stream."""
        got, most = 0, min(len(view), 1 << 20)
        while got < most:
            try:
                n = self.sock.recv_into(view[got:most])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                if got:
                    return got
                raise
            if n == 0:
                break  # the end: the next call returns 0 again
            got += n
        return got

    def _tls_sendall(self, data: memoryview | bytes | bytearray) -> None:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):  # a retried write passes the same bytes, as OpenSSL requires
            sent += self._tls_call(functools.partial(self.sock.send, view[sent:]))

    def lock(self) -> threading.Lock:
        """The lock writers that share this connection hold around a whole frame."""
        return self._send_lock

    def send_control(self, obj: dict[str, Any]) -> None:
        """Send one control frame (JSON), thread-safe."""
        frame = wire.pack_control(obj)
        with self._send_lock:
            self.write(frame)

    def send(self, msg: Message) -> None:
        """Send one control message, thread-safe (:mod:`~netstorm.runtime.messages`)."""
        self.send_control(encode(msg))

    def read_message(self, header: wire.Header) -> Message:
        """The control message of the frame whose header was just read."""
        obj = self.read_control(header)
        try:
            return decode(obj)
        except ProtocolError as exc:
            raise self._refuse(exc) from exc

    def _fill(self, view: memoryview) -> int:
        """Read into ``view`` until it is full or the peer closes; return the bytes read."""
        got = 0
        while got < len(view):
            try:
                if self._tls_lock is None:
                    n = self.sock.recv_into(view[got:])
                else:
                    n = self._tls_call(functools.partial(self._tls_read, view[got:]))
            except OSError as exc:
                raise self._broken("connection lost", exc) from exc
            if n == 0:
                break
            got += n
        return got

    def read_header(self, max_length: int) -> wire.Header | None:
        """The next frame's header; ``None`` when the peer closed between frames."""
        got = self._fill(memoryview(self._header))
        if got == 0:
            return None
        if got < len(self._header):
            raise self._broken("closed the connection inside a frame header")
        try:
            return wire.unpack_header(self._header, max_length=max_length)
        except ProtocolError as exc:
            raise self._refuse(exc) from exc

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` from the socket (a payload; no allocation)."""
        if self._fill(view) < len(view):
            raise self._broken("closed the connection inside a frame")

    def read_control(self, header: wire.Header) -> dict[str, Any]:
        """The JSON object of a control frame whose header was just read."""
        payload = bytearray(header.length)
        self.read_into(memoryview(payload))
        try:
            return wire.unpack_control(header, payload)
        except ProtocolError as exc:
            raise self._refuse(exc) from exc

    def close(self) -> None:
        with self._tls_lock or contextlib.nullcontext():  # not inside another thread's call
            with contextlib.suppress(OSError):  # the peer reset it first: nothing to shut
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


def tell(conn: Connection, msg: Message, why: str) -> bool:
    """Send ``msg`` on ``conn`` where a failure changes nothing this side must act on (the
    connection's reader sees its end and acts on that); ``why`` says what the message was
    for. A message that could not be sent is logged, with the reason; returns whether it
    went."""
    try:
        conn.send(msg)
    except NetstormError as exc:
        log.info("dropped %s (%s) to %s: %s", type(msg).__name__, why, conn.name, exc)
        return False
    return True


def _where(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _tls_reason(exc: BaseException, *, refused: bool = False) -> str:
    """Why a TLS connection failed, with a hint; ``refused``: the peer dropped it right
    after our side of the handshake (TLS 1.3 servers check the client's certificate then)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"its certificate does not verify against NETSTORM_TLS_CA: "
                f"{exc.verify_message or exc.reason}")
    reason = str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
    if refused or "ALERT" in reason:
        reason += ("; does the peer accept this site's certificate (signed by the CA in its "
                   "NETSTORM_TLS_CA)?")
    elif reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                    "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING") \
            or isinstance(exc, (ConnectionResetError, ssl.SSLEOFError)):
        reason += "; is the peer running without TLS?"
    return reason


def _tls_wrap(sock: socket.socket, tls: TlsContexts, *, server_side: bool, timeout: float,
              who: str) -> ssl.SSLSocket:
    """Run the TLS handshake on ``sock`` (closed on failure); ``who`` names the peer."""
    ctx = tls.server if server_side else tls.client
    try:
        tls_sock = ctx.wrap_socket(sock, server_side=server_side,
                                   do_handshake_on_connect=False)
    except OSError as exc:
        sock.close()
        raise PeerError(f"{who}: TLS set-up failed ({exc})") from exc
    try:
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except TimeoutError as exc:
        tls_sock.close()
        raise PeerError(f"{who}: TLS handshake timed out after {timeout:g} s") from exc
    except OSError as exc:  # ssl.SSLError included
        tls_sock.close()
        raise PeerError(f"{who}: TLS handshake failed ({_tls_reason(exc)})") from exc
    return tls_sock


def connect(address: tuple[str, int], *, rank: int, secret: bytes, timeout: float,
            name: str, retry_until: float | None = None,
            tls: TlsContexts | None = None) -> Connection:
    """Open and authenticate a connection to a site listening at ``address``.

    ``retry_until`` (a :func:`time.monotonic` deadline) retries refused connections, for a
    coordinator that is still starting. With ``tls``, a mutual-TLS handshake (the site's
    client context) comes first and the HMAC handshake runs inside it.
    """
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
            break
        except OSError as exc:
            if retry_until is None or time.monotonic() > retry_until:
                raise PeerError(f"{name}: cannot connect to {address[0]}:{address[1]} "
                                f"({exc})") from exc
            time.sleep(0.05)
    if tls is not None:
        sock = _tls_wrap(sock, tls, server_side=False, timeout=timeout,
                         who=f"{name}: at {_where(address)}")
    try:
        peer = client_handshake(sock, secret, rank, timeout=timeout)
    except PeerError as exc:
        sock.close()
        cause = exc.__cause__
        if tls is not None and isinstance(cause, OSError) and not isinstance(cause,
                                                                             TimeoutError):
            # TLS 1.3: the server checks our certificate after our handshake returned
            raise PeerError(f"{name}: at {_where(address)}: TLS refused after the handshake "
                            f"({_tls_reason(cause, refused=True)})") from exc
        raise
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return Connection(sock, peer, name)


def accept(sock: socket.socket, *, rank: int, secret: bytes, timeout: float,
           names: Sequence[str] | None = None, tls: TlsContexts | None = None) -> Connection:
    """Authenticate an accepted socket; the peer's rank (and its site name, from ``names``)
    names the connection. With ``tls``, a mutual-TLS handshake (the site's server context:
    the peer must present a certificate from the CA) comes first."""
    try:
        addr = sock.getpeername()
    except OSError as exc:  # reset before it was served (ENOTCONN): nothing to authenticate
        sock.close()
        raise PeerError(f"a connection reset before its handshake "
                        f"({exc.strerror or exc})") from exc
    if tls is not None:
        sock = _tls_wrap(sock, tls, server_side=True, timeout=timeout,
                         who=f"peer {_where(addr)}")
    try:
        peer = server_handshake(sock, secret, rank, timeout=timeout)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    who = f"site {names[peer]} (rank {peer}, " if names and 0 <= peer < len(names) \
        else f"site {peer} ("
    return Connection(sock, peer, f"{who}{addr[0]}:{addr[1]})")


class Frame:
    """One queued frame; ``queued`` turns false when a link starts it or another link takes
    it over (a route rule's divert)."""

    __slots__ = ("header", "payload", "priority", "queued", "token")

    def __init__(self, priority: float, header: wire.Header, payload: memoryview | None,
                 token: Any) -> None:
        self.priority = priority
        self.header = header
        self.payload = payload
        self.token = token
        self.queued = True


class OutLink:
    """The send side of overlay link ``site -> peer``: a priority queue, and a sender thread
    per connection (several connections keep a long fat pipe full, as PCCL's pool does, and
    let one frame's checksum overlap another's write).

    Parameters
    ----------
    conns
        The connections to ``peer`` (one or more).
    shaper
        Paces the payloads (emulated rate and egress cap).
    on_sent
        Called ``on_sent(token)`` after each frame has been written (the caller's
        bookkeeping: a collective's pending sends); runs on the link's thread.
    on_error
        Called with the :class:`~netstorm.PeerError` that stopped the link.
    on_idle
        Called ``on_idle(peer)`` on the link's thread whenever its queue has just drained
        (a route rule may then move a frame waiting on another link here).

    Notes
    -----
    A DATA frame's checksum is computed here, when it is sent: on the link's thread, in
    parallel with the site's reductions. Frames leave smallest ``priority`` first, ties in
    arrival order, as the simulator's
    links serve them. ``depth()`` (queued plus the one being written) is what a route rule
    reads. The time to write each frame is the link's service time: the sender measures
    the link (:meth:`take_measurement`) because it knows when a frame starts; a receiver
    starved of CPU reads a header late and would time the link too short (on 9 emulated
    sites sharing 2 cores, receiver-side rates came out up to 2.75x the true rate). An
    emulated link is timed on its own clock (:meth:`Shaper.transmit`): a receiver too slow
    to drain its socket is the host's limit, not the emulated WAN's.
    """

    def __init__(self, conns: list[Connection], shaper: Shaper,
                 on_sent: Callable[[Any], None],
                 on_error: Callable[[BaseException], None],
                 on_idle: Callable[[int], None] | None = None) -> None:
        self.conns = conns
        self.peer = conns[0].peer
        self._shaper = shaper
        self._on_sent = on_sent
        self._on_error = on_error
        self._on_idle = on_idle
        self._queue: list[tuple[float, int, Frame]] = []
        self._queued = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self.bytes_sent = 0
        self.last_sent = -math.inf  # time.monotonic() when the last frame was written
        self._measured = [0.0, 0.0]  # bytes, seconds spent writing them, since last taken
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(conn,), daemon=True,
                                          name=f"send->{self.peer}#{i}")
                         for i, conn in enumerate(conns)]
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        """Frames queued or being written."""
        return self._queued + self._busy

    def take_measurement(self) -> tuple[float, float]:
        """Payload bytes written, and the seconds spent writing them (each frame from its
        header to its last byte: the link's service time), since the last call."""
        with self._cond:
            out = (self._measured[0], self._measured[1])
            self._measured = [0.0, 0.0]
        return out

    def put(self, priority: float, header: wire.Header, payload: memoryview | None,
            token: Any) -> Frame:
        """Queue one frame; returns it (for :meth:`take`)."""
        frame = Frame(priority, header, payload, token)
        with self._cond:
            heapq.heappush(self._queue, (priority, next(self._seq), frame))
            self._queued += 1
            self._cond.notify()
        return frame

    def take(self, frame: Frame) -> bool:
        """Remove ``frame`` from this queue if it still waits here (not started)."""
        with self._cond:
            if not frame.queued:
                return False
            frame.queued = False
            self._queued -= 1
            return True

    def _run(self, conn: Connection) -> None:
        """One connection's sender: takes the next frame of the link's queue and writes it."""
        buffer = bytearray(wire.HEADER_SIZE)
        try:
            while True:
                with self._cond:
                    while not self._queued and not self._stop.is_set():
                        self._cond.wait()
                    if self._stop.is_set():
                        return
                    while not self._queue[0][2].queued:
                        heapq.heappop(self._queue)  # taken over by another link
                    frame = heapq.heappop(self._queue)[2]
                    frame.queued = False
                    self._queued -= 1
                    self._busy += 1
                header, payload = frame.header, frame.payload
                if header.kind == wire.Kind.DATA and payload is not None:
                    header = dataclasses.replace(header, checksum=wire.checksum(payload))
                wire.pack_header(header, buffer)
                began = time.monotonic()
                emulated = None
                with conn.lock():
                    conn.write(buffer)
                    if payload is not None and len(payload):
                        emulated = self._shaper.transmit(self.peer, payload, conn.write,
                                                         self._stop)
                took = time.monotonic() - began if emulated is None else emulated
                with self._cond:
                    self._busy -= 1
                    self.bytes_sent += header.length
                    self._measured[0] += header.length
                    self._measured[1] += took
                    self.last_sent = time.monotonic()
                    drained = not self._queued and not self._busy
                self._on_sent(frame.token)
                if drained and self._on_idle is not None:
                    self._on_idle(self.peer)
        except BaseException as exc:
            if not self._stop.is_set():
                self._on_error(exc)

    def close(self) -> None:
        """Stop the senders and close the connections."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=LINK_STOP_S)
        for conn in self.conns:
            conn.close()
