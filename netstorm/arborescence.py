"""Minimum-cost arborescences on dense cost matrices (Chu-Liu/Edmonds).

networkx's ``minimum_spanning_arborescence`` is exact but pure Python; the tree-packing
pricing step calls this thousands of times, so it works on numpy matrices instead and
contracts every cycle of a level at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["min_arborescence", "prune_leaves", "tree_cost"]


def min_arborescence(cost: np.ndarray, root: int) -> np.ndarray:
    """Minimum-cost spanning out-arborescence rooted at ``root``.

    Parameters
    ----------
    cost
        ``cost[u, v]`` is the cost of edge u -> v; ``inf`` where there is no edge.
    root
        The root; its incoming edges are ignored.

    Returns
    -------
    numpy.ndarray
        ``parent[v]`` for every site (``-1`` for the root).

    Raises
    ------
    ValueError
        If some site cannot be reached from the root.

    Notes
    -----
    Chu-Liu/Edmonds: every site takes its cheapest incoming edge; each cycle this creates is
    contracted into one node with incoming costs reduced by the cycle edge they would
    replace, and the contracted problem is solved recursively. ``O(N^2)`` numpy work per
    level and at most N levels. For an in-arborescence (every site's path *to* the root),
    call it on ``cost.T``: the returned parent of v is then v's next hop toward the root.
    """
    w = np.array(cost, dtype=np.float64, copy=True)
    np.fill_diagonal(w, np.inf)
    w[:, root] = np.inf
    return _edmonds(w, root)


def _cycles(parent: np.ndarray, root: int) -> tuple[np.ndarray, int]:
    n = len(parent)
    cycle = np.full(n, -1)
    state = np.zeros(n, dtype=np.int8)  # 0 new, 1 on the current walk, 2 finished
    count = 0
    for start in range(n):
        walk, v = [], start
        while v != -1 and state[v] == 0:
            state[v] = 1
            walk.append(v)
            v = -1 if v == root else int(parent[v])
        if v != -1 and state[v] == 1:
            cycle[walk[walk.index(v):]] = count
            count += 1
        state[walk] = 2
    return cycle, count


def _edmonds(w: np.ndarray, root: int) -> np.ndarray:
    n = len(w)
    parent = np.argmin(w, axis=0)
    best = w[parent, np.arange(n)]
    best[root] = 0.0
    if np.isinf(best).any():
        v = int(np.flatnonzero(np.isinf(best))[0])
        raise ValueError(f"site {v} cannot be reached from root {root}")
    parent[root] = -1
    cycle, count = _cycles(parent, root)
    if count == 0:
        return parent
    singles = np.flatnonzero(cycle < 0)
    k = len(singles)
    group = np.empty(n, dtype=np.int64)
    group[singles] = np.arange(k)
    in_cycle = cycle >= 0
    group[in_cycle] = k + cycle[in_cycle]
    m = k + count
    reduced = w - np.where(in_cycle, best, 0.0)[None, :]
    reduced[group[:, None] == group[None, :]] = np.inf
    members = [np.flatnonzero(cycle == c) for c in range(count)]
    # columns -> groups, remembering which original head each entry came from
    col = np.empty((n, m))
    head = np.empty((n, m), dtype=np.int64)
    col[:, :k], head[:, :k] = reduced[:, singles], singles[None, :]
    rows = np.arange(n)
    for c, mem in enumerate(members):
        j = np.argmin(reduced[:, mem], axis=1)
        col[:, k + c], head[:, k + c] = reduced[rows, mem[j]], mem[j]
    # rows -> groups, remembering the original tail
    small = np.empty((m, m))
    tail = np.empty((m, m), dtype=np.int64)
    heads = np.empty((m, m), dtype=np.int64)
    small[:k], tail[:k], heads[:k] = col[singles], singles[:, None], head[singles]
    cols = np.arange(m)
    for c, mem in enumerate(members):
        i = mem[np.argmin(col[mem], axis=0)]
        small[k + c], tail[k + c], heads[k + c] = col[i, cols], i, head[i, cols]
    inner = _edmonds(small, int(group[root]))
    result = parent.copy()
    for b in range(m):
        a = inner[b]
        if a >= 0:
            result[heads[a, b]] = tail[a, b]
    result[root] = -1
    return result


def tree_cost(cost: np.ndarray, parent: np.ndarray) -> float:
    """Sum of ``cost[parent[v], v]`` over the tree's edges."""
    kids = np.flatnonzero(parent >= 0)
    return float(cost[parent[kids], kids].sum())


def prune_leaves(parent: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Detach leaves with ``keep[v] == False`` until none is left (a Steiner tree from a
    spanning one: relay-only sites that lead to no worker carry nothing)."""
    parent = parent.copy()
    while True:
        has_child = np.zeros(len(parent), dtype=bool)
        has_child[parent[parent >= 0]] = True
        drop = (parent >= 0) & ~keep & ~has_child
        if not drop.any():
            return parent
        parent[drop] = -2  # -2: not in the tree
