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
from ._routing import in_tree, inverse_capacity, out_tree, relay_route

__all__ = ["auxiliary_paths", "chunk_quotas", "netstorm", "root_scores"]

def root_scores(view: NetworkView) -> np.ndarray:
    """The paper's root score of every site: ``1 / sum_k 1/B_k``.

    Notes
    -----
    Take r's cheapest (1/capacity) paths to every site and group their edges by hop depth;
    ``B_k`` is the smallest capacity among the depth-k edges. A root whose slowest hop at
    each depth is fast scores high. Unreachable sites score 0.
    """
    scores = np.zeros(view.n)
    for r in range(view.n):
        pred = out_tree(view, r)
        slowest: dict[int, float] = {}
        reachable = True
        for j in range(view.n):
            if j == r:
                continue
            if pred[j] < 0:
                reachable = False
                break
            path = [j]
            while path[-1] != r:
                path.append(int(pred[path[-1]]))
            for depth, (a, b) in enumerate(itertools.pairwise(reversed(path))):
                slowest[depth] = min(slowest.get(depth, math.inf), view.capacity[a, b])
        if reachable and slowest:
            scores[r] = 1.0 / sum(1.0 / b for b in slowest.values())
    return scores


def auxiliary_paths(view: NetworkView, u: int, v: int, primary: tuple[int, ...],
                    max_cost: float = math.inf) -> list[tuple[int, ...]]:
    """Greedy node-disjoint auxiliary paths from u to v, cheapest first.

    The paper walks all simple paths in cost order (sum of 1/capacity) and accepts one when
    none of its intermediate sites is already an intermediate of the primary or of an
    accepted path. Accepting in cost order under that rule is the same as repeatedly taking
    the cheapest u -> v path in the network without the used intermediates (and without the
    primary itself), which is what this does: one Dijkstra per accepted path instead of an
    exponential enumeration. Stops at the first path costing more than ``max_cost``.
    """
    cost = inverse_capacity(view)
    blocked = np.zeros(view.n, dtype=bool)
    blocked[list(primary[1:-1])] = True
    if len(primary) == 2:
        cost[u, v] = 0.0  # the direct link is the primary
    accepted: list[tuple[int, ...]] = []
    while True:
        cost[blocked, :] = 0.0
        cost[:, blocked] = 0.0
        dist, pred = dijkstra(csr_array(cost), directed=True, indices=u,
                              return_predecessors=True)
        if not np.isfinite(dist[v]) or dist[v] > max_cost * (1 + 1e-12):
            return accepted
        path = [v]
        while path[-1] != u:
            path.append(int(pred[path[-1]]))
        path.reverse()
        if len(path) == 2:  # only the direct link is left (primary was relayed)
            cost[u, v] = 0.0
            continue
        accepted.append(tuple(path))
        blocked[path[1:-1]] = True


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
        tree = _pruned_tree(view, in_tree(view, root), root)
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
    auxiliary path p its spare rate ``s_p = min_{e in p} (c_e - L_e / T)``; weights are
    proportional to those rates and the loads are updated edge by edge (in shard, then edge
    order) so later edges see earlier diversions. The rule stops diverting once the primary
    holds ``primary_busy`` chunks or fewer, so a chunk sent over an auxiliary path has about
    ``primary_busy + 1`` primary chunk-times to arrive; slower auxiliary paths would hold up
    the tail of the pipeline and are not used.
    """
    loads, _, _ = link_loads(plan, view, job)
    with np.errstate(divide="ignore", invalid="ignore"):
        horizon = float(np.nanmax(np.where(view.capacity > 0, loads / view.capacity, 0)))
    if horizon <= 0:
        return plan
    shards = []
    found: dict[tuple[int, int, float], list[tuple[int, ...]]] = {}  # many shards share edges
    for shard in plan.shards:
        nbytes = shard.fraction * job.gradient_bytes
        routes = []
        for u, v in list(shard.reduce_edges()) + list(shard.broadcast_edges()):
            primary = shard.route(u, v).paths[0]
            limit = (primary_busy + 1) * _path_cost(view, primary)
            key = (u, v, limit)
            if key not in found:
                found[key] = auxiliary_paths(view, u, v, primary, max_cost=limit)
            aux = found[key]
            spare = [max(0.0, min(view.capacity[a, b] - loads[a, b] / horizon
                                  for a, b in itertools.pairwise(p))) for p in aux]
            rates = [nbytes / horizon, *spare]
            keep = [(p, r) for p, r in zip([primary, *aux], rates, strict=True)
                    if r > 1e-3 * sum(rates)]
            if len(keep) > 1:
                weights = [r / sum(r for _, r in keep) for _, r in keep]
                for (path, _), w in zip(keep, weights, strict=True):
                    hops = np.asarray(path)
                    share = nbytes * (w - (1.0 if path == primary else 0.0))
                    loads[hops[:-1], hops[1:]] += share
                routes.append(Route((u, v), tuple(p for p, _ in keep), tuple(weights)))
            elif primary != (u, v):
                routes.append(shard.route(u, v))
        shards.append(Shard(shard.fraction, shard.root, shard.reduce_tree,
                            shard.broadcast_tree, tuple(routes)))
    return Plan(plan.version, plan.planner, plan.sites, tuple(shards))


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
