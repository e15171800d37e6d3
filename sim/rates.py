"""Max-min fair rates of concurrent transfers: a numba solver and a plain-Python reference.

A transfer (flow) uses a few resources (a directed link, its sender's egress, its
receiver's ingress) and may carry its own cap (a TCP window over the round-trip time).
Resources are given as a flat capacity vector; a flow lists its resource indices, with -1
for "none".
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["maxmin_rates", "maxmin_rates_reference"]

_EPS = 1e-12


@numba.njit(cache=True)
def _solve(flow_res: np.ndarray, capacity: np.ndarray, flow_cap: np.ndarray) -> np.ndarray:
    nflows, width = flow_res.shape
    nres = capacity.shape[0]
    rate = np.zeros(nflows)
    frozen = np.zeros(nflows, dtype=np.bool_)
    remaining = capacity.copy()
    count = np.zeros(nres, dtype=np.int64)
    for f in range(nflows):
        for j in range(width):
            r = flow_res[f, j]
            if r >= 0:
                count[r] += 1
    left = nflows
    level = 0.0
    while left > 0:
        # the next water level: the smallest fair share of a resource or a flow's own cap
        inc = np.inf
        for r in range(nres):
            if count[r] > 0 and np.isfinite(remaining[r]):
                share = remaining[r] / count[r]
                if share < inc:
                    inc = share
        for f in range(nflows):
            if not frozen[f] and flow_cap[f] - level < inc:
                inc = flow_cap[f] - level
        if not np.isfinite(inc):  # nothing limits the rest: unbounded
            for f in range(nflows):
                if not frozen[f]:
                    rate[f] = np.inf
            break
        if inc < 0.0:
            inc = 0.0
        level += inc
        for r in range(nres):
            if count[r] > 0:
                remaining[r] -= inc * count[r]
        # freeze every flow that hit its cap or crosses a saturated resource
        for f in range(nflows):
            if frozen[f]:
                continue
            hit = np.isfinite(flow_cap[f]) and flow_cap[f] - level <= _EPS * max(1.0, flow_cap[f])
            if not hit:
                for j in range(width):
                    r = flow_res[f, j]
                    if (r >= 0 and np.isfinite(capacity[r])
                            and remaining[r] <= _EPS * max(1.0, capacity[r])):
                        hit = True
                        break
            if hit:
                frozen[f] = True
                rate[f] = level
                left -= 1
                for j in range(width):
                    r = flow_res[f, j]
                    if r >= 0:
                        count[r] -= 1
    return rate


def _check(flow_res: np.ndarray, capacity: np.ndarray,
           flow_cap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    res = np.ascontiguousarray(flow_res, dtype=np.int64)
    if res.ndim != 2:
        raise ValueError(f"flow_res must be 2-D (flows x resources), got shape {res.shape}")
    cap = np.ascontiguousarray(capacity, dtype=np.float64)
    if cap.ndim != 1 or (cap < 0).any() or np.isnan(cap).any():
        raise ValueError("capacity must be a 1-D array of values >= 0")
    if res.size and (res.max() >= len(cap) or res.min() < -1):
        raise ValueError(f"flow_res holds a resource index outside -1..{len(cap) - 1}")
    fcap = (np.full(len(res), np.inf) if flow_cap is None
            else np.ascontiguousarray(flow_cap, dtype=np.float64))
    if fcap.shape != (len(res),) or (fcap < 0).any() or np.isnan(fcap).any():
        raise ValueError("flow_cap must give one value >= 0 per flow")
    return res, cap, fcap


def maxmin_rates(flow_res: np.ndarray, capacity: np.ndarray,
                 flow_cap: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rate of every flow (numba).

    Parameters
    ----------
    flow_res
        ``(F, k)`` int array: the resources flow f crosses; -1 pads unused slots.
    capacity
        ``(R,)`` capacity of every resource in B/s (``inf`` for an uncapped resource).
    flow_cap
        Optional ``(F,)`` per-flow cap (e.g. window / RTT), ``inf`` for none.

    Returns
    -------
    numpy.ndarray
        ``(F,)`` rates in B/s (``inf`` for a flow that nothing limits).

    Notes
    -----
    Progressive filling: all unfrozen flows grow at the same pace; when a resource saturates
    (its remaining capacity reaches 0) or a flow reaches its own cap, the flows concerned
    freeze at that level. The result is the unique max-min fair allocation: every flow has
    a bottleneck, a saturated resource on which no other flow has a larger rate (or its own
    cap). A resource crossed twice by one flow counts twice. Cost O(rounds x (F k + R)).
    """
    res, cap, fcap = _check(flow_res, capacity, flow_cap)
    if not len(res):
        return np.zeros(0)
    return _solve(res, cap, fcap)  # type: ignore[no-any-return]


def maxmin_rates_reference(flow_res: np.ndarray, capacity: np.ndarray,
                           flow_cap: np.ndarray | None = None) -> np.ndarray:
    """Plain-Python max-min fair rates, the oracle for :func:`maxmin_rates`.

    Notes
    -----
    Bottleneck elimination: repeatedly find the smallest fair share ``c_r / n_r`` among the
    resources still used by unfixed flows (and the smallest unfixed per-flow cap); fix every
    flow through that resource (or that flow) at that share, and remove its rate from the
    capacities of all resources it crosses. Written with dictionaries and lists, separately
    from the numba solver.
    """
    res, cap, fcap = _check(flow_res, capacity, flow_cap)
    flows = {f: [int(r) for r in row if r >= 0] for f, row in enumerate(res.tolist())}
    left = {r: float(c) for r, c in enumerate(cap.tolist())}
    rates = [0.0] * len(flows)
    while flows:
        users: dict[int, int] = {}
        for rs in flows.values():
            for r in rs:
                users[r] = users.get(r, 0) + 1
        shares = {r: left[r] / k for r, k in users.items() if math.isfinite(left[r])}
        best_res = min(shares.values(), default=math.inf)
        best_cap = min((float(fcap[f]) for f in flows), default=math.inf)
        share = min(best_res, best_cap)
        if not math.isfinite(share):
            for f in flows:
                rates[f] = math.inf
            break
        share = max(share, 0.0)
        tight = {r for r, s in shares.items() if s <= share * (1 + 1e-12) + 1e-300}
        fixed = [f for f, rs in flows.items()
                 if fcap[f] <= share * (1 + 1e-12) or any(r in tight for r in rs)]
        for f in fixed:
            rates[f] = share
            for r in flows.pop(f):
                left[r] -= share
    return np.array(rates, dtype=np.float64)
