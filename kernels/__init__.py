"""Numba CPU and CUDA gradient-reduction kernels (``netstorm.kernels``); see DESIGN section 10."""

__all__: list[str] = []
