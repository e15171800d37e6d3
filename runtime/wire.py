"""The runtime's wire format: fixed-size frame headers, payload checksums, control frames.

Pure bytes in, values out: nothing here touches a socket (DESIGN 9, 12). A frame is a
:data:`HEADER_SIZE`-byte header followed by ``length`` payload bytes. DATA frames carry a
contiguous slice of a collective's buffer (float32, or 16-bit when the run's wire encoding
packs it, so the length is even; the receiver checks it against the slice it expects);
CONTROL frames carry one JSON object.

Header layout (network byte order, :data:`HEADER`, 56 bytes)::

    magic        4s   b"NSTM"
    protocol     u8   PROTOCOL
    kind         u8   Kind (DATA, CONTROL)
    algo         u8   ChecksumAlgo of the payload checksum (CRC32C, CRC32)
    plan_version u32  the plan the collective runs
    seq          u64  collective sequence number
    numel        u64  elements of the whole collective's buffer
    shard        u32  \\
    chunk        u32   |
    phase        u8    | the message identity, netstorm.program.Message;
    src          u16   | src -> dst is the TREE edge, not the hop
    dst          u16  /
    length       u64  payload bytes
    checksum     u32  checksum of the payload (algorithm ``algo``)
    header_crc   u32  zlib CRC-32 of the 52 bytes before it

The header CRC is checked before any field is trusted, so a corrupted ``length`` cannot make a
receiver allocate or wait for a wrong number of bytes.

Payload checksum. The runtime checksums every payload on the sender and again on the receiver,
so the checksum must be cheap next to the network (the issue's bound: at most 10 % of loopback
throughput). ``benchmarks/checksum.py`` measured, on a loaded 2-core x86-64 machine, in GB/s
(64 MB / 1 MB buffers): ``zlib.crc32`` 4.3 / 4.3; hardware CRC32C from the ``crc32c``
package 17 / 28; ``google-crc32c`` takes only ``bytes``, so a numpy payload needs a copy
first: 1.3 / 17; loopback TCP 3-5 (socketpair 4-8). zlib's CRC-32 costs about as much time
per byte as loopback TCP itself (~100 %); CRC32C costs 4-6x less (~10-30 %, the lower figure
for frames still in cache after ``recv_into``), the cheapest zero-copy option there is. So
payloads use CRC32C when the ``crc32c`` package is installed and fall back to ``zlib.crc32``
when it is not. The algorithm travels in the header (``algo``), so a receiver verifies with the
sender's algorithm; a receiver without ``crc32c`` rejects a CRC32C frame with a ProtocolError
that says to install it. The header CRC is zlib's (52 bytes: its speed does not matter).
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netstorm.errors import ProtocolError
from netstorm.program import Message

__all__ = [
    "CHECKSUM_ALGO",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "PROTOCOL",
    "ChecksumAlgo",
    "Header",
    "Kind",
    "checksum",
    "pack_control",
    "pack_header",
    "unpack_control",
    "unpack_header",
    "verify",
]

MAGIC = b"NSTM"
PROTOCOL = 1


class Kind(enum.IntEnum):
    """What a frame carries: a slice of a collective's buffer, a JSON control message, or
    filler bytes that time a link the plan does not use (a probe; the receiver drops it)."""

    DATA = 1
    CONTROL = 2
    PROBE = 3


class ChecksumAlgo(enum.IntEnum):
    """The payload checksum's algorithm, named in every header."""

    CRC32C = 1  # Castagnoli, hardware-accelerated by the crc32c package
    CRC32 = 2  # zlib's CRC-32 (IEEE), the fallback without the crc32c package


_CRC: dict[int, Callable[[Any], int]] = {ChecksumAlgo.CRC32: zlib.crc32}
try:  # hardware CRC32C (SSE4.2 / ARMv8); see the module docstring for the measurements
    from crc32c import crc32c as _hw_crc32c
except ImportError:  # pragma: no cover - exercised only where the package is missing
    pass
else:
    _CRC[ChecksumAlgo.CRC32C] = _hw_crc32c

CHECKSUM_ALGO: ChecksumAlgo = (ChecksumAlgo.CRC32C if ChecksumAlgo.CRC32C in _CRC
                               else ChecksumAlgo.CRC32)
"""The algorithm this process uses for the payloads it sends."""

_PREFIX = struct.Struct("!4sBBBIQQIIBHHQI")  # everything the header CRC covers
HEADER = struct.Struct(_PREFIX.format + "I")
"""The header's :class:`struct.Struct` (network byte order); the last field is the header CRC."""
HEADER_SIZE = HEADER.size
_CRC_AT = _PREFIX.size
_U32 = struct.Struct("!I")

# Field name -> inclusive maximum, for the header fields a caller sets (all unsigned).
_FIELDS = {
    "kind": 0xFF, "algo": 0xFF, "plan_version": 2**32 - 1, "seq": 2**64 - 1,
    "numel": 2**64 - 1, "shard": 2**32 - 1, "chunk": 2**32 - 1, "phase": 0xFF,
    "src": 0xFFFF, "dst": 0xFFFF, "length": 2**64 - 1, "checksum": 2**32 - 1,
}


@dataclass(frozen=True, slots=True)
class Header:
    """One frame header (see the module docstring for the layout).

    Parameters
    ----------
    kind : int
        :class:`Kind` of the frame.
    plan_version : int
        Version of the plan the collective runs (u32).
    seq : int
        Collective sequence number (u64).
    numel : int
        Elements of the whole collective's buffer (u64); lets a receiver check that sender
        and receiver agree on the collective before it places the payload.
    shard, chunk, phase, src, dst : int
        The message identity (:class:`netstorm.program.Message`); ``src -> dst`` is the tree
        edge, which a relayed message keeps on every hop.
    length : int
        Payload bytes (u64).
    checksum : int
        Checksum of the payload with algorithm ``algo`` (u32).
    algo : int, optional
        :class:`ChecksumAlgo` of ``checksum``; this process's :data:`CHECKSUM_ALGO` by default.
    """

    kind: int
    plan_version: int
    seq: int
    numel: int
    shard: int
    chunk: int
    phase: int
    src: int
    dst: int
    length: int
    checksum: int
    algo: int = CHECKSUM_ALGO

    @property
    def message(self) -> Message:
        """The message identity ``Message(shard, chunk, phase, src, dst)``."""
        return Message(self.shard, self.chunk, self.phase, self.src, self.dst)

    def describe(self) -> str:
        """A short text naming the frame, for error messages."""
        return (f"seq {self.seq} message (shard={self.shard}, chunk={self.chunk}, "
                f"phase={self.phase}, {self.src}->{self.dst})")


def _bytes_view(data: Any) -> memoryview:
    """A flat unsigned-byte memoryview of a C-contiguous buffer, without copying."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.format == "B" and mv.ndim == 1:
        return mv
    if not mv.c_contiguous:
        raise ProtocolError(f"payload of shape {mv.shape} is not C-contiguous; the wire "
                            "format checksums and sends contiguous buffers only")
    return mv.cast("B")


def checksum(data: Any, algo: int = CHECKSUM_ALGO) -> int:
    """Return the payload checksum of ``data`` without copying it.

    Parameters
    ----------
    data : bytes-like
        ``bytes``, ``bytearray``, ``memoryview`` or a C-contiguous numpy array (any dtype);
        its bytes are read through a memoryview cast to ``"B"``.
    algo : int, optional
        :class:`ChecksumAlgo`; :data:`CHECKSUM_ALGO` (CRC32C when the ``crc32c`` package is
        installed, else zlib's CRC-32) by default.

    Returns
    -------
    int
        The unsigned 32-bit checksum.

    Raises
    ------
    ProtocolError
        If ``data`` is not C-contiguous, or ``algo`` is unknown or needs a package that is
        not installed.

    Notes
    -----
    Both implementations release the GIL on large buffers (crc32c from 32 KiB, zlib from
    5 KiB), so receive threads can checksum in parallel. Measured throughput on a 2-core
    x86-64 machine: CRC32C 17 GB/s (64 MB, from memory) to 28 GB/s (1 MB, in cache), zlib
    CRC-32 4.3 GB/s; see ``benchmarks/checksum.py``.
    """
    fn = _CRC.get(algo)
    if fn is None:
        if algo == ChecksumAlgo.CRC32C:
            raise ProtocolError("frame checksum is CRC32C but the crc32c package is not "
                                "installed here: pip install crc32c")
        raise ProtocolError(f"unknown checksum algorithm {algo}")
    return fn(_bytes_view(data))


def verify(h: Header, payload: Any) -> None:
    """Check that ``payload`` is the one ``h`` announced (its size and its checksum).

    Parameters
    ----------
    h : Header
        The frame's header.
    payload : bytes-like
        The received payload (any C-contiguous buffer; not copied).

    Raises
    ------
    ProtocolError
        On a size or checksum mismatch; the message names the message identity and ``seq``.
    """
    view = _bytes_view(payload)
    if view.nbytes != h.length:
        raise ProtocolError(f"{h.describe()}: payload of {view.nbytes} bytes, header says "
                            f"{h.length}")
    got = checksum(view, h.algo)
    if got != h.checksum:
        raise ProtocolError(f"{h.describe()}: payload checksum mismatch (computed "
                            f"{got:#010x}, header says {h.checksum:#010x})")


def _fields(h: Header) -> tuple[Any, ...]:
    return (MAGIC, PROTOCOL, h.kind, h.algo, h.plan_version, h.seq, h.numel, h.shard,
            h.chunk, h.phase, h.src, h.dst, h.length, h.checksum)


def _range_error(h: Header, exc: struct.error) -> ProtocolError:
    for name, hi in _FIELDS.items():
        value = getattr(h, name)
        if not isinstance(value, int) or not 0 <= value <= hi:
            return ProtocolError(f"cannot pack header: {name}={value!r} is not an integer "
                                 f"in [0, {hi}]")
    return ProtocolError(f"cannot pack header: {exc}")  # pragma: no cover - defensive


def pack_header(h: Header, out: bytearray | memoryview | None = None,
                offset: int = 0) -> bytes | None:
    """Pack ``h`` (and its header CRC) into :data:`HEADER_SIZE` bytes.

    Parameters
    ----------
    h : Header
        The header.
    out : bytearray or memoryview, optional
        A writable buffer to pack into at ``offset`` (no allocation); by default a new
        ``bytes`` is returned.
    offset : int, optional
        Where in ``out`` the header starts.

    Returns
    -------
    bytes or None
        The packed header, or None when it was packed into ``out``.

    Raises
    ------
    ProtocolError
        If a field does not fit its wire type (the message names the field).
    """
    try:
        if out is None:
            prefix = _PREFIX.pack(*_fields(h))
            return prefix + _U32.pack(zlib.crc32(prefix))
        _PREFIX.pack_into(out, offset, *_fields(h))
        with memoryview(out) as mv:
            crc = zlib.crc32(mv[offset:offset + _CRC_AT])
        _U32.pack_into(out, offset + _CRC_AT, crc)
        return None
    except struct.error as exc:
        raise _range_error(h, exc) from exc


def unpack_header(buf: Any, *, max_length: int) -> Header:
    """Parse and check a frame header.

    Parameters
    ----------
    buf : bytes-like
        At least :data:`HEADER_SIZE` bytes; the header is the first :data:`HEADER_SIZE`.
    max_length : int
        The largest payload this receiver accepts, in bytes.

    Returns
    -------
    Header

    Raises
    ------
    ProtocolError
        With a one-line message naming the problem: a short buffer, bad magic, another
        protocol version, a bad header checksum, an unknown kind or checksum algorithm, a
        length over ``max_length`` ("frame of N bytes over the limit of M"), or a DATA length
        that is odd. The header CRC is checked before the kind, the algorithm
        and the length are trusted.
    """
    view = _bytes_view(buf)
    if view.nbytes < HEADER_SIZE:
        raise ProtocolError(f"short frame header: {view.nbytes} bytes, need {HEADER_SIZE}")
    (magic, protocol, kind, algo, plan_version, seq, numel, shard, chunk, phase, src, dst,
     length, crc, header_crc) = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a netstorm frame "
                            "or a corrupted header")
    crc_ok = zlib.crc32(view[:_CRC_AT]) == header_crc
    if protocol != PROTOCOL:
        raise ProtocolError(f"frame of protocol version {protocol}, this side speaks "
                            f"{PROTOCOL}" + ("" if crc_ok else " (or a corrupted header)"))
    if not crc_ok:
        raise ProtocolError(f"bad header checksum (computed {zlib.crc32(view[:_CRC_AT]):#010x}"
                            f", header says {header_crc:#010x}): corrupted frame header")
    if kind not in _KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    if algo not in _ALGOS:
        raise ProtocolError(f"unknown checksum algorithm {algo}")
    if length > max_length:
        raise ProtocolError(f"frame of {length} bytes over the limit of {max_length}")
    if kind == Kind.DATA and length % 2:
        raise ProtocolError(f"DATA frame of {length} bytes: odd (elements are 2 or 4 bytes)")
    return Header(kind, plan_version, seq, numel, shard, chunk, phase, src, dst, length, crc,
                  algo)


_KINDS = frozenset(int(k) for k in Kind)
_ALGOS = frozenset(int(a) for a in ChecksumAlgo)


def pack_control(obj: dict[str, Any], seq: int = 0, *, plan_version: int = 0) -> bytes:
    """Pack a whole CONTROL frame (header + JSON payload) carrying ``obj``.

    Parameters
    ----------
    obj : dict
        A JSON-serialisable object (a dict with string keys; no NaN or infinity).
    seq : int, optional
        Sequence number for the header.
    plan_version : int, optional
        Plan version for the header.

    Returns
    -------
    bytes
        The frame: :data:`HEADER_SIZE` header bytes, then the UTF-8 JSON.

    Raises
    ------
    ProtocolError
        If ``obj`` is not a dict or not JSON-serialisable.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"control payload must be a JSON object (dict), not "
                            f"{type(obj).__name__}")
    try:
        payload = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"control payload is not JSON-serialisable: {exc}") from exc
    h = Header(Kind.CONTROL, plan_version, seq, 0, 0, 0, 0, 0, 0, len(payload),
               checksum(payload))
    head = pack_header(h)
    assert head is not None
    return head + payload


def unpack_control(header: Header, payload: Any) -> dict[str, Any]:
    """Verify and decode the JSON object of a CONTROL frame.

    Parameters
    ----------
    header : Header
        The frame's header (from :func:`unpack_header`).
    payload : bytes-like
        The ``header.length`` payload bytes.

    Returns
    -------
    dict

    Raises
    ------
    ProtocolError
        If the frame is not a CONTROL frame, fails :func:`verify`, or its payload is not
        UTF-8 JSON holding an object (nested too deeply to parse included).
    """
    if header.kind != Kind.CONTROL:
        raise ProtocolError(f"{header.describe()}: expected a CONTROL frame, got kind "
                            f"{header.kind}")
    verify(header, payload)
    try:
        obj = json.loads(bytes(payload))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, and
        # nesting deeper than the interpreter's recursion limit ("[[[[...")
        raise ProtocolError(f"control frame seq {header.seq}: bad JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"control frame seq {header.seq}: JSON {type(obj).__name__}, "
                            "expected an object")
    return obj
