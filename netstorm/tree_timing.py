"""First-chunk timing of many direct-link tree shards at once (numpy, no per-site Python).

The cost model (:func:`netstorm.predict`) times every shard's first chunk through its
reduce and broadcast trees. Most shards use direct links only (every planner but the
paper's netstorm with multipath), and for those this module does the work for all shards
of a plan together; :mod:`netstorm.cost` keeps the general per-shard walk for routed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .plan import Shard
from .view import NetworkView

__all__ = ["Crossings", "chain_fills", "direct_windows", "hop_rates", "parent_arrays",
           "path_sums"]


def hop_rates(view: NetworkView) -> np.ndarray:
    """Per link, ``min(capacity, egress of its tail, ingress of its head)`` in B/s."""
    return np.minimum(np.minimum(view.capacity, view.egress[:, None]), view.ingress[None, :])


def parent_arrays(shards: Sequence[Shard], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(reduce, broadcast)`` parent arrays, one row per shard: a site's parent, ``-1`` at
    the root and ``-2`` for sites outside the tree (as :class:`netstorm.packing.TreePair`)."""
    up = np.full((len(shards), n), -2, dtype=np.int64)
    down = up.copy()
    for k, shard in enumerate(shards):
        for arr, tree in ((up, shard.reduce_tree), (down, shard.broadcast_tree)):
            if tree:
                arr[k, np.fromiter(tree.keys(), np.int64, len(tree))] = np.fromiter(
                    tree.values(), np.int64, len(tree))
            arr[k, shard.root] = -1
    return up, down


def path_sums(parent: np.ndarray, weight: np.ndarray,
              combine: np.ufunc = np.add) -> np.ndarray:
    """Per row, ``weight`` combined (summed, or e.g. ``np.maximum``) over each site's path to
    its root: pointer jumping, O(K N log N). ``weight`` must be 0 at roots and outside sites
    (the identity of ``combine`` there)."""
    k, n = parent.shape
    rows = np.arange(k)[:, None]
    hop = np.where(parent >= 0, parent, np.arange(n)[None, :])  # roots and outsiders: self
    total = weight.copy()
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2))))) + 1):
        total = combine(total, total[rows, hop])
        hop = hop[rows, hop]
    return total


def _hops(parent: np.ndarray, rate: np.ndarray, latency: np.ndarray, chunk: np.ndarray | float,
          upward: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (tree, site): whether the site has a tree edge, and that edge's chunk transfer time
    and latency (reduce: site -> parent; broadcast: parent -> site); 0 where no edge."""
    edge = parent >= 0
    sites, other = np.arange(parent.shape[1])[None, :], np.maximum(parent, 0)
    a, b = (sites, other) if upward else (other, sites)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(edge, chunk / rate[a, b], 0.0)
    return edge, x, np.where(edge, latency[a, b], 0.0)


def chain_fills(up: np.ndarray, down: np.ndarray, rate: np.ndarray, latency: np.ndarray,
                chunk: float) -> np.ndarray:
    """Per tree pair (rows of the parent arrays ``up``/``down``), one chunk's latency plus
    store-and-forward time along its deepest reduce chain and its deepest broadcast chain,
    less the slowest hop on them: :func:`netstorm.cost.shard_fill` for direct-link trees."""
    chains = []
    for parent, upward in ((up, True), (down, False)):
        _, x, lat = _hops(parent, rate, latency, chunk, upward)
        lat, top, x = path_sums(parent, lat), path_sums(parent, x, np.maximum), path_sums(
            parent, x)
        deepest = np.argmax(lat + x, axis=1)[:, None]
        rows = np.arange(len(parent))[:, None]
        chains.append((lat[rows, deepest][:, 0], x[rows, deepest][:, 0],
                       top[rows, deepest][:, 0]))
    (ul, ux, uh), (dl, dx, dh) = chains
    return ul + dl + ux + dx - np.maximum(uh, dh)


def _levels(parent: np.ndarray) -> np.ndarray:
    return path_sums(parent, (parent >= 0).astype(float)).astype(np.int64)


def _subtree_max(parent: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Per site, the largest ``out[c] + edge[c]`` over its children c (0 for leaves), deepest
    level first."""
    k, n = parent.shape
    out = np.zeros(k * n)
    level = _levels(parent)
    flat_parent = (np.arange(k)[:, None] * n + np.maximum(parent, 0)).ravel()
    for depth in range(int(level.max(initial=0)), 0, -1):
        at = (level == depth).ravel() & (parent >= 0).ravel()
        np.maximum.at(out, flat_parent[at], out[at] + edge.ravel()[at])
    return out.reshape(k, n)


@dataclass(frozen=True)
class Crossings:
    """Every (shard, tree edge) crossing of a link: ``key`` (``a * n + b``), ``head`` (when the
    first chunk can reach the link), ``nbytes`` and ``tail`` (least time from leaving the
    link to the end), as parallel arrays."""

    key: np.ndarray
    head: np.ndarray
    nbytes: np.ndarray
    tail: np.ndarray

    @classmethod
    def of_rows(cls, rows: Sequence[tuple[int, float, float, float]]) -> Crossings:
        """From ``(key, head, bytes, tail)`` rows."""
        table = np.array(rows, dtype=float).reshape(-1, 4)
        return cls(table[:, 0].astype(np.int64), table[:, 1], table[:, 2], table[:, 3])

    @classmethod
    def concat(cls, parts: Sequence[Crossings]) -> Crossings:
        """All crossings of ``parts``, in order."""
        return cls(*(np.concatenate([getattr(c, f) for c in parts])
                     for f in ("key", "head", "nbytes", "tail")))


def direct_windows(shards: Sequence[Shard], rate: np.ndarray, latency: np.ndarray,
                   chunk_bytes: float, gradient_bytes: float) -> tuple[Crossings, np.ndarray]:
    """The crossings of direct-link shards, and each shard's own pipeline time.

    Parameters
    ----------
    rate
        Per link, ``min(capacity, egress of the tail, ingress of the head)`` in B/s.
    latency
        Per link, seconds.

    Notes
    -----
    With ``t(e) = chunk / rate(e) + latency(e)`` one chunk's time over tree edge e: a site's
    partial sum of the first chunk is ready when its slowest child's is plus that child's
    edge (``ready``); the root holds the first chunk's sum at ``ready[root]``, and a site
    gets its mean ``got = ready[root]`` plus the broadcast path's edges; ``depth`` is the
    time from a site to the deepest leaf below it in the broadcast tree. A reduce crossing
    c -> p has head ``ready[c]`` and tail ``latency + to_root[p] + depth[root]``, a broadcast
    crossing p -> c head ``got[p]`` and tail ``latency + depth[c]``. A shard's pipeline time
    is ``ready[root] + depth[root]`` plus the rest of its chunks through its slowest hop.
    The same model as the per-shard walk in :mod:`netstorm.cost`.
    """
    k_count, n = len(shards), len(rate)
    up, down = parent_arrays(shards, n)
    size = np.array([s.fraction for s in shards]) * gradient_bytes
    chunk = np.minimum(float(chunk_bytes), size)[:, None]
    rows = np.arange(k_count)
    roots = np.array([s.root for s in shards], dtype=np.int64)
    up_edge, up_x, up_lat = _hops(up, rate, latency, chunk, True)
    dn_edge, dn_x, dn_lat = _hops(down, rate, latency, chunk, False)
    ready = _subtree_max(up, up_x + up_lat)
    to_root = path_sums(up, up_x + up_lat)
    depth = _subtree_max(down, dn_x + dn_lat)
    got = ready[rows, roots][:, None] + path_sums(down, dn_x + dn_lat)
    after = depth[rows, roots][:, None]
    ku, cu = np.nonzero(up_edge)
    kd, cd = np.nonzero(dn_edge)
    pu, pd = up[ku, cu], down[kd, cd]
    crossings = Crossings(
        key=np.concatenate([cu * n + pu, pd * n + cd]),
        head=np.concatenate([ready[ku, cu], got[kd, pd]]),
        nbytes=np.concatenate([size[ku], size[kd]]),
        tail=np.concatenate([up_lat[ku, cu] + to_root[ku, pu] + after[ku, 0],
                             dn_lat[kd, cd] + depth[kd, cd]]))
    slowest = np.maximum(up_x.max(axis=1, initial=0.0), dn_x.max(axis=1, initial=0.0))
    critical = ready[rows, roots] + after[:, 0]
    chunk = chunk[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(chunk > 0, (size - chunk) / chunk * slowest, 0.0)
    return crossings, critical + rest
