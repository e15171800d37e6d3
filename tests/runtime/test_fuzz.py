"""Wire fuzzing: random and mutated frames and handshakes, fed to the decoders and to live
listeners. The only outcome allowed for bad input is the protocol's error.

What is fuzzed
--------------
Decoders (pure, or over a socket pair whose far end is shut down, so nothing can block):

- :func:`netstorm.runtime.wire.unpack_header`: random bytes; valid headers mutated (bit
  flips, overwritten bytes, truncation, appended junk); single fields (length, kind,
  algorithm, magic, protocol, ...) set to any value *with the header CRC recomputed*, so the
  checks behind the CRC are reached. Checked against a reference of the documented rules: a
  header is accepted iff every rule holds (then it re-packs to the same bytes), else a
  :class:`~netstorm.ProtocolError` names the first rule broken; a length over the limit is
  always refused.
- :func:`~netstorm.runtime.wire.unpack_control`: valid JSON objects, random bytes, mutated
  JSON, non-objects, other encodings, numbers past Python's digit limit, nesting deeper than
  the interpreter's recursion limit; with the right or a wrong checksum, kind and length.
  Result: the object ``json.loads`` reads, or a ProtocolError.
- :class:`~netstorm.runtime.links.Connection`: a stream of valid and mutated frames over
  loopback TCP, read frame by frame as a site does, compared with a reference parser: the
  same frames, then a clean end, a ProtocolError (malformed) or a PeerError (truncated)
  naming the peer, the connection closed after an error; never blocking, and no buffer
  larger than the frame limit ever requested (the allocation path is spied on). A header
  declaring a length over the limit is refused from its 56 bytes alone, with the payload
  never sent and under ``tracemalloc``.
- :func:`~netstorm.runtime.auth.client_handshake` and
  :func:`~netstorm.runtime.auth.server_handshake`: the peer's hello + proof (nonces pinned, so
  the valid transcript is known), mutated or random. Result: the peer's rank iff its first
  73 bytes are the valid transcript, else a PeerError, within the timeout.

Live listeners: two real sites (:class:`~netstorm.runtime.Site`) on loopback. A raw socket
sends random bytes, a reset, a hello then garbage, a handshake with a wrong proof, a replay
of a transcript captured from an earlier connection (40 cases), or a correct handshake
followed by a mutated first frame that the connection layer must refuse (bad checksums,
lengths over the limit, unknown kinds or algorithms, truncations, bad or deeply nested JSON;
30 cases). Each time the site must close the connection within seconds and log a refusal
naming the peer's address, no thread may die of an exception, slow clients (silent, half a
hello) are dropped at the handshake timeout, and afterwards an all-reduce among the sites
still gives numpy's mean. A peer that authenticated and joined as a *data* connection
is a member of the run: a corrupted frame from it fails the run by design; there the
property is that every worker's all-reduce raises a NetstormError naming the cause (never a
silently wrong result, never a hang).

The last tests pin four findings fixed in ``runtime/site.py``: an authenticated peer that
never says hello is dropped at the timeout; a refused first frame and an unusable hello close
the connection and are logged; every data-frame error names the peer.

``CASES`` counts the examples each fuzz test ran; the module prints the counts at its end.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import tracemalloc
import types
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from netstorm.runtime import Site, auth, links, wire
from netstorm.runtime.auth import HELLO, HELLO_MAGIC, PROOF_SIZE, client_handshake, proof
from netstorm.runtime.links import Connection
from netstorm.runtime.wire import HEADER, HEADER_SIZE, MAGIC, PROTOCOL, Header, Kind

from netstorm import NetstormError, PeerError, ProtocolError
from netstorm.builtin_topologies import builtin
from tests.runtime.harness import SECRET, config, data_header, free_port, in_threads

pytestmark = pytest.mark.timeout(120)

#: Examples run per fuzz test, and what they were (printed when the module ends).
CASES: collections.Counter[str] = collections.Counter()
SEEN: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    line = "fuzz cases run: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())) + \
        f"; total {sum(CASES.values())}\n  of which: " + \
        ", ".join(f"{k} {v}" for k, v in sorted(SEEN.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line)


# -- mutations ---------------------------------------------------------------------------------

#: The header's fields in :data:`wire.HEADER` order (the header CRC last, not listed).
FIELDS = ("magic", "protocol", "kind", "algo", "plan_version", "seq", "numel", "shard",
          "chunk", "phase", "src", "dst", "length", "checksum")
BITS = {"protocol": 8, "kind": 8, "algo": 8, "plan_version": 32, "seq": 64, "numel": 64,
        "shard": 32, "chunk": 32, "phase": 8, "src": 16, "dst": 16, "length": 64,
        "checksum": 32}


def _u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1)


def field_value(name: str) -> st.SearchStrategy[Any]:
    """Any value of header field ``name``, edge values likely."""
    if name == "magic":
        return st.one_of(st.just(MAGIC), st.binary(min_size=4, max_size=4))
    hi = 2 ** BITS[name] - 1
    return st.one_of(st.sampled_from([0, 1, 2, 3, hi]), st.integers(0, hi))


def refield(frame: bytes, **values: Any) -> bytes:
    """``frame`` with header fields replaced and the header CRC recomputed (valid)."""
    fields = list(HEADER.unpack_from(frame))[:-1]
    for name, value in values.items():
        fields[FIELDS.index(name)] = value
    prefix = HEADER.pack(*fields, 0)[:-4]
    return prefix + struct.pack("!I", zlib.crc32(prefix)) + frame[HEADER_SIZE:]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, *, most: int = 3) -> bytes:
    """``base`` after 0..``most`` edits: a bit flip, an overwritten byte, a cut, junk added."""
    buf = bytearray(base)
    for _ in range(draw(st.integers(0, most))):
        op = draw(st.sampled_from(["flip", "set", "cut", "append"]))
        if op in ("flip", "set") and buf:
            pos = draw(st.integers(0, len(buf) - 1))
            if op == "flip":
                buf[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                buf[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[draw(st.integers(0, len(buf))):]
        elif op == "append":
            buf += draw(st.binary(min_size=1, max_size=64))
    return bytes(buf)


@st.composite
def refielded(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with one or two header fields set to any value, its header CRC valid."""
    names = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True))
    return refield(base, **{n: draw(field_value(n)) for n in names})


any_header = st.builds(
    Header,
    kind=st.one_of(st.sampled_from(list(Kind)), _u(8)),
    plan_version=_u(32), seq=_u(64), numel=_u(64), shard=_u(32), chunk=_u(32),
    phase=_u(8), src=_u(16), dst=_u(16),
    length=st.one_of(st.integers(0, 5000), _u(64)),
    checksum=_u(32), algo=st.one_of(st.sampled_from(list(wire.ChecksumAlgo)), _u(8)),
)


def packed(h: Header) -> bytes:
    out = wire.pack_header(h)
    assert out is not None
    return out


header_bytes = st.one_of(
    st.binary(max_size=2 * HEADER_SIZE),
    any_header.map(packed).flatmap(mutated),
    any_header.map(packed).flatmap(refielded),
)


def header_verdict(buf: bytes, limit: int) -> str | None:
    """The documented rules of a frame header, in the documented order: ``None`` if the
    header is acceptable, else a phrase of the error it must be refused with."""
    if len(buf) < HEADER_SIZE:
        return "short frame header"
    f = HEADER.unpack_from(buf)
    if f[0] != MAGIC:
        return "bad magic"
    if f[1] != PROTOCOL:
        return "protocol version"
    if zlib.crc32(buf[:HEADER_SIZE - 4]) != f[-1]:
        return "bad header checksum"
    if f[2] not in set(Kind):
        return "unknown frame kind"
    if f[3] not in set(wire.ChecksumAlgo):
        return "unknown checksum algorithm"
    if f[12] > limit:
        return "over the limit"
    if f[2] == Kind.DATA and f[12] % 2:
        return "odd"
    return None


# -- decoders ----------------------------------------------------------------------------------

@settings(max_examples=400)
@given(header_bytes, st.one_of(st.integers(0, 1 << 20), _u(64)))
def test_header_decoder_accepts_exactly_the_valid_headers(buf: bytes, limit: int) -> None:
    CASES["header decoder"] += 1
    want = header_verdict(buf, limit)
    try:
        h = wire.unpack_header(buf, max_length=limit)
    except ProtocolError as exc:
        assert want is not None and want in str(exc), (want, exc)
        return
    assert want is None, f"accepted a header that breaks: {want}"
    assert h.length <= limit
    assert packed(h) == buf[:HEADER_SIZE]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"a":' + b"[" * depth  # unterminated


control_payloads = st.one_of(
    json_objects.map(lambda o: json.dumps(o).encode()),
    json_objects.map(lambda o: json.dumps(o).encode()).flatmap(mutated),
    st.binary(max_size=200),
    st.sampled_from([b"[]", b"1", b'"x"', b"null", b"true", b"", b"{", b"NaN", b'{"a":NaN}']),
    st.builds(_nested, st.integers(1, 200_000), st.sampled_from(["list", "object", "open"])),
    st.integers(4000, 6000).map(lambda n: b'{"a":' + b"9" * n + b"}"),
    st.tuples(json_objects, st.sampled_from(["utf-16", "utf-32", "latin-1"])).map(
        lambda t: json.dumps(t[0], ensure_ascii=False).encode(t[1], errors="replace")),
)


@settings(max_examples=300)
@given(control_payloads, st.sampled_from(["right", "wrong checksum", "wrong length",
                                          "wrong kind"]))
def test_control_decoder_returns_the_object_or_a_protocol_error(payload: bytes,
                                                                damage: str) -> None:
    CASES["control decoder"] += 1
    h = Header(Kind.CONTROL, 0, 5, 0, 0, 0, 0, 0, 0, len(payload), wire.checksum(payload))
    if damage == "wrong checksum":
        h = Header(**{**_asdict(h), "checksum": h.checksum ^ 0x10})
    elif damage == "wrong length":
        h = Header(**{**_asdict(h), "length": h.length + 1})
    elif damage == "wrong kind":
        h = Header(**{**_asdict(h), "kind": Kind.DATA})
    try:
        want: Any = json.loads(payload) if damage == "right" else ProtocolError
    except (ValueError, RecursionError):
        want = ProtocolError
    if not isinstance(want, dict):
        want = ProtocolError
    try:
        got: Any = wire.unpack_control(h, payload)
    except ProtocolError:
        got = ProtocolError
    assert repr(got) == repr(want)


def _asdict(h: Header) -> dict[str, Any]:
    return {name: getattr(h, name) for name in Header.__dataclass_fields__}


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (a Connection needs TCP: it sets TCP_NODELAY)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=5)
        b, _ = server.accept()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


LIMIT = 4096  # the frame limit of the stream fuzz


def control_frame(obj: dict[str, Any]) -> bytes:
    return wire.pack_control(obj)


def payload_frame(kind: Kind, payload: bytes) -> bytes:
    h = Header(kind, 1, 0, len(payload) // 4, 0, 0, 0, 1, 0, len(payload),
               wire.checksum(payload))
    return packed(h) + payload


valid_frames = st.one_of(
    json_objects.map(control_frame),
    st.binary(max_size=64).map(lambda b: payload_frame(Kind.DATA, b + b"\0" * (len(b) % 2))),
    st.binary(max_size=64).map(lambda b: payload_frame(Kind.PROBE, b)),
)
stream_frames = st.one_of(
    valid_frames, valid_frames.flatmap(mutated), valid_frames.flatmap(refielded),
    st.binary(min_size=1, max_size=80),
)


def reference_read(stream: bytes, limit: int) -> tuple[list[Any], type[Exception] | None]:
    """What reading ``stream`` frame by frame must give: the frames (control: the object,
    else the payload), then ``None`` (a clean end), ProtocolError or PeerError."""
    items: list[Any] = []
    at = 0
    while True:
        if at == len(stream):
            return items, None
        head = stream[at:at + HEADER_SIZE]
        if len(head) < HEADER_SIZE:
            return items, PeerError
        if header_verdict(head, limit) is not None:
            return items, ProtocolError
        f = HEADER.unpack_from(head)
        kind, algo, length, crc = f[2], f[3], f[12], f[13]
        at += HEADER_SIZE
        payload = stream[at:at + length]
        if len(payload) < length:
            return items, PeerError
        at += length
        if wire.checksum(payload, algo) != crc:
            return items, ProtocolError
        if kind != Kind.CONTROL:
            items.append(payload)
            continue
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return items, ProtocolError
        if not isinstance(obj, dict):
            return items, ProtocolError
        items.append(obj)


def read_stream(conn: Connection, limit: int) -> tuple[list[Any], BaseException | None, bool]:
    """Read frames off ``conn`` the way a site does until the end or an error; the flag
    tells whether the Connection raised the error (else the reader's own ``wire.verify``)."""
    items: list[Any] = []
    try:
        while True:
            h = conn.read_header(max_length=limit)
            if h is None:
                return items, None, True
            if h.kind == Kind.CONTROL:
                items.append(conn.read_control(h))
                continue
            buf = bytearray(h.length)
            conn.read_into(memoryview(buf))
            try:
                wire.verify(h, buf)
            except Exception as exc:
                return items, exc, False
            items.append(bytes(buf))
    except Exception as exc:  # judged by the caller: only the protocol's errors may come
        return items, exc, True


@settings(max_examples=200)
@given(st.lists(stream_frames, max_size=5))
def test_a_connection_reads_the_valid_frames_then_refuses(frames: list[bytes]) -> None:
    CASES["connection stream"] += 1
    stream = b"".join(frames)
    want_items, want_error = reference_read(stream, LIMIT)
    sizes: list[int] = []

    def spy(*args: Any) -> bytearray:  # links.py's allocation path
        sizes.append(args[0] if args and isinstance(args[0], int) else 0)
        return bytearray(*args)

    with tcp_pair() as (a, b), pytest.MonkeyPatch.context() as mp:
        mp.setattr(links, "bytearray", spy, raising=False)
        a.sendall(stream)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2.0)
        conn = Connection(b, 1, "fuzz peer")
        t0 = time.monotonic()
        items, error, by_conn = read_stream(conn, LIMIT)
        elapsed = time.monotonic() - t0
    assert elapsed < 1.5 and "timed out" not in str(error), f"a read blocked: {error}"
    assert max(sizes, default=0) <= LIMIT, f"asked for a {max(sizes)}-byte buffer"
    assert repr(items) == repr(want_items)
    SEEN[f"stream ending {getattr(want_error, '__name__', 'cleanly')}"] += 1
    if want_error is None:
        assert error is None, error
        return
    assert type(error) is want_error, (want_error, error)
    if by_conn:  # the Connection names the peer, and closes a connection it cannot read on
        assert "fuzz peer" in str(error), error
        assert conn.sock.fileno() == -1, "the connection was left open after an error"


@settings(max_examples=60)
@given(st.sampled_from(list(Kind)), st.integers(LIMIT + 1, 2**64 - 1))
def test_a_length_over_the_limit_is_refused_from_the_header_alone(kind: Kind,
                                                                  length: int) -> None:
    """Only the 56 header bytes are sent and the sender stays open: reading any payload
    would block (and time out as a PeerError); allocating it would show in tracemalloc."""
    CASES["oversize header"] += 1
    head = packed(Header(kind, 1, 0, 0, 0, 0, 0, 0, 0, length, 0))
    with tcp_pair() as (a, b):
        a.sendall(head)
        b.settimeout(2.0)
        conn = Connection(b, 1, "fuzz peer")
        tracemalloc.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(ProtocolError, match=rf"fuzz peer: frame of {length} bytes "
                                                    rf"over the limit of {LIMIT}"):
                conn.read_header(max_length=LIMIT)
            elapsed = time.monotonic() - t0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert elapsed < 1.5
        assert peak < 64 * 1024, f"refusing the header allocated {peak} bytes"
        a.settimeout(2.0)
        assert a.recv(1) == b"", "the refused connection was not closed"


OUR_NONCE = bytes(range(100, 132))


@settings(max_examples=300)
@given(st.sampled_from(["client", "server"]), _u(32), st.binary(min_size=32, max_size=32),
       st.data())
def test_a_handshake_accepts_only_the_valid_transcript(role: str, peer_rank: int,
                                                       peer_nonce: bytes,
                                                       data: st.DataObject) -> None:
    CASES["handshake"] += 1
    handshake = auth.client_handshake if role == "client" else auth.server_handshake
    peer_role = b"S" if role == "client" else b"C"
    valid = HELLO.pack(HELLO_MAGIC, 1, peer_rank, peer_nonce) + \
        proof(SECRET, peer_role, OUR_NONCE, peer_nonce, peer_rank)
    sent = data.draw(st.one_of(mutated(valid), st.binary(max_size=100)), label="sent")
    a, b = socket.socketpair()
    with a, b, pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "secrets", types.SimpleNamespace(token_bytes=lambda n: OUR_NONCE))
        b.sendall(sent)
        b.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        try:
            got: int | None = handshake(a, SECRET, 7, timeout=2.0)
        except PeerError as exc:
            assert "timed out" not in str(exc)
            got = None
        assert time.monotonic() - t0 < 1.9
    ok = sent[:HELLO.size + PROOF_SIZE] == valid and peer_nonce != OUR_NONCE
    assert got == (peer_rank if ok else None)


def test_accept_of_a_connection_reset_before_its_handshake_is_a_peer_error() -> None:
    """The peer resets the connection before the listener serves it: ``getpeername`` then
    fails with ENOTCONN, which must come out as the PeerError a listener refuses with."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        c = socket.create_connection(server.getsockname())
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        time.sleep(0.05)
        raw, _ = server.accept()
        with pytest.raises(PeerError, match=r"reset|closed|connection"):
            links.accept(raw, rank=0, secret=SECRET, timeout=1.0)
        assert raw.fileno() == -1, "the refused socket was left open"


# -- live listeners ----------------------------------------------------------------------------

class Lines(logging.Handler):
    """Keeps the text of the runtime's log records (not the records: a record holds its
    exception, whose traceback would keep a refused connection's socket alive)."""

    def __init__(self, *, keep_records: bool = False) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.keep_records = keep_records

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if self.keep_records:
            self.records.append(record)

    def wait_for(self, test: Callable[[str], bool], within: float, start: int = 0) -> str | None:
        deadline = time.monotonic() + within
        while True:
            found = next((m for m in self.lines[start:] if test(m)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


@contextlib.contextmanager
def runtime_log(*, keep_records: bool = False) -> Iterator[Lines]:
    """Capture the runtime's log here only (pytest's own capture keeps the records, and with
    them the refused connections: see :class:`Lines`)."""
    logger = logging.getLogger("netstorm.runtime")
    handler = Lines(keep_records=keep_records)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = keep_records
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def thread_crashes() -> Iterator[list[str]]:
    """Exceptions that end a thread (a site's listener or reader dying of one is a crash)."""
    crashes: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        crashes.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
                       f"{args.exc_value}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threading, "excepthook", hook)
        yield crashes


class Live:
    """Two sites of a 2-worker topology, each in a thread of this process, on loopback."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.view = builtin("random:2:1")
        port = free_port()
        self.sites: dict[int, Site] = in_threads(
            self.view.n, lambda r: Site(config(self.view, r, port, timeout_s=timeout_s),
                                        self.view, "ring"), timeout=60)

    def address(self, rank: int) -> tuple[str, int]:
        return ("127.0.0.1", self.sites[rank].port)

    def allreduce(self, numel: int, seed: int) -> tuple[dict[int, Any], np.ndarray]:
        """Every worker's all-reduce (its result array, or the NetstormError it raised), and
        numpy's mean of the inputs."""
        grads = {r: np.random.default_rng((seed, r)).standard_normal(numel, dtype=np.float32)
                 for r in self.sites}

        def one(rank: int) -> Any:
            buf = grads[rank].copy()
            try:
                self.sites[rank].allreduce(buf)
            except NetstormError as exc:
                return exc
            return buf

        out = in_threads(self.view.n, one, timeout=30)
        return out, np.asarray(np.mean([grads[r] for r in self.sites], axis=0, dtype=np.float64))

    def close(self) -> None:
        in_threads(self.view.n, lambda r: self.sites[r].close(), timeout=30)


def closed_within(sock: socket.socket, within: float) -> bool:
    """Read and drop what comes until the peer closes (EOF or a reset); False if it is still
    open after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True


def dial(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring that the listener may already have closed (it may refuse early)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def capture_transcript(address: tuple[str, int], rank: int) -> bytes:
    """A client's side of a successful handshake (hello + proof), for replays."""
    nonce = os.urandom(32)
    with dial(address) as sock:
        hello = HELLO.pack(HELLO_MAGIC, 1, rank, nonce)
        sock.sendall(hello)
        server_nonce = HELLO.unpack(recv_exact(sock, HELLO.size))[3]
        mine = proof(SECRET, b"C", server_nonce, nonce, rank)
        sock.sendall(mine)
        assert len(recv_exact(sock, PROOF_SIZE)) == PROOF_SIZE
    return hello + mine


def refused_by_the_connection(frame: bytes) -> bool:
    """Whether reading ``frame`` (then the end of the stream) as an authenticated
    connection's first frame fails inside :class:`Connection`: a malformed header, a bad
    control payload, a frame cut off. (A listener takes a valid data or join hello; the
    refusals of its own, a valid frame of another kind or no frame at all, are pinned by
    ``test_a_refused_first_frame_closes_the_connection``.)"""
    if not frame:
        return False
    try:
        h = wire.unpack_header(frame, max_length=1 << 20)
    except ProtocolError:
        return True
    if h.kind != Kind.CONTROL:
        return False
    if len(frame) < HEADER_SIZE + h.length:
        return True
    try:
        wire.unpack_control(h, frame[HEADER_SIZE:HEADER_SIZE + h.length])
    except ProtocolError:
        return True
    return False


DATA_HELLO = wire.pack_control({"type": "data"})
DATA_FRAME = payload_frame(Kind.DATA, bytes(400))


@st.composite
def authenticated_first_frames(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from([DATA_HELLO, wire.pack_control({"type": "join"}),
                                 DATA_FRAME, payload_frame(Kind.PROBE, bytes(64))]))
    frame = draw(st.one_of(
        mutated(base),
        refielded(base),
        st.integers(1, 1 << 20).map(lambda n: refield(DATA_HELLO, length=n)),
        st.integers((1 << 20) + 1, 2**64 - 1).map(lambda n: refield(DATA_HELLO, length=n)),
        st.integers(1, len(base) - 1).map(lambda n: base[:n]),
        st.builds(_nested, st.integers(2000, 100_000), st.sampled_from(["list", "object"]))
        .map(lambda p: control_frame_of(p)),
        st.binary(min_size=1, max_size=200),
    ))
    assume(refused_by_the_connection(frame))
    return frame


def control_frame_of(payload: bytes) -> bytes:
    h = Header(Kind.CONTROL, 0, 0, 0, 0, 0, 0, 0, 0, len(payload), wire.checksum(payload))
    return packed(h) + payload


live_cases = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("reset"), st.just(b"")),
    st.tuples(st.just("hello+garbage"),
              st.builds(lambda r, n, g: HELLO.pack(HELLO_MAGIC, 1, r, n) + g, _u(32),
                        st.binary(min_size=32, max_size=32), st.binary(max_size=100))),
    st.tuples(st.just("bad hello"),
              st.builds(lambda r, n: HELLO.pack(HELLO_MAGIC, 1, r, n), _u(32),
                        st.binary(min_size=32, max_size=32)).flatmap(mutated)),
    st.tuples(st.just("wrong proof"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("replay"), st.sampled_from(["as is", "other rank"]).map(str.encode)),
)


def play(case: tuple[str, bytes], address: tuple[str, int], transcript: bytes) -> socket.socket:
    """Act out ``case`` against the listener at ``address``; returns the client socket."""
    kind, data = case
    sock = dial(address)
    if kind == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return sock
    if kind == "wrong proof":  # a real hello, then a proof made with another secret
        nonce = os.urandom(32)
        sock.sendall(HELLO.pack(HELLO_MAGIC, 1, 3, nonce))
        server_nonce = HELLO.unpack(recv_exact(sock, HELLO.size))[3]
        send_quietly(sock, proof(b"not " + SECRET + data, b"C", server_nonce, nonce, 3))
    elif kind == "replay":
        replayed = transcript if data == b"as is" else \
            transcript[:5] + struct.pack("!I", 9) + transcript[9:]
        send_quietly(sock, replayed)
    elif kind == "authenticated":
        client_handshake(sock, SECRET, 1, timeout=5)
        send_quietly(sock, data)
    else:
        send_quietly(sock, data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    return sock


def test_live_listeners_refuse_fuzzed_connections_and_keep_serving() -> None:
    timeout_s = 8.0
    before = set(threading.enumerate())
    with runtime_log() as log, thread_crashes() as crashes:
        live = Live(timeout_s)
        slow: list[socket.socket] = []
        try:
            # slow clients, opened first: dropped at the handshake timeout
            opened = time.monotonic()
            for rank in (0, 1):
                for sent in (b"", b"NS", HELLO_MAGIC + b"\x01",
                             HELLO.pack(HELLO_MAGIC, 1, 5, os.urandom(32))):
                    slow.append(dial(live.address(rank)))
                    slow[-1].sendall(sent)
            mark = len(log.lines)
            transcript = capture_transcript(live.address(0), 1)
            assert log.wait_for(lambda m: "first frame is not a hello" in m, 3, mark)

            def fuzz(case: tuple[str, bytes], rank: int) -> None:
                stage = "first frame" if case[0] == "authenticated" else "handshake"
                CASES[f"live listener, {stage}"] += 1
                SEEN[f"live {case[0]}"] += 1
                start = len(log.lines)
                sock = play(case, live.address(rank), transcript)
                with sock:
                    port = sock.getsockname()[1]
                    if case[0] != "reset":
                        assert closed_within(sock, 5.0), f"{case[0]}: connection left open"
                peer = re.compile(rf"127\.0\.0\.1:{port}(?!\d)")
                refused = log.wait_for(lambda m: "refused a connection" in m and (
                    case[0] == "reset" or peer.search(m) is not None), 3.0, start)
                assert refused, f"{case[0]}: no refusal naming the peer in {log.lines[start:]}"
                assert not crashes, crashes

            settings(max_examples=40)(given(live_cases, st.sampled_from([0, 1]))(fuzz))()
            settings(max_examples=30)(given(
                st.tuples(st.just("authenticated"), authenticated_first_frames()),
                st.sampled_from([0, 1]))(fuzz))()
            left = opened + timeout_s + 3 - time.monotonic()
            for sock in slow:
                assert closed_within(sock, max(left, 0.5)), "a slow client was never dropped"
            # the sites still work
            out, want = live.allreduce(5000, seed=1)
            for rank in live.sites:
                assert not isinstance(out[rank], BaseException), out[rank]
                np.testing.assert_allclose(out[rank], want, rtol=0, atol=2e-6)
            assert not crashes, crashes
        finally:
            for sock in slow:
                sock.close()
            live.close()
    deadline = time.monotonic() + 5
    while (alive := [t.name for t in threading.enumerate()
                     if t not in before and t.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"threads left running: {alive}"


# -- an authenticated data connection sends a corrupted frame -----------------------------------

NUMEL = 1000
#: the frame classes the site must name the peer for (the rest: see the last test)
NAMED = {"header flip", "length over", "length wrong", "odd length", "kind", "algo",
         "version", "truncate"}
CAUSE = {"header flip": ("bad magic", "protocol version", "bad header checksum"),
         "payload flip": ("checksum mismatch",), "length over": ("over the limit",),
         "length wrong": ("expected",), "odd length": ("odd",),
         "kind": ("unknown frame kind", "control frame on a data connection"),
         "algo": ("unknown checksum algorithm",), "version": ("plan version",),
         "message": ("unexpected message",), "truncate": ("closed",)}


def _pick(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer of ``[lo, hi]`` (within u64): an end of the range a third of the time."""
    inner = int(rng.integers(lo, hi, endpoint=True, dtype=np.uint64))
    return [lo, hi, inner][int(rng.integers(0, 3))]


def corrupt(frame: bytes, damage: str, seed: int) -> bytes:
    """``frame`` (a valid DATA frame of collective 0) damaged as ``damage`` says."""
    rng = np.random.default_rng(seed)
    length = HEADER.unpack_from(frame)[12]
    if damage in ("header flip", "payload flip"):
        lo, hi = (0, HEADER_SIZE - 1) if damage == "header flip" else (HEADER_SIZE,
                                                                       len(frame) - 1)
        buf = bytearray(frame)
        buf[_pick(rng, lo, hi)] ^= 1 << _pick(rng, 0, 7)
        return bytes(buf)
    if damage == "length over":
        return refield(frame, length=_pick(rng, (1 << 30) + 1, 2**64 - 1))
    if damage == "length wrong":
        wrong = 2 * _pick(rng, 0, 1 << 29)
        return refield(frame, length=wrong if wrong != length else length + 2)
    if damage == "odd length":
        return refield(frame, length=2 * _pick(rng, 0, (1 << 29) - 1) + 1)  # <= the limit
    if damage == "kind":
        return refield(frame, kind=[0, 2, 4, 255, _pick(rng, 4, 255)][int(rng.integers(0, 5))])
    if damage == "algo":
        return refield(frame, algo=[0, 3, 255, _pick(rng, 3, 255)][int(rng.integers(0, 4))])
    if damage == "version":
        return refield(frame, plan_version=_pick(rng, 2, 2**32 - 1))
    if damage == "message":
        return refield(frame, shard=_pick(rng, 1000, 2**32 - 1))
    assert damage == "truncate"  # at least a byte: a close at a frame boundary is a peer
    return frame[:_pick(rng, 1, len(frame) - 1)]  # gone (test_faults), held for a verdict


def corrupt_data_connection(damage: str, seed: int) -> tuple[str, str]:
    """Start two sites; a client holding the secret joins site 0 as rank 1's data
    connection and sends one damaged frame of collective 0; then both workers all-reduce.
    Returns the error site 0's all-reduce raised and the client's address."""
    with runtime_log() as log, thread_crashes() as crashes:
        live = Live(10.0)
        sock: socket.socket | None = None
        try:
            compiled = live.sites[0].versions.compiled(1, NUMEL)
            message, (_, elems) = sorted(compiled.offsets.items())[0]
            payload = np.random.default_rng(seed).standard_normal(elems, dtype=np.float32)
            header = data_header(message, payload, plan_version=1, seq=0, numel=NUMEL)
            frame = corrupt(packed(header) + payload.tobytes(), damage, seed)
            sock = dial(live.address(0))
            assert client_handshake(sock, SECRET, 1, timeout=5) == 0
            sock.sendall(DATA_HELLO)
            send_quietly(sock, frame)
            if damage == "truncate":
                sock.shutdown(socket.SHUT_WR)
            peer = f"127.0.0.1:{sock.getsockname()[1]}"
            # the receiving site fails the run, and logs why, before the workers start
            assert log.wait_for(lambda m: m.startswith("site r0: ")
                                and any(c in m for c in CAUSE[damage]), 5.0), \
                f"{damage}: site 0 did not notice: {log.lines}"
            out, want = live.allreduce(NUMEL, seed=2)
            for rank in live.sites:  # never silently wrong, never a hang
                assert isinstance(out[rank], NetstormError), (damage, rank, out[rank], want)
            error = out[0]
            assert isinstance(error, ProtocolError | PeerError)
            assert any(c in str(error) for c in CAUSE[damage]), (damage, error)
            assert not crashes, crashes
        finally:
            live.close()
        if sock is not None:
            with sock:
                assert closed_within(sock, 3.0), "the site left the connection open"
    return str(error), peer


DAMAGES = sorted(NAMED)


@pytest.mark.parametrize("damage", DAMAGES)
@settings(max_examples=2)
@given(seed=_u(32))
def test_a_corrupted_frame_on_a_data_connection_fails_the_run_loudly(damage: str,
                                                                     seed: int) -> None:
    """By design an authenticated data connection belongs to the run: a corrupted frame on it
    is an error of the run. Every worker raises, site 0 with the cause and the peer."""
    CASES["corrupted data frame"] += 1
    SEEN[f"data frame {damage}"] += 1
    error, peer = corrupt_data_connection(damage, seed)
    assert peer in error, f"the error does not name the peer {peer}: {error}"


# -- findings fixed in runtime/site.py ---------------------------------------------------------

def test_an_authenticated_peer_that_never_sends_its_hello_is_dropped() -> None:
    timeout_s = 3.0
    with runtime_log() as log:
        live = Live(timeout_s)
        try:
            with dial(live.address(1)) as sock:
                client_handshake(sock, SECRET, 0, timeout=5)
                assert closed_within(sock, timeout_s + 2)
                assert log.wait_for(lambda m: "refused a connection" in m, 1.0)
        finally:
            live.close()


@pytest.mark.parametrize("first", ["nothing", "a DATA frame"])
def test_a_refused_first_frame_closes_the_connection(first: str) -> None:
    with runtime_log(keep_records=True) as log:
        live = Live()
        try:
            with dial(live.address(0)) as sock:
                client_handshake(sock, SECRET, 1, timeout=5)
                port = sock.getsockname()[1]
                if first == "a DATA frame":
                    sock.sendall(DATA_FRAME)
                with contextlib.suppress(OSError):  # the site may have closed it already
                    sock.shutdown(socket.SHUT_WR)
                assert log.wait_for(lambda m: f"127.0.0.1:{port}" in m
                                    and "first frame is not a hello" in m, 3.0)
                assert closed_within(sock, 2.0)
        finally:
            live.close()


@pytest.mark.parametrize("rank,hello", [(0, {"type": "nope"}), (1, {"type": "join"})])
def test_an_unusable_hello_is_logged(rank: int, hello: dict[str, Any]) -> None:
    with runtime_log() as log:
        live = Live()
        try:
            with dial(live.address(rank)) as sock:
                client_handshake(sock, SECRET, 1 - rank, timeout=5)
                port = sock.getsockname()[1]
                sock.sendall(wire.pack_control(hello))
                sock.shutdown(socket.SHUT_WR)
                assert closed_within(sock, 3.0)
                assert log.wait_for(lambda m: "refused a connection" in m
                                    and f"127.0.0.1:{port}" in m, 1.5), log.lines
        finally:
            live.close()


@pytest.mark.parametrize("damage", ["payload flip", "message"])
def test_every_data_frame_error_names_the_peer(damage: str) -> None:
    error, peer = corrupt_data_connection(damage, seed=3)
    assert peer in error, error
