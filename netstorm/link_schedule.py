"""One link's best order: the preemptive one-machine schedule with release and delivery times.

The cost model (:func:`netstorm.predict`) gives every link the best schedule of the shard
crossings it carries: a crossing can start at its head (when its first chunk can reach the
link), takes its bytes over the capacity, and is followed by its tail (the least time from
the link to the end of the all-reduce).
"""

from __future__ import annotations

import heapq

import numpy as np

from .tree_timing import Crossings

__all__ = ["jackson", "latest_end"]


def latest_end(crossings: Crossings, capacity: np.ndarray, known: float) -> float:
    """The latest end any link's best preemptive schedule allows, where it beats ``known``.

    ``crossings`` lists ``(link key, head s, bytes, tail s)`` (key ``a * n + b``),
    ``capacity`` is the flattened capacity matrix. A link serves its crossings one at a
    time; a crossing cannot start before its head, and the all-reduce ends no sooner than
    its finish plus its tail.
    The best order is Jackson's preemptive rule (always serve the released crossing with
    the longest tail), which is optimal for this one-machine problem. Links whose crossings
    all start at the latest head and run back to back would still end by ``known`` are
    skipped: their optimum cannot exceed it.
    """
    if not len(crossings.key):
        return known
    order = np.argsort(crossings.key, kind="stable")
    key = crossings.key[order]
    head, nbytes, tail = crossings.head[order], crossings.nbytes[order], crossings.tail[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, len(key)])
    work = np.add.reduceat(nbytes, starts) / capacity[key[starts]]
    worst = np.maximum.reduceat(head, starts) + work + np.maximum.reduceat(tail, starts)
    for g in np.flatnonzero((counts > 1) & (worst > known)):
        if worst[g] <= known:
            continue  # ``known`` grew since the check above
        lo, hi = starts[g], starts[g] + counts[g]
        rate = float(capacity[key[lo]])
        known = max(known, jackson(list(zip(head[lo:hi].tolist(),
                                            (nbytes[lo:hi] / rate).tolist(),
                                            tail[lo:hi].tolist(), strict=True))))
    return known


def jackson(jobs: list[tuple[float, float, float]]) -> float:
    """max(finish + tail) of the preemptive longest-tail-first schedule of
    ``(release, processing, tail)`` jobs on one machine (optimal; Jackson 1955, Horn 1974)."""
    jobs = sorted(jobs)
    now, i, end = 0.0, 0, 0.0
    ready: list[tuple[float, float]] = []  # (-tail, processing left)
    while i < len(jobs) or ready:
        if not ready:
            now = max(now, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= now:
            heapq.heappush(ready, (-jobs[i][2], jobs[i][1]))
            i += 1
        neg_tail, left = heapq.heappop(ready)
        run = min(left, (jobs[i][0] if i < len(jobs) else np.inf) - now)
        now += run
        if run < left:
            heapq.heappush(ready, (neg_tail, left - run))
        else:
            end = max(end, now - neg_tail)
    return end
