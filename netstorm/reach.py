"""How soon a site's links can carry every worker's data out to (in from) every other.

A lower bound for *any* all-reduce scheme, not only trees: it charges the latency that the
fluid bound of :mod:`netstorm.bound` overlaps away, one site at a time.
"""

from __future__ import annotations

import numpy as np

from .view import NetworkView

__all__ = ["fastest_paths", "priced_rows", "reach_time"]


def fastest_paths(hop: np.ndarray) -> np.ndarray:
    """All-pairs fastest path times (Floyd-Warshall, O(N^3)).

    ``hop[u, v]`` is one hop's time (``inf`` where there is no link); the diagonal of the
    result is 0.
    """
    dist = np.array(hop, dtype=float)
    np.fill_diagonal(dist, 0.0)
    for k in range(len(dist)):
        np.minimum(dist, dist[:, k, None] + dist[None, k, :], out=dist)
    return dist


def priced_rows(m_bytes: float, weights: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """Per row j, the least T with ``sum_v weights[v] (T - delay[j, v])^+ >= m_bytes``.

    Notes
    -----
    ``f(T) = sum_v w_v (T - L_v)^+`` is increasing, and for the k smallest delays
    ``f(T) >= sum_{i<k} w_i (T - L_i)``, whose root is ``T_k = (M + sum_{i<k} w_i L_i) /
    sum_{i<k} w_i``; so ``f(T_k) >= M`` for every k and the answer is ``min_k T_k`` (attained
    by the k whose delays are exactly those below the answer). ``inf`` where no weight is
    positive.
    """
    w = np.broadcast_to(weights, delay.shape)
    order = np.argsort(delay, axis=1, kind="stable")
    w = np.take_along_axis(w, order, axis=1)
    lat = np.take_along_axis(delay, order, axis=1)
    cum_w = np.cumsum(w, axis=1)
    cum_wl = np.cumsum(np.where(w > 0, w * lat, 0.0), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(cum_w > 0, (m_bytes + cum_wl) / cum_w, np.inf)
    return t.min(axis=1) if t.shape[1] else np.full(len(t), np.inf)


def reach_time(view: NetworkView, m_bytes: float) -> float:
    """Least all-reduce time that every site's own links allow, latency included.

    Parameters
    ----------
    view
        The network; workers hold gradients and need the sum.
    m_bytes
        Gradient bytes M.

    Returns
    -------
    float
        Seconds; 0 with fewer than two workers, ``inf`` when a worker has no link out (in).

    Notes
    -----
    Take workers u != j and one gradient element. j's sum needs u's value, so a chain of
    messages carries it from u to j; its first hop leaves u on some link u -> v at a time t
    with ``t + l(u, v) + d(v, j) <= T`` (d: the least-latency path). Every element thus puts
    at least one message on u's out-links inside the window ``[0, T - l(u, v) - d(v, j)]``,
    and a link delivers at most ``c (window)^+`` bytes in it:

        sum_v c(u, v) (T - l(u, v) - d(v, j))^+ >= M        (u's data out to j)

    Symmetrically the chain's last hop enters j from some v, sent no earlier than u's value
    can be at v:

        sum_v c(v, j) (T - l(v, j) - d(u, v))^+ >= M        (u's data in to j)

    A finite egress (ingress) cap E adds ``T >= min_v(delay) + M / E`` on the same pair. The
    bound is the largest root over ordered worker pairs and both sides
    (:func:`priced_rows`), O(W^2 N log N); rows that cannot beat the largest root found so
    far (their left side already reaches M just below it) are not solved. It ignores
    serialisation and store-and-forward, so it holds for any pipelining, and it is tightest
    where a few far or slow links must carry a site's share: where the fluid bound's
    overlap of latency is least realistic.

    Two richer relaxations for tree schemes were tried and proved *weaker* than this one on
    ``random:16:2`` (ResNet-50; this bound: 0.207 s), so they are not used:

    - per root r, the same windows on every worker's own links, shortened by r's round trip
      (``max_u d(u, r)`` before a broadcast, ``max_j d(r, j)`` after a reduce), with the
      root shares an LP variable: 0.193 s;
    - the flow LP of :func:`netstorm.bound` with every (phase, root) allocation on every link
      confined to such a window (EDF conditions per link): at T = 0.207 s it still admits
      130 MB of the 102 MB (a 123k-variable LP; about 4 minutes).
    """
    workers = np.asarray(view.workers)
    if len(workers) < 2:
        return 0.0
    cap, lat = view.capacity, view.latency
    dist = fastest_paths(np.where(cap > 0, lat, np.inf))
    best = 0.0
    for u in workers:
        others = workers[workers != u]
        out_links = np.flatnonzero(cap[u] > 0)  # u's data leaving u, bound for each j
        out_delay = lat[u, out_links][None, :] + dist[np.ix_(out_links, others)].T
        in_links = np.flatnonzero(cap[:, u] > 0)  # each j's data entering u
        in_delay = lat[in_links, u][None, :] + dist[np.ix_(others, in_links)]
        for links, delay, site_cap in ((cap[u, out_links], out_delay, view.egress[u]),
                                       (cap[in_links, u], in_delay, view.ingress[u])):
            if not links.size:
                return float("inf")
            if np.isfinite(site_cap):
                best = max(best, float((delay.min(axis=1) + m_bytes / site_cap).max()))
            if best > 0:  # only rows whose root may exceed the best so far: f(T) < M just
                # below it (the margin dwarfs rounding), so the maximum is the same float
                probe = np.maximum(best * (1 - 1e-9) - delay, 0.0)
                delay = delay[(probe * links[None, :]).sum(axis=1) < m_bytes]
            if len(delay):
                best = max(best, float(priced_rows(m_bytes, links, delay).max()))
    return best
