"""Numba kernel of :func:`netstorm.arborescence.min_arborescence` (private; imported lazily).

Every site takes its cheapest incoming edge
the cycles this creates are contracted (edge
costs into a cycle reduced by the cycle edge they would replace) and the smaller problem is
solved recursively, then expanded. O(N^2) per level, at most N levels.
"""

import numba
import numpy as np

__all__ = ["edmonds"]


@numba.njit(cache=False)  # caching breaks recursive functions ("unresolved symbol")
def edmonds(w, root):  # pragma: no cover - compiled
    """Chu-Liu/Edmonds on a dense cost matrix whose diagonal and root column are inf."""
    n = w.shape[0]
    parent = np.empty(n, np.int64)
    best = np.empty(n)
    for v in range(n):
        b = np.inf
        p = -1
        for u in range(n):
            if w[u, v] < b:
                b = w[u, v]
                p = u
        parent[v] = p
        best[v] = b
    parent[root] = -1
    best[root] = 0.0
    for v in range(n):
        if v != root and parent[v] < 0:
            raise ValueError("a site cannot be reached from the root")
    # cycles
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
    if count == 0:
        return parent
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
        gu = group[u]
        for v in range(n):
            gv = group[v]
            if gu == gv:
                continue
            c = w[u, v]
            if c == np.inf:
                continue
            if cycle[v] >= 0:
                c -= best[v]
            if c < small[gu, gv]:
                small[gu, gv] = c
                tail[gu, gv] = u
                head[gu, gv] = v
    inner = edmonds(small, group[root])
    result = parent.copy()
    for b in range(m):
        a = inner[b]
        if a >= 0:
            result[head[a, b]] = tail[a, b]
    result[root] = -1
    return result
