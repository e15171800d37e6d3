"""Fractional packing of (reduce in-tree, broadcast out-tree) pairs by column generation.

This is the all-reduce LP of DESIGN 4.3 solved over tree columns: it gives the bound for
networks too large for the flow LP, and the trees that ``treepack`` turns into shards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arborescence
from .arborescence import budget_arborescence, min_arborescence, prune_leaves, tree_cost
from .view import NetworkView

__all__ = ["DelayBudget", "Masks", "Packing", "TreePair", "Variant", "pack_trees",
           "resource_rows", "solve_master", "star_columns"]


#: The clock of :func:`pack_trees`' time limit (a module attribute so that tests can put a
#: fake one in its place).
_clock = time.perf_counter


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
    pool
        Every column generated (rate 0 when unused), for callers that re-solve the master
        under extra conditions (:func:`solve_master`).
    prices
        The dual prices behind ``upper_bound``, one per row of :func:`resource_rows`, scaled
        so that every column costs at least 1 (a feasible dual: ``prices @ capacity`` is
        ``upper_bound``); ``None`` when none certified a bound.
    """

    rate: float
    upper_bound: float
    certified: bool
    columns: tuple[TreePair, ...]
    rounds: int
    pool: tuple[TreePair, ...] = ()
    prices: np.ndarray | None = None

    @property
    def gap(self) -> float:
        """Relative gap ``1 - rate / upper_bound`` (0 when optimal, 1 when unbounded)."""
        return max(0.0, 1 - self.rate / self.upper_bound) if self.upper_bound > 0 else 0.0


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
        # least propagation delay of a byte through the row: the link's own latency; a
        # site's fastest outgoing (egress) or incoming (ingress) link
        lat = np.where(self.has_link, view.latency, np.inf)
        self.latency = np.concatenate([view.latency[us, vs],
                                       lat.min(axis=1)[np.isfinite(view.egress)],
                                       lat.min(axis=0)[np.isfinite(view.ingress)]])

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


def resource_rows(view: NetworkView) -> tuple[np.ndarray, np.ndarray]:
    """The master LP's rows (links, finite egress caps, finite ingress caps, in that order):
    their capacities in B/s and the least propagation delay of a byte through each."""
    res = _Resources(view, 1.0)
    return res.capacity, res.latency


def _edges(parent: np.ndarray, upward: bool) -> list[tuple[int, int]]:
    kids = np.flatnonzero(parent >= 0)
    if upward:
        return list(zip(kids.tolist(), parent[kids].tolist(), strict=True))
    return list(zip(parent[kids].tolist(), kids.tolist(), strict=True))


#: ``masks(root) -> (allowed_up, allowed_down)``: which links the root's in-tree and
#: out-tree may use (boolean N x N, ``[u, v]`` for link u -> v).
Masks = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class DelayBudget:
    """A pricing variant: trees whose leaf-to-root (root-to-leaf) paths stay within a delay.

    ``delay[u, v]`` is one hop's delay (``inf`` where there is no link); root r's in-tree
    paths are held to ``up[r]`` seconds and its out-tree paths to ``down[r]``. Pricing is
    then a heuristic (:func:`netstorm.arborescence.budget_arborescence`), so a packing that
    uses this variant is not certified.
    """

    delay: np.ndarray
    up: np.ndarray
    down: np.ndarray


Variant = Masks | DelayBudget | None


def _trees(cost: np.ndarray, root: int, keep: np.ndarray, steiner: bool,
           masks: Variant = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Cheapest (in-tree, out-tree) at ``root`` under edge costs ``cost``."""
    if isinstance(masks, DelayBudget):
        up = budget_arborescence(cost.T, masks.delay.T, root, masks.up[root])
        down = budget_arborescence(cost, masks.delay, root, masks.down[root])
    else:
        up_cost = down_cost = cost
        if masks is not None:
            allowed_up, allowed_down = masks(root)
            up_cost = np.where(allowed_up, cost, np.inf)
            down_cost = np.where(allowed_down, cost, np.inf)
        up = min_arborescence(up_cost.T, root)
        down = min_arborescence(down_cost, root)
    if steiner:
        keep_r = keep.copy()
        keep_r[root] = True
        up, down = prune_leaves(up, keep_r), prune_leaves(down, keep_r)
    return up, down, tree_cost(cost.T, up) + tree_cost(cost, down)


def _star(view: NetworkView, root: int, keep: np.ndarray, masks: Variant) -> bool:
    """Whether the direct star (every worker a child of the root) is allowed both ways."""
    others = np.flatnonzero(keep & (np.arange(view.n) != root))
    up_ok = view.capacity[others, root] > 0
    down_ok = view.capacity[root, others] > 0
    if isinstance(masks, DelayBudget):
        up_ok &= masks.delay[others, root] <= masks.up[root]
        down_ok &= masks.delay[root, others] <= masks.down[root]
    elif masks is not None:
        allowed_up, allowed_down = masks(root)
        up_ok &= allowed_up[others, root]
        down_ok &= allowed_down[root, others]
    return bool(up_ok.all() and down_ok.all())


def _star_tree(keep: np.ndarray, root: int) -> tuple[np.ndarray, np.ndarray]:
    star = np.where(keep, root, -2)
    star[root] = -1
    return star, star.copy()


def star_columns(view: NetworkView) -> list[TreePair]:
    """One direct star (every worker a child of the root, both phases) per worker that has
    direct links to and from every other worker; rate 0 (for :func:`solve_master`)."""
    keep = np.zeros(view.n, dtype=bool)
    keep[list(view.workers)] = True
    return [TreePair(r, *_star_tree(keep, r), 0.0) for r in view.workers
            if _star(view, r, keep, None)]


def pack_trees(view: NetworkView, roots: list[int] | None = None, *, tol: float = 1e-4,
               max_rounds: int = 5000, time_limit_s: float = 60.0,
               smoothing: float = 0.8, variants: Sequence[Variant] = (None,),
               solver: str = "ipm") -> Packing:
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
        Safety limits; the result reports its gap either way. The time limit counts solving
        only: compiling (or loading) the kernels and loading HiGHS come first, outside it.
        It is checked between the pricing step's trees and handed to HiGHS, so a call
        returns about when it ends; a pricing round it cuts short neither bounds the rate
        nor adds columns, and the solution is the last optimum of the master LP (a vertex
        when there was time for the final simplex re-solve).
    smoothing
        Wentges dual smoothing factor in [0, 1) (0 turns it off).
    variants
        Link restrictions to price under, each round: ``None`` is the unrestricted problem;
        a :data:`Masks` restricts each root's trees to some links (e.g. links that make
        progress toward the root, which bounds tree depth); a :class:`DelayBudget` prices
        trees whose paths stay within a delay. Columns of every variant enter
        one master; the upper bound comes from the unrestricted pricing, and ``certified``
        is False unless that is the only variant.
    solver
        ``"ipm"`` (interior point, no crossover: central duals, fewest rounds to the optimum)
        or ``"simplex"`` (warm-started primal simplex: cheapest rounds, for round budgets).

    Notes
    -----
    Master LP over columns T = (root r, in-tree into r, out-tree from r)::

        max sum_T x_T   s.t.  sum_T load_T(e) x_T <= c_e  for every link and site cap e

    where ``load_T(e)`` counts how many of T's tree edges use resource e. With prices
    ``p_e >= 0`` a column costs ``sum_e load_T(e) p_e``; the cheapest column for root r is a
    minimum in-arborescence plus a minimum out-arborescence under edge costs
    ``p_link + p_egress(tail) + p_ingress(head)`` (Edmonds, exact for spanning trees). For
    *any* prices, if the cheapest column costs ``c_min``, then ``p / c_min`` is feasible for
    the dual, so ``(c . p) / c_min`` bounds the optimum from above; columns cheaper than 1
    under the master's duals enter. Pricing at a convex combination of the best prices so
    far and the master's duals (Wentges smoothing) damps the duals' oscillation, the usual
    cause of column generation's slow tail. Each round adds at most one column per root
    (the most improving ones) so the master stays small. The master is re-solved by the
    ``solver`` chosen (see above), then once by simplex for a vertex solution with few
    trees. By Edmonds' arborescence-packing
    theorem the optimum equals the flow LP of :func:`netstorm.bound` when every site is a
    worker. Relay-only sites make pricing a Steiner problem: spanning trees are pruned of
    relay-only leaves, and the upper bound is not certified.
    """
    arborescence.warm_up(delay_budget=any(isinstance(v, DelayBudget) for v in variants))
    scale = float(view.capacity.max())
    res = _Resources(view, scale)
    keep = np.zeros(view.n, dtype=bool)
    keep[list(view.workers)] = True
    steiner = not keep.all()
    roots = list(view.workers) if roots is None else list(roots)
    with np.errstate(divide="ignore"):
        start_cost = np.where(view.capacity > 0, scale / np.where(view.capacity > 0,
                                                                   view.capacity, 1), np.inf)
    master = _Master(res.capacity, solver)
    deadline = _clock() + time_limit_s  # from here on, only solving counts

    def left() -> float:
        return deadline - _clock()

    columns = _Columns(master, res)
    for masks in variants:
        for r in roots:
            if columns.pairs and left() <= 0:
                break
            columns.add(r, *_trees(start_cost, r, keep, steiner, masks)[:2])
            if _star(view, r, keep, masks):  # direct stars: often optimal on dense meshes
                columns.add(r, *_star_tree(keep, r))
    upper, center, rounds = np.inf, None, 0
    feasible: np.ndarray | None = None
    cut_short = False
    while not cut_short and rounds < max_rounds and left() > 0:
        rounds += 1
        solved = master.solve(left())
        if solved is None:  # out of time inside the LP
            break
        rate, duals = solved
        if rate >= (1 - tol) * upper:
            break
        entered = False
        dual_cost = res.edge_cost(duals)
        for prices in ([duals] if center is None else
                       [smoothing * center + (1 - smoothing) * duals, duals]):
            improving, bound, cut_short = _price(res, prices, dual_cost, roots, keep, steiner,
                                                 variants, left)
            if bound is not None and bound[0] < upper:
                upper, center, feasible = bound[0], prices, prices / bound[1]
            if cut_short:
                break
            # the most improving columns, at most one per root's worth: keeps the master small
            for *_, r, up, down in sorted(improving, key=lambda c: c[:2])[:len(roots)]:
                entered |= columns.add(r, up, down)
            if entered:
                break
        if not entered and not cut_short:  # no column improves the master: it is optimal
            upper = min(upper, rate)
            break
    rate, x = master.vertex(left())
    upper = max(upper, rate)  # inf when no prices ever certified a bound
    pool = tuple(TreePair(r, up, down, float(x[i] * scale))
                 for i, (r, up, down) in enumerate(columns.pairs))
    return Packing(rate=rate * scale, upper_bound=upper * scale,
                   certified=not steiner and tuple(variants) == (None,),
                   columns=_used(pool), rounds=rounds, pool=pool,
                   prices=None if feasible is None or steiner else feasible)


class _Columns:
    """The master LP's columns, each tree pair once."""

    def __init__(self, master: _Master, res: _Resources) -> None:
        self.master = master
        self.res = res
        self.pairs: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._seen: set[bytes] = set()

    def add(self, r: int, up: np.ndarray, down: np.ndarray) -> bool:
        """Add root ``r``'s pair (in-tree ``up``, out-tree ``down``) unless it is there."""
        key = up.tobytes() + down.tobytes()
        if key in self._seen:
            return False
        self._seen.add(key)
        self.pairs.append((r, up, down))
        self.master.add(self.res.usage(_edges(up, True) + _edges(down, False)))
        return True


def _price(res: _Resources, prices: np.ndarray, dual_cost: np.ndarray, roots: list[int],
           keep: np.ndarray, steiner: bool, variants: Sequence[Variant],
           left: Callable[[], float],
           ) -> tuple[list[tuple[float, int, int, np.ndarray, np.ndarray]],
                      tuple[float, float] | None, bool]:
    """One pricing pass: every root's cheapest tree pair at ``prices`` under each variant.

    Returns the pairs whose reduced cost under the master's duals (``dual_cost``) is below
    1, as ``(reduced cost, order, root, up, down)``; the upper bound these prices certify
    (unrestricted pricing only) with the cheapest pair's cost, or ``None``; and whether
    the time ran out before every root was priced (the pairs are then not to be used)."""
    cost = res.edge_cost(prices)
    improving: list[tuple[float, int, int, np.ndarray, np.ndarray]] = []
    bound = None
    for masks in variants:
        priced = []
        for r in roots:
            if left() <= 0:
                break
            priced.append((r, *_trees(cost, r, keep, steiner, masks)))
        if len(priced) < len(roots):
            return improving, bound, True
        cheapest = min(c for *_, c in priced)
        if masks is None and cheapest > 0:  # only unrestricted prices bound the LP
            bound = (float(res.capacity @ prices) / cheapest, cheapest)
        for r, up, down, _ in priced:
            reduced = tree_cost(dual_cost.T, up) + tree_cost(dual_cost, down)
            if reduced < 1 - 1e-9:
                improving.append((reduced, len(improving), r, up, down))
    return improving, bound, False


def _used(columns: tuple[TreePair, ...] | list[TreePair]) -> tuple[TreePair, ...]:
    return tuple(sorted((c for c in columns if c.rate > 0),
                        key=lambda c: -c.rate))


def solve_master(view: NetworkView, batches: list[list[TreePair]]) -> list[tuple[float,
                                                                            tuple[TreePair, ...]]]:
    """Best rates for growing sets of tree pairs: the master LP alone, solved to a vertex.

    ``batches[k]`` adds columns to those of the earlier batches; after each batch the LP is
    re-solved (primal simplex, warm from the previous basis). Returns, per batch, the total
    rate (B/s) and the columns with rate > 0, largest first.
    """
    scale = float(view.capacity.max())
    res = _Resources(view, scale)
    master = _Master(res.capacity, "simplex")
    columns: list[TreePair] = []
    out: list[tuple[float, tuple[TreePair, ...]]] = []
    for batch in batches:
        for col in batch:
            columns.append(col)
            master.add(res.usage(_edges(col.reduce_parent, True) +
                                 _edges(col.broadcast_parent, False)))
        if not columns:
            out.append((0.0, ()))
            continue
        rate, x = master.vertex()
        out.append((rate * scale, _used([TreePair(c.root, c.reduce_parent, c.broadcast_parent,
                                                  float(v * scale))
                                         for c, v in zip(columns, x, strict=True)])))
    return out


def _silent_highs() -> Any:
    """A HiGHS instance with its output off before HiGHS could print anything.

    Notes
    -----
    HiGHS writes its banner to stdout on the first call to an instance whose
    ``output_flag`` is still on (setting options excepted). highspy's ``Highs()`` makes such
    a call itself (registering its Python callbacks), so its banner comes before any option
    can be set; its base class ``_Highs``, the bare binding that highspy exports and which
    has every method used here, makes none. So no file descriptor is redirected: that would
    silence the whole process, other threads' sockets and logs included. Where highspy does
    not export ``_Highs``, ``Highs()`` is used (it may then print the banner once).
    """
    import highspy

    highs = getattr(highspy, "_Highs", highspy.Highs)()
    highs.setOptionValue("output_flag", False)
    return highs


# Interior point without crossover: its duals sit inside the optimal face, which steadies
# column generation (about half the rounds of warm-started simplex on 20-site meshes).
# Primal simplex: new columns keep the basis feasible, so each re-solve starts warm.
_SOLVERS: dict[str, dict[str, str | int]] = {
    "ipm": {"solver": "ipm", "run_crossover": "off"},
    "simplex": {"solver": "simplex", "simplex_strategy": 4},
}


class _Master:
    """The restricted master LP, kept in one HiGHS instance and re-solved warm."""

    def __init__(self, capacity: np.ndarray, solver: str = "ipm") -> None:
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(_SOLVERS)}, got {solver!r}")
        import highspy

        self._h = _silent_highs()
        self._h.setOptionValue("presolve", "off")
        for key, value in _SOLVERS[solver].items():
            self._h.setOptionValue(key, value)
        m = len(capacity)
        self._h.addRows(m, np.full(m, -highspy.kHighsInf), capacity, 0,
                        np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0))
        self._n = 0
        self._best: tuple[float, np.ndarray] = (0.0, np.zeros(0))  # last optimum: (objective, x)

    def add(self, rows: np.ndarray) -> None:
        """Add one column with objective 1 (we minimise -sum x) and these row loads."""
        idx, counts = np.unique(rows, return_counts=True)
        self._h.addCols(1, np.array([-1.0]), np.zeros(1), np.array([np.inf]), len(idx),
                        np.zeros(1, np.int32), idx.astype(np.int32), counts.astype(float))
        self._n += 1

    def solve(self, time_limit: float = math.inf) -> tuple[float, np.ndarray] | None:
        """Return (objective, row duals as non-negative prices), or ``None`` when
        ``time_limit`` seconds ran out first."""
        # HiGHS's time limit counts from the instance's first run: extend it by this run's
        self._h.setOptionValue("time_limit", self._h.getRunTime() + max(time_limit, 0.0))
        self._h.run()
        status = self._h.modelStatusToString(self._h.getModelStatus())
        if status == "Time limit reached":
            return None
        if status != "Optimal":
            raise RuntimeError(f"tree-packing master LP: {status}")
        sol = self._h.getSolution()
        self._best = (-self._h.getInfo().objective_function_value, np.asarray(sol.col_value))
        return self._best[0], np.maximum(-np.asarray(sol.row_dual), 0.0)

    def vertex(self, time_limit: float = math.inf) -> tuple[float, np.ndarray]:
        """Re-solve by simplex; return (objective, a basic optimal x: few non-zeros). When
        ``time_limit`` runs out first, the last optimum :meth:`solve` found (zero rates for
        the columns added since; objective 0 and no rates when it found none)."""
        if time_limit > 0:
            self._h.setOptionValue("solver", "simplex")
            self._h.setOptionValue("run_crossover", "on")
            self.solve(time_limit)
        objective, x = self._best
        return objective, np.concatenate([x, np.zeros(self._n - len(x))])
