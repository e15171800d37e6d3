"""`bound()`: the lowest all-reduce time any reduce-then-broadcast tree scheme can reach."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import maximum_flow

from .errors import TopologyError
from .job import Job
from .packing import pack_trees, resource_rows
from .reach import fastest_paths, priced_rows, reach_time
from .view import NetworkView

__all__ = ["Bound", "bound", "priced_time", "simple_bounds"]

#: Above this many variables ``method="auto"`` gives up the flow LP for the simple bounds.
FLOW_LP_MAX_VARS = 150_000
PHASES = ("reduce", "broadcast")


@dataclass(frozen=True)
class Bound:
    """A lower bound on the all-reduce time.

    Attributes
    ----------
    time_s
        ``max(bandwidth_s, priced_s, reach_s, latency_s)``: no tree scheme finishes sooner.
    rate_Bps
        The largest all-reduce rate (gradient bytes per second) the network admits.
    bandwidth_s
        ``M / rate_Bps``.
    latency_s
        The least worker -> root -> worker latency of any root (see ``_worker_latency``).
    priced_s
        ``bandwidth_s`` plus the bottleneck's propagation delay, weighted by the LP's dual
        prices (see :func:`priced_time`); equals ``bandwidth_s`` when the method gives no
        prices (simple bounds, uncertified packings) or the bottleneck has no latency.
    reach_s
        The least time by which each site's own links can carry every worker's data out to
        (and in from) every other worker, latency included
        (:func:`netstorm.reach.reach_time`); it holds for any scheme, not only trees. 0 when
        bounding a single phase.
    method
        ``"flow-lp"`` (exact), ``"tree-packing"`` (exact to ``gap`` when ``exact``),
        or ``"simple"`` (volume, cut and per-site bounds only).
    exact
        Whether ``rate_Bps`` is the LP optimum (to ``gap``) rather than a looser bound.
    gap
        Relative gap ``1 - packing rate / rate_Bps`` between the best tree packing found and
        the bound (tree packing only).
    simple_time_s
        The best of the simple bounds, always reported: ``volume_time_s``, ``cut_time_s``
        and ``site_time_s`` individually.
    root_rates_Bps
        Rate through each root in the optimum (flow LP and tree packing).
    solve_s
        Wall time of the computation.
    """

    time_s: float
    rate_Bps: float
    bandwidth_s: float
    latency_s: float
    method: str
    exact: bool
    gap: float
    simple_time_s: float
    volume_time_s: float
    cut_time_s: float
    site_time_s: float
    solve_s: float
    root_rates_Bps: dict[int, float] = field(default_factory=dict)
    priced_s: float = 0.0
    reach_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON keys of ``netstorm bound --json`` (``bound_time_s`` first)."""
        return {"bound_time_s": self.time_s, "rate_Bps": self.rate_Bps,
                "bandwidth_s": self.bandwidth_s, "latency_s": self.latency_s,
                "method": self.method, "exact": self.exact, "gap": self.gap,
                "simple_time_s": self.simple_time_s, "volume_time_s": self.volume_time_s,
                "cut_time_s": self.cut_time_s, "site_time_s": self.site_time_s,
                "solve_s": self.solve_s, "priced_s": self.priced_s, "reach_s": self.reach_s,
                "root_rates_Bps": {str(k): v for k, v in self.root_rates_Bps.items()}}


def _worker_latency(view: NetworkView) -> float:
    """Least latency any tree scheme pays: every shard's data goes from every worker to the
    shard's root and from there to every worker, so it is at least
    ``min over roots r of (max_u d(u, r) + max_v d(r, v))`` with d the lowest-latency path
    (Floyd-Warshall, O(N^3))."""
    dist = fastest_paths(np.where(view.capacity > 0, view.latency, np.inf))
    workers = list(view.workers)
    into = dist[workers, :].max(axis=0)  # max_u d(u, r) for every candidate root r
    out_of = dist[:, workers].max(axis=1)  # max_v d(r, v)
    return float((into + out_of).min())


def priced_time(m_bytes: float, weights: np.ndarray, latency: np.ndarray) -> float:
    """Least time by which resources can deliver ``m_bytes`` of priced work.

    Parameters
    ----------
    m_bytes
        Gradient bytes M.
    weights
        ``p_i c_i`` per resource (B/s) for dual prices ``p`` under which every unit of
        all-reduce rate costs at least 1 (any feasible dual of the LP).
    latency
        Least propagation delay of a byte through each resource (s).

    Notes
    -----
    Any scheme moves ``B_i`` bytes through resource i with ``sum_i p_i B_i >= M`` (each
    gradient byte is reduced and broadcast along trees that cost >= 1 per byte). A byte sent
    at time t arrives at ``t + l_i``, so by time T resource i has delivered at most
    ``c_i (T - l_i)^+`` bytes. The all-reduce therefore takes at least the T solving
    ``sum_i w_i (T - l_i)^+ = M``: ``M / sum_i w_i`` plus the price-weighted latency when
    every ``l_i <= T``.
    """
    keep = weights > 0
    if not keep.any():
        return 0.0
    return float(priced_rows(m_bytes, weights[keep], latency[keep][None, :])[0])


def simple_bounds(view: NetworkView) -> dict[str, float]:
    """Upper bounds on the all-reduce rate (B/s) that need no LP.

    Notes
    -----
    With W workers, every shard crosses at least W-1 reduce and W-1 broadcast tree edges,
    so the network moves at least ``2 (W-1) M`` bytes: ``volume`` = total usable send (or
    receive) capacity / (2 (W-1)). Every worker sends and receives at least the full rate
    (its partial sums or its broadcasts): ``site`` = min over workers of its usable out/in
    capacity. Every cut with workers on both sides carries every root's traffic once:
    ``cut`` = min over workers t of maxflow(w0 -> t) and maxflow(t -> w0) (integer max-flow
    on capacities rounded up, so the figure stays a valid bound).
    """
    workers = list(view.workers)
    w = len(workers)
    if w < 2:
        return {"volume": np.inf, "site": np.inf, "cut": np.inf}
    out_usable = np.minimum(view.capacity.sum(axis=1), view.egress)
    in_usable = np.minimum(view.capacity.sum(axis=0), view.ingress)
    volume = min(out_usable.sum(), in_usable.sum()) / (2 * (w - 1))
    site = float(min(out_usable[workers].min(), in_usable[workers].min()))
    scale = 1e6 / view.capacity.max()
    graph = csr_array(np.ceil(view.capacity * scale).astype(np.int32))
    s = workers[0]
    flows = [maximum_flow(graph, a, b).flow_value
             for t in workers[1:] for a, b in ((s, t), (t, s))]
    return {"volume": float(volume), "site": site, "cut": float(min(flows) / scale)}


def _flow_lp(view: NetworkView, roots: Sequence[int], phases: Sequence[str],
             time_limit_s: float = np.inf) -> tuple[float, dict[int, float], np.ndarray] | None:
    """Solve the flow LP of DESIGN 4.3; return (rate in B/s, rate per root, capacity rows'
    dual prices in the row order of :func:`netstorm.packing.resource_rows`), or ``None``
    when ``time_limit_s`` runs out first."""
    n = view.n
    us, vs = np.nonzero(view.capacity)
    m = len(us)
    scale = float(view.capacity.max())
    commodities = [(p, ri, v) for p in phases for ri, r in enumerate(roots)
                   for v in view.workers if v != r]
    nr, na = len(roots), len(phases) * len(roots)
    alloc0 = nr
    flow0 = alloc0 + na * m
    nvars = flow0 + len(commodities) * m
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    eq_row = 0
    e_idx = np.arange(m)
    for k, (phase, ri, v) in enumerate(commodities):
        r = roots[ri]
        src, dst = (r, v) if phase == "broadcast" else (v, r)
        base = flow0 + k * m
        # conservation at every site: out - in - y_r [site=src] + y_r [site=dst] = 0
        rows += [eq_row + us, eq_row + vs]
        cols += [base + e_idx, base + e_idx]
        vals += [np.ones(m), -np.ones(m)]
        rows += [np.array([eq_row + src, eq_row + dst])]
        cols += [np.array([ri, ri])]
        vals += [np.array([-1.0, 1.0])]
        eq_row += n
    a_eq = coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                     shape=(eq_row, nvars))
    b_eq = np.zeros(eq_row)
    rows, cols, vals = [], [], []
    ub_row = 0
    for k, (phase, ri, _) in enumerate(commodities):  # flow <= allocation of its (phase, root)
        alloc = alloc0 + (phases.index(phase) * nr + ri) * m
        rows += [ub_row + e_idx, ub_row + e_idx]
        cols += [flow0 + k * m + e_idx, alloc + e_idx]
        vals += [np.ones(m), -np.ones(m)]
        ub_row += m
    b_ub: list[np.ndarray] = [np.zeros(ub_row)]
    for a in range(na):  # link capacity shared by every allocation
        rows.append(ub_row + e_idx)
        cols.append(alloc0 + a * m + e_idx)
        vals.append(np.ones(m))
    b_ub.append(view.capacity[us, vs] / scale)
    ub_row += m
    for ends, caps in ((us, view.egress), (vs, view.ingress)):
        for site in np.flatnonzero(np.isfinite(caps)):
            sel = np.flatnonzero(ends == site)
            for a in range(na):
                rows.append(np.full(len(sel), ub_row))
                cols.append(alloc0 + a * m + sel)
                vals.append(np.ones(len(sel)))
            b_ub.append(np.array([caps[site] / scale]))
            ub_row += 1
    a_ub = coo_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                     shape=(ub_row, nvars))
    objective = np.zeros(nvars)
    objective[:nr] = -1.0
    options = {"time_limit": max(time_limit_s, 0.0)} if np.isfinite(time_limit_s) else {}
    sol = linprog(objective, A_ub=a_ub.tocsr(), b_ub=np.concatenate(b_ub),
                  A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=(0, None), method="highs",
                  options=options)
    if sol.status == 1:  # iteration or time limit
        return None
    if sol.status != 0:
        raise RuntimeError(f"bound LP failed: {sol.message}")
    y = sol.x[:nr] * scale
    prices = np.maximum(-np.asarray(sol.ineqlin.marginals)[len(commodities) * m:], 0.0)
    return (float(y.sum()), {int(r): float(y[i]) for i, r in enumerate(roots) if y[i] > 0},
            prices)


def _auto_method(view: NetworkView, roots: Sequence[int], phases: tuple[str, ...]) -> str:
    """Tree packing when it is certified (every site a worker, both phases): it is exact and
    much faster than the flow LP; otherwise the flow LP while it stays small enough."""
    if not view.relays and phases == PHASES:
        return "tree-packing"
    nvars = view.n + len(view.links) * len(phases) * len(roots) * len(view.workers)
    return "flow-lp" if nvars <= FLOW_LP_MAX_VARS else "simple"


def bound(view: NetworkView, job: Job, *, roots: Sequence[int] | None = None,
          phases: Sequence[str] = PHASES, method: str = "auto",
          time_limit_s: float = 60.0) -> Bound:
    """Lower bound on the all-reduce time of ``job`` on ``view``.

    Parameters
    ----------
    roots
        Sites allowed as shard roots (default: every site).
    phases
        ``("reduce", "broadcast")``, or one of them to bound a single phase (e.g. a
        single-root broadcast is min over workers of max-flow from the root).
    method
        ``"flow-lp"``, ``"tree-packing"``, ``"simple"`` or ``"auto"``: tree packing when every
        site is a worker (exact to its reported gap, and fast); with relay-only sites the
        flow LP while it has at most ``FLOW_LP_MAX_VARS`` variables, else the simple bounds.
    time_limit_s
        Time budget of the whole computation. The simple, latency and reach bounds come
        first; the LP (the tree packing's column generation, or the flow LP) gets what is
        left of it. Compiling (or loading) the tree packing's kernels does not count (see
        :func:`netstorm.packing.pack_trees`). Stopped early, the bound is still valid (its
        rate is the lower of the packing's dual bound and the simple bounds; a flow LP
        that runs out of time leaves the simple bounds) but looser: ``gap`` says how far the
        best packing found is below it. Large full meshes close the gap slowly.

    Notes
    -----
    Flow LP (M = gradient bytes): maximise ``sum_r y_r`` subject to, for every root r and
    worker v, a flow of value ``y_r`` from r to v inside allocation ``g_r`` and one from v to
    r inside ``h_r``, with ``sum_r g_r(e) + h_r(e) <= c_e`` per link and the same sums over a
    site's out (in) links within its egress (ingress) cap. Time = ``M / sum_r y_r``, raised
    by propagation delay in two valid ways, whichever is larger: the least latency from
    every worker through one root to every worker, and :func:`priced_time` with the LP's
    dual prices (a resource cannot deliver in the last ``latency`` seconds what it sends
    then, so the priced bottleneck's latency adds to ``M / rate``). Adding the round trip to
    ``M / rate`` outright would not be valid: transfers overlap propagation. Third,
    :func:`netstorm.reach.reach_time`: every worker's data must leave it over its own links
    early enough to reach every other worker, and enter every worker late enough to carry
    every other worker's data (any scheme).
    Tight for tree schemes by Edmonds' arborescence packing theorem (with relay-only sites
    it stays a valid, maybe loose, bound).
    """
    started = time.perf_counter()
    phases = tuple(phases)
    if not phases or any(p not in PHASES for p in phases) or len(set(phases)) != len(phases):
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {phases}")
    unreachable = view.unreachable_workers()
    if unreachable:
        u, v = unreachable[0]
        raise TopologyError(f"{view.name}: worker {view.sites[v]} cannot be reached from "
                            f"{view.sites[u]}")
    roots = list(range(view.n)) if roots is None else [view.index(r) for r in roots]
    simple = simple_bounds(view)
    m_bytes = float(job.gradient_bytes)
    latency = _worker_latency(view)
    w = len(view.workers)
    if w < 2:
        return Bound(latency, np.inf, 0.0, latency, "trivial", True, 0.0, latency, 0.0, 0.0,
                     0.0, time.perf_counter() - started)
    reach = reach_time(view, m_bytes) if phases == PHASES else 0.0  # all-reduce only
    left = time_limit_s - (time.perf_counter() - started)  # the LP's share of the budget
    if method == "auto":
        method = _auto_method(view, roots, phases)
    per_root: dict[int, float] = {}
    gap, exact = 0.0, True
    simple_rate = min(simple.values())
    prices: np.ndarray | None = None
    if method == "flow-lp":
        solved = _flow_lp(view, roots, phases, time_limit_s=left)
        if solved is None:  # out of time: the simple bounds stand
            method, rate, exact = "simple", simple_rate, False
        else:
            rate, per_root, prices = solved
    elif method == "tree-packing":
        if phases != PHASES:
            raise ValueError("tree-packing bounds both phases; use method='flow-lp'")
        packing = pack_trees(view, roots, time_limit_s=left)
        rate, achieved, prices = packing.upper_bound, packing.rate, packing.prices
        exact = packing.certified and bool(np.isfinite(rate))  # no prices in time: not exact
        if not packing.certified:
            rate = simple_rate
        for col in packing.columns:
            per_root[col.root] = per_root.get(col.root, 0.0) + col.rate
    elif method == "simple":
        rate, exact = simple_rate, False
    else:
        raise ValueError(f"unknown method {method!r} (flow-lp, tree-packing, simple, auto)")
    if phases == PHASES:
        rate = min(rate, simple_rate)  # both are valid upper bounds on the rate
    if method == "tree-packing":  # how far the best packing found is below the bound
        gap = max(0.0, 1 - achieved / rate)
    times = {k: m_bytes / v for k, v in simple.items()}
    priced = m_bytes / rate
    if prices is not None:
        capacity, delay = resource_rows(view)
        priced = max(priced, priced_time(m_bytes, prices * capacity, delay))
    return Bound(time_s=max(priced, latency, reach), rate_Bps=rate, bandwidth_s=m_bytes / rate,
                 latency_s=latency, method=method, exact=exact, gap=gap,
                 simple_time_s=float(max(times.values())), volume_time_s=times["volume"],
                 cut_time_s=times["cut"], site_time_s=times["site"],
                 solve_s=time.perf_counter() - started, root_rates_Bps=per_root,
                 priced_s=priced, reach_s=reach)
