"""The pipelining chunk a plan runs with: candidates and the choice among them."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace

from .cost import predict
from .errors import InputError
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = ["MIN_CHUNK_BYTES", "choose_chunk", "chunk_candidates", "chunk_option"]

#: Default floor of the chunk sizes ``treepack`` tries: 32 Ki fp32 elements.
MIN_CHUNK_BYTES = 131_072
#: ``treepack`` tries the job's chunk halved up to this many times.
_HALVINGS = 4
#: A larger chunk is kept while its predicted time is within this share of the best one.
_CHUNK_TOLERANCE = 0.01


def chunk_candidates(job: Job, min_chunk_bytes: int = MIN_CHUNK_BYTES) -> list[int]:
    """Chunk sizes ``treepack`` tries, largest first.

    ``job.chunk_bytes / 2**k`` for ``k = 0..4``, rounded down to a multiple of the element
    size, keeping those of at least ``max(min_chunk_bytes, element_size)``; the job's own
    chunk (rounded the same way) is always the first, even below the floor.
    """
    size = job.element_size
    floor = max(int(min_chunk_bytes), size)
    out = [job.with_chunk(job.chunk_bytes).chunk_bytes]
    for k in range(1, _HALVINGS + 1):
        chunk = job.chunk_bytes // 2**k // size * size
        if chunk >= floor and chunk not in out:
            out.append(chunk)
    return out


def choose_chunk(plan: Plan, view: NetworkView, job: Job,
                 candidates: Sequence[int]) -> tuple[int, float]:
    """The chunk size to run ``plan`` with, among ``candidates``.

    Parameters
    ----------
    plan
        The plan (its own ``chunk_bytes`` is ignored).
    candidates
        Chunk sizes in bytes, each a valid chunk of ``job`` (:func:`chunk_candidates`).

    Returns
    -------
    tuple
        ``(chunk_bytes, predicted seconds)`` of the chosen chunk.

    Notes
    -----
    Each candidate c is judged by the cost model, ``T(c) = predict(plan with chunk c)``
    (:func:`netstorm.predict`): smaller chunks pay less store-and-forward fill per hop,
    ``c / capacity``, which matters on slow WAN links. The rule keeps the *largest* c with
    ``T(c) <= 1.01 min_c' T(c')``: every chunk is one message, with per-message overhead
    (headers, syscalls, reduction kernel launches, simulator events) that the cost model
    does not charge, so a chunk size that buys less than 1 % is not worth its messages.
    Ties go to the larger chunk, so the choice is deterministic. Every candidate is
    evaluated because ``T`` need not fall as c does: a shard's pipeline term runs the rest
    of the shard through its slowest hop after the first chunk's critical path, and when
    that hop is off the critical path, smaller chunks shorten the path by less than they
    lengthen the rest (seen on fast, latency-bound meshes).
    """
    if not candidates:
        raise InputError("choose_chunk needs at least one candidate chunk size")
    times = {int(c): predict(replace(plan, chunk_bytes=int(c)), view, job).time_s
             for c in candidates}
    best = min(times.values())
    chunk = max(c for c, t in times.items() if t <= best * (1 + _CHUNK_TOLERANCE))
    return chunk, times[chunk]


def _whole(value: object) -> bool:
    """A whole number > 0 (not a bool)."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) > 0)


def chunk_option(job: Job, chunk_bytes: int | str | None,
                 min_chunk_bytes: int) -> list[int] | None:
    """Candidate chunks of the ``chunk_bytes`` option (``None``: keep the job's)."""
    if not _whole(min_chunk_bytes):
        raise InputError(f"min_chunk_bytes must be a whole number > 0, got {min_chunk_bytes!r}")
    if chunk_bytes is None:
        return None
    if isinstance(chunk_bytes, str):
        if chunk_bytes != "auto":
            raise InputError(f"chunk_bytes must be 'auto', None or a whole number > 0, "
                             f"got {chunk_bytes!r}")
        return chunk_candidates(job, int(min_chunk_bytes))
    if not _whole(chunk_bytes):
        raise InputError(f"chunk_bytes must be 'auto', None or a whole number > 0, "
                         f"got {chunk_bytes!r}")
    return [job.with_chunk(int(chunk_bytes)).chunk_bytes]
