"""Numba kernels of the ``netstorm`` planner (private; imported lazily).

:func:`disjoint_paths` finds one tree edge's greedy node-disjoint auxiliary paths,
:func:`divert` splits every tree edge's bytes over its primary and auxiliary paths in plan
order. Both are exact transcriptions of the rules documented in
:mod:`netstorm.planners.netstorm`; they exist because those rules run once per tree edge
(thousands of times on 100-site meshes), which costs minutes through scipy and Python.
"""

import numba
import numpy as np

__all__ = ["disjoint_paths", "divert"]


@numba.njit(cache=True)
def disjoint_paths(cost: np.ndarray, least: np.ndarray, u: int, v: int, inner: np.ndarray,
                   limit: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Cheapest u -> v paths, each avoiding the sites inside ``inner`` and inside the paths
    accepted before it, while they cost at most ``limit``.

    ``cost[a, b]`` is the link's cost (``inf`` where there is none); ``least[a, b]`` is a
    lower bound on the cheapest a -> b path's cost (all-pairs distances of the whole graph),
    used only to leave out sites that no path within ``limit`` can visit. A found path
    that is the direct link u -> v is dropped and the search goes on without that link.
    The search is A* (Dijkstra guided by ``least[:, v]``); of sites of equal estimate the
    nearer is settled first, then the lower index, and a site's predecessor is the first
    settled site that reaches it at its distance. Returns the accepted paths' sites,
    concatenated, and the offset of each path in them (one more offset than paths).
    """
    n = cost.shape[0]
    blocked = np.zeros(n, np.bool_)
    for x in inner:
        blocked[x] = True
    # Sites on some u -> v path of cost <= limit: least[u, x] + least[x, v] <= limit (with
    # slack for the different order in which the sums are rounded). Kept in index order,
    # so ties by local index are ties by site index.
    slack = limit * (1 + 1e-9)
    members = np.empty(n, np.int64)
    s = 0
    lu, lv = -1, -1
    for x in range(n):
        if x == u or x == v or (not blocked[x] and least[u, x] + least[x, v] <= slack):
            if x == u:
                lu = s
            if x == v:
                lv = s
            members[s] = x
            s += 1
    w = np.empty((s, s))
    for i in range(s):
        for j in range(s):
            w[i, j] = cost[members[i], members[j]]
    # A* toward v: least[x, v] is the cheapest x -> v cost in a graph with more links, so it
    # never overestimates (and is consistent): the search settles little beyond the path.
    head = np.empty(s)
    for i in range(s):
        head[i] = least[members[i], v]
    gone = np.zeros(s, np.bool_)
    dist = np.empty(s)
    pred = np.empty(s, np.int64)
    done = np.empty(s, np.bool_)
    walk = np.empty(s, np.int64)
    nodes = np.empty(3 * s + 2, np.int64)  # intermediates are disjoint: < s + 2 per path
    offsets = np.zeros(s + 1, np.int64)
    count = 0
    while True:
        dist[:] = np.inf
        pred[:] = -1
        done[:] = False
        dist[lu] = 0.0
        reached = False
        while True:
            # the open site of least estimate; of equals, the nearer, then the lower index
            x, best, near = -1, np.inf, np.inf
            for y in range(s):
                if done[y] or gone[y] or dist[y] == np.inf:
                    continue
                f = dist[y] + head[y]
                if f < best or (f == best and dist[y] < near):
                    x, best, near = y, f, dist[y]
            if x < 0 or best > limit:
                break
            if x == lv:
                reached = True
                break
            done[x] = True
            for y in range(s):
                if not done[y] and not gone[y]:
                    d = near + w[x, y]
                    if d < dist[y]:
                        dist[y] = d
                        pred[y] = x
        if not reached:
            break
        k = 0
        y = lv
        while y != lu:
            walk[k] = y
            k += 1
            y = pred[y]
        walk[k] = lu
        k += 1
        if k == 2:  # the direct link: not an auxiliary path
            w[lu, lv] = np.inf
            continue
        at = offsets[count]
        for i in range(k):
            nodes[at + i] = members[walk[k - 1 - i]]
        for i in range(1, k - 1):
            gone[walk[i]] = True
        count += 1
        offsets[count] = at + k
    return nodes[:offsets[count]].copy(), offsets[:count + 1].copy()


@numba.njit(cache=True)
def divert(loads: np.ndarray, capacity: np.ndarray, horizon: float, nbytes: np.ndarray,
           primary: np.ndarray, primary_at: np.ndarray, key: np.ndarray,
           key_at: np.ndarray, nodes: np.ndarray, path_at: np.ndarray,
           choice_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """The weights of every tree edge's paths, edge after edge, updating ``loads``.

    Edge e carries ``nbytes[e]``; its primary path is ``primary[primary_at[e]:
    primary_at[e + 1]]`` and its auxiliary paths those of ``key[e]``: paths
    ``key_at[key[e]]`` to ``key_at[key[e] + 1]``, path p being ``nodes[path_at[p]:
    path_at[p + 1]]``. Its choices (primary first) are slots ``choice_at[e]`` onwards of the
    results: whether the path is kept and its weight; nothing is kept for an edge left on its
    primary alone. The arithmetic is done in the order of the Python rule, so the weights
    and loads are the same floats.
    """
    keep = np.zeros(choice_at[-1], np.bool_)
    weight = np.zeros(choice_at[-1])
    rates = np.empty(choice_at[-1])
    for e in range(nbytes.shape[0]):
        first, last = key_at[key[e]], key_at[key[e] + 1]
        c = choice_at[e]
        m = last - first
        rates[c] = nbytes[e] / horizon
        for j in range(m):
            p = first + j
            low = np.inf
            for h in range(path_at[p], path_at[p + 1] - 1):
                a, b = nodes[h], nodes[h + 1]
                spare = capacity[a, b] - loads[a, b] / horizon
                if spare < low:
                    low = spare
            rates[c + 1 + j] = low if low > 0.0 else 0.0
        total = 0.0
        for j in range(m + 1):
            total += rates[c + j]
        kept = 0
        kept_rate = 0.0
        for j in range(m + 1):
            if rates[c + j] > 1e-3 * total:
                kept += 1
                kept_rate += rates[c + j]
        if kept < 2:
            continue
        for j in range(m + 1):
            if not rates[c + j] > 1e-3 * total:
                continue
            wj = rates[c + j] / kept_rate
            keep[c + j] = True
            weight[c + j] = wj
            if j == 0:
                share = nbytes[e] * (wj - 1.0)
                lo, hi = primary_at[e], primary_at[e + 1]
                for h in range(lo, hi - 1):
                    loads[primary[h], primary[h + 1]] += share
            else:
                share = nbytes[e] * wj
                p = first + j - 1
                for h in range(path_at[p], path_at[p + 1] - 1):
                    loads[nodes[h], nodes[h + 1]] += share
    return keep, weight
