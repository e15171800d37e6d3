"""`treepack`: ours. LP-guided packing of many weighted trees, close to the bound."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from ..chunking import MIN_CHUNK_BYTES, choose_chunk, chunk_option
from ..cost import predict
from ..job import Job
from ..packing import DelayBudget, Masks, TreePair, Variant, pack_trees, solve_master, star_columns
from ..plan import Plan, Shard
from ..reach import fastest_paths
from ..tree_timing import chain_fills, hop_rates
from ..view import NetworkView

__all__ = ["column_fills", "columns_plan", "default_rounds", "delay_budget", "progress_masks",
           "treepack"]


def default_rounds(n: int) -> int:
    """Column-generation rounds by network size, tuned on random full meshes: 32 sites plan in
    about 0.4 s, 128 in about 2.3 s (extra rounds there bought no better plans)."""
    if n <= 12:
        return 150
    if n <= 24:
        return 60
    if n <= 48:
        return 10
    return 6


def _tree(parent: np.ndarray) -> dict[int, int]:
    return {int(v): int(p) for v, p in enumerate(parent) if p >= 0}


def _shards(columns: tuple[TreePair, ...], min_fraction: float) -> list[Shard]:
    merged: dict[tuple[int, bytes, bytes], float] = {}
    for col in columns:
        key = (col.root, col.reduce_parent.tobytes(), col.broadcast_parent.tobytes())
        merged[key] = merged.get(key, 0.0) + col.rate
    total = sum(merged.values())
    kept = {k: r for k, r in merged.items() if r >= min_fraction * total}
    if not kept:  # every tree under the threshold (many small ones): keep the largest
        best = min(merged.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = {best[0]: best[1]}
    kept_total = sum(kept.values())
    shards = []
    for (root, up, down), rate in sorted(kept.items(), key=lambda kv: (-kv[1], kv[0])):
        shards.append(Shard(rate / kept_total, root,
                            _tree(np.frombuffer(up, dtype=np.int64)),
                            _tree(np.frombuffer(down, dtype=np.int64))))
    return shards


def _chunk_paths(view: NetworkView, job: Job) -> tuple[np.ndarray, np.ndarray]:
    """Per hop, latency plus one chunk's store-and-forward time (``inf`` where there is no
    link), and the fastest path time between every pair."""
    with np.errstate(divide="ignore"):
        hop = np.where(view.capacity > 0,
                       view.latency + job.chunk_bytes / np.where(view.capacity > 0,
                                                                  view.capacity, 1), np.inf)
    return hop, fastest_paths(hop)


def progress_masks(view: NetworkView, job: Job, slack: float = 0.0) -> Masks:
    """Links that lie on near-fastest paths to (or from) the root.

    Distance ``d`` is the time one chunk needs along the fastest path: per hop ``h``,
    latency plus the chunk's store-and-forward time ``chunk_bytes / capacity``. An in-tree
    may use u -> v only if ``h(u, v) + d(v, r) <= (1 + slack) d(u, r)`` and v is strictly
    closer to r; an out-tree symmetrically. With ``slack = 0`` trees are made of fastest
    paths only, so every chain's fill is the fastest path's.
    """
    hop, dist = _chunk_paths(view, job)
    link = view.capacity > 0

    def masks(root: int) -> tuple[np.ndarray, np.ndarray]:
        to_root, from_root = dist[:, root], dist[root, :]
        with np.errstate(invalid="ignore"):
            up = link & (to_root[None, :] < to_root[:, None]) & (
                hop + to_root[None, :] <= (1 + slack) * to_root[:, None] * (1 + 1e-9))
            down = link & (from_root[:, None] < from_root[None, :]) & (
                from_root[:, None] + hop <= (1 + slack) * from_root[None, :] * (1 + 1e-9))
        return up, down

    return masks


def delay_budget(view: NetworkView, job: Job, scale: float = 1.0,
                 shared: bool = False) -> DelayBudget:
    """Trees no slower than ``scale`` times an unavoidable depth.

    With ``d`` the fastest chunk path time (as in :func:`progress_masks`), ``D_r = max_w
    d(w, r)`` and ``U_r = max_w d(r, w)`` over workers w are the depths every in-tree and
    out-tree at root r pays anyway. Per root (``shared=False``): r's in-tree paths get the
    budget ``scale * D_r`` and its out-tree paths ``scale * U_r``, so nearer sites may detour
    over fast links within the farthest worker's depth. Shared: one round trip
    ``L = scale * min_r (D_r + U_r)`` for every root, split in proportion to ``D_r`` and
    ``U_r``; roots far from the middle get less than their own depth (their trees overrun
    it, see :func:`netstorm.arborescence.budget_arborescence`), which steers the rate to
    central roots, as the slowest shard's round trip sets the pipeline fill.
    """
    hop, dist = _chunk_paths(view, job)
    workers = list(view.workers)
    into, out = dist[workers, :].max(axis=0), dist[:, workers].max(axis=1)
    if shared:
        trip = into + out
        limit = scale * float(trip.min())
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(trip > 0, into / trip, 0.5)
        return DelayBudget(hop, limit * share, limit * (1 - share))
    return DelayBudget(hop, scale * into, scale * out)


#: Slacks of the depth-aware packings tried beside the unrestricted one.
_SLACKS = (0.0, 0.3, 1.0)


class _Budgets(NamedTuple):
    """The delay-budget packings treepack tries on networks of up to ``sites`` sites."""

    sites: int
    rounds: int | None  #: column-generation rounds of each (``None``: the packing's own)
    scales: tuple[tuple[float, bool], ...]  #: ``(scale, shared)`` of each, its own master
    mixed: bool = False  #: also solve one master LP over all their trees together


#: The delay-budget packings per band of site counts, and why (predicted times on this
#: machine's meshes; ``benchmarks/latency_front.py`` prints every budget's plan):
_BUDGETS = (
    # <= 12: beat the earlier five (1.0 per root instead of 1.75 per root and 2.0 shared,
    # 150 rounds) on 16 of 40 meshes, by up to 14.5 %, lost 0.3 % on one; <= 1.9 s.
    _Budgets(12, 100, ((1.25, False), (1.5, False), (1.75, False), (1.5, True), (1.75, True),
                       (2.0, True))),
    # 13-24: the shared ones found the per-root ones' plans on every mesh, in half the time
    # (9.9 s instead of 20.9 s at 24 sites); mixing gained 1.2 % on one mesh for 5-15 % time.
    _Budgets(24, None, ((1.5, True), (1.75, True))),
    # 25-48: 8-27 % faster than no budget on random meshes, mixing 1.4-10 % more on 17 of
    # 20 meshes, never slower, +0.15 s at 32 sites; three or four rounds of both, or a
    # 1.0 shared budget too, were slower on some meshes; the main packing's trees in the
    # mix gained up to 6.5 % for 0.3-0.4 s more.
    _Budgets(48, 5, ((1.25, True), (1.5, True)), mixed=True),
    # > 48: 18-31 % faster on 11 random meshes of 49-128 sites (simulated -30 % at 49
    # sites, -20 % at 64), 2.6-10 % on waxman:64, for +0.2-0.4 s at 49-64 sites and
    # +1.5-1.9 s at 128 (3.9 s); three or four rounds gained 1-4 % for 0.1-0.35 s more,
    # and a 1.0 shared budget 3-14 % for 10-47 % more time (over 1 s at 64 sites).
    _Budgets(10**9, 2, ((1.25, True), (1.5, True)), mixed=True))
#: Above this many sites treepack prices fewer variants and tries fewer fill caps.
_LARGE = 48
#: Quantiles of the pooled trees' fills used as caps when re-packing.
_FILL_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def treepack(view: NetworkView, job: Job, *, seed: int | None = None, state: Any = None,
             rounds: int | None = None, tol: float = 1e-3, min_fraction: float = 1e-3,
             depth_aware: bool = True, chunk_bytes: int | str | None = "auto",
             min_chunk_bytes: int = MIN_CHUNK_BYTES, send_order: str = "slack") -> Plan:
    """Pack reduce/broadcast tree pairs by column generation; each tree pair is a shard.

    Parameters
    ----------
    rounds
        Column-generation rounds (default :func:`default_rounds` of the site count). A round
        budget, not a time budget, keeps the plan identical on every site.
    tol
        Stop early once the packing is within this relative gap of its LP bound.
    min_fraction
        Trees carrying less than this share of the rate are dropped (the rest rescaled).
    depth_aware
        Also pack trees restricted to :func:`progress_masks`, and trees within
        :func:`delay_budget` (fewer budgets and rounds as the site count grows), and keep
        whichever plan the cost model predicts fastest.
    chunk_bytes
        The plan's pipelining chunk (``Plan.chunk_bytes``). ``"auto"`` (default): choose
        among :func:`netstorm.chunking.chunk_candidates` (the job's chunk and its halvings
        down to ``min_chunk_bytes``) by :func:`netstorm.chunking.choose_chunk`. A whole
        number: use that chunk (rounded down to a multiple of the element size). ``None``:
        leave the plan's chunk unset, so it runs with ``job.chunk_bytes``.
    min_chunk_bytes
        Floor of the ``"auto"`` candidates (default 131072 bytes, 32 Ki fp32 elements).
    send_order
        ``Plan.send_order`` (:mod:`netstorm.send_order`). ``"slack"`` (default): links
        serve the chunk with the least slack first, which treepack's many shards of
        different depths need; ``"progress"``: by progress alone.

    Notes
    -----
    :func:`netstorm.packing.pack_trees` maximises the all-reduce rate over fractional
    packings of (in-tree, out-tree) pairs subject to link and site-cap capacities, so the
    plan's bandwidth term approaches the LP bound of :func:`netstorm.bound` (equal to it at
    convergence when every site is a worker). The LP ignores latency and pipeline fill,
    which deep trees pay on every hop; the depth-aware packing trades some bandwidth for
    monotone, shallow trees, and the cost model (:func:`netstorm.predict`) picks the faster
    plan. The delay-budget packings hold every tree's paths within a multiple of the
    unavoidable depth, for latency-bound meshes; the best split over direct stars (a PS
    with tuned shard sizes) is a candidate too, as it wins where site caps bind. Candidate
    plans are compared, and depths measured, with the finest candidate
    chunk, the fill the plan will really pay; the chunk for the winning plan is chosen
    last. Trees use direct links only: relaying and multipath are expressed by the packing
    itself, as interior tree sites that aggregate and as several trees that spread a root's
    traffic over different paths. Relay-only sites appear as interior (aggregating) tree
    nodes where the pricing step's Steiner trees put them.
    """
    del seed, state
    candidates = chunk_option(job, chunk_bytes, min_chunk_bytes)
    if len(view.workers) < 2:
        root = view.workers[0]
        return _set_chunk(Plan(1, "treepack", view.sites, (Shard(1.0, root, {}, {}),),
                               send_order=send_order),
                           view, job, candidates)
    rounds = default_rounds(view.n) if rounds is None else int(rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    finest = job if candidates is None else job.with_chunk(min(candidates))
    plan = _pack(view, finest, rounds, tol, min_fraction, depth_aware)
    return _set_chunk(replace(plan, send_order=send_order), view, job, candidates)


def _set_chunk(plan: Plan, view: NetworkView, job: Job,
               candidates: list[int] | None) -> Plan:
    """``plan`` with the chunk chosen among ``candidates`` (unchanged for ``None``)."""
    if candidates is None:
        return plan
    if len(candidates) == 1:
        return replace(plan, chunk_bytes=candidates[0])
    return replace(plan, chunk_bytes=choose_chunk(plan, view, job, candidates)[0])


def _pack(view: NetworkView, job: Job, rounds: int, tol: float, min_fraction: float,
          depth_aware: bool) -> Plan:
    """The best packed plan for ``job`` (its chunk sets the fill that ranks the plans)."""
    variants: list[Variant] = [None]
    if depth_aware and view.n > _LARGE:
        # Large networks price one depth-limited variant only: unrestricted pricing there is
        # slow (zero prices tie on most links, so Edmonds contracts level after level) and
        # its deep trees lose to the fill anyway.
        variants = [progress_masks(view, job, _SLACKS[1])]
    elif depth_aware:
        variants += [progress_masks(view, job, slack) for slack in _SLACKS]
    packing = pack_trees(view, tol=tol, max_rounds=rounds, time_limit_s=np.inf,
                         variants=variants, solver="simplex")
    candidates = [packing.columns]
    if depth_aware:  # re-pack the pooled trees under a cap on each tree's fill
        candidates += _fill_capped(view, job, list(packing.pool))
        stars = star_columns(view)  # the best split over direct stars: a tuned PS
        if stars:
            candidates.append(solve_master(view, [stars])[0][1])
        budgets = next(b for b in _BUDGETS if view.n <= b.sites)
        pooled: list[TreePair] = []
        for scale, shared in budgets.scales:  # apart: one column generation mixes them badly
            packed = pack_trees(view, tol=tol, max_rounds=budgets.rounds or rounds,
                                time_limit_s=np.inf, solver="simplex",
                                variants=[delay_budget(view, job, scale, shared)])
            candidates.append(packed.columns)
            pooled += packed.pool
        if budgets.mixed:  # one LP over the trees they found can mix them well
            candidates.append(solve_master(view, [pooled])[0][1])
    plans = [columns_plan(view, columns, min_fraction) for columns in candidates if columns]
    return min(plans, key=lambda p: predict(p, view, job).time_s)  # the first of equals


def columns_plan(view: NetworkView, columns: tuple[TreePair, ...],
                 min_fraction: float = 1e-3) -> Plan:
    """A treepack plan with one shard per distinct tree pair of ``columns``, its fraction the
    pair's share of the total rate (pairs below ``min_fraction`` of it dropped)."""
    return Plan(version=1, planner="treepack", sites=view.sites,
                shards=tuple(_shards(columns, min_fraction)))


def column_fills(view: NetworkView, job: Job, columns: list[TreePair]) -> np.ndarray:
    """:func:`netstorm.cost.shard_fill` of each column as a whole-job shard, vectorised over
    the columns (:func:`netstorm.tree_timing.chain_fills`)."""
    if not columns:
        return np.zeros(0)
    return chain_fills(np.stack([c.reduce_parent for c in columns]),
                       np.stack([c.broadcast_parent for c in columns]), hop_rates(view),
                       view.latency, min(float(job.chunk_bytes), float(job.gradient_bytes)))


def _fill_capped(view: NetworkView, job: Job,
                 pool: list[TreePair]) -> list[tuple[TreePair, ...]]:
    """Master LP solutions (their trees in use) over the pooled trees whose fill is at most
    each of a few caps.

    Notes
    -----
    The predicted time is about ``M / rate + max fill``: deep trees raise the rate a little
    and the fill a lot. For caps F at the quantiles of the pooled trees' fills (chunk of full
    size, the worst case), the master LP re-packs only trees with fill <= F, trading rate
    for fill; the cost model then judges each plan.
    """
    fills = column_fills(view, job, pool)
    order = np.argsort(fills, kind="stable")
    quantiles = _FILL_QUANTILES if view.n <= _LARGE else _FILL_QUANTILES[3::2]
    caps = sorted(set(np.quantile(fills, quantiles).tolist()))
    batches, start = [], 0
    for cap in caps:  # each batch adds the trees whose fill fits under the next cap
        stop = int(np.searchsorted(fills[order], cap, side="right"))
        batches.append([pool[i] for i in order[start:stop]])
        start = stop
    return [columns for _, columns in solve_master(view, batches)]
