"""Fractional packing of (reduce in-tree, broadcast out-tree) pairs by column generation.

This is the all-reduce LP of DESIGN 4.3 solved over tree columns: it gives the bound for
networks too large for the flow LP, and the trees that ``treepack`` turns into shards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csc_array

from .arborescence import min_arborescence, prune_leaves, tree_cost
from .view import NetworkView

__all__ = ["Packing", "TreePair", "pack_trees"]


@dataclass(frozen=True, eq=False)
class TreePair:
    """One column: a root, its reduce in-tree and broadcast out-tree, and their rate.

    ``reduce_parent[v]`` is v's next hop toward the root, ``broadcast_parent[v]`` the site v
    receives from; ``-1`` marks the root and ``-2`` a site outside the tree.
    """

    root: int
    reduce_parent: np.ndarray
    broadcast_parent: np.ndarray
    rate: float


@dataclass(frozen=True, eq=False)
class Packing:
    """Result of :func:`pack_trees`.

    Attributes
    ----------
    rate
        Achieved all-reduce rate ``sum x_T`` in B/s (gradient bytes per second).
    upper_bound
        A rate no tree scheme can beat, from the LP dual (``rate / min reduced cost``);
        valid only when ``certified``.
    certified
        False when relay-only sites make pricing a Steiner problem solved heuristically.
    columns
        The trees with rate > 0, largest first.
    rounds
        Column-generation rounds run.
    """

    rate: float
    upper_bound: float
    certified: bool
    columns: tuple[TreePair, ...]
    rounds: int

    @property
    def gap(self) -> float:
        """Relative gap ``1 - rate / upper_bound`` (0 when optimal)."""
        return 0.0 if self.upper_bound <= 0 else max(0.0, 1 - self.rate / self.upper_bound)


class _Resources:
    """Rows of the master LP: links, then finite egress caps, then finite ingress caps."""

    def __init__(self, view: NetworkView, scale: float) -> None:
        n = view.n
        self.link_row = np.full((n, n), -1, dtype=np.int64)
        us, vs = np.nonzero(view.capacity)
        self.link_row[us, vs] = np.arange(len(us))
        caps = [view.capacity[us, vs]]
        self.egress_row = np.full(n, -1, dtype=np.int64)
        self.ingress_row = np.full(n, -1, dtype=np.int64)
        rows = len(us)
        for arr, table in ((self.egress_row, view.egress), (self.ingress_row, view.ingress)):
            finite = np.flatnonzero(np.isfinite(table))
            arr[finite] = rows + np.arange(len(finite))
            rows += len(finite)
            caps.append(table[finite])
        self.capacity = np.concatenate(caps) / scale
        self.has_link = view.capacity > 0

    def usage(self, edges: list[tuple[int, int]]) -> np.ndarray:
        """Row indices a set of tree edges loads (with repetition)."""
        if not edges:
            return np.zeros(0, dtype=np.int64)
        e = np.asarray(edges)
        rows = [self.link_row[e[:, 0], e[:, 1]], self.egress_row[e[:, 0]],
                self.ingress_row[e[:, 1]]]
        out = np.concatenate(rows)
        return out[out >= 0]

    def edge_cost(self, price: np.ndarray) -> np.ndarray:
        """Dual price of sending one unit over each link, ``inf`` where there is none."""
        n = len(self.link_row)
        cost = np.full((n, n), np.inf)
        mask = self.has_link
        cost[mask] = price[self.link_row[mask]]
        eg = np.where(self.egress_row >= 0, price[np.maximum(self.egress_row, 0)], 0.0)
        ing = np.where(self.ingress_row >= 0, price[np.maximum(self.ingress_row, 0)], 0.0)
        cost[mask] += (eg[:, None] + ing[None, :])[mask]
        return cost


def _edges(parent: np.ndarray, upward: bool) -> list[tuple[int, int]]:
    kids = np.flatnonzero(parent >= 0)
    if upward:
        return list(zip(kids.tolist(), parent[kids].tolist(), strict=True))
    return list(zip(parent[kids].tolist(), kids.tolist(), strict=True))


def _trees(cost: np.ndarray, root: int, keep: np.ndarray,
           steiner: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Cheapest (in-tree, out-tree) at ``root`` under edge costs ``cost``."""
    up = min_arborescence(cost.T, root)
    down = min_arborescence(cost, root)
    if steiner:
        keep_r = keep.copy()
        keep_r[root] = True
        up, down = prune_leaves(up, keep_r), prune_leaves(down, keep_r)
    return up, down, tree_cost(cost.T, up) + tree_cost(cost, down)


def pack_trees(view: NetworkView, roots: list[int] | None = None, *, tol: float = 1e-4,
               max_rounds: int = 2000, time_limit_s: float = 60.0) -> Packing:
    """Maximise the all-reduce rate over fractional packings of tree pairs.

    Parameters
    ----------
    view
        The network; every worker must reach every other.
    roots
        Candidate roots (default: every worker).
    tol
        Stop when ``rate >= (1 - tol) * upper_bound``.
    max_rounds, time_limit_s
        Safety limits; the result reports its gap either way.

    Notes
    -----
    Master LP over columns T = (root r, in-tree into r, out-tree from r)::

        max sum_T x_T   s.t.  sum_T load_T(e) x_T <= c_e  for every link and site cap e

    where ``load_T(e)`` counts how many of T's tree edges use resource e. With duals
    ``p_e`` a column's price is ``sum_e load_T(e) p_e``; the cheapest column for root r is
    a minimum in-arborescence plus a minimum out-arborescence under edge costs
    ``p_link + p_egress(tail) + p_ingress(head)`` (Edmonds, exact for spanning trees). Any
    column cheaper than 1 enters; if the cheapest costs ``c_min``, scaling the duals by
    ``1/c_min`` is dual-feasible, so ``rate / c_min`` bounds the optimum. By Edmonds'
    arborescence-packing theorem, the optimum equals the flow LP of :func:`netstorm.bound`
    when every site is a worker. Relay-only sites make pricing a Steiner problem: spanning
    trees are pruned of relay-only leaves, and the dual bound is not certified.
    """
    started = time.perf_counter()
    scale = float(view.capacity.max())
    res = _Resources(view, scale)
    keep = np.zeros(view.n, dtype=bool)
    keep[list(view.workers)] = True
    steiner = not keep.all()
    roots = list(view.workers) if roots is None else list(roots)
    with np.errstate(divide="ignore"):
        start_cost = np.where(view.capacity > 0, scale / np.where(view.capacity > 0,
                                                                   view.capacity, 1), np.inf)
    columns: list[tuple[int, np.ndarray, np.ndarray]] = []
    usage: list[np.ndarray] = []
    for r in roots:
        up, down, _ = _trees(start_cost, r, keep, steiner)
        columns.append((r, up, down))
        usage.append(res.usage(_edges(up, True) + _edges(down, False)))
    upper, rate, x, rounds = np.inf, 0.0, np.zeros(0), 0
    while True:
        rounds += 1
        x, rate, price = _master(usage, res.capacity)
        cost = res.edge_cost(price)
        best, found = np.inf, []
        for r in roots:
            up, down, c = _trees(cost, r, keep, steiner)
            best = min(best, c)
            if c < 1 - 1e-9:
                found.append((c, r, up, down))
        if best > 0:
            upper = min(upper, rate / best)
        done = not found or rate >= (1 - tol) * upper
        if done or rounds >= max_rounds or time.perf_counter() - started > time_limit_s:
            break
        for _, r, up, down in sorted(found, key=lambda f: f[0]):
            columns.append((r, up, down))
            usage.append(res.usage(_edges(up, True) + _edges(down, False)))
    if not np.isfinite(upper):
        upper = rate
    chosen = sorted((i for i in range(len(x)) if x[i] > 1e-12), key=lambda i: -x[i])
    trees = tuple(TreePair(columns[i][0], columns[i][1], columns[i][2], float(x[i] * scale))
                  for i in chosen)
    return Packing(rate=rate * scale, upper_bound=upper * scale, certified=not steiner,
                   columns=trees, rounds=rounds)


def _master(usage: list[np.ndarray], capacity: np.ndarray) -> tuple[np.ndarray, float,
                                                                      np.ndarray]:
    """Solve the restricted master; return (x, objective, duals of the resource rows)."""
    cols = np.concatenate([np.full(len(u), j) for j, u in enumerate(usage)])
    rows = np.concatenate(usage)
    a = csc_array((np.ones(len(rows)), (rows, cols)), shape=(len(capacity), len(usage)))
    a.sum_duplicates()
    sol = linprog(-np.ones(len(usage)), A_ub=a, b_ub=capacity, bounds=(0, None),
                  method="highs")
    if sol.status != 0:
        raise RuntimeError(f"tree-packing master LP failed: {sol.message}")
    return sol.x, float(-sol.fun), np.maximum(-sol.ineqlin.marginals, 0.0)
