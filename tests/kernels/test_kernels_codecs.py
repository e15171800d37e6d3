"""pack / unpack_accumulate on the CPU back end; the bit-level helpers; codec error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from netstorm.kernels import _cpu, codec_error, pack, reference, unpack_accumulate

from netstorm.cli.bench import kernels as bench

SIZES = [1, 127, 128, 129, 1023, 1024, 1025, 2**20]
SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-14,
     2.0**-24, 2.0**-25, 3 * 2.0**-26, 1e-30, 3.4e38, -3.4e38, 1.0 + 2.0**-8, 1.0 + 2.0**-11],
    dtype=np.float32,
)
ALL_HALVES = np.arange(2**16, dtype=np.uint32).astype(np.uint16)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def _torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


# --- the reference against independent oracles (numpy float16, torch bfloat16) ---


def test_reference_bf16_encode_matches_torch() -> None:
    rng = np.random.default_rng()
    x = np.concatenate([rng.standard_normal(2**16, dtype=np.float32) * 1e3, SPECIALS])
    x = np.concatenate([x, rng.integers(0, 2**32, 2**16, dtype=np.uint32).view(np.float32)])
    ours, theirs = reference.bf16_encode(x), _torch_bf16_bits(x)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(reference.bf16_decode(ours[~finite])).all()


def test_reference_bf16_decode_matches_torch_for_all_patterns() -> None:
    ours = reference.bf16_decode(ALL_HALVES)
    theirs = torch.from_numpy(ALL_HALVES.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours, theirs)


# --- kernels against the reference ---


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("n", SIZES)
def test_pack_matches_reference(dtype: str, n: int) -> None:
    rng = np.random.default_rng()
    x = rng.standard_normal(n, dtype=np.float32) * 100
    x[: min(n, SPECIALS.size)] = SPECIALS[: min(n, SPECIALS.size)]
    poison = np.full(n, 0x7E01, np.uint16)  # a NaN pattern the kernel never writes
    out = poison.view(np.float16) if dtype == "fp16" else poison
    with np.errstate(over="ignore", invalid="ignore"):
        got = pack(x, scale=0.5, dtype=dtype, out=out)
        expected = reference.pack(x, 0.5, dtype)
    assert got is out
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def test_pack_allocates_the_documented_types() -> None:
    x = np.random.default_rng().standard_normal((5, 7), dtype=np.float32)
    h, b = pack(x), pack(x, dtype="bf16")
    assert h.dtype == np.float16 and h.shape == (5, 7)
    assert b.dtype == np.uint16 and b.shape == (5, 7)
    np.testing.assert_array_equal(h, x.astype(np.float16))
    np.testing.assert_array_equal(b, _torch_bf16_bits(x))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("n", SIZES)
def test_unpack_accumulate_matches_reference(dtype: str, n: int) -> None:
    rng = np.random.default_rng()
    packed = reference.pack(rng.standard_normal(n, dtype=np.float32) * 10, 1.0, dtype)
    prior = rng.standard_normal(n, dtype=np.float32)
    acc = prior.copy()
    assert unpack_accumulate(acc, packed, scale=0.25, dtype=dtype) is acc
    np.testing.assert_array_equal(acc, reference.unpack_accumulate(prior, packed, 0.25, dtype))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_unpack_decodes_every_bit_pattern(dtype: str) -> None:
    packed = ALL_HALVES.view(np.float16) if dtype == "fp16" else ALL_HALVES
    acc = np.zeros(2**16, np.float32)
    unpack_accumulate(acc, packed)
    if dtype == "fp16":
        expected = ALL_HALVES.view(np.float16).astype(np.float32)
    else:
        expected = torch.from_numpy(ALL_HALVES.view(np.int16)).view(torch.bfloat16).float()
        expected = expected.numpy()
    np.testing.assert_array_equal(acc, expected)


def test_unpack_reads_uint16_as_fp16_when_told() -> None:
    x = np.random.default_rng().standard_normal(1025, dtype=np.float32)
    bits = x.astype(np.float16).view(np.uint16)
    acc = np.zeros(1025, np.float32)
    unpack_accumulate(acc, bits, dtype="fp16")
    np.testing.assert_array_equal(acc, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_cpu_round_trip(dtype: torch.dtype) -> None:
    x = torch.randn(3, 343)
    wire = "fp16" if dtype == torch.float16 else "bf16"
    p = pack(x, scale=2.0, dtype=wire)
    assert isinstance(p, torch.Tensor) and p.dtype == dtype and p.shape == x.shape
    assert torch.equal(p, (x * 2.0).to(dtype))
    acc = torch.ones(3, 343)
    unpack_accumulate(acc, p, scale=0.5)
    assert torch.equal(acc, 1.0 + 0.5 * (x * 2.0).to(dtype).float())


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32)),
    dtype=st.sampled_from(["fp16", "bf16"]),
    scale=st.floats(-8, 8, width=32),
)
def test_property_pack_matches_reference(x, dtype, scale) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        got = pack(x, scale=scale, dtype=dtype)
        expected = reference.pack(x, scale, dtype)
    nan = np.isnan(reference.decode(expected, dtype))
    np.testing.assert_array_equal(_bits(got)[~nan], _bits(expected)[~nan])
    assert np.isnan(reference.decode(got, dtype)[nan]).all()


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(2.0**-14, 6e4, width=32)),
    dtype=st.sampled_from(["fp16", "bf16"]),
)
def test_property_round_trip_error_is_within_unit_roundoff(x, dtype) -> None:
    acc = np.zeros_like(x)
    unpack_accumulate(acc, pack(x, dtype=dtype), dtype=dtype)
    u = 2.0**-11 if dtype == "fp16" else 2.0**-8
    assert np.all(np.abs(acc.astype(np.float64) - x) <= u * np.abs(x.astype(np.float64)))


# --- the software fp16 path (used on CPUs without F16C) ---


def test_soft_fp16_decode_matches_hardware_for_all_patterns() -> None:
    acc = np.zeros(2**16, np.float32)
    _cpu.unpack_kernel("fp16", False)(acc, ALL_HALVES, np.float32(1.0))
    np.testing.assert_array_equal(acc, ALL_HALVES.view(np.float16).astype(np.float32))


def _midpoints() -> np.ndarray:
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)  # +finite
    mid = ((h[:-1] + h[1:]) / 2).astype(np.float32)  # exact in float32
    return np.concatenate([mid, -mid])


def test_soft_fp16_encode_matches_numpy() -> None:
    rng = np.random.default_rng()
    x = np.concatenate([
        SPECIALS,
        rng.standard_normal(2**16, dtype=np.float32) * 1e-5,  # fp16 subnormals
        rng.standard_normal(2**16, dtype=np.float32) * 3e4,  # near overflow
        rng.integers(0, 2**32, 2**16, dtype=np.uint32).view(np.float32),
        _midpoints(),  # exact ties: round half to even
    ])
    dst = np.full(x.size, 0x7E01, np.uint16)
    _cpu.pack_kernel("fp16", False)(dst, x, np.float32(1.0))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(dst[~nan], expected.view(np.uint16)[~nan])
    assert np.isnan(dst[nan].view(np.float16)).all()


# --- the error the codecs add ---


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_codec_error_figures(dtype: str) -> None:
    ref = codec_error(dtype, n=2**18, seed=3)
    u = ref["unit_roundoff"]
    assert u == (2.0**-11 if dtype == "fp16" else 2.0**-8)
    # round to nearest: inside the normal range the error never exceeds u, and comes close
    assert 0.9 * u < ref["max_rel_err_normal"] <= u
    assert ref["rms_rel_err"] < u / 1.5
    if dtype == "bf16":
        assert ref["max_rel_err"] == ref["max_rel_err_normal"]
    else:  # N(0,1) has values below 2**-14, where fp16 is subnormal
        assert ref["max_rel_err"] > u
        assert ref["max_abs_err"] <= 2.0**-11 * 8  # |x| < 8 here: ulp(8) / 2


def test_kernel_codec_errors_equal_reference_figures() -> None:
    got = bench.codec_errors(n=2**16, seed=5)
    x = np.random.default_rng(5).standard_normal(2**16, dtype=np.float32)
    for dtype in ("fp16", "bf16"):
        assert got[dtype] == reference.codec_error(dtype, x=x)
