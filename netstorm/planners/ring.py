"""`ring`: ring all-reduce (reduce-scatter + all-gather) as W chain-shaped shards."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..job import Job
from ..plan import Plan, Shard
from ..view import NetworkView
from ._routing import relay_route, route_capacity

__all__ = ["ring", "ring_order"]

_BRUTE_FORCE_MAX = 9


def _score(eff: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bottleneck, total time per byte) of each cyclic order (rows of ``orders``)."""
    nxt = np.roll(orders, -1, axis=1)
    caps = eff[orders, nxt]
    return caps.min(axis=1), (1.0 / caps).sum(axis=1)


def ring_order(view: NetworkView) -> list[int]:
    """A cyclic order of the workers that maximises the slowest ring edge.

    Notes
    -----
    A ring edge's capacity is its direct link's, or the bottleneck of the cheapest relay
    path. Ties go to the smaller total 1/capacity, then to the lexicographically first
    order. Up to 9 workers every order is tried (8! = 40,320 with the first fixed); beyond
    that a greedy widest-next-hop tour from every start is kept (a heuristic: the exact
    problem is a bottleneck travelling-salesman).
    """
    workers = list(view.workers)
    w = len(workers)
    if w <= 2:
        return workers
    eff = np.zeros((view.n, view.n))
    for u, v in itertools.permutations(workers, 2):
        eff[u, v] = route_capacity(view, u, v)
    if w <= _BRUTE_FORCE_MAX:
        rest = np.array(list(itertools.permutations(workers[1:])), dtype=np.int64)
        orders = np.hstack([np.full((len(rest), 1), workers[0]), rest])
    else:
        tours = []
        for start in workers:
            tour, left = [start], set(workers) - {start}
            while left:
                cands = sorted(left)
                tour.append(cands[int(np.argmax(eff[tour[-1], cands]))])
                left.discard(tour[-1])
            k = tour.index(workers[0])
            tours.append(tour[k:] + tour[:k])
        orders = np.array(tours, dtype=np.int64)
    bottleneck, total = _score(eff, orders)
    best = np.lexsort((total, -bottleneck))[0]
    return orders[best].tolist()


def ring(view: NetworkView, job: Job, *, seed: int | None = None, state: Any = None) -> Plan:
    """Ring all-reduce over the order of :func:`ring_order`.

    Notes
    -----
    With ring order ``o_0 .. o_{W-1}``, shard i (fraction 1/W) is rooted at ``o_i``; its
    reduce tree is the chain ``o_{i+1} -> o_{i+2} -> ... -> o_i`` (partial sums accumulate
    along the ring: reduce-scatter) and its broadcast tree the chain
    ``o_i -> o_{i+1} -> ... -> o_{i-1}`` (all-gather). Every ring edge carries
    ``2 (W-1)/W * M`` bytes, the classic ring volume. Missing links are relayed.
    """
    del seed, state, job
    order = ring_order(view)
    w = len(order)
    shards = []
    for i, root in enumerate(order):
        ring_i = [order[(i + k) % w] for k in range(w)]  # root first
        reduce_tree = {ring_i[k]: ring_i[(k + 1) % w] for k in range(1, w)}
        broadcast_tree = {ring_i[k]: ring_i[k - 1] for k in range(1, w)}
        edges = set(reduce_tree.items()) | {(p, c) for c, p in broadcast_tree.items()}
        routes = tuple(r for u, v in sorted(edges) if (r := relay_route(view, u, v)))
        shards.append(Shard(fraction=1 / w, root=root, reduce_tree=reduce_tree,
                            broadcast_tree=broadcast_tree, routes=routes))
    return Plan(version=1, planner="ring", sites=view.sites, shards=tuple(shards))
