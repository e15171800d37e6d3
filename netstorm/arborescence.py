"""Minimum-cost arborescences on dense cost matrices (Chu-Liu/Edmonds).

networkx's ``minimum_spanning_arborescence`` is exact but pure Python; the tree-packing
pricing step calls this thousands of times, so it runs compiled (numba) on dense matrices
and contracts every cycle of a level at once, each level derived in place from the last.
"""

from __future__ import annotations

import numpy as np

__all__ = ["budget_arborescence", "min_arborescence", "prune_leaves", "tree_cost", "warm_up"]


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
    replace, and the contracted problem is solved recursively; of equal costs, the site
    first in index order (in a contracted level: the sites on no cycle in index order, then
    the cycles) wins, so the tree does not depend on how the levels are computed. Each
    level is derived in place from the last in O(N x contracted sites), at most N levels.
    For an in-arborescence (every site's path *to* the root),
    call it on ``cost.T``: the returned parent of v is then v's next hop toward the root.
    """
    from ._arborescence_nb import edmonds

    w = np.array(cost, dtype=np.float64, copy=True)
    np.fill_diagonal(w, np.inf)
    w[:, root] = np.inf
    try:
        return edmonds(w, root)
    except ValueError:
        raise ValueError(f"some site cannot be reached from root {root}") from None


def budget_arborescence(cost: np.ndarray, delay: np.ndarray, root: int,
                        budget: float) -> np.ndarray:
    """A cheap spanning out-arborescence whose root paths stay within a delay budget.

    Parameters
    ----------
    cost, delay
        ``[u, v]``: cost and delay of edge u -> v; ``inf`` delay where there is no edge.
    root
        The root.
    budget
        Largest delay of any root-to-site path (a soft limit, see Notes).

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
    Minimum-cost arborescences under a path-delay limit are NP-hard; this is Prim's greedy
    growth: attach the site with the cheapest edge from the tree that keeps its path delay
    within ``budget``, and when none is left the site with the least path delay (so the
    tree always spans, and a budget below the fastest paths degrades to the shortest-delay
    tree). ``O(N^2)``. Call it on transposed matrices for an in-arborescence.
    """
    from ._arborescence_nb import budget_prim

    w = np.array(cost, dtype=np.float64, copy=True)
    d = np.array(delay, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    parent = budget_prim(w, d, root, float(budget))
    if (parent == -2).any():
        raise ValueError(f"some site cannot be reached from root {root}")
    return parent


def warm_up(delay_budget: bool = False) -> None:
    """Compile the kernels, or load them from numba's cache, ahead of their first real use.

    Parameters
    ----------
    delay_budget
        Also :func:`budget_arborescence`'s kernel.

    Notes
    -----
    Compiling takes seconds on a cold cache (``cache=True`` keeps the machine code on
    disk, so once per machine and numba version) and loading a cached kernel takes a
    fraction of one; callers with a time budget call this first so the budget goes to
    solving (:func:`netstorm.packing.pack_trees`). A tiny call on the argument types of
    the real ones (float64 matrices, integer root) is what triggers it.
    """
    cost = np.ones((2, 2))
    min_arborescence(cost, 0)
    if delay_budget:
        budget_arborescence(cost, cost, 0, 1.0)


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
