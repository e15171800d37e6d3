"""`netstorm`: the NetStorm paper's planner (R-rooted shortest-path trees + multipath)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from ..cost import link_loads
from ..errors import PlanError
from ..job import Job
from ..plan import Plan, QueueRule, Route, Shard
from ..view import NetworkView
from ._routing import inverse_capacity, relay_route

__all__ = ["auxiliary_paths", "chunk_quotas", "netstorm", "root_scores"]

def root_scores(view: NetworkView) -> np.ndarray:
    """The paper's root score of every site: ``1 / sum_k 1/B_k``.

    Notes
    -----
    Take r's cheapest (1/capacity) paths to every site and group their edges by hop depth;
    ``B_k`` is the smallest capacity among the depth-k edges. A root whose slowest hop at
    each depth is fast scores high. Unreachable sites score 0. The paths to every site of
    r's shortest-path out-tree use each tree edge, and an edge into a site at depth k + 1 is
    a depth-k edge of every path through it, so ``B_k`` is the smallest capacity of the tree
    edges into depth-(k + 1) sites (all roots at once, on the all-pairs predecessors).
    """
    n = view.n
    pred = _cheapest(view)[1].astype(np.int64)  # pred[r, j]: j's parent in r's out-tree
    own = np.eye(n, dtype=bool)
    reached = (pred >= 0) | own
    depth = np.where(own, 0, -1)
    while (depth[reached] < 0).any():  # a site's depth is its parent's plus one
        above = np.take_along_axis(depth, np.maximum(pred, 0), axis=1)
        depth = np.where((depth < 0) & (pred >= 0) & (above >= 0), above + 1, depth)
    scores = np.zeros(n)
    for r in range(n):
        if n < 2 or not reached[r].all():
            continue
        heads = np.flatnonzero(pred[r] >= 0)
        caps = view.capacity[pred[r, heads], heads]
        total = 0.0
        for k in range(1, int(depth[r].max()) + 1):  # summed by depth, as the paper's loop
            total += 1.0 / float(caps[depth[r, heads] == k].min())
        scores[r] = 1.0 / total
    return scores


def _cheapest(view: NetworkView) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs (cost, predecessors) of the cheapest (1/capacity) paths, cached on the view
    (the predecessors are those that :func:`._routing.cheapest_path` caches)."""
    cached = view._graph_cache.get("cheapest_dist_pred")
    if cached is None:
        dist, pred = dijkstra(csr_array(inverse_capacity(view)), directed=True,
                              return_predecessors=True)
        view._graph_cache.setdefault("cheapest_pred", pred)
        cached = view._graph_cache["cheapest_dist_pred"] = (dist, pred)
    return cached  # type: ignore[no-any-return]


def _in_trees(view: NetworkView) -> np.ndarray:
    """Row r: :func:`._routing.in_tree` of root r, for every root in one Dijkstra call."""
    cached = view._graph_cache.get("cheapest_in_trees")
    if cached is None:
        _, pred = dijkstra(csr_array(inverse_capacity(view).T), directed=True,
                           return_predecessors=True)
        cached = view._graph_cache["cheapest_in_trees"] = np.maximum(pred, -1).astype(np.int64)
    return cached  # type: ignore[no-any-return]


def auxiliary_paths(view: NetworkView, u: int, v: int, primary: tuple[int, ...],
                    max_cost: float = math.inf) -> list[tuple[int, ...]]:
    """Greedy node-disjoint auxiliary paths from u to v, cheapest first.

    The paper walks all simple paths in cost order (sum of 1/capacity) and accepts one when
    none of its intermediate sites is already an intermediate of the primary or of an
    accepted path. Accepting in cost order under that rule is the same as repeatedly taking
    the cheapest u -> v path in the network without the used intermediates (and without the
    primary itself), which is what this does: one Dijkstra per accepted path instead of an
    exponential enumeration, over the sites that some path within ``max_cost`` can visit.
    Stops at the first path costing more than ``max_cost``. Of paths of equal cost, the one
    whose sites come first in index order wins (DESIGN 4: ties by site index).
    """
    nodes, offsets = _disjoint_paths(view, u, v, primary, max_cost)
    flat = nodes.tolist()
    return [tuple(flat[a:b]) for a, b in itertools.pairwise(offsets.tolist())]


def _disjoint_paths(view: NetworkView, u: int, v: int, primary: tuple[int, ...],
                    max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`auxiliary_paths` as (their sites concatenated, each path's offset)."""
    from ._netstorm_nb import disjoint_paths

    cost = view._graph_cache.get("link_cost")
    if cost is None:
        with np.errstate(divide="ignore"):
            cost = np.where(view.capacity > 0, 1.0 / view.capacity, np.inf)
        view._graph_cache["link_cost"] = cost
    if len(primary) == 2 and np.isfinite(cost[u, v]):  # the direct link is the primary
        cost = cost.copy()
        cost[u, v] = np.inf
    return disjoint_paths(cost, _cheapest(view)[0], u, v,  # type: ignore[no-any-return]
                          np.asarray(primary[1:-1], dtype=np.int64), max_cost * (1 + 1e-12))


def chunk_quotas(scores: dict[int, float], elements: int, chunk_elems: int) -> dict[int, int]:
    """Elements each root aggregates, by the paper's quota rule.

    Notes
    -----
    The gradient is cut into ``ceil(elements / chunk_elems)`` chunks; root r may take
    ``ceil(score_r / sum(scores) * chunks)`` of them; chunks are dealt round-robin over the
    roots in index order, in chunk order, skipping roots whose quota is full. The last chunk
    may be short.
    """
    count = math.ceil(elements / chunk_elems)
    total = sum(scores.values())
    quota = {r: math.ceil(s / total * count) for r, s in scores.items()}
    roots = sorted(scores)
    taken = dict.fromkeys(roots, 0)
    share = dict.fromkeys(roots, 0)
    turn = 0
    for key in range(count):
        while taken[roots[turn % len(roots)]] >= quota[roots[turn % len(roots)]]:
            turn += 1
        r = roots[turn % len(roots)]
        taken[r] += 1
        share[r] += min(chunk_elems, elements - key * chunk_elems)
        turn += 1
    return {r: n for r, n in share.items() if n > 0}


def netstorm(view: NetworkView, job: Job, *, seed: int | None = None, state: Any = None,
             roots: int | None = None, multipath: bool = True, aux_queue: int = 1,
             primary_busy: int = 2, chunk_elems: int = 1_000_000) -> Plan:
    """NetStorm as published (DESIGN 4.1).

    Parameters
    ----------
    roots
        R, the number of aggregation roots: the R best-scoring worker sites (default all).
    multipath
        Add node-disjoint auxiliary paths to every tree edge.
    aux_queue, primary_busy
        The paper's live rule: a chunk leaves over the first auxiliary path whose first-hop
        send queue holds fewer than ``aux_queue`` chunks while the primary's holds more than
        ``primary_busy``. The plan carries it (``Plan.route_rule``), so the simulator and the
        runtime pick paths by it when they send; the route weights are the steady-state
        split the cost model uses.
    chunk_elems
        Elements per chunk for the root quotas (the paper's 1e6).

    Notes
    -----
    Every site's parent is its next hop on its cheapest (1/capacity) path to the root (a
    shortest-path in-tree; interior sites aggregate), and the broadcast tree is the same tree
    reversed (relayed where the reverse link is missing). Auxiliary routes: a tree edge
    u -> v keeps its direct link as primary and adds the paths of :func:`auxiliary_paths`,
    weighted by the capacity they have spare (see ``_with_auxiliary_routes``).
    """
    del seed, state
    if aux_queue < 0 or primary_busy < 0 or chunk_elems < 1:
        raise ValueError("aux_queue and primary_busy must be >= 0 and chunk_elems >= 1")
    scores = root_scores(view)
    workers = list(view.workers)
    count = len(workers) if roots is None else int(roots)
    if not 1 <= count <= len(workers):
        raise ValueError(f"roots must be in 1..{len(workers)}, got {roots}")
    chosen = sorted(workers, key=lambda w: (-scores[w], w))[:count]
    elements = job.gradient_bytes // job.element_size
    shares = chunk_quotas({r: scores[r] for r in chosen}, elements, chunk_elems)
    total = sum(shares.values())
    shards = []
    for root, share in sorted(shares.items()):
        tree = _pruned_tree(view, _in_trees(view)[root], root)
        edges = sorted(tree.items()) + sorted((p, c) for c, p in tree.items())
        routes = tuple(r for u, v in edges if (r := relay_route(view, u, v)))
        shards.append(Shard(share / total, root, tree, tree, routes))
    plan = Plan(version=1, planner="netstorm", sites=view.sites, shards=tuple(shards))
    if not multipath:
        return plan
    return replace(_with_auxiliary_routes(plan, view, job, primary_busy),
                   route_rule=QueueRule(aux_queue, primary_busy))


def _path_cost(view: NetworkView, path: tuple[int, ...]) -> float:
    """Store-and-forward seconds per byte along ``path`` (sum of 1/capacity)."""
    return sum(1.0 / view.capacity[a, b] for a, b in itertools.pairwise(path))


def _with_auxiliary_routes(plan: Plan, view: NetworkView, job: Job,
                           primary_busy: int) -> Plan:
    """Split tree edges over auxiliary paths where those have idle capacity.

    Notes
    -----
    The runtime rule diverts a chunk to an auxiliary path only while the primary is backed up
    and the auxiliary's first hop is idle, so in steady state an auxiliary path carries the
    capacity the rest of the plan leaves spare on it. With single-path loads ``L_e`` and
    bandwidth time ``T``, edge u -> v (B bytes) keeps ``B/T`` on its primary and gives each
    auxiliary path p its spare rate ``s_p = min_{e in p} (c_e - L_e / T)``; paths whose rate
    is at most 1e-3 of the edge's total are dropped, the weights are proportional to the
    rates of the others, and the loads are updated edge by edge (in shard, then edge order)
    so later edges see earlier diversions (compiled: :func:`._netstorm_nb.divert`). The rule
    stops diverting once the primary holds ``primary_busy`` chunks or fewer, so a chunk sent
    over an auxiliary path has about ``primary_busy + 1`` primary chunk-times to arrive;
    slower auxiliary paths would hold up the tail of the pipeline and are not used.
    """
    from ._netstorm_nb import divert

    loads, _, _ = link_loads(plan, view, job)
    with np.errstate(divide="ignore", invalid="ignore"):
        horizon = float(np.nanmax(np.where(view.capacity > 0, loads / view.capacity, 0)))
    if horizon <= 0:
        return plan
    keys: dict[tuple[int, int, float], int] = {}  # many shards share edges
    found: list[tuple[np.ndarray, np.ndarray]] = []
    edges: list[tuple[int, int, int, tuple[int, ...]]] = []  # shard, u, v, primary
    nbytes: list[float] = []
    edge_key: list[int] = []
    primary_nodes: list[int] = []
    primary_at = [0]
    for s, shard in enumerate(plan.shards):
        for u, v in list(shard.reduce_edges()) + list(shard.broadcast_edges()):
            primary = shard.route(u, v).paths[0]
            limit = (primary_busy + 1) * _path_cost(view, primary)
            key = keys.setdefault((u, v, limit), len(keys))
            if key == len(found):
                found.append(_disjoint_paths(view, u, v, primary, limit))
            edges.append((s, u, v, primary))
            nbytes.append(shard.fraction * job.gradient_bytes)
            edge_key.append(key)
            primary_nodes += primary
            primary_at.append(len(primary_nodes))
    # every key's paths, concatenated: key k owns paths key_at[k]:key_at[k + 1]
    counts = np.array([len(offsets) - 1 for _, offsets in found], dtype=np.int64)
    key_at = np.concatenate([[0], np.cumsum(counts)])
    sizes = np.concatenate([np.diff(offsets) for _, offsets in found] + [np.zeros(0, int)])
    path_at = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    nodes = np.concatenate([n for n, _ in found] + [np.zeros(0, np.int64)]).astype(np.int64)
    choice_at = np.concatenate([[0], np.cumsum(counts[edge_key] + 1)]).astype(np.int64)
    keep, weight = divert(loads, view.capacity.astype(float), horizon,
                          np.asarray(nbytes, dtype=float),
                          np.asarray(primary_nodes, dtype=np.int64),
                          np.asarray(primary_at, dtype=np.int64),
                          np.asarray(edge_key, dtype=np.int64), key_at.astype(np.int64),
                          nodes, path_at, choice_at)
    flat, bounds = nodes.tolist(), path_at.tolist()
    paths: dict[int, tuple[int, ...]] = {}  # one tuple per found path, shared by its routes

    def path(p: int) -> tuple[int, ...]:
        if p not in paths:
            paths[p] = tuple(flat[bounds[p]:bounds[p + 1]])
        return paths[p]

    routes: list[list[Route]] = [[] for _ in plan.shards]
    for e, (s, u, v, primary) in enumerate(edges):
        c = int(choice_at[e])
        chosen = np.flatnonzero(keep[c:choice_at[e + 1]]).tolist()
        if len(chosen) > 1:
            first = int(key_at[edge_key[e]]) - 1  # choice j > 0 is that key's path j - 1
            kept = [primary if j == 0 else path(first + j) for j in chosen]
            routes[s].append(Route((u, v), tuple(kept), tuple(weight[c + j] for j in chosen)))
        elif primary != (u, v):
            routes[s].append(plan.shards[s].route(u, v))
    return Plan(plan.version, plan.planner, plan.sites,
                tuple(Shard(shard.fraction, shard.root, shard.reduce_tree,
                            shard.broadcast_tree, tuple(r))
                      for shard, r in zip(plan.shards, routes, strict=True)))


def _pruned_tree(view: NetworkView, parent: np.ndarray, root: int) -> dict[int, int]:
    """The in-tree restricted to workers and the relays on their paths."""
    tree: dict[int, int] = {}
    for w in view.workers:
        node = w
        while node != root and node not in tree:
            nxt = int(parent[node])
            if nxt < 0:
                raise PlanError(f"{view.sites[w]} cannot reach root {view.sites[root]}")
            tree[node] = nxt
            node = nxt
    return tree
