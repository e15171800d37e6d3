"""The runtime's wire format: header round trips, corruption caught, checksums, control frames."""

from __future__ import annotations

import json
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from netstorm.runtime import wire
from netstorm.runtime.wire import (
    CHECKSUM_ALGO,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL,
    ChecksumAlgo,
    Header,
    Kind,
    checksum,
    pack_control,
    pack_header,
    unpack_control,
    unpack_header,
    verify,
)

from netstorm import Message, ProtocolError
from tests.runtime.harness import data_header

LIMIT = 1 << 40


def _u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1)


headers = st.builds(
    Header,
    kind=st.sampled_from(list(Kind)),
    plan_version=_u(32), seq=_u(64), numel=_u(64), shard=_u(32), chunk=_u(32),
    phase=_u(8), src=_u(16), dst=_u(16),
    length=st.integers(0, LIMIT // 4).map(lambda n: 4 * n),
    checksum=_u(32), algo=st.sampled_from(list(ChecksumAlgo)),
)


def sample(**overrides: int) -> Header:
    fields = dict(kind=Kind.DATA, plan_version=3, seq=7, numel=1000, shard=2, chunk=5,
                  phase=1, src=4, dst=0, length=400, checksum=0xDEADBEEF)
    fields.update(overrides)
    return Header(**fields)  # type: ignore[arg-type]


def raw(h: Header, *, magic: bytes = MAGIC, protocol: int = PROTOCOL) -> bytes:
    """Pack ``h`` with any magic or protocol and a *valid* header CRC."""
    prefix = HEADER.pack(magic, protocol, h.kind, h.algo, h.plan_version, h.seq, h.numel,
                         h.shard, h.chunk, h.phase, h.src, h.dst, h.length, h.checksum, 0)
    body = prefix[:-4]
    return body + zlib.crc32(body).to_bytes(4, "big")


def test_layout() -> None:
    assert MAGIC == b"NSTM" and PROTOCOL == 1
    assert HEADER_SIZE == HEADER.size == 56
    assert HEADER.format.startswith("!")
    assert (Kind.DATA, Kind.CONTROL) == (1, 2)
    h = sample()
    assert h.message == Message(2, 5, 1, 4, 0)
    assert isinstance(h.message, Message)
    assert pack_header(h) == raw(h)


@given(headers)
def test_round_trip(h: Header) -> None:
    packed = pack_header(h)
    assert isinstance(packed, bytes) and len(packed) == HEADER_SIZE
    assert unpack_header(packed, max_length=LIMIT) == h


@given(headers, st.integers(0, 64))
def test_pack_into_round_trip(h: Header, offset: int) -> None:
    out = bytearray(b"\xaa" * (offset + HEADER_SIZE + 8))
    assert pack_header(h, out, offset) is None
    assert out[:offset] == b"\xaa" * offset and out[offset + HEADER_SIZE:] == b"\xaa" * 8
    assert bytes(out[offset:offset + HEADER_SIZE]) == pack_header(h)
    view = memoryview(out)
    assert unpack_header(view[offset:], max_length=LIMIT) == h
    pack_header(h, view, 1)  # a memoryview works too
    assert unpack_header(view[1:], max_length=LIMIT) == h


@given(headers, st.integers(0, HEADER_SIZE - 1), st.integers(0, 7))
def test_any_header_bit_flip_is_caught(h: Header, pos: int, bit: int) -> None:
    buf = bytearray(pack_header(h) or b"")
    buf[pos] ^= 1 << bit
    with pytest.raises(ProtocolError, match=r"magic|protocol|header checksum"):
        unpack_header(buf, max_length=LIMIT)


def test_bad_magic() -> None:
    with pytest.raises(ProtocolError, match=r"bad magic b'HTTP'.*not a netstorm frame"):
        unpack_header(raw(sample(), magic=b"HTTP"), max_length=LIMIT)
    with pytest.raises(ProtocolError, match="bad magic"):
        unpack_header(b"GET / HTTP/1.1\r\n".ljust(HEADER_SIZE, b"x"), max_length=LIMIT)


def test_other_protocol_version() -> None:
    with pytest.raises(ProtocolError, match=r"protocol version 2, this side speaks 1$"):
        unpack_header(raw(sample(), protocol=2), max_length=LIMIT)


def test_bad_header_checksum() -> None:
    buf = bytearray(raw(sample()))
    buf[-1] ^= 0x01
    with pytest.raises(ProtocolError, match="bad header checksum"):
        unpack_header(buf, max_length=LIMIT)


def test_corrupted_length_is_caught_before_it_is_trusted() -> None:
    buf = bytearray(pack_header(sample(length=400)) or b"")
    buf[40:48] = (1 << 62).to_bytes(8, "big")  # the length field
    with pytest.raises(ProtocolError, match="bad header checksum"):
        unpack_header(buf, max_length=1024)


def test_unknown_kind_and_algo() -> None:
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        unpack_header(pack_header(sample(kind=9)), max_length=LIMIT)
    with pytest.raises(ProtocolError, match="unknown checksum algorithm 0"):
        unpack_header(pack_header(sample(algo=0)), max_length=LIMIT)


def test_oversize_frame() -> None:
    buf = pack_header(sample(length=1028))
    with pytest.raises(ProtocolError, match=r"^frame of 1028 bytes over the limit of 1024$"):
        unpack_header(buf, max_length=1024)
    assert unpack_header(pack_header(sample(length=1024)), max_length=1024).length == 1024


def test_data_length_is_whole_elements() -> None:
    with pytest.raises(ProtocolError, match=r"DATA frame of 401 bytes: odd"):
        unpack_header(pack_header(sample(length=401)), max_length=LIMIT)
    assert unpack_header(pack_header(sample(length=402)), max_length=LIMIT).length == 402
    h = sample(kind=Kind.CONTROL, length=401)  # control frames are JSON: any length
    assert unpack_header(pack_header(h), max_length=LIMIT) == h


def test_short_header() -> None:
    with pytest.raises(ProtocolError, match=f"short frame header: 10 bytes, need {HEADER_SIZE}"):
        unpack_header(b"NSTM" + bytes(6), max_length=LIMIT)


@pytest.mark.parametrize("field,value", [("src", 1 << 16), ("phase", 256), ("seq", -1),
                                         ("plan_version", 1 << 32)])
def test_pack_out_of_range_names_the_field(field: str, value: int) -> None:
    with pytest.raises(ProtocolError, match=f"{field}={value}"):
        pack_header(sample(**{field: value}))
    with pytest.raises(ProtocolError, match=f"{field}={value}"):
        pack_header(sample(**{field: value}), bytearray(HEADER_SIZE))


def test_checksum_of_numpy_equals_crc_of_bytes() -> None:
    arr = np.random.default_rng(0).random(1000, dtype=np.float32)
    ref = {ChecksumAlgo.CRC32: zlib.crc32}
    try:
        import crc32c

        ref[ChecksumAlgo.CRC32C] = crc32c.crc32c
    except ImportError:
        pass
    assert CHECKSUM_ALGO in ref
    for algo, fn in ref.items():
        want = fn(arr.tobytes())
        assert checksum(arr, algo) == want
        assert checksum(arr.reshape(10, 100), algo) == want  # any C-contiguous shape
        assert checksum(arr.data, algo) == want
        assert checksum(bytearray(arr.tobytes()), algo) == want
    assert checksum(arr) == ref[CHECKSUM_ALGO](arr.tobytes())
    assert checksum(b"") == 0


def test_crc32c_is_the_default_when_installed() -> None:
    pytest.importorskip("crc32c")
    assert CHECKSUM_ALGO == ChecksumAlgo.CRC32C
    assert checksum(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_checksum_64mb_without_copy() -> None:
    arr = np.ones(16 << 20, dtype=np.float32)  # 64 MB
    checksum(arr[:1024])
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        got = checksum(arr)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"checksum allocated {peak} bytes: it copied the payload"
    assert elapsed < 2.0
    assert got == checksum(arr.data.cast("B"))


def test_checksum_rejects_non_contiguous() -> None:
    arr = np.arange(100, dtype=np.float32)
    with pytest.raises(ProtocolError, match="not C-contiguous"):
        checksum(arr[::2])


def test_missing_crc32c_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "_CRC", {ChecksumAlgo.CRC32: zlib.crc32})
    with pytest.raises(ProtocolError, match="pip install crc32c"):
        checksum(b"abcd", ChecksumAlgo.CRC32C)
    with pytest.raises(ProtocolError, match="unknown checksum algorithm 5"):
        checksum(b"abcd", 5)


def test_verify_accepts_and_catches_payload_corruption() -> None:
    payload = np.random.default_rng(1).random(256, dtype=np.float32)
    h = data_header(Message(2, 5, 1, 4, 0), payload, plan_version=3, seq=7, numel=1000)
    assert (h.kind, h.length, h.plan_version, h.algo) == (Kind.DATA, 1024, 3, CHECKSUM_ALGO)
    assert h.message == Message(2, 5, 1, 4, 0)
    verify(h, payload)
    verify(h, payload.tobytes())
    h2 = unpack_header(pack_header(h), max_length=1 << 20)
    verify(h2, payload)
    with pytest.raises(ProtocolError, match="payload of 1020 bytes, header says 1024"):
        verify(h, payload[:-1])


@given(st.integers(0, 1023), st.integers(0, 7))
def test_any_payload_bit_flip_is_caught(pos: int, bit: int) -> None:
    payload = bytearray(np.arange(256, dtype=np.float32).tobytes())
    h = data_header(Message(2, 5, 1, 4, 0), payload, plan_version=3, seq=7, numel=1000)
    payload[pos] ^= 1 << bit
    with pytest.raises(ProtocolError, match=r"seq 7 message \(shard=2, chunk=5, phase=1, "
                                            r"4->0\): payload checksum mismatch"):
        verify(h, payload)


def test_control_round_trip() -> None:
    obj = {"op": "switch", "plan_version": 4, "ranks": [0, 1, 2], "note": "naïve ✓"}
    frame = pack_control(obj, seq=12, plan_version=4)
    h = unpack_header(frame, max_length=1 << 20)
    assert (h.kind, h.seq, h.plan_version, h.length) == (Kind.CONTROL, 12,
                                                          4, len(frame) - HEADER_SIZE)
    assert unpack_control(h, frame[HEADER_SIZE:]) == obj
    assert unpack_control(h, memoryview(frame)[HEADER_SIZE:]) == obj
    assert unpack_control(*_control_parts(pack_control({}))) == {}


def _control_parts(frame: bytes) -> tuple[Header, bytes]:
    return unpack_header(frame, max_length=1 << 20), frame[HEADER_SIZE:]


def _control_with(payload: bytes) -> tuple[Header, bytes]:
    h = Header(Kind.CONTROL, 0, 9, 0, 0, 0, 0, 0, 0, len(payload), checksum(payload))
    return h, payload


@pytest.mark.parametrize("payload,match", [
    (b"{nope", "control frame seq 9: bad JSON"),
    (b"\xff\xfe{}", "control frame seq 9: bad JSON"),
    (b"[1, 2]", "control frame seq 9: JSON list, expected an object"),
    (b"3", "JSON int, expected an object"),
])
def test_control_bad_payload(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_control(*_control_with(payload))


def test_control_checks() -> None:
    h, payload = _control_parts(pack_control({"a": 1}))
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        unpack_control(h, payload.replace(b"1", b"2"))
    with pytest.raises(ProtocolError, match="expected a CONTROL frame"):
        unpack_control(sample(), payload)
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        pack_control([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="not JSON-serialisable"):
        pack_control({"x": object()})
    with pytest.raises(ProtocolError, match="not JSON-serialisable"):
        pack_control({"x": float("nan")})
    assert json.loads(payload) == {"a": 1}
