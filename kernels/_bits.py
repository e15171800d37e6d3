"""Scalar bit-level helpers for the CPU kernels: bit casts and fp16/bf16 conversions.

All functions are numba ``njit`` functions (or intrinsics) meant to be inlined into the
parallel loops of :mod:`netstorm.kernels._cpu`; they contain no validation.

fp16 conversions use the hardware instructions through LLVM's ``half`` type when the host has
them (x86 with F16C, or any AArch64 CPU): ``fpext``/``fptrunc`` are exact and round to
nearest even. Elsewhere the ``*_soft`` versions do the same in integer arithmetic (no libcall
that numba's JIT might fail to link). Both give the same bits for every non-NaN input; NaNs
stay NaN.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

__all__ = [
    "HW_HALF",
    "bf16_bits_to_f32",
    "bits_to_f32",
    "f32_to_bf16_bits",
    "f32_to_bits",
    "f32_to_half_bits_hw",
    "f32_to_half_bits_soft",
    "half_bits_to_f32_hw",
    "half_bits_to_f32_soft",
]


def _host_has_hw_half() -> bool:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine in ("x86_64", "amd64"):
        try:
            features = llvm.get_host_cpu_features()
        except RuntimeError:  # pragma: no cover - llvmlite cannot query this host
            return False
        return bool(features.get("f16c", False))
    return False


HW_HALF: bool = _host_has_hw_half()
"""True when LLVM can lower fp16 <-> fp32 conversions to hardware instructions here."""


@intrinsic
def f32_to_bits(typingctx, x):
    """Reinterpret a float32 as its uint32 bit pattern (no conversion)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def bits_to_f32(typingctx, u):
    """Reinterpret a uint32 bit pattern as a float32 (no conversion)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def half_bits_to_f32_hw(typingctx, h):
    """Decode fp16 bits (uint16) to float32 with LLVM ``fpext half -> float``."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def f32_to_half_bits_hw(typingctx, x):
    """Encode float32 to fp16 bits (uint16) with LLVM ``fptrunc`` (round to nearest even)."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


_HALF_SUBNORMAL_ULP = np.float32(2.0**-24)


@njit(inline="always")
def half_bits_to_f32_soft(h):
    """Decode fp16 bits to float32 in integer arithmetic (exact)."""
    h32 = np.uint32(h)
    sign = (h32 & np.uint32(0x8000)) << np.uint32(16)
    em = h32 & np.uint32(0x7FFF)
    if em >= np.uint32(0x7C00):  # inf or nan: keep the payload
        payload = (em & np.uint32(0x3FF)) << np.uint32(13)
        return bits_to_f32(sign | np.uint32(0x7F800000) | payload)
    if em >= np.uint32(0x0400):  # normal: rebias the exponent from 15 to 127
        return bits_to_f32(sign | ((em << np.uint32(13)) + np.uint32(112 << 23)))
    v = np.float32(em) * _HALF_SUBNORMAL_ULP  # subnormal or zero: exact in float32
    return -v if sign else v


@njit(inline="always")
def f32_to_half_bits_soft(x):
    """Encode float32 to fp16 bits, round to nearest even, in integer arithmetic.

    Notes
    -----
    F. Giesen's ``float_to_half_fast3_rtne``: values at or above 2**16 become inf (or a quiet
    NaN), values below 2**-14 are rounded by a float add against 0.5 whose ulp equals the fp16
    subnormal ulp, and normal values add the rounding bias in integer arithmetic.
    """
    f = np.int64(f32_to_bits(x))
    sign = f & 0x80000000
    f = f ^ sign
    if f >= (143 << 23):  # >= 2**16, inf or nan
        o = 0x7E00 if f > 0x7F800000 else 0x7C00
    elif f < (113 << 23):  # below 2**-14: fp16 subnormal or zero
        half = np.float32(0.5)
        o = np.int64(f32_to_bits(bits_to_f32(np.uint32(f)) + half)) - (126 << 23)
    else:
        mant_odd = (f >> 13) & 1
        o = (f + ((15 - 127) << 23) + 0xFFF + mant_odd) >> 13
    return np.uint16(o | (sign >> 16))


@njit(inline="always")
def bf16_bits_to_f32(b):
    """Decode bf16 bits (any 16-bit integer) to float32: the high half of a float32."""
    return bits_to_f32(np.uint32((np.int64(b) & 0xFFFF) << 16))


@njit(inline="always")
def f32_to_bf16_bits(x):
    """Encode float32 to bf16 bits (uint16), round to nearest even; NaN stays a quiet NaN."""
    f = np.int64(f32_to_bits(x))
    if (f & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((f >> 16) | 0x40)
    return np.uint16((f + 0x7FFF + ((f >> 16) & 1)) >> 16)
