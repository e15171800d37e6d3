"""One link's best order: the preemptive one-machine schedule with release and delivery times.

The cost model (:func:`netstorm.predict`) gives every link the best schedule of the shard
crossings it carries: a crossing can start at its head (when its first chunk can reach the
link), takes its bytes over the capacity, and is followed by its tail (the least time from
the link to the end of the all-reduce).
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["jackson", "latest_end"]


def latest_end(crossings: dict[int, list[tuple[float, float, float]]],
               capacity: np.ndarray, known: float) -> float:
    """The latest end any link's best preemptive schedule allows, where it beats ``known``.

    ``crossings[key]`` lists ``(head s, bytes, tail s)`` on link ``key`` (``a * n + b``),
    ``capacity`` is the flattened capacity matrix. A link serves its crossings one at a
    time; a crossing cannot start before its head, and the all-reduce ends no sooner than
    its finish plus its tail.
    The best order is Jackson's preemptive rule (always serve the released crossing with
    the longest tail), which is optimal for this one-machine problem. Links whose crossings
    all start at the latest head and run back to back would still end by ``known`` are
    skipped: their optimum cannot exceed it.
    """
    for key, jobs in crossings.items():
        if len(jobs) < 2:
            continue  # one crossing: head + busy + tail, already counted
        rate = float(capacity[key])
        work = sum(nbytes for _, nbytes, _ in jobs) / rate
        if max(h for h, _, _ in jobs) + work + max(t for _, _, t in jobs) <= known:
            continue
        known = max(known, jackson([(h, nbytes / rate, t) for h, nbytes, t in jobs]))
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
