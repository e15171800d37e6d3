"""Pure numpy reference implementations of the kernels, used as the oracle in tests.

Each function computes the same arithmetic in the same order as the kernels (fp32
accumulation, ``scale`` rounded to fp32 and applied after the sum), so on CPU the kernels are
expected to match bit for bit. They allocate temporaries freely; they are not fast.

Encodings: fp16 is ``np.float16``; bf16 is the high 16 bits of a float32, stored as
``np.uint16``, encoded with round to nearest even (NaN stays a quiet NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "WIRE_DTYPES",
    "bf16_decode",
    "bf16_encode",
    "codec_error",
    "decode",
    "error_stats",
    "fused_reduce",
    "pack",
    "unpack_accumulate",
]

WIRE_DTYPES: tuple[str, ...] = ("fp16", "bf16")
"""Names of the wire encodings accepted by ``pack`` and ``unpack_accumulate``."""


def bf16_encode(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16, round to nearest even.

    Parameters
    ----------
    x : numpy.ndarray
        float32 values.

    Returns
    -------
    numpy.ndarray
        uint16 bit patterns, same shape.
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out = np.where(nan, (bits >> 16) | 0x40, rounded)
    return out.astype(np.uint16)


def bf16_decode(b: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to float32 (exact).

    Parameters
    ----------
    b : numpy.ndarray
        uint16 bit patterns.

    Returns
    -------
    numpy.ndarray
        float32 values, same shape.
    """
    return (np.asarray(b).astype(np.uint32) << 16).view(np.float32)


def decode(packed: np.ndarray, dtype: str) -> np.ndarray:
    """Decode a packed buffer (fp16 as float16 or uint16 bits, bf16 as uint16) to float32."""
    if dtype == "fp16":
        return np.asarray(packed).view(np.float16).astype(np.float32)
    if dtype == "bf16":
        return bf16_decode(np.asarray(packed).view(np.uint16))
    raise ValueError(f"dtype: expected one of {WIRE_DTYPES}, got {dtype!r}")


def _as_f32(x: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None:
        dtype = "bf16" if x.dtype == np.uint16 else "f32"
    if dtype == "f32":
        return x.astype(np.float32)
    return decode(x, dtype)


def fused_reduce(
    inputs: Sequence[np.ndarray],
    scale: float = 1.0,
    out: np.ndarray | None = None,
    accumulate: bool = False,
    dtype: str | None = None,
) -> np.ndarray:
    """Return ``scale * sum(inputs)`` (plus ``out`` when ``accumulate``), in float32.

    Parameters
    ----------
    inputs : sequence of numpy.ndarray
        float32, float16, or uint16 (bf16 bits) arrays of one shape.
    scale : float
        Multiplier, rounded to float32, applied once to the fp32 sum.
    out : numpy.ndarray, optional
        Prior float32 contents, required when ``accumulate`` is true; not modified.
    accumulate : bool
        Add the scaled sum to ``out`` instead of replacing it.
    dtype : {"fp16", "bf16", "f32"}, optional
        How to read the inputs; by default uint16 means bf16 and other dtypes are cast.

    Returns
    -------
    numpy.ndarray
        A new float32 array.
    """
    acc = _as_f32(inputs[0], dtype)
    for x in inputs[1:]:
        acc = acc + _as_f32(x, dtype)
    result = acc * np.float32(scale)
    if accumulate:
        assert out is not None
        result = out.astype(np.float32) + result
    return result


def pack(src: np.ndarray, scale: float = 1.0, dtype: str = "fp16") -> np.ndarray:
    """Encode ``scale * src`` (float32 multiply) to fp16 (float16) or bf16 (uint16 bits)."""
    scaled = np.asarray(src, dtype=np.float32) * np.float32(scale)
    if dtype == "fp16":
        return scaled.astype(np.float16)
    if dtype == "bf16":
        return bf16_encode(scaled)
    raise ValueError(f"dtype: expected one of {WIRE_DTYPES}, got {dtype!r}")


def unpack_accumulate(
    acc: np.ndarray, packed: np.ndarray, scale: float = 1.0, dtype: str = "fp16"
) -> np.ndarray:
    """Return ``acc + scale * decode(packed)`` as a new float32 array (``acc`` unchanged)."""
    return acc.astype(np.float32) + np.float32(scale) * decode(packed, dtype)


def codec_error(
    dtype: str, n: int = 2**20, seed: int = 0, x: np.ndarray | None = None
) -> dict[str, float]:
    """Measure the error of a round trip through a wire encoding on N(0, 1) values.

    Parameters
    ----------
    dtype : {"fp16", "bf16"}
        Wire encoding.
    n : int
        Number of samples (ignored when ``x`` is given).
    seed : int
        Seed of the normal samples.
    x : numpy.ndarray, optional
        float32 values to use instead of fresh N(0, 1) samples.

    Returns
    -------
    dict
        ``max_rel_err`` (over nonzero values), ``max_rel_err_normal`` (over values inside the
        format's normal range, the figure the unit roundoff bounds), ``rms_rel_err``,
        ``max_abs_err``, ``unit_roundoff`` (2**-11 for fp16, 2**-8 for bf16), ``n``.

    Notes
    -----
    Round to nearest even bounds the relative error by the unit roundoff ``u = 2**-(p)`` for
    ``p`` significand bits kept (11 for fp16, 8 for bf16) inside the normal range. fp16's
    normal range starts at 2**-14 ~ 6.1e-5, so the few N(0, 1) values below it (about 5 in
    100,000) lose relative precision (absolute error at most 2**-25); bf16 has fp32's
    exponent range and keeps the bound everywhere above 2**-126.
    """
    if x is None:
        x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    return error_stats(x, decode(pack(x, 1.0, dtype), dtype), dtype)


def error_stats(x: np.ndarray, y: np.ndarray, dtype: str) -> dict[str, float]:
    """Error figures of ``y``, a decoded round trip of ``x`` through ``dtype``.

    Parameters
    ----------
    x, y : numpy.ndarray
        Original and round-tripped float32 values, same shape.
    dtype : {"fp16", "bf16"}
        Wire encoding (sets the normal range and the unit roundoff).

    Returns
    -------
    dict
        See :func:`codec_error`.
    """
    x64 = np.asarray(x, dtype=np.float64).ravel()
    abs_err = np.abs(np.asarray(y, dtype=np.float64).ravel() - x64)
    mag = np.abs(x64)
    nz = mag > 0
    rel = abs_err[nz] / mag[nz]
    tiny = 2.0**-14 if dtype == "fp16" else 2.0**-126
    normal = mag[nz] >= tiny
    return {
        "n": int(x64.size),
        "max_rel_err": float(rel.max(initial=0.0)),
        "max_rel_err_normal": float(rel[normal].max(initial=0.0)),
        "rms_rel_err": float(np.sqrt(np.mean(rel**2))) if rel.size else 0.0,
        "max_abs_err": float(abs_err.max(initial=0.0)),
        "unit_roundoff": 2.0**-11 if dtype == "fp16" else 2.0**-8,
    }
