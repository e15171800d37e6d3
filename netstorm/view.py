"""`NetworkView`: what netstorm knows about the network at one moment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

from .errors import TopologyError, UnknownSiteError

__all__ = ["MAX_SITES", "NetworkView"]

#: The most sites a view may have: planners and the bound hold several n x n float arrays
#: (and the simulator more), so a typo such as ``random:100000`` must fail before allocating.
MAX_SITES = 4096


def _frozen(array: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    out = np.array(array, dtype=np.float64, copy=True)
    if out.shape != shape:
        raise TopologyError(f"{what} has shape {out.shape}, expected {shape}")
    if np.isnan(out).any():
        raise TopologyError(f"{what} contains NaN")
    if (out < 0).any():
        raise TopologyError(f"{what} contains negative values")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class NetworkView:
    """The network between N sites, in bytes, seconds and bytes/second.

    Parameters
    ----------
    sites
        Unique site names; site ``i`` is ``sites[i]``.
    capacity
        ``capacity[u, v]`` is the directed link capacity from u to v in B/s; 0 means no direct
        link (traffic is then relayed). The diagonal must be 0.
    latency
        One-way latency in seconds, same shape; defaults to zeros.
    egress, ingress
        Optional per-site caps in B/s shared by all links of the site (a NIC or hose limit);
        ``inf`` means uncapped. ``None`` means uncapped everywhere.
    workers
        Indices of the sites that contribute gradients; the others are relay-only. Defaults to
        every site.
    confidence
        Optional per-link measurement confidence in [0, 1].
    name
        A label for tables and plots.

    Notes
    -----
    Arrays are copied and made read-only, so a view is a value: planners may cache on it and
    nobody can change it under them. Equality compares every field exactly.
    """

    sites: tuple[str, ...]
    capacity: np.ndarray
    latency: np.ndarray = None  # type: ignore[assignment]
    egress: np.ndarray = None  # type: ignore[assignment]
    ingress: np.ndarray = None  # type: ignore[assignment]
    workers: tuple[int, ...] = None  # type: ignore[assignment]
    confidence: np.ndarray | None = None
    name: str = "network"
    _graph_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites = tuple(str(s) for s in self.sites)
        n = len(sites)
        if n == 0:
            raise TopologyError("a network view needs at least one site")
        if n > MAX_SITES:
            raise TopologyError(f"{n} sites: at most {MAX_SITES} (MAX_SITES: planners hold "
                                "several n x n matrices)")
        if len(set(sites)) != n:
            dup = sorted({s for s in sites if sites.count(s) > 1})
            raise TopologyError(f"duplicate site names: {', '.join(dup)}")
        cap = _frozen(self.capacity, (n, n), "capacity")
        if np.isinf(cap).any():
            raise TopologyError("capacity must be finite (use 0 for 'no link')")
        if np.diagonal(cap).any():
            raise TopologyError("capacity diagonal must be 0 (a site has no link to itself)")
        lat = _frozen(np.zeros((n, n)) if self.latency is None else self.latency, (n, n),
                      "latency")
        if np.isinf(lat).any():
            raise TopologyError("latency must be finite")
        caps = {}
        for key in ("egress", "ingress"):
            raw = getattr(self, key)
            arr = _frozen(np.full(n, np.inf) if raw is None else raw, (n,), key)
            if (arr == 0).any():
                raise TopologyError(f"{key} cap must be > 0 (omit it for an uncapped site)")
            caps[key] = arr
        workers = tuple(range(n)) if self.workers is None else tuple(sorted(set(self.workers)))
        if not workers:
            raise TopologyError("a network view needs at least one worker site")
        bad = [w for w in workers if not 0 <= w < n]
        if bad:
            raise TopologyError(f"worker indices out of range 0..{n - 1}: {bad}")
        conf = None
        if self.confidence is not None:
            conf = _frozen(self.confidence, (n, n), "confidence")
            if (conf > 1).any():
                raise TopologyError("confidence must lie in [0, 1]")
        for key, value in (("sites", sites), ("capacity", cap), ("latency", lat),
                           ("egress", caps["egress"]), ("ingress", caps["ingress"]),
                           ("workers", workers), ("confidence", conf)):
            object.__setattr__(self, key, value)

    # -- basic queries ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of sites."""
        return len(self.sites)

    @property
    def relays(self) -> tuple[int, ...]:
        """Indices of relay-only sites (sites that are not workers)."""
        workers = set(self.workers)
        return tuple(i for i in range(self.n) if i not in workers)

    @property
    def links(self) -> list[tuple[int, int]]:
        """Directed links ``(u, v)`` with capacity > 0, in index order."""
        us, vs = np.nonzero(self.capacity)
        return list(zip(us.tolist(), vs.tolist(), strict=True))

    @property
    def has_site_caps(self) -> bool:
        """True when any site has a finite egress or ingress cap."""
        return bool(np.isfinite(self.egress).any() or np.isfinite(self.ingress).any())

    def index(self, site: str | int) -> int:
        """Index of a site given by name or index; raises ``KeyError`` if unknown."""
        if isinstance(site, int | np.integer):
            if 0 <= site < self.n:
                return int(site)
            raise UnknownSiteError(f"site index {site} out of range 0..{self.n - 1}")
        try:
            return self.sites.index(site)
        except ValueError:
            raise UnknownSiteError(f"unknown site {site!r}") from None

    def degenerate(self) -> str | None:
        """Why no all-reduce can be planned on this view (``None``: one can). A relay-only
        site that no worker reaches, or that reaches no worker, can never carry anything
        (planners would have to span it); a worker that cannot reach another cannot take
        part. (One worker is a trivial all-reduce that planners handle; topology files and
        built-ins need two, see :func:`netstorm.topology_files.checked`.)"""
        links = csr_matrix(self.capacity > 0)  # (linear in the links: it runs on every plan)
        w = self.workers[0]
        down = set(breadth_first_order(links, w, directed=True, return_predecessors=False))
        up = set(breadth_first_order(links.T.tocsr(), w, directed=True,
                                     return_predecessors=False))
        for v in self.workers:
            if v not in down or v not in up:
                u, v = (w, v) if v not in down else (v, w)
                return (f"worker {self.sites[v]!r} cannot be reached from {self.sites[u]!r} "
                        "(not even through relays)")
        for r in range(self.n):  # every worker reaches every other: w stands for them all
            if r not in down or r not in up:
                return (f"relay-only site {self.sites[r]!r} is not on any path between "
                        "workers (no link to or from one): link it or remove it")
        return None

    def unreachable_workers(self) -> list[tuple[int, int]]:
        """Ordered worker pairs ``(u, v)`` such that v cannot be reached from u, even by relay."""
        graph = self.to_networkx()
        workers = set(self.workers)
        missing = []
        for u in self.workers:
            reach = nx.descendants(graph, u) | {u}
            missing += [(u, v) for v in sorted(workers - reach)]
        return missing

    # -- derived views ---------------------------------------------------------------------
    def with_capacity(self, capacity: np.ndarray) -> NetworkView:
        """A copy of this view with a new capacity matrix (e.g. after a measurement)."""
        return replace(self, capacity=capacity, _graph_cache={})

    def restricted(self, keep: Sequence[int], name: str | None = None) -> NetworkView:
        """The view of the sites ``keep`` alone, in that order: their links, latencies,
        caps and confidence; the workers among them stay workers (renumbered).

        Raises
        ------
        TopologyError
            ``keep`` is empty, repeats a site, or names one that is not here, or none of
            the sites kept is a worker.
        """
        keep = [int(i) for i in keep]
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < self.n for i in keep):
            raise TopologyError(f"restricted: {keep} is not a list of distinct sites of "
                                f"{self.name!r} (0..{self.n - 1})")
        index = np.ix_(keep, keep)
        renumber = {old: new for new, old in enumerate(keep)}
        return NetworkView(
            sites=tuple(self.sites[i] for i in keep), capacity=self.capacity[index],
            latency=self.latency[index], egress=self.egress[keep], ingress=self.ingress[keep],
            workers=tuple(sorted(renumber[w] for w in self.workers if w in renumber)),
            confidence=None if self.confidence is None else self.confidence[index],
            name=self.name if name is None else name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetworkView):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is b
            return a.shape == b.shape and bool(np.array_equal(a, b))

        return (self.sites == other.sites and self.workers == other.workers
                and self.name == other.name
                and all(same(getattr(self, k), getattr(other, k))
                        for k in ("capacity", "latency", "egress", "ingress", "confidence")))

    __hash__ = None  # type: ignore[assignment]

    # -- networkx --------------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """A DiGraph on nodes ``0..N-1``.

        Node attributes: ``name``, ``worker``, ``egress``, ``ingress``; edge attributes:
        ``capacity`` (B/s) and ``latency`` (s). The result is cached: do not mutate it.
        """
        graph = self._graph_cache.get("nx")
        if graph is None:
            graph = nx.DiGraph(name=self.name)
            workers = set(self.workers)
            for i, site in enumerate(self.sites):
                graph.add_node(i, name=site, worker=i in workers,
                               egress=float(self.egress[i]), ingress=float(self.ingress[i]))
            for u, v in self.links:
                graph.add_edge(u, v, capacity=float(self.capacity[u, v]),
                               latency=float(self.latency[u, v]))
            self._graph_cache["nx"] = graph
        return graph

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph, name: str | None = None) -> NetworkView:
        """Build a view from a DiGraph whose edges carry ``capacity`` (and ``latency``).

        Nodes are taken in the graph's node order; node attribute ``name`` (default: the node
        itself), ``worker`` (default True), ``egress``/``ingress`` (default uncapped).
        """
        nodes = list(graph.nodes)
        pos = {node: i for i, node in enumerate(nodes)}
        n = len(nodes)
        cap, lat = np.zeros((n, n)), np.zeros((n, n))
        for u, v, data in graph.edges(data=True):
            if "capacity" not in data:
                raise TopologyError(f"edge {u!r}->{v!r} has no 'capacity' attribute")
            cap[pos[u], pos[v]] = data["capacity"]
            lat[pos[u], pos[v]] = data.get("latency", 0.0)
        attrs = [graph.nodes[node] for node in nodes]
        return cls(
            sites=tuple(str(a.get("name", node)) for node, a in zip(nodes, attrs, strict=True)),
            capacity=cap, latency=lat,
            egress=np.array([a.get("egress", np.inf) for a in attrs], dtype=float),
            ingress=np.array([a.get("ingress", np.inf) for a in attrs], dtype=float),
            workers=tuple(i for i, a in enumerate(attrs) if a.get("worker", True)),
            name=name or graph.graph.get("name") or "network",
        )

    # -- JSON-friendly dict --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (B/s, s; uncapped sites have ``null`` caps)."""
        def caps(arr: np.ndarray) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in arr]

        return {"name": self.name, "sites": list(self.sites), "workers": list(self.workers),
                "capacity_Bps": self.capacity.tolist(), "latency_s": self.latency.tolist(),
                "egress_Bps": caps(self.egress), "ingress_Bps": caps(self.ingress)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkView:
        """Inverse of :meth:`to_dict`."""
        def caps(values: Sequence[float | None]) -> np.ndarray:
            return np.array([np.inf if x is None else x for x in values], dtype=float)

        return cls(sites=tuple(data["sites"]), capacity=np.array(data["capacity_Bps"]),
                   latency=np.array(data["latency_s"]), egress=caps(data["egress_Bps"]),
                   ingress=caps(data["ingress_Bps"]), workers=tuple(data["workers"]),
                   name=data.get("name", "network"))
