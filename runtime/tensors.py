"""torch tensors through the runtime: the all-reduce of a tensor as a torch future (the
hook, the backend and several processes per site all go through it)."""

from __future__ import annotations

import torch

from .elastic import ElasticSite
from .site import Site

__all__ = ["allreduce_tensor", "settled"]


def allreduce_tensor(site: Site | ElasticSite, tensor: torch.Tensor, *,
                     scale: float | None = None) -> torch.futures.Future[torch.Tensor]:
    """Start the mean all-reduce of a float32 ``tensor`` (CPU or CUDA) through ``site``.

    Parameters
    ----------
    site
        This process's site.
    tensor
        Contiguous float32. A CPU tensor is reduced in place; a device tensor goes through a
        pinned host buffer of its own (from torch's caching host allocator: reused once
        freed, never shared by two all-reduces in flight) and the result is copied back.
    scale
        Multiply the mean by this afterwards (``len(workers)`` turns it into a sum).

    Returns
    -------
    torch.futures.Future
        Completes with ``tensor`` holding the result, or fails with the runtime's error (a
        :class:`~netstorm.errors.PeerError` when a peer died or went silent; see
        :func:`settled` for how it reaches DDP).

    Notes
    -----
    A device tensor costs a device-to-host and a host-to-device copy over PCIe on top of the
    network transfer; the reduction runs on the host, where the frames land (the runtime's
    sums are memory-bound and overlap the transfers).
    """
    if tensor.dtype != torch.float32:
        raise TypeError(f"netstorm all-reduce: expected a float32 tensor, got {tensor.dtype}")
    if not tensor.is_contiguous():
        raise TypeError("netstorm all-reduce: the tensor is not contiguous")
    flat = tensor.view(-1)
    host = flat if flat.device.type == "cpu" else torch.empty(
        flat.numel(), dtype=torch.float32, pin_memory=True)
    if host is not flat:
        host.copy_(flat)  # synchronous: the bucket's gradient is complete on the host
    outcome, fut = settled()

    def done(error: BaseException | None) -> None:
        if error is None:
            if scale is not None:
                host.mul_(scale)
            if host is not flat:
                flat.copy_(host)
        outcome.set_result((error, tensor))

    site.allreduce_async(host).add_done_callback(done)
    return fut


def settled() -> tuple[torch.futures.Future[tuple[BaseException | None, torch.Tensor]],
                       torch.futures.Future[torch.Tensor]]:
    """``(outcome, result)``: complete ``outcome`` with ``(error or None, tensor)`` and
    ``result`` completes with the tensor or fails with the error.

    ``Future.set_exception`` only stores the exception as the value, which C++ consumers
    (DDP's reducer, a ``Work``) then fail to cast to a tensor ("Unable to cast ... to
    Tensor"); an exception raised in a ``then`` callback marks the future failed for them,
    with the error's type and message (Python's ``wait()`` raises a ``RuntimeError``)."""
    outcome: torch.futures.Future[tuple[BaseException | None, torch.Tensor]] = (
        torch.futures.Future())

    def unwrap(f: torch.futures.Future[tuple[BaseException | None, torch.Tensor]]
               ) -> torch.Tensor:
        error, tensor = f.value()
        if error is not None:
            raise error
        return tensor

    return outcome, outcome.then(unwrap)
