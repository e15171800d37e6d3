"""Max-min fair rates of the transfers a change couples (numba): SimGrid's partial
invalidation over the compiled core's tables.

With egress and ingress caps, a transfer's rate depends on every transfer it shares a
finite cap with, and on theirs in turn. When transfers begin or end, only the transfers
reachable from a touched cap through active transfers can change rate: :func:`coupled`
finds them, :func:`maxmin` solves their allocation alone. Max-min fairness is unique, so
that equals solving every active transfer at once.
"""

from __future__ import annotations

import numba
import numpy as np

from . import tables
from .cache import drop_stale
from .tables import (
    C_ACTIVE,
    C_N,
    C_NDIRTY,
    C_NFRESH,
    C_STAMP,
    L_ACTIVE,
    L_BEGUN,
    L_FRESH,
    L_MARK,
    L_RATE_CAP,
    R_COUNT,
    R_DIRTY,
    R_MARK,
    R_QUEUE,
    Links,
)

__all__ = ["coupled", "maxmin"]

drop_stale(__file__, tables)  # numba checks this file only

_EPS = 1e-12


@numba.njit(cache=True)
def coupled(k: Links, c: np.ndarray, everything: bool) -> np.ndarray:
    """Active links whose rate may change, in begin order: every one, or those coupled
    (through finite caps) to a dirty cap or a fresh transfer. Clears both lists."""
    n = c[C_N]
    c[C_STAMP] += 1
    stamp = c[C_STAMP]
    flows = np.empty(c[C_ACTIVE], dtype=np.int64)
    m = 0
    stack = np.empty(2 * n, dtype=np.int64)
    top = 0
    if everything:
        for link in range(n * n):
            if k.i[link, L_ACTIVE] >= 0:
                flows[m] = link
                m += 1
    else:
        for j in range(c[C_NDIRTY]):
            r = k.res[j, R_QUEUE]
            k.res[r, R_MARK] = stamp
            stack[top] = r
            top += 1
        for j in range(c[C_NFRESH] + 1):
            if j < c[C_NFRESH]:  # a fresh transfer is re-rated even if it shares no cap
                link = k.i[j, L_FRESH]
                if k.i[link, L_ACTIVE] < 0 or k.i[link, L_MARK] == stamp:
                    continue
                k.i[link, L_MARK] = stamp
                flows[m] = link
                m += 1
                rs = (link // n, n + link % n)
                for r in rs:
                    if np.isfinite(k.res_cap[r]) and k.res[r, R_MARK] != stamp:
                        k.res[r, R_MARK] = stamp
                        stack[top] = r
                        top += 1
            while top > 0:
                top -= 1
                r = stack[top]
                for x in range(k.res[r, R_COUNT]):
                    link = k.res_list[r, x]
                    if k.i[link, L_MARK] == stamp:
                        continue
                    k.i[link, L_MARK] = stamp
                    flows[m] = link
                    m += 1
                    for r2 in (link // n, n + link % n):
                        if np.isfinite(k.res_cap[r2]) and k.res[r2, R_MARK] != stamp:
                            k.res[r2, R_MARK] = stamp
                            stack[top] = r2
                            top += 1
    for j in range(c[C_NDIRTY]):
        k.res[k.res[j, R_QUEUE], R_DIRTY] = 0
    c[C_NDIRTY] = 0
    c[C_NFRESH] = 0
    flows = flows[:m]
    return flows[np.argsort(k.i[flows, L_BEGUN], kind="mergesort")]


@numba.njit(cache=True)
def maxmin(k: Links, c: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Max-min fair rates of ``flows`` over their finite site caps and their own caps.

    Notes
    -----
    Progressive filling as :func:`netstorm.sim.rates.maxmin_rates` does it (the same water
    levels and tolerances; that solver also carries each link as a resource of one flow, so
    a level can differ in its last bit), but a round costs O(caps + flows it freezes)
    instead of O(caps + flows): flows are kept in order of their own cap, so the nearest own
    cap is the first unfrozen one, and a saturated cap freezes the flows listed on it.
    """
    n = c[C_N]
    m = len(flows)
    res = np.full((m, 2), -1, dtype=np.int64)
    cap = np.empty(m)
    count = np.zeros(2 * n, dtype=np.int64)
    for f in range(m):
        link = flows[f]
        cap[f] = k.f[link, L_RATE_CAP]
        for j in range(2):
            r = link // n if j == 0 else n + link % n
            if np.isfinite(k.res_cap[r]):
                res[f, j] = r
                count[r] += 1
    rs = np.nonzero(count)[0]
    start = np.zeros(2 * n + 1, dtype=np.int64)  # flows on each cap, as CSR
    start[1:] = np.cumsum(count)
    on = np.empty(start[-1], dtype=np.int64)
    fill = start[:-1].copy()
    for f in range(m):
        for j in range(2):
            r = res[f, j]
            if r >= 0:
                on[fill[r]] = f
                fill[r] += 1
    order = np.argsort(cap, kind="mergesort")
    nearest = 0  # order[nearest:] holds every unfrozen flow
    remaining = k.res_cap.copy()
    rate = np.zeros(m)
    frozen = np.zeros(m, dtype=np.bool_)
    left = m
    level = 0.0
    while left > 0:
        inc = np.inf  # the next water level: a cap's fair share or a flow's own cap
        for r in rs:
            if count[r] > 0 and remaining[r] / count[r] < inc:
                inc = remaining[r] / count[r]
        while frozen[order[nearest]]:
            nearest += 1
        if cap[order[nearest]] - level < inc:
            inc = cap[order[nearest]] - level
        if not np.isfinite(inc):
            for f in range(m):
                if not frozen[f]:
                    rate[f] = np.inf
            break
        inc = max(inc, 0.0)
        level += inc
        for r in rs:
            if count[r] > 0:
                remaining[r] -= inc * count[r]
        for r in rs:  # freeze the flows on every cap this level saturates ...
            if count[r] > 0 and remaining[r] <= _EPS * max(1.0, k.res_cap[r]):
                for x in range(start[r], start[r + 1]):
                    left -= _freeze(on[x], level, res, count, rate, frozen)
        for x in range(nearest, m):  # ... and every flow at its own cap (a prefix)
            f = order[x]
            if not (np.isfinite(cap[f]) and cap[f] - level <= _EPS * max(1.0, cap[f])):
                break
            left -= _freeze(f, level, res, count, rate, frozen)
    return rate


@numba.njit(cache=True)
def _freeze(f: int, level: float, res: np.ndarray, count: np.ndarray, rate: np.ndarray,
            frozen: np.ndarray) -> int:
    """Freeze flow ``f`` at ``level``; 1 if it was not frozen yet."""
    if frozen[f]:
        return 0
    frozen[f] = True
    rate[f] = level
    for j in range(2):
        if res[f, j] >= 0:
            count[res[f, j]] -= 1
    return 1
