"""`mlnet`: MLNET (HotCloud'15): bandwidth-oblivious aggregation trees, one per PS shard."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..job import Job
from ..plan import Plan, Route, Shard
from ..view import NetworkView
from ._routing import fewest_hops_path

__all__ = ["mlnet"]


def mlnet(view: NetworkView, job: Job, *, seed: int | None = None, state: Any = None,
          fanout: int = 2, servers: int | None = None) -> Plan:
    """One fixed fan-out aggregation tree per parameter-server shard.

    Parameters
    ----------
    fanout
        Children per tree node (MLNET's default 2).
    servers
        Number of shards/servers (default: every worker, like ``ps``).

    Notes
    -----
    Shard i (fraction 1/S) is rooted at server i. Its tree lays the other workers out in
    index order as a complete ``fanout``-ary tree under the root: the k-th site of the
    sequence ``[root, others...]`` has parent ``(k - 1) // fanout``. Partial sums aggregate at
    every tree node; the broadcast uses the same tree. The layout ignores bandwidth; tree
    edges without a direct link take the path with the fewest hops.
    """
    del seed, state, job
    if fanout < 1:
        raise InputError(f"planner mlnet: fanout must be >= 1, got {fanout}")
    workers = list(view.workers)
    count = len(workers) if servers is None else int(servers)
    if not 1 <= count <= len(workers):
        raise InputError(f"planner mlnet: servers must be in 1..{len(workers)}, got {servers}")
    shards = []
    for root in workers[:count]:
        order = [root] + [w for w in workers if w != root]
        tree = {order[k]: order[(k - 1) // fanout] for k in range(1, len(order))}
        edges = sorted(tree.items()) + sorted((p, c) for c, p in tree.items())
        routes = tuple(Route((u, v), (fewest_hops_path(view, u, v),), (1.0,))
                       for u, v in edges if view.capacity[u, v] <= 0)
        shards.append(Shard(1 / count, root, tree, tree, routes))
    return Plan(version=1, planner="mlnet", sites=view.sites, shards=tuple(shards))
