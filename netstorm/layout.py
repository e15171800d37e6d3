"""Where each chunk of the gradient lies and which path each chunk of a multipath edge takes.

Pure functions of a plan and a job, shared by the cost model (:mod:`netstorm.cost`) and the
compiler (:mod:`netstorm.compiler`), so that both cut and deal chunks the same way.
"""

from __future__ import annotations

import itertools

from .job import Job
from .plan import Plan

__all__ = ["assign_paths", "bucket_bounds", "chunk_layout", "shard_elements"]


def _split(total: int, fractions: list[float]) -> list[tuple[int, int]]:
    bounds, cum = [0], 0.0
    for fraction in fractions:
        cum += fraction
        bounds.append(min(total, round(cum * total)))
    bounds[-1] = total
    return [(a, max(0, b - a)) for a, b in itertools.pairwise(bounds)]


def bucket_bounds(job: Job) -> list[int]:
    """Element offsets where each gradient bucket starts, plus the total: ``B + 1`` values.

    Buckets are laid out in model order (``job.buckets[0]`` first).
    """
    bounds = [0]
    for nbytes in job.buckets:  # type: ignore[union-attr]
        bounds.append(bounds[-1] + nbytes // job.element_size)
    return bounds


def chunk_layout(plan: Plan, job: Job, *, by_bucket: bool = False) -> list[list[tuple[int, int]]]:
    """``(offset, elems)`` of every chunk of every shard, in the shard's chunk order.

    Parameters
    ----------
    by_bucket
        Lay shards out inside every bucket (what overlapping the backward pass needs) instead
        of over the whole flat gradient.

    Notes
    -----
    Flat layout (default): shard i is the contiguous range of :func:`shard_elements`, cut
    into chunks of ``chunk_bytes // element_size`` elements (the last may be shorter);
    ``chunk_bytes`` is the plan's when it has one, else the job's (:meth:`Plan.job_for`).

    Bucket layout: every bucket is all-reduced with the plan, as DDP all-reduces each
    bucket: bucket b's element range is split among the shards by their fractions (same
    rounding as :func:`shard_elements`) and each piece is cut into chunks. A shard's chunks
    are ordered by the time the backward pass produces them -- the *last* bucket first --
    so chunk order, and the send priorities derived from it, follow readiness. With one
    bucket the two layouts are identical.
    """
    job = plan.job_for(job)
    chunk_elems = max(1, job.chunk_bytes // job.element_size)
    fractions = [s.fraction for s in plan.shards]
    if by_bucket:
        bounds = bucket_bounds(job)
        pieces: list[list[tuple[int, int]]] = [[] for _ in fractions]
        for b in reversed(range(len(bounds) - 1)):
            for i, (off, elems) in enumerate(_split(bounds[b + 1] - bounds[b], fractions)):
                if elems:
                    pieces[i].append((bounds[b] + off, elems))
    else:
        pieces = [[piece] if piece[1] else [] for piece in shard_elements(plan, job)]
    return [[(off + k, min(chunk_elems, elems - k)) for off, elems in shard
             for k in range(0, elems, chunk_elems)] for shard in pieces]


def shard_elements(plan: Plan, job: Job) -> list[tuple[int, int]]:
    """``(offset, elems)`` of every shard in the flat gradient of ``job``.

    Notes
    -----
    The gradient has ``E = gradient_bytes / element_size`` elements; shard i spans
    ``[round(F_{i-1} E), round(F_i E))`` where ``F_i`` is the cumulative fraction, so the
    shards tile the gradient exactly (a very small shard may get no elements).
    """
    return _split(job.gradient_bytes // job.element_size, [s.fraction for s in plan.shards])


def assign_paths(weights: tuple[float, ...], count: int) -> list[int]:
    """Deterministic path index for each of ``count`` chunks, in proportion to ``weights``.

    Notes
    -----
    Chunk k goes on the path with the largest deficit ``w_i (k + 1) - n_i`` (``n_i`` chunks
    already assigned), ties to the lowest index (smooth weighted round robin): after any
    prefix of k chunks each path has carried ``w_i k`` chunks to within about one (the
    tests check < 1.5).
    """
    counts = [0] * len(weights)
    out = []
    for k in range(count):
        best = max(range(len(weights)), key=lambda i: (weights[i] * (k + 1) - counts[i], -i))
        counts[best] += 1
        out.append(best)
    return out
