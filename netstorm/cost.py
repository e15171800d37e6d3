"""The cost model: a fluid, pipelined estimate of one all-reduce under a plan."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .job import Job
from .plan import Plan, Route, Shard
from .view import NetworkView

__all__ = ["Prediction", "link_loads", "predict"]


@dataclass(frozen=True, eq=False)
class Prediction:
    """The cost model's estimate for one all-reduce.

    Attributes
    ----------
    time_s
        Predicted all-reduce time: ``bandwidth_s + fill_s``.
    bandwidth_s
        The fluid term: the largest load/capacity over links and site caps.
    fill_s
        Latency and pipeline fill along the slowest shard's deepest chain.
    bottleneck
        What sets ``bandwidth_s``: ``"link a->b"``, ``"egress of a"`` or ``"ingress of a"``.
    link_bytes, egress_bytes, ingress_bytes
        Bytes the plan moves over each directed link and through each site cap.
    """

    time_s: float
    bandwidth_s: float
    fill_s: float
    bottleneck: str
    link_bytes: np.ndarray
    egress_bytes: np.ndarray
    ingress_bytes: np.ndarray


def _tree_edges(shard: Shard) -> list[tuple[int, int]]:
    return list(shard.reduce_edges()) + list(shard.broadcast_edges())


def link_loads(plan: Plan, view: NetworkView, job: Job) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """Bytes per iteration over every directed link and through every site's egress/ingress.

    Every tree edge of a shard carries the shard's bytes once (one partial sum up, one copy
    down); a multipath route splits them by weight, and every hop of a path carries its part
    (relays forward, so they count toward their own egress and ingress).
    """
    n = view.n
    links = np.zeros((n, n))
    total = float(job.gradient_bytes)
    for shard in plan.shards:
        nbytes = shard.fraction * total
        for u, v in _tree_edges(shard):
            route = shard.route(u, v)
            for path, weight in zip(route.paths, route.weights, strict=True):
                hops = np.asarray(path)
                links[hops[:-1], hops[1:]] += nbytes * weight
    return links, links.sum(axis=1), links.sum(axis=0)


def _hop_rate(view: NetworkView, a: int, b: int) -> float:
    return float(min(view.capacity[a, b], view.egress[a], view.ingress[b]))


def _edge_chain(view: NetworkView, route: Route, chunk: float) -> tuple[float, float, float]:
    """(latency, store-and-forward time, largest hop time) of one chunk over the slowest path."""
    best = (0.0, 0.0, 0.0)
    for path in route.paths:
        hops = list(itertools.pairwise(path))
        lat = sum(float(view.latency[a, b]) for a, b in hops)
        times = [chunk / _hop_rate(view, a, b) for a, b in hops]
        cand = (lat, sum(times), max(times))
        if cand[0] + cand[1] > best[0] + best[1]:
            best = cand
    return best


def _deepest(tree: dict[int, int], root: int, cost: dict[tuple[int, int], tuple[float, ...]],
             upward: bool) -> tuple[float, float, float]:
    """Largest (latency + transfer) chain from any leaf to the root (or root to any leaf)."""
    memo: dict[int, tuple[float, float, float]] = {root: (0.0, 0.0, 0.0)}

    def chain(site: int) -> tuple[float, float, float]:
        if site not in memo:
            parent = tree[site]
            lat, xfer, hmax = cost[(site, parent) if upward else (parent, site)]
            plat, pxfer, phmax = chain(parent)
            memo[site] = (lat + plat, xfer + pxfer, max(hmax, phmax))
        return memo[site]

    return max((chain(s) for s in tree), key=lambda c: c[0] + c[1], default=(0.0, 0.0, 0.0))


def _fill(shard: Shard, view: NetworkView, job: Job) -> float:
    chunk = min(float(job.chunk_bytes), shard.fraction * job.gradient_bytes)
    cost = {e: _edge_chain(view, shard.route(*e), chunk) for e in _tree_edges(shard)}
    up = _deepest(dict(shard.reduce_tree), shard.root, cost, upward=True)
    down = _deepest(dict(shard.broadcast_tree), shard.root, cost, upward=False)
    return up[0] + down[0] + up[1] + down[1] - max(up[2], down[2])


def predict(plan: Plan, view: NetworkView, job: Job) -> Prediction:
    """Predict the all-reduce time of ``plan`` on ``view`` for ``job``.

    Notes
    -----
    Fluid pipelined model. Let ``L_e`` be the bytes routed over link e and ``E_u``/``I_u``
    the bytes through site u's egress/ingress (:func:`link_loads`). The bandwidth term is

    ``T_bw = max(max_e L_e / c_e, max_u E_u / egress_u, max_u I_u / ingress_u)``.

    Chunks pipeline, so the slowest hop sets the pace and every other hop of the deepest
    chain adds one chunk's store-and-forward time; latencies add along the chain. For shard s
    with chunk ``k_s = min(chunk_bytes, f_s M)`` and its deepest leaf-to-root reduce chain
    plus root-to-leaf broadcast chain (every hop of every relay path counted, slowest path of
    a multipath edge), ``fill_s = sum latency + sum k_s / rate_hop - max_hop k_s / rate_hop``,
    where ``rate_hop = min(c_e, egress_a, ingress_b)``. The prediction is
    ``T = T_bw + max_s fill_s``. On a chain of equal links this is exactly
    ``(K + hops - 1) * k / c`` for K chunks.
    """
    links, egress, ingress = link_loads(plan, view, job)
    with np.errstate(divide="ignore", invalid="ignore"):
        link_t = np.where(links > 0, links / np.where(view.capacity > 0, view.capacity, 1), 0)
        out_t = egress / view.egress
        in_t = ingress / view.ingress
    candidates = [(float(link_t.max(initial=0)), "link"), (float(out_t.max(initial=0)), "egress"),
                  (float(in_t.max(initial=0)), "ingress")]
    bandwidth, kind = max(candidates, key=lambda c: c[0])
    if kind == "link":
        a, b = np.unravel_index(int(np.argmax(link_t)), link_t.shape)
        where = f"link {view.sites[a]}->{view.sites[b]}"
    else:
        arr = out_t if kind == "egress" else in_t
        where = f"{kind} of {view.sites[int(np.argmax(arr))]}"
    fill = max((_fill(s, view, job) for s in plan.shards), default=0.0)
    return Prediction(time_s=bandwidth + fill, bandwidth_s=bandwidth, fill_s=fill,
                      bottleneck=where if bandwidth > 0 else "none", link_bytes=links,
                      egress_bytes=egress, ingress_bytes=ingress)
