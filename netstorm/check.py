"""`check_plan`: the invariants every plan must satisfy on its view (DESIGN 3)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from .errors import PlanError
from .job import Job
from .plan import Plan, Shard
from .view import NetworkView

__all__ = ["check_plan"]

_TOL = 1e-6  # fractions are floats; planners normalise, JSON round-trips exactly


def _check_tree(tree: Mapping[int, int], shard: Shard, view: NetworkView, what: str) -> None:
    n, root = view.n, shard.root
    if root in tree:
        raise PlanError(f"{what}: the root {root} has a parent")
    for child, parent in tree.items():
        if not (0 <= child < n and 0 <= parent < n):
            raise PlanError(f"{what}: edge {child}->{parent} names a site outside 0..{n - 1}")
        if child == parent:
            raise PlanError(f"{what}: site {child} is its own parent")
    missing = [w for w in view.workers if w != root and w not in tree]
    if missing:
        raise PlanError(f"{what}: workers {missing} are not in the tree")
    for start in tree:  # every site must reach the root without a cycle
        seen, node = {start}, start
        while node != root:
            if node not in tree:
                raise PlanError(f"{what}: site {node} has no parent and is not the root {root}")
            node = tree[node]
            if node in seen:
                raise PlanError(f"{what}: cycle through site {node}")
            seen.add(node)
    workers = set(view.workers)
    parents = set(tree.values())
    for site in tree:
        if site not in workers and site not in parents:
            raise PlanError(f"{what}: relay-only site {site} is a leaf (it carries nothing)")


def _check_routes(shard: Shard, view: NetworkView, what: str) -> None:
    tree_edges = set(shard.reduce_edges()) | set(shard.broadcast_edges())
    seen = set()
    for route in shard.routes:
        u, v = route.edge
        if route.edge in seen:
            raise PlanError(f"{what}: two routes for edge {u}->{v}")
        seen.add(route.edge)
        if route.edge not in tree_edges:
            raise PlanError(f"{what}: route for {u}->{v}, which is not a tree edge")
        if any(w <= 0 for w in route.weights) or abs(sum(route.weights) - 1) > 1e-6:
            raise PlanError(f"{what}: route {u}->{v} weights {route.weights} must be > 0 "
                            f"and sum to 1")
        for path in route.paths:
            if len(path) < 2 or path[0] != u or path[-1] != v:
                raise PlanError(f"{what}: path {list(path)} does not lead from {u} to {v}")
            if len(set(path)) != len(path):
                raise PlanError(f"{what}: path {list(path)} visits a site twice")
            for a, b in itertools.pairwise(path):
                if not (0 <= a < view.n and 0 <= b < view.n) or view.capacity[a, b] <= 0:
                    raise PlanError(f"{what}: path {list(path)} uses {a}->{b}, "
                                    f"which is not a link")
        if len(set(route.paths)) != len(route.paths):
            raise PlanError(f"{what}: route {u}->{v} lists a path twice")
    for u, v in tree_edges - seen:
        if view.capacity[u, v] <= 0:
            raise PlanError(f"{what}: tree edge {u}->{v} has no direct link and no route")


def check_plan(plan: Plan, view: NetworkView, job: Job | None = None) -> None:
    """Raise :class:`PlanError` unless ``plan`` is a valid all-reduce plan on ``view``.

    Invariants
    ----------
    - the plan's sites are the view's sites;
    - shard fractions are > 0 and sum to 1;
    - every worker is in every shard's reduce and broadcast trees exactly once (the root has
      no parent); trees are acyclic and rooted at the shard's root; relay-only sites appear
      only as interior nodes;
    - every route is for a tree edge ``u -> v``, each path a simple path over existing links
      from u to v, weights > 0 summing to 1; a tree edge without a route has a direct link.

    ``job`` is accepted for planners whose validity depends on it; the current invariants
    do not.
    """
    del job
    if tuple(plan.sites) != tuple(view.sites):
        raise PlanError(f"plan sites {list(plan.sites)} differ from the view's "
                        f"{list(view.sites)}")
    if not plan.shards:
        raise PlanError("plan has no shards")
    total = 0.0
    for i, shard in enumerate(plan.shards):
        what = f"shard {i} (root {shard.root})"
        if not (shard.fraction > 0 and math.isfinite(shard.fraction)):
            raise PlanError(f"{what}: fraction {shard.fraction} must be > 0")
        if not 0 <= shard.root < view.n:
            raise PlanError(f"{what}: root outside 0..{view.n - 1}")
        total += shard.fraction
        _check_tree(shard.reduce_tree, shard, view, f"{what} reduce_tree")
        _check_tree(shard.broadcast_tree, shard, view, f"{what} broadcast_tree")
        _check_routes(shard, view, what)
    if abs(total - 1.0) > _TOL:
        raise PlanError(f"shard fractions sum to {total!r}, not 1")
