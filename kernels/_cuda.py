"""numba CUDA kernels: fused reduction and the fp16/bf16 wire codecs.

Imported lazily by :mod:`netstorm.kernels.api` the first time a CUDA buffer is seen (this
imports ``numba.cuda``). Kernels use a grid-stride loop of :data:`THREADS`-thread blocks and
contain no validation. fp16 buffers are float16 arrays (the hardware converts, round to
nearest even); bf16 buffers are 16-bit integer arrays and are converted with bit casts.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run as Python; only
the two bit-cast helpers differ (numpy views there, libdevice intrinsics on a GPU), and the
grid is capped at :data:`SIM_MAX_BLOCKS` blocks so that the stride loop is exercised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

# numba-cuda (to 0.2x at least) registers typing overloads for NumPy functions that NumPy 2.5
# removed; its first kernel compile then fails with "module 'numpy' has no attribute
# 'row_stack'". Alias the removed names to their replacements (netstorm calls none of them).
for _old, _new in (("row_stack", "vstack"), ("trapz", "trapezoid"), ("in1d", "isin")):
    if not hasattr(np, _old) and hasattr(np, _new):
        setattr(np, _old, getattr(np, _new))
del _old, _new

from numba import config, cuda  # noqa: E402

__all__ = [
    "SIMULATOR",
    "SIM_MAX_BLOCKS",
    "THREADS",
    "as_device_array",
    "empty_packed",
    "launch_pack",
    "launch_reduce",
    "launch_unpack",
]

THREADS = 128
"""Threads per block."""
SIM_MAX_BLOCKS = 4
"""Grid cap under the simulator (so 1025 elements take three trips round the stride loop)."""
SIMULATOR: bool = bool(config.ENABLE_CUDASIM)  # type: ignore[attr-defined]  # set at import

if SIMULATOR:

    @cuda.jit(device=True)
    def _f32_bits(x):
        return np.int64(np.float32(x).view(np.uint32))

    @cuda.jit(device=True)
    def _bits_f32(u):
        return np.uint32(u).view(np.float32)

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _f32_bits(x):
        return np.int64(libdevice.float_as_int(x)) & 0xFFFFFFFF

    @cuda.jit(device=True)
    def _bits_f32(u):
        return libdevice.int_as_float(np.int32(u))


@cuda.jit(device=True)
def _load_f32(x):
    return x


@cuda.jit(device=True)
def _load_fp16(x):
    return np.float32(x)


@cuda.jit(device=True)
def _load_bf16(x):
    return _bits_f32((np.int64(x) & 0xFFFF) << 16)


@cuda.jit(device=True)
def _store_fp16(v):
    return v  # the float16 array store rounds to nearest even


@cuda.jit(device=True)
def _store_bf16(v):
    f = _f32_bits(v)
    if (f & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((f >> 16) | 0x40)
    return np.uint16((f + 0x7FFF + ((f >> 16) & 1)) >> 16)


_LOADERS = {"f32": _load_f32, "fp16": _load_fp16, "bf16": _load_bf16}
_STORERS = {"fp16": _store_fp16, "bf16": _store_bf16}


@cache
def _reduce_kernel(kind: str) -> Any:
    load = _LOADERS[kind]

    @cuda.jit
    def kernel(out, inputs, scale, accumulate):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        k = len(inputs)
        while i < out.size:
            acc = load(inputs[0][i])
            for j in range(1, k):
                acc += load(inputs[j][i])
            if accumulate:
                out[i] += scale * acc
            else:
                out[i] = scale * acc
            i += stride

    return kernel


@cache
def _pack_kernel(kind: str) -> Any:
    store = _STORERS[kind]

    @cuda.jit
    def kernel(dst, src, scale):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < src.size:
            dst[i] = store(scale * src[i])
            i += stride

    return kernel


@cache
def _unpack_kernel(kind: str) -> Any:
    load = _LOADERS[kind]

    @cuda.jit
    def kernel(acc, packed, scale):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < acc.size:
            acc[i] += scale * load(packed[i])
            i += stride

    return kernel


@cache
def _max_blocks(device_index: int) -> int:
    if SIMULATOR:
        return SIM_MAX_BLOCKS
    return 32 * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def as_device_array(obj: Any, view_as: Any = None) -> Any:
    """Return a flat numba device array over the memory of ``obj`` (no copy).

    Parameters
    ----------
    obj : torch.Tensor, numba device array, or object with ``__cuda_array_interface__``
        A C-contiguous CUDA buffer.
    view_as : numpy dtype, optional
        Reinterpret the elements as this dtype of the same size (e.g. uint16 -> float16).
    """
    arr = obj if type(obj).__module__.startswith("numba.cuda") else cuda.as_cuda_array(obj)
    arr = arr.reshape(math.prod(arr.shape))
    if view_as is not None and np.dtype(arr.dtype) != np.dtype(view_as):
        arr = arr.view(view_as)
    return arr


def empty_packed(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """Allocate a packed buffer on ``like``'s device: torch for torch, numba otherwise."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(like, torch.Tensor):
        tdtype = torch.float16 if dtype == "fp16" else torch.bfloat16
        return torch.empty(shape, dtype=tdtype, device=like.device)
    return cuda.device_array(shape, dtype=np.float16 if dtype == "fp16" else np.uint16)


class _Launch:
    """Grid, stream and device context for one call on the buffers ``objs``."""

    def __init__(self, objs: Sequence[Any], n: int) -> None:
        import sys

        torch = sys.modules.get("torch")
        tensor = None
        if torch is not None:
            tensor = next((o for o in objs if isinstance(o, torch.Tensor)), None)
        self.device_index = tensor.device.index if tensor is not None else None
        self.torch_stream = tensor is not None and not SIMULATOR
        self.n = n

    def __call__(self, kernel: Any, *args: Any) -> None:
        index = self.device_index if self.device_index is not None else 0
        if self.device_index is not None and not SIMULATOR:
            with cuda.gpus[self.device_index]:
                self._launch(kernel, index, args)
        else:
            self._launch(kernel, index, args)

    def _launch(self, kernel: Any, index: int, args: tuple[Any, ...]) -> None:
        blocks = max(1, min(-(-self.n // THREADS), _max_blocks(index)))
        if self.torch_stream:  # run on torch's current stream, ordered with torch's work
            import torch

            handle = torch.cuda.current_stream(self.device_index).cuda_stream
            kernel[blocks, THREADS, cuda.external_stream(handle)](*args)
        else:
            kernel[blocks, THREADS](*args)


def launch_reduce(
    out: Any, inputs: Sequence[Any], kind: str, scale: np.float32, accumulate: bool,
    objs: Sequence[Any],
) -> None:
    """``out (+)= scale * sum(inputs)`` on the GPU; arrays from :func:`as_device_array`."""
    _Launch(objs, out.size)(_reduce_kernel(kind), out, tuple(inputs), scale, accumulate)


def launch_pack(dst: Any, src: Any, kind: str, scale: np.float32, objs: Sequence[Any]) -> None:
    """``dst = encode(scale * src)`` on the GPU."""
    _Launch(objs, src.size)(_pack_kernel(kind), dst, src, scale)


def launch_unpack(
    acc: Any, packed: Any, kind: str, scale: np.float32, objs: Sequence[Any]
) -> None:
    """``acc += scale * decode(packed)`` on the GPU."""
    _Launch(objs, acc.size)(_unpack_kernel(kind), acc, packed, scale)

