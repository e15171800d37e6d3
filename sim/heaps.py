"""Heaps over table rows for the compiled core (numba): pairing heaps, the event heap and
an indexed heap of finish times.

Tables are 2-D arrays, one row per node and one column per field, a float table and an
int table side by side. The core passes whole tables, not one array per field, because
every array passed to a compiled function costs two atomic reference-count updates.

- **Pairing heaps** order rows by ``(f[:, KEY], i[:, SEQ])`` and link them through
  ``i[:, CHILD]`` and ``i[:, SIB]``; many heaps share one table (a link's send queue, a
  link's move candidates). Insert O(1), pop amortised O(log n).
- **The event heap** is a binary heap of rows ``(time; eid, kind, arg)`` ordered by
  ``(time, eid)``.
- **The finish heap** is a binary heap of links keyed by ``(time, eid)``, indexed by link, so a
  rate change moves a key instead of leaving a stale event behind.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["ARG", "CHILD", "EID", "FEID", "HEAP", "KEY", "KIND", "POS", "SEQ", "SIB", "ev_pop",
           "ev_push", "f_sift", "meld", "pop"]

#: float column of a pairing-heap row: its key (a send priority)
KEY = 0
#: int columns of a pairing-heap row
SEQ, CHILD, SIB = 0, 1, 2
#: int columns of an event row (its time is in the float vector)
EID, KIND, ARG = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _before(f: np.ndarray, i: np.ndarray, a: int, b: int) -> bool:
    return f[a, KEY] < f[b, KEY] or (f[a, KEY] == f[b, KEY] and i[a, SEQ] < i[b, SEQ])


@numba.njit(cache=True)
def meld(f: np.ndarray, i: np.ndarray, a: int, b: int) -> int:
    """Meld the heaps rooted at ``a`` and ``b`` (-1: empty); returns the new root."""
    if a < 0:
        return b
    if b < 0:
        return a
    if _before(f, i, b, a):
        a, b = b, a
    i[b, SIB] = i[a, CHILD]
    i[a, CHILD] = b
    return a


@numba.njit(cache=True)
def pop(f: np.ndarray, i: np.ndarray, root: int) -> int:
    """Detach ``root``; returns the root of the rest (two-pass pairing)."""
    x = i[root, CHILD]
    i[root, CHILD] = -1
    pairs = -1
    while x >= 0:
        a = x
        b = i[a, SIB]
        if b < 0:
            i[a, SIB] = pairs
            pairs = a
            break
        x = i[b, SIB]
        i[a, SIB] = -1
        i[b, SIB] = -1
        m = meld(f, i, a, b)
        i[m, SIB] = pairs
        pairs = m
    out = -1
    while pairs >= 0:
        nxt = i[pairs, SIB]
        i[pairs, SIB] = -1
        out = meld(f, i, out, pairs)
        pairs = nxt
    return out


@numba.njit(cache=True, inline="always")
def _ev_before(time: np.ndarray, i: np.ndarray, a: int, b: int) -> bool:
    return time[a] < time[b] or (time[a] == time[b] and i[a, EID] < i[b, EID])


@numba.njit(cache=True)
def _ev_swap(time: np.ndarray, i: np.ndarray, a: int, b: int) -> None:
    time[a], time[b] = time[b], time[a]
    for col in range(3):
        i[a, col], i[b, col] = i[b, col], i[a, col]


@numba.njit(cache=True)
def ev_push(time: np.ndarray, i: np.ndarray, size: int, at: float, eid: int, kind: int,
            arg: int) -> None:
    """Push an event onto a heap of ``size`` rows (the caller counts it)."""
    j = size
    time[j], i[j, EID], i[j, KIND], i[j, ARG] = at, eid, kind, arg
    while j > 0:
        up = (j - 1) >> 1
        if not _ev_before(time, i, j, up):
            break
        _ev_swap(time, i, j, up)
        j = up


@numba.njit(cache=True)
def ev_pop(time: np.ndarray, i: np.ndarray, size: int) -> None:
    """Remove the first of ``size`` events (the caller counts it)."""
    last = size - 1
    _ev_swap(time, i, 0, last)
    j = 0
    while True:
        small, left = j, 2 * j + 1
        if left < last and _ev_before(time, i, left, small):
            small = left
        if left + 1 < last and _ev_before(time, i, left + 1, small):
            small = left + 1
        if small == j:
            return
        _ev_swap(time, i, j, small)
        j = small


# -- the finish heap: fi[j, HEAP] is the link at position j; fi[link, POS], fi[link, FEID]
# and time[link] are a link's position and key ------------------------------------------------
#: int columns of the finish heap's table
HEAP, POS, FEID = 0, 1, 2


@numba.njit(cache=True, inline="always")
def _f_before(fi: np.ndarray, time: np.ndarray, a: int, b: int) -> bool:
    return time[a] < time[b] or (time[a] == time[b] and fi[a, FEID] < fi[b, FEID])


@numba.njit(cache=True)
def f_sift(fi: np.ndarray, time: np.ndarray, size: int, j: int) -> None:
    """Restore the finish heap's order around position ``j`` (its key moved either way)."""
    link = fi[j, HEAP]
    while j > 0:
        up = (j - 1) >> 1
        if not _f_before(fi, time, link, fi[up, HEAP]):
            break
        fi[j, HEAP] = fi[up, HEAP]
        fi[fi[j, HEAP], POS] = j
        j = up
    while True:
        small, left = -1, 2 * j + 1
        if left < size and _f_before(fi, time, fi[left, HEAP], link):
            small = left
        if left + 1 < size and _f_before(fi, time, fi[left + 1, HEAP],
                                         link if small < 0 else fi[small, HEAP]):
            small = left + 1
        if small < 0:
            break
        fi[j, HEAP] = fi[small, HEAP]
        fi[fi[j, HEAP], POS] = j
        j = small
    fi[j, HEAP] = link
    fi[link, POS] = j
