"""Host-side argument checks: turn user buffers into flat arrays a back end can take.

A user buffer is a numpy array, a torch tensor (CPU or CUDA), a numba device array, or any
object with ``__cuda_array_interface__``. :func:`as_buffer` checks its type, dtype,
contiguity and writability and returns a :class:`Buffer` holding a flat view of the same
memory. Errors name the argument and the problem. Nothing here imports ``numba.cuda`` (or
torch): a CUDA object is only ever described from its own attributes; the CUDA back end
converts it.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Buffer", "as_buffer", "check_same_device", "check_same_shape", "check_scale"]

# Element classes: "f32" float32; "f16" float16; "u16" 16-bit integer (bf16 or fp16 bits);
# "bf16" torch.bfloat16.
_NUMPY_ELEM = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "u16"}
_CAI_ELEM = {"<f4": "f32", "<f2": "f16", "<u2": "u16", "|u2": "u16"}
_TORCH_ELEM = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}
_ELEM_WORDS = {
    "f32": "float32",
    "f16": "float16",
    "u16": "uint16 (16-bit patterns)",
    "bf16": "bfloat16",
}


@dataclass(frozen=True)
class Buffer:
    """A checked user buffer.

    Attributes
    ----------
    name : str
        The argument's name, for messages (``"out"``, ``"inputs[2]"``).
    obj : Any
        The object the user passed.
    elem : str
        Element class: ``"f32"``, ``"f16"``, ``"u16"`` (16-bit patterns) or ``"bf16"``.
    shape : tuple of int
        Logical shape.
    device : str
        ``"cpu"`` or ``"cuda"``.
    device_index : int or None
        CUDA device ordinal when known (torch tensors), else None.
    flat : Any
        CPU: a 1-D numpy view, with 16-bit elements seen as uint16. CUDA: the object to hand
        to the CUDA back end (a torch tensor, viewed as int16 for bfloat16, or the original
        object); the back end flattens it.
    is_torch : bool
        Whether ``obj`` is a torch tensor.
    """

    name: str
    obj: Any
    elem: str
    shape: tuple[int, ...]
    device: str
    device_index: int | None
    flat: Any
    is_torch: bool

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_numba_device_array(x: Any) -> bool:
    return type(x).__module__.startswith("numba.cuda") and hasattr(x, "copy_to_host")


def _bad_dtype(name: str, got: object, allowed: tuple[str, ...]) -> TypeError:
    words = ", ".join(_ELEM_WORDS[e] for e in allowed)
    return TypeError(f"{name}: dtype {got} is not supported here; expected one of: {words}")


def _numpy_buffer(x: np.ndarray, name: str, allowed: tuple[str, ...], writable: bool) -> Buffer:
    elem = _NUMPY_ELEM.get(x.dtype)
    if elem is None or elem not in allowed:
        raise _bad_dtype(name, x.dtype, allowed)
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: array is not C-contiguous; pass np.ascontiguousarray({name})")
    if not x.flags.aligned:
        raise ValueError(f"{name}: array data is not aligned to its dtype; pass a copy")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name}: array is read-only but is written to")
    flat = x.reshape(-1)
    if elem == "f16":
        flat = flat.view(np.uint16)
    return Buffer(name, x, elem, tuple(x.shape), "cpu", None, flat, False)


def _torch_buffer(x: Any, name: str, allowed: tuple[str, ...], writable: bool) -> Buffer:
    import torch

    elem = _TORCH_ELEM.get(str(x.dtype))
    if elem is None or elem not in allowed:
        raise _bad_dtype(name, x.dtype, allowed)
    if not x.is_contiguous():
        raise ValueError(f"{name}: tensor is not contiguous; pass {name}.contiguous()")
    t = x.detach()
    if t.device.type == "cpu":
        if elem == "bf16":
            flat = t.view(torch.int16).numpy().view(np.uint16).reshape(-1)
        else:
            flat = t.numpy().reshape(-1)
            if elem == "f16":
                flat = flat.view(np.uint16)
        return Buffer(name, x, elem, tuple(x.shape), "cpu", None, flat, True)
    if t.device.type != "cuda":
        raise ValueError(f"{name}: tensor is on device {t.device}; expected cpu or cuda")
    if elem == "bf16":  # __cuda_array_interface__ has no bfloat16: pass the bits as int16
        t = t.view(torch.int16)
    return Buffer(name, x, elem, tuple(x.shape), "cuda", t.device.index, t, True)


def _cuda_buffer(x: Any, name: str, allowed: tuple[str, ...], writable: bool) -> Buffer:
    if _is_numba_device_array(x):
        elem = _NUMPY_ELEM.get(np.dtype(x.dtype))
        contiguous = bool(x.is_c_contiguous())
        dtype_word: object = x.dtype
        shape = tuple(int(s) for s in x.shape)
        readonly = False
    else:
        cai = x.__cuda_array_interface__
        typestr = cai.get("typestr", "?")
        elem = _CAI_ELEM.get(typestr)
        dtype_word = typestr
        shape = tuple(int(s) for s in cai["shape"])
        strides = cai.get("strides")
        itemsize = int(typestr[2:]) if typestr[2:].isdigit() else 0
        expected = tuple(itemsize * math.prod(shape[i + 1 :]) for i in range(len(shape)))
        contiguous = strides is None or tuple(strides) == expected or math.prod(shape) <= 1
        readonly = bool(cai.get("data", (0, False))[1])
    if elem is None or elem not in allowed:
        raise _bad_dtype(name, dtype_word, allowed)
    if not contiguous:
        raise ValueError(f"{name}: CUDA array is not C-contiguous")
    if writable and readonly:
        raise ValueError(f"{name}: CUDA array is read-only but is written to")
    return Buffer(name, x, elem, shape, "cuda", None, x, False)


def as_buffer(
    x: Any, name: str, allowed: tuple[str, ...], writable: bool = False
) -> Buffer:
    """Check one user buffer and describe it.

    Parameters
    ----------
    x : numpy.ndarray, torch.Tensor, or CUDA array
        The user's buffer.
    name : str
        The argument's name, used in error messages.
    allowed : tuple of str
        Accepted element classes (``"f32"``, ``"f16"``, ``"u16"``, ``"bf16"``).
    writable : bool
        Whether the kernel writes to it.

    Returns
    -------
    Buffer

    Raises
    ------
    TypeError
        ``x`` is not an array type we know, or its dtype is not allowed.
    ValueError
        ``x`` is not contiguous, is read-only but written to, or lives on an unknown device.
    """
    if isinstance(x, np.ndarray):
        return _numpy_buffer(x, name, allowed, writable)
    if _is_torch_tensor(x):
        return _torch_buffer(x, name, allowed, writable)
    if _is_numba_device_array(x) or hasattr(x, "__cuda_array_interface__"):
        return _cuda_buffer(x, name, allowed, writable)
    raise TypeError(
        f"{name}: expected a numpy array, torch tensor or CUDA array "
        f"(__cuda_array_interface__), got {type(x).__name__}"
    )


def check_same_shape(ref: Buffer, other: Buffer) -> None:
    """Raise ValueError unless ``other`` has ``ref``'s shape."""
    if other.shape != ref.shape:
        raise ValueError(
            f"{other.name}: shape {other.shape} does not match {ref.name} shape {ref.shape}"
        )


def check_same_device(ref: Buffer, other: Buffer) -> None:
    """Raise ValueError unless ``other`` lives on ``ref``'s device."""
    if other.device != ref.device:
        raise ValueError(
            f"{other.name}: is on {other.device} but {ref.name} is on {ref.device}; "
            "all buffers of one call must be on one device"
        )
    if (
        other.device_index is not None
        and ref.device_index is not None
        and other.device_index != ref.device_index
    ):
        raise ValueError(
            f"{other.name}: is on cuda:{other.device_index} but {ref.name} is on "
            f"cuda:{ref.device_index}"
        )


def check_scale(scale: Any) -> np.float32:
    """Return ``scale`` as float32; TypeError unless a real number, ValueError if not finite."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
    value = float(scale)
    if not math.isfinite(value) or abs(value) > float(np.finfo(np.float32).max):
        raise ValueError(f"scale: must be finite in float32, got {value}")
    return np.float32(value)
