"""numba parallel CPU kernels: fused reduction and the fp16/bf16 wire codecs.

Kernels take flat, contiguous numpy arrays and a float32 ``scale``; they contain no
validation (the host wrappers in :mod:`netstorm.kernels.api` do that). fp16 buffers are seen
as uint16 bit patterns (numba's CPU target has no float16 arrays); bf16 buffers are uint16.

Kernels are built per element kind (``"f32"``, ``"fp16"``, ``"bf16"``) by small factories
cached with :func:`functools.cache`; numba then caches one compiled specialisation per
argument types (for :func:`reduce_kernel`, per number of inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from numba import njit, prange

from . import _bits

__all__ = ["pack_kernel", "reduce_kernel", "unpack_kernel"]

@njit(inline="always")
def _load_f32(x):
    return x


def _loader(kind: str, hw_half: bool) -> Callable[..., Any]:
    if kind == "f32":
        return _load_f32
    if kind == "fp16":
        return _bits.half_bits_to_f32_hw if hw_half else _bits.half_bits_to_f32_soft
    if kind == "bf16":
        return _bits.bf16_bits_to_f32
    raise ValueError(f"kind: unknown element kind {kind!r}")


def _storer(kind: str, hw_half: bool) -> Callable[..., Any]:
    if kind == "fp16":
        return _bits.f32_to_half_bits_hw if hw_half else _bits.f32_to_half_bits_soft
    if kind == "bf16":
        return _bits.f32_to_bf16_bits
    raise ValueError(f"kind: unknown wire kind {kind!r}")


@njit(parallel=True, nogil=True, cache=True)
def _reduce_f32(out, inputs, scale, accumulate):  # pragma: no cover - compiled
    """The fp32 reduction, written out at module level so that numba caches its compiled
    specialisations on disk: every site process of a run (and every later run) then loads
    them instead of spending ~0.75 s compiling each input count."""
    k = len(inputs)
    if accumulate:
        for i in prange(out.size):
            acc = inputs[0][i]
            for j in range(1, k):
                acc += inputs[j][i]
            out[i] += scale * acc
    else:
        for i in prange(out.size):
            acc = inputs[0][i]
            for j in range(1, k):
                acc += inputs[j][i]
            out[i] = scale * acc


@cache
def reduce_kernel(kind: str, hw_half: bool = _bits.HW_HALF) -> Callable[..., None]:
    """Return ``kernel(out, inputs, scale, accumulate)``: ``out (+)= scale * sum(inputs)``.

    ``inputs`` is a tuple of 1-D arrays of one type (numba compiles one specialisation per
    tuple length). Each element is read once from every input, summed in fp32 in input
    order, scaled and written once: one pass over memory, and the same rounding as the
    reference, so the result matches it bit for bit. The loop over inputs is short and
    inner; LLVM vectorises the element loop across lanes.
    """
    if kind == "f32":
        return _reduce_f32  # type: ignore[no-any-return]
    load = _loader(kind, hw_half)

    @njit(parallel=True, nogil=True)
    def kernel(out, inputs, scale, accumulate):
        k = len(inputs)
        if accumulate:
            for i in prange(out.size):
                acc = load(inputs[0][i])
                for j in range(1, k):
                    acc += load(inputs[j][i])
                out[i] += scale * acc
        else:
            for i in prange(out.size):
                acc = load(inputs[0][i])
                for j in range(1, k):
                    acc += load(inputs[j][i])
                out[i] = scale * acc

    return kernel


@cache
def pack_kernel(kind: str, hw_half: bool = _bits.HW_HALF) -> Callable[..., None]:
    """Return ``kernel(dst, src, scale)``: ``dst = encode(scale * src)`` (uint16 bits)."""
    store = _storer(kind, hw_half)

    @njit(parallel=True, nogil=True)
    def kernel(dst, src, scale):
        for i in prange(src.size):
            dst[i] = store(scale * src[i])

    return kernel


@cache
def unpack_kernel(kind: str, hw_half: bool = _bits.HW_HALF) -> Callable[..., None]:
    """Return ``kernel(acc, packed, scale)``: ``acc += scale * decode(packed)``, fused."""
    load = _loader(kind, hw_half)

    @njit(parallel=True, nogil=True)
    def kernel(acc, packed, scale):
        for i in prange(acc.size):
            acc[i] += scale * load(packed[i])

    return kernel
