"""The compiled core's state: tables with named columns, counters, what :func:`run` returns.

Every kind of row (links, site caps, transfers, move candidates, events, observations) is
a float table and an int table side by side, one column per field (:mod:`netstorm.sim.heaps`
says why). :class:`~netstorm.sim.compiled.CompiledNetwork` allocates them for a run;
:mod:`netstorm.sim.core` and :mod:`netstorm.sim.sharing` work on them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .heaps import POS

__all__ = ["DONE", "ERROR", "IDLE", "OBS_FULL", "UNTIL", "Events", "Iteration", "Links",
           "Pool", "counters"]

# -- counters (``c``: one int64 array) ------------------------------------------------------
(C_EID, C_SEQ, C_EVENTS, C_FINISHES, C_FREE, C_ENTRIES, C_OBS, C_LEFT, C_DIRTY, C_SHARED,
 C_TRANSFERS, C_BEGUN, C_N, C_OBSERVE, C_STAMP, C_ERROR_AT, C_NDIRTY, C_NFRESH, C_ACTIVE,
 C_AUX_QUEUE, C_PRIMARY_BUSY) = range(21)

# -- link table columns ------------------------------------------------------------------------
L_RATE_CAP, L_LATENCY, L_BYTES, L_BUSY = range(4)  # float: min(capacity, window / RTT), ...
L_FLOATS = 4
#: int: the transfer sending (-1: none), when it began (begin order), transfers waiting, the
#: roots of the send queue and of the move candidates, a search mark, a link begun since the
#: last flush (by position), and the link's place in its egress and ingress lists
L_ACTIVE, L_BEGUN, L_QLEN, L_QROOT, L_MROOT, L_MARK, L_FRESH, L_AT_OUT, L_AT_IN = range(9)
L_INTS = 9
# -- site cap table columns (rows: egress caps, then ingress caps) ---------------------------
#: (the dirty caps are listed in column R_QUEUE, rows 0 .. c[C_NDIRTY])
R_COUNT, R_MARK, R_DIRTY, R_QUEUE = range(4)
R_INTS = 4
# -- transfer table columns (KEY, SEQ, CHILD, SIB are the pairing heap's) ----------------------
T_NBYTES, T_REMAINING, T_RATE, T_SINCE, T_START = range(1, 6)
T_LINK, T_SLOT, T_SEND, T_QUEUED, T_RATED, T_CAPPED = range(3, 9)
T_FLOATS, T_INTS = 6, 9
#: int column of a move candidate: the transfer it may move (its key and links are the
#: pairing heap's)
E_TID = 3
E_INTS = 4
# -- observation columns -----------------------------------------------------------------------
O_BYTES, O_SECS, O_END, O_CAPPED = range(4)
O_FLOATS = 4

# -- event kinds -----------------------------------------------------------------------------
DELIVER, LOCAL, FLUSH, FINISHED = range(4)

# -- what :func:`run` returns ----------------------------------------------------------------
#: every site is done; the clock is the instant it happened
DONE = 0
#: the next event is at or after ``until``
UNTIL = 1
#: the observation buffer is full: drain it and call again
OBS_FULL = 2
#: no event is left but the iteration is not done (transfers stalled at rate 0)
IDLE = 3
#: a message arrived twice; ``c[C_ERROR_AT]`` is its slot (a flattening bug, never a plan's)
ERROR = 4


def counters(n: int, shared: bool, observe: bool) -> np.ndarray:
    """A fresh counter array for ``n`` sites."""
    c = np.zeros(21, dtype=np.int64)
    c[C_N], c[C_SHARED], c[C_OBSERVE] = n, shared, observe
    return c


class Links(NamedTuple):
    """Per directed link ``src * n + dst``, and per site cap, the network's state."""

    f: np.ndarray  # f8[L, L_FLOATS]
    i: np.ndarray  # i8[L, L_INTS]
    fi: np.ndarray  # i8[L, 3] the finish heap (heaps.HEAP, POS, FEID)
    ftime: np.ndarray  # f8[L] each active link's finish time
    res_cap: np.ndarray  # f8[2n] egress caps, then ingress caps
    res: np.ndarray  # i8[2n, R_INTS]
    res_list: np.ndarray  # i8[2n, n] the active links on each cap

    @classmethod
    def new(cls, latency: np.ndarray) -> Links:
        """Idle links of an ``n x n`` latency matrix, no caps yet."""
        n = len(latency)
        links = n * n
        f = np.zeros((links, L_FLOATS))
        f[:, L_LATENCY] = np.ravel(latency)
        i = np.zeros((links, L_INTS), dtype=np.int64)
        i[:, [L_ACTIVE, L_QROOT, L_MROOT]] = -1
        fi = np.zeros((links, 3), dtype=np.int64)
        fi[:, POS] = -1
        return cls(f=f, i=i, fi=fi, ftime=np.zeros(links), res_cap=np.full(2 * n, np.inf),
                   res=np.zeros((2 * n, R_INTS), dtype=np.int64),
                   res_list=np.zeros((2 * n, n), dtype=np.int64))


class Pool(NamedTuple):
    """Transfers (queued or sending) and route-rule move candidates."""

    f: np.ndarray  # f8[T, T_FLOATS]
    i: np.ndarray  # i8[T, T_INTS]
    free: np.ndarray  # i8[T] a stack of free rows
    ef: np.ndarray  # f8[E, 1]
    ei: np.ndarray  # i8[E, E_INTS]

    @classmethod
    def new(cls, size: int, entries: int) -> Pool:
        """Room for ``size`` transfers (all free) and ``entries`` move candidates."""
        return cls(f=np.zeros((size, T_FLOATS)), i=np.full((size, T_INTS), -1, dtype=np.int64),
                   free=np.arange(size, dtype=np.int64), ef=np.zeros((entries, 1)),
                   ei=np.zeros((entries, E_INTS), dtype=np.int64))

    def grown(self, free: int, size: int, entries: int) -> Pool:
        """A copy with room for ``size`` transfers and ``entries`` candidates; ``free`` is
        how many rows are free now (the top of the free stack). Candidates are not kept:
        none outlives its iteration."""
        old = len(self.free)
        pool = Pool.new(size, entries)
        pool.f[:old], pool.i[:old] = self.f, self.i
        pool.free[:free] = self.free[:free]
        pool.free[free:free + size - old] = np.arange(old, size)
        return pool


class Events(NamedTuple):
    """The event heap, and the buffer of observations."""

    time: np.ndarray  # f8[V]
    i: np.ndarray  # i8[V, 3] (heaps.EID, KIND, ARG)
    obs: np.ndarray  # f8[O, O_FLOATS]
    obs_link: np.ndarray  # i8[O]

    @classmethod
    def new(cls, size: int, observations: int) -> Events:
        """Room for ``size`` pending events and ``observations`` buffered ones."""
        return cls(time=np.zeros(size), i=np.zeros((size, 3), dtype=np.int64),
                   obs=np.zeros((observations, O_FLOATS)),
                   obs_link=np.zeros(observations, dtype=np.int64))

    def grown(self, size: int) -> Events:
        """A copy with room for ``size`` pending events (the heap order is kept)."""
        time, rows = np.zeros(size), np.zeros((size, 3), dtype=np.int64)
        time[:len(self.time)], rows[:len(self.time)] = self.time, self.i
        return self._replace(time=time, i=rows)


class Iteration(NamedTuple):
    """One iteration's executor state, sized for one plan version."""

    pending: np.ndarray  # i8[G] events each step still waits for
    got: np.ndarray  # bool[K] slots filled
    remaining: np.ndarray  # i8[n] mandatory steps left per site


