"""`tsengine`: TSEngine (TNSM'21): trees re-drawn every iteration from measured throughput."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..job import Job
from ..plan import Plan, Shard
from ..view import NetworkView
from ._routing import relay_route, route_capacity

__all__ = ["TSEngineState", "tsengine"]


@dataclass
class TSEngineState:
    """What TSEngine carries between iterations: its random stream and plan count.

    Measured throughput itself comes from the view: a link counts as *known* when the
    view's ``confidence`` for it is > 0 (every link is known when the view has none).
    """

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    plans: int = 0


def _known(view: NetworkView) -> np.ndarray:
    if view.confidence is None:
        return view.capacity > 0
    return (view.confidence > 0) & (view.capacity > 0)


def _broadcast(view: NetworkView, server: int, known: np.ndarray, rng: np.random.Generator,
               max_greed: float) -> dict[int, int]:
    holders, unserved = [server], [w for w in view.workers if w != server]
    tree: dict[int, int] = {}
    while unserved:
        for holder in list(holders):  # every holder sends to one new site per round
            if not unserved:
                break
            seen = [v for v in unserved if known[holder, v]]
            unseen = [v for v in unserved if not known[holder, v]]
            greedy = len(seen) / len(unserved)
            if seen and (not unseen or rng.random() < min(greedy, max_greed)):
                pick = max(seen, key=lambda v: (route_capacity(view, holder, v), -v))
            else:
                pick = unseen[int(rng.integers(len(unseen)))]
            tree[pick] = holder
            unserved.remove(pick)
            holders.append(pick)
    return tree


def _aggregate(view: NetworkView, server: int, known: np.ndarray,
               rng: np.random.Generator) -> dict[int, int]:
    ready = [int(w) for w in rng.permutation(list(view.workers))]
    waiting: list[int] = []
    tree: dict[int, int] = {}

    def rate(u: int, v: int) -> float:
        return route_capacity(view, u, v) if known[u, v] else 0.0

    while ready or len(waiting) > 1:
        site = ready.pop(0) if ready else waiting.pop(0)
        if not waiting:
            waiting.append(site)
            continue
        other = waiting.pop(0)
        if site == server or (other != server and rate(other, site) > rate(site, other)):
            sender, receiver = other, site
        else:
            sender, receiver = site, other
        tree[sender] = receiver
        (ready if ready else waiting).append(receiver)
    return tree


def tsengine(view: NetworkView, job: Job, *, seed: int | None = None,
             state: TSEngineState | None = None, server: int | str | None = None,
             max_greed: float = 0.9) -> Plan:
    """TSEngine's scheduling as one shard on one server.

    Parameters
    ----------
    state
        A :class:`TSEngineState` carried across iterations (re-plan every iteration).
        Without one, a fresh state seeded with ``seed`` is used.
    server
        The parameter server site (default: the first worker, site 0 when it is one).
    max_greed
        Cap on the probability of exploiting known throughput.

    Notes
    -----
    Broadcast: in rounds, every site holding the model picks its next receiver greedily
    (highest known throughput to an unserved site) with probability
    ``min(known / (known + unknown), max_greed)``, otherwise an unmeasured site at random.
    Aggregation: workers become ready in a random order; each newly ready site merges with a
    waiting partial sum, the pair's direction given by the higher known throughput (toward
    the server whenever it is in the pair), and the merged sum becomes ready again, until
    the server holds the total. Tree edges without a direct link are relayed.
    """
    del job
    if not 0 <= max_greed <= 1:
        raise InputError(f"planner tsengine: max_greed must be in [0, 1], got {max_greed}")
    server = view.workers[0] if server is None else view.index(server)
    if server not in view.workers:
        raise InputError(f"planner tsengine: server {view.sites[server]} must be a worker site")
    state = state if state is not None else TSEngineState(np.random.default_rng(seed))
    state.plans += 1
    known = _known(view)
    down = _broadcast(view, server, known, state.rng, max_greed)
    up = _aggregate(view, server, known, state.rng)
    edges = sorted(set(up.items()) | {(p, c) for c, p in down.items()})  # an edge may be both
    routes = tuple(r for u, v in edges if (r := relay_route(view, u, v)))
    shard = Shard(1.0, server, up, down, routes)
    return Plan(version=state.plans, planner="tsengine", sites=view.sites, shards=(shard,))
