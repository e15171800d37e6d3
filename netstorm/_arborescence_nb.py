"""Numba kernel of :func:`netstorm.arborescence.min_arborescence` (private; imported lazily).

Every site takes its cheapest incoming edge; the cycles this creates are contracted (edge
costs into a cycle reduced by the cycle edge they would replace) and the smaller problem is
solved the same way, level by level; the levels are then expanded in reverse. O(N^2) per
level, at most N levels. Iterative rather than recursive so numba can cache the compiled
code on disk.
"""

import numba
import numpy as np

__all__ = ["budget_prim", "edmonds"]


@numba.njit(cache=True)
def _cheapest_in(w: np.ndarray, root: int) -> tuple[np.ndarray, np.ndarray]:
    n = w.shape[0]
    parent = np.full(n, -1, np.int64)
    best = np.full(n, np.inf)
    for v in range(n):
        for u in range(n):
            if w[u, v] < best[v]:
                best[v] = w[u, v]
                parent[v] = u
    parent[root] = -1
    best[root] = 0.0
    return parent, best


@numba.njit(cache=True)
def _cycles(parent: np.ndarray, root: int) -> tuple[np.ndarray, int]:
    n = parent.shape[0]
    cycle = np.full(n, -1, np.int64)
    state = np.zeros(n, np.int8)
    walk = np.empty(n, np.int64)
    count = 0
    for start in range(n):
        k = 0
        v = start
        while v != -1 and state[v] == 0:
            state[v] = 1
            walk[k] = v
            k += 1
            v = -1 if v == root else parent[v]
        if v != -1 and state[v] == 1:
            j = 0
            while walk[j] != v:
                j += 1
            for t in range(j, k):
                cycle[walk[t]] = count
            count += 1
        for t in range(k):
            state[walk[t]] = 2
    return cycle, count


@numba.njit(cache=True)
def edmonds(w: np.ndarray, root: int) -> np.ndarray:  # pragma: no cover - compiled
    """Parents of a minimum spanning arborescence; ``w`` has inf on its diagonal and in the
    root's column. Returns ``-1`` for the root; raises ValueError if a site is unreachable."""
    # per contracted level: parent (n), tail and head (m x m, flattened), root, n, m
    parents = np.empty(0, np.int64)
    links = np.empty(0, np.int64)  # tail block then head block of every level
    meta = np.empty((0, 4), np.int64)  # parent offset, link offset, root, unused
    sizes = np.empty((0, 2), np.int64)
    while True:
        n = w.shape[0]
        parent, best = _cheapest_in(w, root)
        for v in range(n):
            if v != root and parent[v] < 0:
                raise ValueError("a site cannot be reached from the root")
        cycle, count = _cycles(parent, root)
        if count == 0:
            break
        group = np.empty(n, np.int64)
        k = 0
        for v in range(n):
            if cycle[v] < 0:
                group[v] = k
                k += 1
        for v in range(n):
            if cycle[v] >= 0:
                group[v] = k + cycle[v]
        m = k + count
        small = np.full((m, m), np.inf)
        tail = np.full((m, m), -1, np.int64)
        head = np.full((m, m), -1, np.int64)
        for u in range(n):
            for v in range(n):
                gu, gv = group[u], group[v]
                c = w[u, v]
                if gu == gv or c == np.inf:
                    continue
                if cycle[v] >= 0:
                    c -= best[v]
                if c < small[gu, gv]:
                    small[gu, gv] = c
                    tail[gu, gv] = u
                    head[gu, gv] = v
        entry = np.array([[parents.shape[0], links.shape[0], root, 0]], np.int64)
        meta = np.concatenate((meta, entry))
        sizes = np.concatenate((sizes, np.array([[n, m]], np.int64)))
        parents = np.concatenate((parents, parent))
        links = np.concatenate((links, tail.ravel(), head.ravel()))
        w = small
        root = int(group[root])
    inner = parent
    for level in range(meta.shape[0] - 1, -1, -1):
        size, m = sizes[level, 0], sizes[level, 1]
        start, at, lroot = meta[level, 0], meta[level, 1], meta[level, 2]
        result = parents[start:start + size].copy()
        tail = links[at:at + m * m].reshape((m, m))
        head = links[at + m * m:at + 2 * m * m].reshape((m, m))
        for b in range(m):
            a = inner[b]
            if a >= 0:
                result[head[a, b]] = tail[a, b]
        result[lroot] = -1
        inner = result
    return inner


@numba.njit(cache=True)
def budget_prim(cost: np.ndarray, delay: np.ndarray, root: int, budget: float) -> np.ndarray:
    """Prim-style out-arborescence: repeatedly attach the site whose cheapest edge from the
    tree keeps its root path's delay within ``budget``; when no such edge is left, the site
    reachable with the least path delay. ``parent[root] == -1``; -2 marks unreachable."""
    n = cost.shape[0]
    parent = np.full(n, -2, np.int64)
    path = np.full(n, np.inf)
    intree = np.zeros(n, np.bool_)
    best = np.full(n, np.inf)  # cheapest in-budget attachment cost of each outside site
    via = np.full(n, -1, np.int64)
    near = np.full(n, np.inf)  # least path delay of any attachment (fallback)
    near_via = np.full(n, -1, np.int64)
    parent[root] = -1
    path[root] = 0.0
    intree[root] = True
    x = root
    for _ in range(n - 1):
        for u in range(n):
            if intree[u] or not np.isfinite(delay[x, u]):
                continue
            reach = path[x] + delay[x, u]
            if reach <= budget and cost[x, u] < best[u]:
                best[u] = cost[x, u]
                via[u] = x
            if reach < near[u]:
                near[u] = reach
                near_via[u] = x
        pick, pick_cost = -1, np.inf
        for u in range(n):
            if not intree[u] and via[u] >= 0 and best[u] < pick_cost:
                pick, pick_cost = u, best[u]
        if pick < 0:  # nothing fits the budget: attach the least-delay site
            pick_near = np.inf
            for u in range(n):
                if not intree[u] and near[u] < pick_near:
                    pick, pick_near = u, near[u]
            if pick < 0:
                break
            x = pick
            parent[x] = near_via[x]
        else:
            x = pick
            parent[x] = via[x]
        path[x] = path[parent[x]] + delay[parent[x], x]
        intree[x] = True
    return parent
