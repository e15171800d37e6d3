"""CUDA kernels under the numba CUDA simulator, numpy as the oracle.

Not collected by the normal test run (the name does not start with ``test_``):
``test_kernels_cudasim.py`` runs this file in a child pytest with ``NUMBA_ENABLE_CUDASIM=1``,
which must be set before ``numba.cuda`` is first imported. Sizes sit around the block size
(128 threads) and the grid-stride wrap (4 blocks = 512 threads under the simulator).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 in a fresh process", allow_module_level=True)

from netstorm.kernels import _cuda, fused_reduce, pack, reference, unpack_accumulate
from numba import cuda

SIZES = [1, 127, 128, 129, 1023, 1024, 1025]


def _wire(x: np.ndarray, kind: str) -> np.ndarray:
    return x if kind == "f32" else reference.pack(x, 1.0, kind)


def test_running_on_the_simulator() -> None:
    assert _cuda.SIMULATOR and _cuda.THREADS == 128 and _cuda.SIM_MAX_BLOCKS == 4


@pytest.mark.parametrize("n", SIZES)
def test_fused_reduce_f32(n: int) -> None:
    rng = np.random.default_rng()
    xs = [rng.standard_normal(n, dtype=np.float32) for _ in range(3)]
    out = cuda.to_device(np.full(n, np.nan, np.float32))
    assert fused_reduce(out, [cuda.to_device(x) for x in xs], scale=0.3) is out
    np.testing.assert_array_equal(out.copy_to_host(), reference.fused_reduce(xs, 0.3))


@pytest.mark.parametrize(("kind", "n"), [("fp16", 129), ("fp16", 1025), ("bf16", 128),
                                         ("bf16", 1023)])
def test_fused_reduce_16bit(kind: str, n: int) -> None:
    rng = np.random.default_rng()
    xs = [_wire(rng.standard_normal(n, dtype=np.float32), kind) for _ in range(2)]
    out = cuda.to_device(np.full(n, np.nan, np.float32))
    fused_reduce(out, [cuda.to_device(x) for x in xs], scale=2.0)
    np.testing.assert_array_equal(out.copy_to_host(), reference.fused_reduce(xs, 2.0))


def test_fused_reduce_accumulate_two_dimensional() -> None:
    rng = np.random.default_rng()
    xs = [rng.standard_normal((8, 129), dtype=np.float32) for _ in range(2)]
    prior = rng.standard_normal((8, 129), dtype=np.float32)
    out = cuda.to_device(prior)
    fused_reduce(out, [cuda.to_device(x) for x in xs], scale=-0.5, accumulate=True)
    expected = reference.fused_reduce(xs, -0.5, out=prior, accumulate=True)
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@pytest.mark.parametrize(("dtype", "n"), [("fp16", 127), ("fp16", 1024), ("bf16", 1),
                                          ("bf16", 1025)])
def test_pack_and_unpack(dtype: str, n: int) -> None:
    rng = np.random.default_rng()
    x = rng.standard_normal(n, dtype=np.float32) * 50
    x[:3] = [np.inf, -0.0, 1e6][: min(n, 3)] if n >= 3 else x[:3]
    with np.errstate(over="ignore"):
        expected = reference.pack(x, 1.5, dtype)
    packed = pack(cuda.to_device(x), scale=1.5, dtype=dtype)
    got = packed.copy_to_host()
    assert got.dtype == (np.float16 if dtype == "fp16" else np.uint16)
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))
    prior = rng.standard_normal(n, dtype=np.float32)
    acc = cuda.to_device(prior)
    assert unpack_accumulate(acc, packed, scale=0.25) is acc
    np.testing.assert_array_equal(
        acc.copy_to_host(), reference.unpack_accumulate(prior, expected, 0.25, dtype)
    )


def test_bf16_rounding_and_nan_on_device() -> None:
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, np.nan, -np.inf, 3.4e38, 1e-40],
                 dtype=np.float32)
    got = pack(cuda.to_device(x), dtype="bf16").copy_to_host()
    assert got[0] == 0x3F80 and got[1] == 0x3F82  # ties go to even
    assert np.isnan(reference.bf16_decode(got[2:3])).all()
    np.testing.assert_array_equal(got[3:], reference.bf16_encode(x[3:]))


def test_device_errors() -> None:
    with pytest.raises(ValueError, match=r"inputs\[0\]: is on cpu but out is on cuda"):
        fused_reduce(cuda.to_device(np.zeros(4, np.float32)), [np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match=r"out: dtype float64"):
        fused_reduce(cuda.to_device(np.zeros(4)), [cuda.to_device(np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match=r"out: CUDA array is not C-contiguous"):
        out = cuda.to_device(np.zeros((4, 4), np.float32))[:, ::2]
        fused_reduce(out, [cuda.to_device(np.zeros((4, 2), np.float32))])
