"""Send order: which waiting chunk a link serves next.

Every step of a compiled program has a priority; a link's queue serves the smallest first
(:attr:`netstorm.program.Step.priority`). A plan names its order in ``Plan.send_order``:

- ``"progress"`` (default, needs no view): a chunk's progress through its shard, so every
  shard moves at its share of every link.
- ``"slack"``: progress in seconds of the plan's bandwidth term, less the chunk's *tail*,
  the least time from this send to the end of the all-reduce along its shard's trees. A
  chunk that still has far to go (a reduce far from its root, a broadcast with a deep
  subtree) goes ahead of one about to finish: least slack first, the list-scheduling form
  of the longest-tail-first rule the cost model assumes for every link
  (:func:`netstorm.predict`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .cost import edge_time, link_loads
from .job import Job
from .plan import SEND_ORDERS, Plan, Shard, children
from .view import NetworkView

__all__ = ["SEND_ORDERS", "Tails", "slack_terms"]

#: ``(shard index, site, step kind) -> seconds``.
Tails = Mapping[tuple[int, int, str], float]


def slack_terms(plan: Plan, view: NetworkView, job: Job) -> tuple[float, Tails]:
    """The bandwidth term of ``plan`` and the tail of every reduce, root and broadcast step.

    Parameters
    ----------
    plan, view, job
        The plan, the network it is scheduled on and the job (the plan's chunk applies).

    Returns
    -------
    tuple
        ``(span, tails)``: ``span`` is the largest load / capacity over links and site caps
        (the all-reduce's bandwidth time, in which every shard's chunks progress), and
        ``tails[(shard, site, kind)]`` the time from the step's sends to the end.

    Notes
    -----
    One chunk crosses a tree edge in :func:`netstorm.cost.edge_time` (latency plus
    store-and-forward over its route). A reduce step's tail is its path to the root plus
    the deepest broadcast path from the root; a root or broadcast step's tail is the
    deepest broadcast path below its site.
    """
    job = plan.job_for(job)
    links, egress, ingress = link_loads(plan, view, job)
    used = view.capacity > 0
    span = float(max((links[used] / view.capacity[used]).max(initial=0.0),
                     (egress / view.egress).max(initial=0.0),
                     (ingress / view.ingress).max(initial=0.0)))
    tails: dict[tuple[int, int, str], float] = {}
    for index, shard in enumerate(plan.shards):
        chunk = min(float(job.chunk_bytes), shard.fraction * job.gradient_bytes)

        def hop(u: int, v: int, shard: Shard = shard, chunk: float = chunk) -> float:
            return edge_time(view, shard.route(u, v), chunk)

        below = _depths(shard, hop)
        to_root = {shard.root: 0.0}
        order = [shard.root]
        kids = children(shard.reduce_tree)
        for site in order:
            for child in kids.get(site, ()):
                to_root[child] = hop(child, site) + to_root[site]
                order.append(child)
                tails[(index, child, "reduce")] = to_root[child] + below[shard.root]
        tails[(index, shard.root, "root")] = below[shard.root]
        for site in shard.broadcast_tree:
            tails[(index, site, "broadcast")] = below[site]
    return span, tails


def _depths(shard: Shard, hop: Callable[[int, int], float]) -> dict[int, float]:
    """Deepest broadcast path time below every site of the shard's broadcast tree."""
    kids = children(shard.broadcast_tree)
    order = [shard.root]
    for site in order:
        order.extend(kids.get(site, ()))
    below: dict[int, float] = {}
    for site in reversed(order):
        below[site] = max((hop(site, c) + below[c] for c in kids.get(site, ())), default=0.0)
    return below
