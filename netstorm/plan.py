"""`Plan`, `Shard` and `Route`: how one iteration's gradient travels, as plain values.

The JSON shape (DESIGN 3) is the contract between planners, the simulator, the runtime and
other tools::

    {"version": 3, "planner": "treepack", "sites": ["a", "b"],
     "shards": [{"fraction": 0.25, "root": 2, "reduce_tree": {"0": 2, "1": 0},
                 "broadcast_tree": {"0": 2, "1": 0},
                 "routes": [{"edge": [1, 0], "paths": [[1, 0], [1, 3, 0]],
                             "weights": [0.7, 0.3]}]}],
     "predicted_time_s": 1.9}

A plan that picks its own pipelining chunk adds ``"chunk_bytes": 500000`` (absent: the
job's chunk), one scheduled least-slack-first ``"send_order": "slack"`` (absent:
``"progress"``), and one whose multipath chunks pick their path when they are sent (the
NetStorm paper's queue rule) ``"route_rule": {"aux_queue": 1, "primary_busy": 2}`` (absent:
chunks are dealt to paths by weight when the plan is compiled). A route's first path is its
primary, the others are auxiliary. Files written before a key existed load unchanged.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import PlanError

if TYPE_CHECKING:
    from .job import Job

__all__ = ["SEND_ORDERS", "Plan", "QueueRule", "Route", "Shard", "children"]

#: The send orders a plan may name (:mod:`netstorm.send_order`).
SEND_ORDERS = ("progress", "slack")

Edge = tuple[int, int]
Path = tuple[int, ...]


@dataclass(frozen=True)
class QueueRule:
    """Pick a multipath chunk's path when it is sent, from the send queues (NetStorm's rule).

    Parameters
    ----------
    aux_queue
        An auxiliary path is taken only while its first hop holds fewer chunks than this.
    primary_busy
        ... and only while the primary's first hop holds more than this.

    Notes
    -----
    A chunk goes over the primary path unless the primary's first hop holds more than
    ``primary_busy`` chunks (queued or in flight); then it takes the first auxiliary path
    whose first hop holds fewer than ``aux_queue``, else it queues for the primary. While it
    waits there, the rule is applied again whenever an auxiliary path's first hop drains:
    the waiting chunk moves over if the primary still holds more than ``primary_busy``.
    Without that second look a chunk could only take an auxiliary path at the instant it
    was sent, and a burst (a whole shard ready when compute ends) would pile onto the
    primary while the auxiliary paths sit idle. In steady state an auxiliary path then
    carries what capacity the plan leaves spare on it, which is what the route's weights
    estimate (the cost model's split).
    """

    aux_queue: int = 1
    primary_busy: int = 2

    def __post_init__(self) -> None:
        for name in ("aux_queue", "primary_busy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise PlanError(f"route_rule {name} must be a whole number >= 0, "
                                 f"got {value!r}")
            object.__setattr__(self, name, int(value))

    def divert(self, primary_depth: int, aux_depth: int) -> bool:
        """Whether a chunk bound for the primary should take this auxiliary path now, given
        the chunks queued or in flight on each one's first hop."""
        return primary_depth > self.primary_busy and aux_depth < self.aux_queue

    def choose(self, first_hops: tuple[int, ...], depth: Callable[[int], int]) -> int:
        """Index of the path to send on, given each candidate path's first hop (primary
        first) and ``depth(next_hop)``: chunks queued or in flight toward that hop."""
        if len(first_hops) == 1:
            return 0
        primary = depth(first_hops[0])
        if primary <= self.primary_busy:
            return 0
        for i in range(1, len(first_hops)):
            if self.divert(primary, depth(first_hops[i])):
                return i
        return 0

    def to_dict(self) -> dict[str, int]:
        return {"aux_queue": self.aux_queue, "primary_busy": self.primary_busy}


@dataclass(frozen=True)
class Route:
    """How the traffic of one tree edge ``u -> v`` crosses the physical network.

    ``paths[0]`` is the primary path, the others are auxiliary; a chunk goes whole over one
    path, chosen in proportion to ``weights``. Every path starts at u and ends at v.
    """

    edge: Edge
    paths: tuple[Path, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        edge = tuple(int(x) for x in self.edge)
        paths = tuple(tuple(int(x) for x in p) for p in self.paths)
        weights = tuple(float(w) for w in self.weights)
        if len(edge) != 2:
            raise PlanError(f"route edge must be a pair, got {self.edge!r}")
        if not paths or len(paths) != len(weights):
            raise PlanError(f"route {edge}: needs one weight per path "
                             f"({len(paths)} paths, {len(weights)} weights)")
        object.__setattr__(self, "edge", edge)
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def direct(cls, u: int, v: int) -> Route:
        """The default route of a tree edge: the direct link (shared, immutable)."""
        found = _DIRECT.get((u, v))
        if found is None:
            found = _DIRECT[(u, v)] = cls((u, v), ((u, v),), (1.0,))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"edge": list(self.edge), "paths": [list(p) for p in self.paths],
                "weights": list(self.weights)}


_DIRECT: dict[Edge, Route] = {}


def children(tree: Mapping[int, int]) -> dict[int, list[int]]:
    """``{parent: [children]}`` of a ``{site: parent}`` tree, children in the tree's order."""
    kids: dict[int, list[int]] = {}
    for child, parent in tree.items():
        kids.setdefault(parent, []).append(child)
    return kids


def _tree(mapping: Mapping[Any, Any], what: str) -> Mapping[int, int]:
    try:
        items = sorted((int(k), int(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise PlanError(f"{what} must map site indices to parent indices") from None
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Shard:
    """One slice of the gradient and the trees that reduce and broadcast it.

    Parameters
    ----------
    fraction
        Share of the gradient bytes (all shards of a plan sum to 1).
    root
        The site that holds the full sum and divides it by the number of workers.
    reduce_tree
        ``{site: parent}`` toward the root; every worker except the root appears once.
    broadcast_tree
        ``{site: parent}`` from the root; every worker except the root appears once.
    routes
        Physical routes of tree edges that do not use their direct link.
    """

    fraction: float
    root: int
    reduce_tree: Mapping[int, int]
    broadcast_tree: Mapping[int, int]
    routes: tuple[Route, ...] = ()
    _route_index: dict[Edge, Route] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", float(self.fraction))
        object.__setattr__(self, "root", int(self.root))
        object.__setattr__(self, "reduce_tree", _tree(self.reduce_tree, "reduce_tree"))
        object.__setattr__(self, "broadcast_tree", _tree(self.broadcast_tree, "broadcast_tree"))
        routes = tuple(sorted(self.routes, key=lambda r: r.edge))
        object.__setattr__(self, "routes", routes)
        self._route_index.update({r.edge: r for r in routes})

    def route(self, u: int, v: int) -> Route:
        """The route of tree edge ``u -> v`` (the direct link when none is given)."""
        found = self._route_index.get((u, v))
        if found is None:
            found = self._route_index[(u, v)] = Route.direct(u, v)  # cached, not a field
        return found

    def reduce_edges(self) -> Iterator[Edge]:
        """Tree edges ``child -> parent`` of the reduce tree, in child order."""
        return iter(self.reduce_tree.items())

    def broadcast_edges(self) -> Iterator[Edge]:
        """Tree edges ``parent -> child`` of the broadcast tree, in child order."""
        return ((p, c) for c, p in self.broadcast_tree.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction, "root": self.root,
            "reduce_tree": {str(k): v for k, v in self.reduce_tree.items()},
            "broadcast_tree": {str(k): v for k, v in self.broadcast_tree.items()},
            "routes": [r.to_dict() for r in self.routes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shard:
        unknown = set(data) - {"fraction", "root", "reduce_tree", "broadcast_tree", "routes"}
        if unknown:
            raise PlanError(f"shard has unknown keys: {', '.join(sorted(unknown))}")
        routes = tuple(Route(tuple(r["edge"]), tuple(map(tuple, r["paths"])),
                             tuple(r["weights"])) for r in data.get("routes", ()))
        return cls(fraction=data["fraction"], root=data["root"],
                   reduce_tree=data["reduce_tree"], broadcast_tree=data["broadcast_tree"],
                   routes=routes)


@dataclass(frozen=True)
class Plan:
    """A complete all-reduce plan: the shards, who made it, and its predicted time.

    ``version`` increases with every re-plan so all sites switch plans together;
    ``predicted_time_s`` is filled by :func:`netstorm.plan` from the cost model;
    ``chunk_bytes``, when set, is the pipelining chunk the plan was made for and replaces
    the job's (:meth:`job_for`); ``None`` uses the job's. ``send_order`` is the order in
    which links serve waiting chunks (:mod:`netstorm.send_order`): ``"progress"`` (the
    default) or ``"slack"``, which needs the view at compile time. ``route_rule``, when
    set, makes every multipath chunk pick its path when it is sent (:class:`QueueRule`);
    ``None`` deals chunks to paths by weight at compile time.
    """

    version: int
    planner: str
    sites: tuple[str, ...]
    shards: tuple[Shard, ...]
    predicted_time_s: float | None = None
    chunk_bytes: int | None = None
    send_order: str = "progress"
    route_rule: QueueRule | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "shards", tuple(self.shards))
        if int(self.version) != self.version or self.version < 0:
            raise PlanError(f"plan version must be a whole number >= 0, got {self.version!r}")
        if self.predicted_time_s is not None and not math.isfinite(self.predicted_time_s):
            raise PlanError("predicted_time_s must be finite")
        if self.chunk_bytes is not None:
            chunk = self.chunk_bytes
            if (isinstance(chunk, bool) or not isinstance(chunk, numbers.Real)
                    or not math.isfinite(chunk) or int(chunk) != chunk or chunk <= 0):
                raise PlanError(f"plan chunk_bytes must be a whole number > 0 or None, "
                                 f"got {chunk!r}")
            object.__setattr__(self, "chunk_bytes", int(chunk))
        if self.send_order not in SEND_ORDERS:
            raise PlanError(f"plan send_order must be 'progress' or 'slack', "
                             f"got {self.send_order!r}")
        if self.route_rule is not None and not isinstance(self.route_rule, QueueRule):
            raise PlanError(f"plan route_rule must be a QueueRule or None, "
                             f"got {self.route_rule!r}")

    def with_prediction(self, seconds: float) -> Plan:
        return replace(self, predicted_time_s=float(seconds))

    def job_for(self, job: Job) -> Job:
        """``job`` with this plan's chunk, or ``job`` itself when the plan has none.

        The chunk is made valid for the job (:meth:`netstorm.Job.with_chunk`: rounded down
        to a multiple of the element size, at least one element). The cost model, the
        compiler and everything built on them cut chunks from the job this returns.
        """
        return job if self.chunk_bytes is None else job.with_chunk(self.chunk_bytes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version, "planner": self.planner, "sites": list(self.sites),
            "shards": [s.to_dict() for s in self.shards],
            "predicted_time_s": self.predicted_time_s}
        if self.chunk_bytes is not None:
            out["chunk_bytes"] = self.chunk_bytes
        if self.send_order != "progress":
            out["send_order"] = self.send_order
        if self.route_rule is not None:
            out["route_rule"] = self.route_rule.to_dict()
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; extra top-level keys (e.g. ``bound_time_s``) are
        ignored so the CLI's output loads back."""
        try:
            rule = data.get("route_rule")
            return cls(version=data["version"], planner=data["planner"],
                       sites=tuple(data["sites"]),
                       shards=tuple(Shard.from_dict(s) for s in data["shards"]),
                       predicted_time_s=data.get("predicted_time_s"),
                       chunk_bytes=data.get("chunk_bytes"),
                       send_order=data.get("send_order", "progress"),
                       route_rule=None if rule is None else _queue_rule(rule))
        except KeyError as exc:
            raise PlanError(f"plan JSON lacks key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise PlanError(f"plan JSON is malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def _queue_rule(data: Any) -> QueueRule:
    """``route_rule`` of a plan's JSON (missing keys take the defaults)."""
    if not isinstance(data, Mapping):
        raise PlanError(f"plan JSON route_rule must be an object, got {data!r}")
    unknown = set(data) - {"aux_queue", "primary_busy"}
    if unknown:
        raise PlanError(f"plan JSON route_rule has unknown keys: {', '.join(sorted(unknown))}")
    try:
        return QueueRule(**data)
    except ValueError as exc:
        raise PlanError(f"plan JSON {exc}") from None
