"""Host API: fused gradient reduction and fp16/bf16 wire codecs, on CPU or CUDA.

Each function checks its arguments (type, dtype, shape, contiguity, device), picks the back
end from where the buffers live (numpy arrays and CPU tensors: numba parallel loops; CUDA
tensors and CUDA arrays: numba CUDA kernels), and calls a cached compiled kernel. The CUDA
back end, and with it ``numba.cuda``, is imported on first use only.

Element types: fp32 buffers are float32. fp16 buffers are float16 (or uint16 holding fp16
bits when ``dtype="fp16"`` is given). bf16 buffers are uint16 bit patterns (the high half of
a float32) or torch.bfloat16 tensors. All arithmetic is fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _cpu
from ._buffers import Buffer, as_buffer, check_same_device, check_same_shape, check_scale
from .reference import WIRE_DTYPES

__all__ = ["fused_reduce", "pack", "unpack_accumulate"]

#: A scale factor: any real number (applied in float32, see ``check_scale``).
Scale = float | np.floating[Any]

_REDUCE_ELEMS = ("f32", "f16", "u16", "bf16")
_ELEM_KIND = {"f32": "f32", "f16": "fp16", "u16": "bf16", "bf16": "bf16"}
_WIRE_ELEMS = {"fp16": ("f16", "u16"), "bf16": ("u16", "bf16")}


def _cuda() -> Any:
    from . import _cuda as backend

    return backend


def _check_wire_dtype(dtype: Any) -> str:
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(WIRE_DTYPES)}, got {dtype!r}")
    return str(dtype)


def _same_types(flats: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Make the CPU input views one numba type (mixing read-only and writable would not be)."""
    if all(f.flags.writeable for f in flats) or not any(f.flags.writeable for f in flats):
        return tuple(flats)
    views = []
    for f in flats:
        v = f.view()
        v.flags.writeable = False
        views.append(v)
    return tuple(views)


def fused_reduce(
    out: Any, inputs: Sequence[Any], scale: Scale = 1.0, accumulate: bool = False
) -> Any:
    """Sum ``inputs`` into ``out`` in one pass: ``out = scale * sum(inputs)``.

    Parameters
    ----------
    out : numpy.ndarray, torch.Tensor or CUDA array
        float32, C-contiguous, written in place. May be the same object as one of the inputs
        (the reduction is element-wise), but must not partially overlap any.
    inputs : sequence of buffers
        One or more buffers of ``out``'s shape and device, all of one dtype: float32,
        float16, or bf16 (uint16 bit patterns or torch.bfloat16).
    scale : float
        Multiplier applied once to the fp32 sum (rounded to float32), e.g. ``1 / world``.
    accumulate : bool
        If true, add to ``out`` instead: ``out += scale * sum(inputs)``.

    Returns
    -------
    The ``out`` object.

    Raises
    ------
    TypeError
        An argument is not a supported buffer, has the wrong dtype, or the inputs mix dtypes.
    ValueError
        Shapes or devices differ, a buffer is not contiguous or is read-only, or there are
        no inputs.

    Notes
    -----
    Cost model: with ``k`` inputs of ``b`` bytes per element, one call moves
    ``n * (k * b + 4)`` bytes (``+ 4`` more when accumulating), against ``n * 12 * k``
    bytes-or-so for the numpy expression ``(a + b + ...) * s`` with its temporaries. The sum
    runs in input order in fp32, so CPU results equal :func:`reference.fused_reduce` bit for
    bit; on a GPU the compiler may fuse the last multiply-add (one rounding less).
    """
    dst = as_buffer(out, "out", ("f32",), writable=True)
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(
            f"inputs: expected a list or tuple of buffers, got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("inputs: need at least one buffer")
    srcs = [as_buffer(x, f"inputs[{i}]", _REDUCE_ELEMS) for i, x in enumerate(inputs)]
    kind = _ELEM_KIND[srcs[0].elem]
    for src in srcs:
        if _ELEM_KIND[src.elem] != kind:
            raise TypeError(
                f"{src.name}: holds {_ELEM_KIND[src.elem]} but inputs[0] holds {kind}; "
                "all inputs must share one dtype"
            )
        check_same_device(dst, src)
        check_same_shape(dst, src)
    s = check_scale(scale)
    if dst.size == 0:
        return out
    if dst.device == "cpu":
        flats = _same_types([src.flat for src in srcs])
        _cpu.reduce_kernel(kind)(dst.flat, flats, s, bool(accumulate))
        return out
    cuda = _cuda()
    view = np.float16 if kind == "fp16" else None
    arrays = [cuda.as_device_array(src.flat, view) for src in srcs]
    objs = [dst.obj, *(src.obj for src in srcs)]
    cuda.launch_reduce(cuda.as_device_array(dst.flat), arrays, kind, s, bool(accumulate), objs)
    return out


def _new_packed_cpu(src: Buffer, dtype: str) -> Any:
    if src.is_torch:
        import torch

        tdtype = torch.float16 if dtype == "fp16" else torch.bfloat16
        return torch.empty(src.shape, dtype=tdtype)
    return np.empty(src.shape, dtype=np.float16 if dtype == "fp16" else np.uint16)


def pack(src: Any, scale: Scale = 1.0, dtype: str = "fp16", out: Any = None) -> Any:
    """Encode ``scale * src`` for the wire, rounding to nearest even.

    Parameters
    ----------
    src : numpy.ndarray, torch.Tensor or CUDA array
        float32, C-contiguous.
    scale : float
        Multiplier applied in fp32 before rounding (pre-scale by ``1 / world`` to keep sums
        inside fp16's range, max 65504).
    dtype : {"fp16", "bf16"}
        Wire encoding. fp16: 10 mantissa bits, exponent range 2**-14..65504 (subnormals down
        to 2**-24, larger values become inf). bf16: 7 mantissa bits, fp32's exponent range.
    out : buffer, optional
        Where to write, of ``src``'s shape and device: float16 (or uint16) for fp16;
        uint16 or torch.bfloat16 for bf16.

    Returns
    -------
    The packed buffer: ``out`` if given, else a new one on ``src``'s device. numpy:
    float16 (fp16) or uint16 bit patterns (bf16); torch: float16 or bfloat16 tensor; other
    CUDA arrays: a numba device array of float16 or uint16.

    Notes
    -----
    Reads 4 and writes 2 bytes per element. Round to nearest even bounds the relative error
    by the unit roundoff, 2**-11 (fp16, normal range) or 2**-8 (bf16); see
    :func:`netstorm.kernels.reference.codec_error` for measured figures.
    """
    wire = _check_wire_dtype(dtype)
    s_buf = as_buffer(src, "src", ("f32",))
    s = check_scale(scale)
    if out is None:
        if s_buf.device == "cpu":
            out = _new_packed_cpu(s_buf, wire)
        else:
            out = _cuda().empty_packed(s_buf.obj, s_buf.shape, wire)
    d_buf = as_buffer(out, "out", _WIRE_ELEMS[wire], writable=True)
    check_same_device(s_buf, d_buf)
    check_same_shape(s_buf, d_buf)
    if s_buf.size == 0:
        return out
    if s_buf.device == "cpu":
        _cpu.pack_kernel(wire)(d_buf.flat, s_buf.flat, s)
        return out
    cuda = _cuda()
    dst = cuda.as_device_array(d_buf.flat, np.float16 if wire == "fp16" else None)
    cuda.launch_pack(dst, cuda.as_device_array(s_buf.flat), wire, s, [s_buf.obj, d_buf.obj])
    return out


def unpack_accumulate(
    acc: Any, packed: Any, scale: Scale = 1.0, dtype: str | None = None
) -> Any:
    """Decode ``packed`` and add it into ``acc``: ``acc += scale * decode(packed)``, fused.

    Parameters
    ----------
    acc : numpy.ndarray, torch.Tensor or CUDA array
        float32, C-contiguous, updated in place.
    packed : buffer
        Wire data of ``acc``'s shape and device: float16, uint16 bit patterns, or
        torch.bfloat16.
    scale : float
        Multiplier applied in fp32 to each decoded value.
    dtype : {"fp16", "bf16"}, optional
        Wire encoding. By default float16 buffers are fp16 and uint16/bfloat16 are bf16;
        pass ``"fp16"`` to read a uint16 buffer as fp16 bits.

    Returns
    -------
    The ``acc`` object.

    Notes
    -----
    Reads 2 + 4 and writes 4 bytes per element; no fp32 copy of ``packed`` is made.
    """
    a_buf = as_buffer(acc, "acc", ("f32",), writable=True)
    p_buf = as_buffer(packed, "packed", ("f16", "u16", "bf16"))
    if dtype is None:
        wire = "fp16" if p_buf.elem == "f16" else "bf16"
    else:
        wire = _check_wire_dtype(dtype)
        if p_buf.elem not in _WIRE_ELEMS[wire]:
            raise TypeError(
                f"packed: a {p_buf.elem} buffer cannot hold {wire} data "
                f"(dtype={wire!r} needs one of {', '.join(_WIRE_ELEMS[wire])})"
            )
    check_same_device(a_buf, p_buf)
    check_same_shape(a_buf, p_buf)
    s = check_scale(scale)
    if a_buf.size == 0:
        return acc
    if a_buf.device == "cpu":
        _cpu.unpack_kernel(wire)(a_buf.flat, p_buf.flat, s)
        return acc
    cuda = _cuda()
    src = cuda.as_device_array(p_buf.flat, np.float16 if wire == "fp16" else None)
    cuda.launch_unpack(cuda.as_device_array(a_buf.flat), src, wire, s, [a_buf.obj, p_buf.obj])
    return acc
