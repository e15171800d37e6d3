"""Host wrappers reject bad arguments with errors that name the argument and the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from netstorm.kernels import fused_reduce, pack, unpack_accumulate

from netstorm.cli.bench import kernels as bench


def f32(*shape: int) -> np.ndarray:
    return np.zeros(shape or (8,), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: fused_reduce([1.0] * 8, [f32()]), TypeError, r"out: expected a numpy array"),
        (lambda: fused_reduce(f32().astype(np.float64), [f32()]), TypeError, r"out: dtype float64"),
        (lambda: fused_reduce(np.zeros(8, np.float16), [f32()]), TypeError, r"out: dtype float16"),
        (lambda: fused_reduce(f32(), f32()), TypeError, r"inputs: expected a list or tuple"),
        (lambda: fused_reduce(f32(), []), ValueError, r"inputs: need at least one"),
        (
            lambda: fused_reduce(f32(), [f32(), np.zeros(8, np.int32)]),
            TypeError,
            r"inputs\[1\]: dtype int32",
        ),
        (
            lambda: fused_reduce(f32(), [f32(), np.zeros(8, np.float16)]),
            TypeError,
            r"inputs\[1\]: holds fp16 but inputs\[0\] holds f32",
        ),
        (
            lambda: fused_reduce(f32(), [f32(), f32(9)]),
            ValueError,
            r"inputs\[1\]: shape \(9,\) does not match out shape \(8,\)",
        ),
        (lambda: fused_reduce(f32(2, 4), [f32(8)]), ValueError, r"inputs\[0\]: shape"),
        (
            lambda: fused_reduce(f32(16)[::2], [f32()]),
            ValueError,
            r"out: array is not C-contiguous",
        ),
        (
            lambda: fused_reduce(f32(), [f32(16)[::2]]),
            ValueError,
            r"inputs\[0\]: array is not C-contiguous",
        ),
        (
            lambda: fused_reduce(f32(), [f32()], scale="2"),
            TypeError,
            r"scale: expected a real number",
        ),
        (
            lambda: fused_reduce(f32(), [f32()], scale=float("nan")),
            ValueError,
            r"scale: must be finite",
        ),
        (lambda: fused_reduce(f32(), [f32()], scale=1e39), ValueError, r"scale: must be finite"),
        (
            lambda: fused_reduce(torch.zeros(8), [torch.zeros(8, dtype=torch.float64)]),
            TypeError,
            r"inputs\[0\]: dtype torch.float64",
        ),
        (
            lambda: fused_reduce(torch.zeros(8), [torch.zeros(16)[::2]]),
            ValueError,
            r"inputs\[0\]: tensor is not contiguous",
        ),
        (
            lambda: fused_reduce(torch.zeros(8, device="meta"), [torch.zeros(8, device="meta")]),
            ValueError,
            r"out: tensor is on device meta",
        ),
        (lambda: pack(f32(), dtype="fp8"), ValueError, r"dtype: expected one of fp16, bf16"),
        (lambda: pack(np.zeros(8, np.float16)), TypeError, r"src: dtype float16"),
        (lambda: pack(f32(), out=np.zeros(8, np.float32)), TypeError, r"out: dtype float32"),
        (
            lambda: pack(f32(), dtype="bf16", out=np.zeros(8, np.float16)),
            TypeError,
            r"out: dtype float16",
        ),
        (lambda: pack(f32(), out=np.zeros(7, np.float16)), ValueError, r"out: shape \(7,\)"),
        (
            lambda: unpack_accumulate(f32(), np.zeros(8, np.float16), dtype="bf16"),
            TypeError,
            r"packed: a f16 buffer cannot hold bf16",
        ),
        (lambda: unpack_accumulate(f32(), f32()), TypeError, r"packed: dtype float32"),
        (
            lambda: unpack_accumulate(f32(), np.zeros(8, np.uint16), dtype="int8"),
            ValueError,
            r"dtype: expected one of",
        ),
        (
            lambda: unpack_accumulate(f32(), np.zeros(9, np.uint16)),
            ValueError,
            r"packed: shape \(9,\)",
        ),
    ],
)
def test_bad_arguments(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_read_only_out_is_rejected_and_untouched() -> None:
    out = np.full(8, 3.0, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"acc: array is read-only"):
        unpack_accumulate(out, np.zeros(8, np.uint16))
    with pytest.raises(ValueError, match=r"out: array is read-only"):
        fused_reduce(out, [f32()])
    np.testing.assert_array_equal(out, 3.0)


def test_misaligned_array_is_rejected() -> None:
    raw = np.zeros(8 * 4 + 1, np.uint8)[1:]
    misaligned = raw.view(np.float32)
    assert not misaligned.flags.aligned
    with pytest.raises(ValueError, match=r"inputs\[0\]: array data is not aligned"):
        fused_reduce(f32(), [misaligned])


class _FakeCudaArray:
    """Looks like a CUDA array to the host checks (never reaches a kernel)."""

    def __init__(self, typestr: str, shape: tuple[int, ...], strides=None) -> None:
        self.__cuda_array_interface__ = {
            "typestr": typestr, "shape": shape, "strides": strides,
            "data": (0, False), "version": 3,
        }


def test_cpu_and_cuda_buffers_do_not_mix() -> None:
    with pytest.raises(ValueError, match=r"inputs\[0\]: is on cuda but out is on cpu"):
        fused_reduce(f32(), [_FakeCudaArray("<f4", (8,))])


def test_cuda_array_interface_checks() -> None:
    out = _FakeCudaArray("<f4", (8,))
    with pytest.raises(TypeError, match=r"inputs\[0\]: dtype <i4"):
        fused_reduce(out, [_FakeCudaArray("<i4", (8,))])
    with pytest.raises(ValueError, match=r"inputs\[0\]: CUDA array is not C-contiguous"):
        fused_reduce(out, [_FakeCudaArray("<f4", (8,), strides=(8,))])


def test_import_does_not_import_numba_cuda_or_torch() -> None:
    code = (
        "import sys, json, numpy as np, netstorm.kernels as k\n"
        "k.fused_reduce(np.zeros(4, np.float32), [np.ones(4, np.float32)])\n"
        "print(json.dumps({m: m in sys.modules for m in ('numba.cuda', 'torch')}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"numba.cuda": False, "torch": False}


def test_bench_run_is_json_serialisable_and_counts_bytes() -> None:
    res = bench.run(n=4096, inputs=3, repeat=1, gpu=False)
    json.dumps(res)
    assert res["backend"] == "cpu" and res["n"] == 4096 and res["inputs"] == 3
    rows = {r["kernel"]: r for r in res["results"]}
    assert rows["fused_reduce"]["bytes"] == 4 * 4 * 4096
    assert rows["stream_triad"]["bytes"] == 3 * 4 * 4096
    for name in ("fused_reduce", "pack_fp16", "unpack_accumulate_bf16"):
        row = rows[name]
        assert row["gbps"] > 0 and row["vs_numpy"] > 0 and row["vs_triad"] > 0
        assert f"numpy:{name}" in rows
    assert set(res["codec_error"]) == {"fp16", "bf16"}
    assert res["gpu"] == {"skipped": "gpu=False"}
