"""Shortest relay paths shared by the planners (private)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from ..errors import PlanError
from ..plan import Route
from ..view import NetworkView

__all__ = ["cheapest_path", "fewest_hops_path", "in_tree", "inverse_capacity", "out_tree",
           "relay_route", "route_capacity"]


def _predecessors(view: NetworkView) -> np.ndarray:
    """All-pairs predecessors of the minimum store-and-forward-time paths (cost 1/capacity)."""
    cached = view._graph_cache.get("cheapest_pred")
    if cached is None:
        _, cached = dijkstra(csr_array(inverse_capacity(view)), directed=True,
                             return_predecessors=True)
        view._graph_cache["cheapest_pred"] = cached
    return cached


def cheapest_path(view: NetworkView, u: int, v: int) -> tuple[int, ...]:
    """The path from u to v that minimises the sum of 1/capacity over its hops.

    Raises
    ------
    PlanError
        If v cannot be reached from u.
    """
    pred = _predecessors(view)
    path = [v]
    while path[-1] != u:
        prev = int(pred[u, path[-1]])
        if prev < 0:
            raise PlanError(f"no path from {view.sites[u]} to {view.sites[v]}")
        path.append(prev)
    return tuple(reversed(path))


def relay_route(view: NetworkView, u: int, v: int) -> Route | None:
    """``None`` when u -> v is a direct link, else a single-path route over the cheapest
    relay path."""
    if view.capacity[u, v] > 0:
        return None
    return Route((u, v), (cheapest_path(view, u, v),), (1.0,))


def route_capacity(view: NetworkView, u: int, v: int) -> float:
    """Bottleneck capacity of the direct link, or of the cheapest relay path."""
    if view.capacity[u, v] > 0:
        return float(view.capacity[u, v])
    path = cheapest_path(view, u, v)
    return float(min(view.capacity[a, b] for a, b in itertools.pairwise(path)))


def inverse_capacity(view: NetworkView) -> np.ndarray:
    """1/capacity on links, 0 (= no edge for csgraph) elsewhere."""
    with np.errstate(divide="ignore"):
        return np.where(view.capacity > 0, 1.0 / np.where(view.capacity > 0, view.capacity, 1),
                        0.0)


def in_tree(view: NetworkView, root: int) -> np.ndarray:
    """Next hop of every site on its cheapest path *to* ``root`` (``-1`` at the root and
    at sites that cannot reach it): a consistent shortest-path in-tree."""
    _, pred = dijkstra(csr_array(inverse_capacity(view).T), directed=True, indices=root,
                       return_predecessors=True)
    pred = pred.astype(np.int64)
    pred[pred < 0] = -1
    return pred


def out_tree(view: NetworkView, root: int) -> np.ndarray:
    """Predecessor of every site on the cheapest path *from* ``root`` (an out-tree)."""
    _, pred = dijkstra(csr_array(inverse_capacity(view)), directed=True, indices=root,
                       return_predecessors=True)
    pred = pred.astype(np.int64)
    pred[pred < 0] = -1
    return pred


def fewest_hops_path(view: NetworkView, u: int, v: int) -> tuple[int, ...]:
    """A path from u to v with the fewest hops (ties: lowest site indices, by BFS order)."""
    prev = {u: u}
    frontier = [u]
    while frontier and v not in prev:
        nxt = []
        for a in frontier:
            for b in np.flatnonzero(view.capacity[a] > 0).tolist():
                if b not in prev:
                    prev[b] = a
                    nxt.append(b)
        frontier = nxt
    if v not in prev:
        raise PlanError(f"no path from {view.sites[u]} to {view.sites[v]}")
    path = [v]
    while path[-1] != u:
        path.append(prev[path[-1]])
    return tuple(reversed(path))
