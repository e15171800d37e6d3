"""Numba CPU and CUDA gradient-reduction kernels (``netstorm.kernels``); see DESIGN section 10.

- :func:`fused_reduce` -- ``out = scale * sum(inputs)`` (or ``+=``) in one pass, fp32
  accumulation, for fp32, fp16 and bf16 inputs.
- :func:`pack` / :func:`unpack_accumulate` -- fp16/bf16 wire codecs; the decode is fused
  into the accumulation.
- :mod:`netstorm.kernels.reference` -- numpy oracle (``netstorm bench kernels``,
  :mod:`netstorm.cli.bench.kernels`, measures their bandwidth).

Back end by buffer location: numpy arrays and CPU tensors use numba parallel loops; CUDA
tensors and ``__cuda_array_interface__`` arrays use numba CUDA kernels. Importing this
package does not import ``numba.cuda`` (nor torch).
"""

from . import reference
from .api import fused_reduce, pack, unpack_accumulate
from .reference import WIRE_DTYPES, codec_error

__all__ = [
    "WIRE_DTYPES",
    "codec_error",
    "fused_reduce",
    "pack",
    "reference",
    "unpack_accumulate",
]
