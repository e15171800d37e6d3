"""`ps`: the MXNet parameter server baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..job import Job
from ..plan import Plan, Shard
from ..view import NetworkView
from ._routing import relay_route

__all__ = ["ps"]


def ps(view: NetworkView, job: Job, *, seed: int | None = None, state: Any = None,
       servers: int | Sequence[int] | None = None) -> Plan:
    """Parameter server: S equal shards, each pushed whole to its server and pulled back.

    Parameters
    ----------
    servers
        How many servers (the first S workers by index) or which sites; default every
        worker, as in the NetStorm paper's 9-server baseline. ``servers=1`` is the
        single-server PS.

    Notes
    -----
    Each shard is a star: every worker sends its whole slice straight to the server (relayed
    over the cheapest path where there is no direct link, relays do not aggregate) and
    receives the sum back the same way. Link loads are therefore
    ``sum over workers of f M`` on the server's links, which is why PS is bandwidth-bound on
    the server side.
    """
    del seed, state, job
    if servers is None:
        chosen: list[int] = list(view.workers)
    elif isinstance(servers, int):
        if not 1 <= servers <= len(view.workers):
            raise InputError(f"planner ps: servers must be in 1..{len(view.workers)}, "
                             f"got {servers}")
        chosen = list(view.workers[:servers])
    else:
        chosen = [view.index(s) for s in servers]
        if not chosen or len(set(chosen)) != len(chosen):
            raise InputError(f"planner ps: servers must be distinct sites, got {list(servers)}")
    shards = []
    for server in chosen:
        clients = [w for w in view.workers if w != server]
        routes = [r for w in clients for r in (relay_route(view, w, server),
                                               relay_route(view, server, w)) if r is not None]
        star = {w: server for w in clients}
        shards.append(Shard(fraction=1 / len(chosen), root=server, reduce_tree=star,
                            broadcast_tree=star, routes=tuple(routes)))
    return Plan(version=1, planner="ps", sites=view.sites, shards=tuple(shards))
