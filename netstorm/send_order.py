"""Send order: which waiting chunk a link serves next.

Every step of a compiled program has a priority; a link's queue serves the smallest first
(:attr:`netstorm.schedule.Step.priority`). A plan names its order in ``Plan.send_order``:

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

import itertools
from collections.abc import Mapping

from .job import Job
from .plan import Plan, Route, Shard
from .view import NetworkView

__all__ = ["SEND_ORDERS", "Tails", "slack_terms"]

#: The send orders a plan may name.
SEND_ORDERS = ("progress", "slack")

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
    One chunk crosses a tree edge in its route's primary path time, ``sum(chunk / rate +
    latency)`` over its hops. A reduce step's tail is its path to the root plus the deepest
    broadcast path from the root; a root or broadcast step's tail is the deepest broadcast
    path below its site.
    """
    from .cost import link_loads

    job = plan.job_for(job)
    links, egress, ingress = link_loads(plan, view, job)
    loads = [links[view.capacity > 0] / view.capacity[view.capacity > 0],
             egress / view.egress, ingress / view.ingress]
    span = max((float(part.max()) for part in loads if part.size), default=0.0)
    tails: dict[tuple[int, int, str], float] = {}
    for index, shard in enumerate(plan.shards):
        chunk = min(float(job.chunk_bytes), shard.fraction * job.gradient_bytes)
        below = _depths(shard, view, chunk)
        to_root: dict[int, float] = {shard.root: 0.0}
        order = [shard.root]
        kids = _children(shard.reduce_tree)
        for site in order:
            for child in kids.get(site, ()):
                to_root[child] = _hop(view, shard.route(child, site), chunk) + to_root[site]
                order.append(child)
        for site, seconds in to_root.items():
            if site != shard.root:
                tails[(index, site, "reduce")] = seconds + below[shard.root]
        tails[(index, shard.root, "root")] = below[shard.root]
        for site in shard.broadcast_tree:
            tails[(index, site, "broadcast")] = below[site]
    return span, tails


def _children(tree: Mapping[int, int]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for child, parent in tree.items():
        kids.setdefault(parent, []).append(child)
    return kids


def _hop(view: NetworkView, route: Route, chunk: float) -> float:
    return sum(chunk / min(float(view.capacity[a, b]), float(view.egress[a]),
                           float(view.ingress[b])) + float(view.latency[a, b])
               for a, b in itertools.pairwise(route.paths[0]))


def _depths(shard: Shard, view: NetworkView, chunk: float) -> dict[int, float]:
    """Deepest broadcast path time below every site of the shard's broadcast tree."""
    kids = _children(shard.broadcast_tree)
    order = [shard.root]
    for site in order:
        order.extend(kids.get(site, ()))
    below: dict[int, float] = {}
    for site in reversed(order):
        below[site] = max((_hop(view, shard.route(site, c), chunk) + below[c]
                           for c in kids.get(site, ())), default=0.0)
    return below
