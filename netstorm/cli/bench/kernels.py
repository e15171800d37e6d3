"""Bandwidth benchmark of the kernels against numpy and STREAM copy/triad, in one run.

:func:`run` returns a JSON-serialisable dict; ``netstorm bench kernels --json`` prints it and
``benchmarks/kernels.py`` is a script around it.

Conventions (STREAM's): each figure is the best of ``repeat`` timed calls after one warm-up
call (which also compiles); GB/s = bytes moved / best seconds / 1e9, counting each array
read or written once (no write-allocate traffic). fused_reduce with ``k`` fp32 inputs moves
``(k + 1) * 4 * n`` bytes; accumulating adds ``4 * n``. STREAM copy (``a = b``) and triad
(``a = b + s * c``) are numba parallel loops with the same thread count as the kernels.
``vs_numpy`` is numpy's time over the kernel's time for the same result; ``vs_triad`` is the
kernel's GB/s over triad's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

from netstorm.kernels import reference
from netstorm.kernels.api import fused_reduce, pack, unpack_accumulate

__all__ = ["codec_errors", "run"]


@njit(parallel=True, nogil=True, cache=True)
def copy_kernel(dst, src):  # type: ignore[no-untyped-def]
    """STREAM copy: ``dst = src`` (the bandwidth baseline)."""
    for i in prange(src.size):
        dst[i] = src[i]


@njit(parallel=True, nogil=True, cache=True)
def triad_kernel(a, b, c, scale):  # type: ignore[no-untyped-def]
    """STREAM triad: ``a = b + scale * c`` (the bandwidth baseline)."""
    for i in prange(a.size):
        a[i] = b[i] + scale * c[i]


def _best(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up (and compile)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _row(kernel: str, nbytes: int, seconds: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kernel": kernel,
        "bytes": int(nbytes),
        "seconds": seconds,
        "gbps": nbytes / seconds / 1e9,
    }
    row.update(extra)
    return row


def codec_errors(n: int = 2**20, seed: int = 0) -> dict[str, dict[str, float]]:
    """Round-trip error of each wire encoding on N(0, 1) values, through the kernels.

    Packs ``n`` standard-normal float32 values with :func:`pack`, decodes them with
    :func:`unpack_accumulate` into zeros, and returns
    :func:`netstorm.kernels.reference.error_stats` for each of ``"fp16"`` and ``"bf16"``.
    """
    x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    out: dict[str, dict[str, float]] = {}
    for dtype in reference.WIRE_DTYPES:
        y = np.zeros_like(x)
        unpack_accumulate(y, pack(x, 1.0, dtype), 1.0, dtype)
        out[dtype] = reference.error_stats(x, y, dtype)
    return out


def _cpu_results(n: int, k: int, repeat: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]
    out = np.empty(n, np.float32)
    s = np.float32(1.0 / k)
    f4 = 4 * n

    t_copy = _best(lambda: copy_kernel(out, xs[0]), repeat)
    t_triad = _best(lambda: triad_kernel(out, xs[0], xs[1 % k], s), repeat)
    triad_gbps = 3 * f4 / t_triad / 1e9

    def numpy_sum(arrays: list[np.ndarray]) -> np.ndarray:
        acc = arrays[0] + arrays[1] if len(arrays) > 1 else arrays[0].copy()
        for a in arrays[2:]:
            acc = acc + a
        return acc * s

    def versus(name: str, nbytes: int, t: float, t_np: float, expr: str) -> list[dict]:
        gbps = nbytes / t / 1e9
        return [
            _row(f"numpy:{name}", nbytes, t_np, expr=expr),
            _row(name, nbytes, t, vs_numpy=t_np / t, vs_triad=gbps / triad_gbps),
        ]

    rows = [_row("stream_copy", 2 * f4, t_copy), _row("stream_triad", 3 * f4, t_triad)]
    terms = "+".join("abcdefghijklmnopqrstuvwxyz"[i] for i in range(min(k, 26)))
    rows += versus(
        "fused_reduce", (k + 1) * f4,
        _best(lambda: fused_reduce(out, xs, s), repeat),
        _best(lambda: numpy_sum(xs), repeat), f"({terms})*s",
    )

    def numpy_acc() -> None:
        out[...] += numpy_sum(xs)

    rows += versus(
        "fused_reduce_accumulate", (k + 2) * f4,
        _best(lambda: fused_reduce(out, xs, s, accumulate=True), repeat),
        _best(numpy_acc, repeat), f"out += ({terms})*s",
    )
    hs = [x.astype(np.float16) for x in xs]
    rows += versus(
        "fused_reduce_fp16", (2 * k + 4) * n,
        _best(lambda: fused_reduce(out, hs, s), repeat),
        _best(lambda: numpy_sum([h.astype(np.float32) for h in hs]), repeat),
        "(sum of x.astype(float32))*s, x float16",
    )
    x0, acc = xs[0], xs[1 % k].copy()
    packed = {dt: pack(x0, s, dt) for dt in reference.WIRE_DTYPES}
    np_pack = {
        "fp16": lambda: (x0 * s).astype(np.float16),
        "bf16": lambda: reference.bf16_encode(x0 * s),
    }
    np_unpack = {
        "fp16": lambda: acc.__iadd__(s * packed["fp16"].astype(np.float32)),
        "bf16": lambda: acc.__iadd__(s * reference.bf16_decode(packed["bf16"])),
    }
    for dt in reference.WIRE_DTYPES:
        rows += versus(
            f"pack_{dt}", 6 * n,
            _best(functools.partial(pack, x0, s, dt, out=packed[dt]), repeat),
            _best(np_pack[dt], repeat), f"(x*s).astype({dt})",
        )
        rows += versus(
            f"unpack_accumulate_{dt}", 10 * n,
            _best(functools.partial(unpack_accumulate, acc, packed[dt], s, dt), repeat),
            _best(np_unpack[dt], repeat), f"acc += s*decode({dt})",
        )
    return rows


def _gpu_results(n: int, k: int, repeat: int) -> dict[str, Any]:
    """Device-to-device copy and the kernels on torch CUDA tensors (CUDA events)."""
    import torch

    dev = torch.device("cuda")
    xs = [torch.randn(n, device=dev) for _ in range(k)]
    out = torch.empty(n, device=dev)
    s = 1.0 / k
    f4 = 4 * n

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        return best

    t_copy = timed(lambda: out.copy_(xs[0]))
    t_triad = timed(lambda: torch.add(xs[0], xs[1 % k], alpha=s, out=out))
    triad_gbps = 3 * f4 / t_triad / 1e9
    t_torch = timed(lambda: sum(xs[1:], xs[0]) * s)
    t_fused = timed(lambda: fused_reduce(out, xs, s))
    packed = pack(xs[0], s, "bf16")
    t_pack = timed(lambda: pack(xs[0], s, "bf16", out=packed))
    t_unpack = timed(lambda: unpack_accumulate(out, packed, s))
    fused_gbps = (k + 1) * f4 / t_fused / 1e9
    return {
        "backend": "cuda",
        "device": torch.cuda.get_device_name(dev),
        "n": n,
        "inputs": k,
        "results": [
            _row("d2d_copy", 2 * f4, t_copy),
            _row("torch_triad", 3 * f4, t_triad),
            _row("torch:fused_reduce", (k + 1) * f4, t_torch, expr="(a+b+...)*s"),
            _row("fused_reduce", (k + 1) * f4, t_fused, vs_torch=t_torch / t_fused,
                 vs_triad=fused_gbps / triad_gbps),
            _row("pack_bf16", 6 * n, t_pack),
            _row("unpack_accumulate_bf16", 10 * n, t_unpack),
        ],
    }


def run(
    n: int = 2**24, inputs: int = 4, repeat: int = 10, gpu: bool | None = None
) -> dict[str, Any]:
    """Measure the kernels' bandwidth next to numpy and STREAM copy/triad.

    Parameters
    ----------
    n : int
        Elements per buffer (2**24 fp32 = 64 MiB, well past the caches).
    inputs : int
        Number of buffers summed by fused_reduce (``k``).
    repeat : int
        Timed calls per figure; the best is kept.
    gpu : bool, optional
        Also measure on a CUDA device through torch. By default, when torch sees one.

    Returns
    -------
    dict
        ``{"backend": "cpu", "n", "inputs", "repeat", "threads", "results": [{"kernel",
        "bytes", "seconds", "gbps", ["vs_numpy", "vs_triad" | "expr"]}, ...],
        "codec_error": {"fp16": {...}, "bf16": {...}}, "gpu": {...} | {"skipped": why}}``.
        Kernel rows follow their ``numpy:<kernel>`` row. JSON-serialisable.
    """
    import numba

    if n < 1 or inputs < 1 or repeat < 1:
        raise ValueError(f"n, inputs and repeat must be >= 1, got {n}, {inputs}, {repeat}")
    result: dict[str, Any] = {
        "backend": "cpu",
        "n": int(n),
        "inputs": int(inputs),
        "repeat": int(repeat),
        "threads": int(numba.get_num_threads()),
        "timing": "best of repeat after a warm-up; GB/s = bytes / seconds / 1e9",
        "results": _cpu_results(n, inputs, repeat),
        "codec_error": codec_errors(min(n, 2**20)),
    }
    if gpu is None:
        try:
            import torch

            gpu = bool(torch.cuda.is_available())
        except ImportError:
            gpu = False
        if not gpu:
            result["gpu"] = {"skipped": "no CUDA device visible to torch"}
    if gpu:
        try:
            result["gpu"] = _gpu_results(n, inputs, repeat)
        except Exception as exc:  # report, keep the CPU figures
            result["gpu"] = {"error": f"{type(exc).__name__}: {exc}"}
    elif "gpu" not in result:
        result["gpu"] = {"skipped": "gpu=False"}
    return result
