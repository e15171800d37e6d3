"""CUDA kernels on a real GPU (torch CUDA tensors); skipped when there is none."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                       reason="CUDA simulator enabled in this process"),
]

SIZES = [1, 127, 128, 129, 1023, 1024, 1025, 2**20 + 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", SIZES)
def test_fused_reduce_on_gpu(dtype: torch.dtype, n: int) -> None:
    from netstorm.kernels import fused_reduce

    xs = [torch.randn(n, device="cuda").to(dtype) for _ in range(3)]
    out = torch.full((n,), float("nan"), device="cuda")
    fused_reduce(out, xs, scale=0.5)
    expected = (xs[0].float() + xs[1].float() + xs[2].float()) * 0.5
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)  # GPU may fuse an FMA


@pytest.mark.parametrize("wire", ["fp16", "bf16"])
@pytest.mark.parametrize("n", SIZES)
def test_codecs_on_gpu(wire: str, n: int) -> None:
    from netstorm.kernels import pack, reference, unpack_accumulate

    x = torch.randn(n, device="cuda")
    p = pack(x, scale=2.0, dtype=wire)
    tdtype = torch.float16 if wire == "fp16" else torch.bfloat16
    assert p.dtype == tdtype and p.device.type == "cuda"
    expected = reference.pack(x.cpu().numpy(), 2.0, wire)
    got = p.cpu().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(got, expected.view(np.uint16))
    acc = torch.ones(n, device="cuda")
    unpack_accumulate(acc, p, scale=0.5)
    ref = reference.unpack_accumulate(np.ones(n, np.float32), expected, 0.5, wire)
    np.testing.assert_allclose(acc.cpu().numpy(), ref, rtol=1e-6, atol=1e-7)
