"""An example netstorm plug-in: the ``widest-star`` planner.

Installed, it is found by name through the entry-point group ``netstorm.planners``::

    import netstorm
    netstorm.plan(view, job, "widest-star")
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from netstorm import Job, NetworkView, Plan, PlanError, Route, Shard

__all__ = ["widest_star"]


def _width(view: NetworkView, site: int) -> float:
    """Total usable out + in capacity of ``site`` (link sums clipped by its site caps)."""
    out = min(float(view.capacity[site].sum()), float(view.egress[site]))
    into = min(float(view.capacity[:, site].sum()), float(view.ingress[site]))
    return out + into


def _route(view: NetworkView, u: int, v: int) -> Route | None:
    """``None`` for a direct link, else the path minimising the sum of 1/capacity."""
    if view.capacity[u, v] > 0:
        return None
    try:
        path = nx.dijkstra_path(view.to_networkx(), u, v,
                                weight=lambda a, b, d: 1.0 / d["capacity"])
    except nx.NetworkXNoPath:
        raise PlanError(f"no path from {view.sites[u]} to {view.sites[v]}") from None
    return Route((u, v), (tuple(path),), (1.0,))


def widest_star(view: NetworkView, job: Job, *, seed: int | None = None,
                state: Any = None) -> Plan:
    """Plan one all-reduce as a single star at the widest worker.

    Parameters
    ----------
    view
        The network.
    job
        The gradient to all-reduce (unused: a star does not depend on its size).
    seed, state
        Accepted by the planner contract; the planner is deterministic and stateless.

    Returns
    -------
    Plan
        One shard holding the whole gradient.

    Notes
    -----
    The root ``r`` maximises ``min(sum_v c(r, v), egress_r) + min(sum_u c(u, r),
    ingress_r)``, ties to the lowest index. Every other worker ``w`` is a child of ``r`` in
    both trees, so ``r``'s links carry ``(W - 1) M`` bytes each way: this is the
    single-server parameter server with a bandwidth-aware choice of server.
    """
    del job, seed, state
    widths = np.array([_width(view, w) for w in view.workers])
    root = view.workers[int(np.argmax(widths))]  # argmax keeps the first of equals
    clients = [w for w in view.workers if w != root]
    star = {w: root for w in clients}
    routes = [r for w in clients for r in (_route(view, w, root), _route(view, root, w))
              if r is not None]
    shard = Shard(fraction=1.0, root=root, reduce_tree=star, broadcast_tree=star,
                  routes=tuple(routes))
    return Plan(version=1, planner="widest-star", sites=view.sites, shards=(shard,))
