"""Built-in topologies, by name: the paper's mesh, real cloud grids, cities, generators.

=================== ===============================================================
``netstorm9``        The NetStorm paper's 9-site, 13-link mesh with the released
                     scheduler's seeded start matrix (MB/s, symmetric, no delay).
``cloud:C[:N[:S]]``  C in aws, gcp, azure, mixed: iperf3 goodput between cloud regions
                     (Skyplane grid, January 2022). N sites sampled with seed S (default
                     0); all regions without N. AWS sites get 5 Gbit/s egress and
                     ingress caps (AWS caps inter-region traffic at half the instance's
                     10 Gbit/s). The grid has no latency figures: latency is 0.
``cities``           10 regions with published delay (round trip; halved) and bandwidth.
``random:N[:S]``     Heterogeneous full mesh: capacities log-uniform 50 Mbit/s..5 Gbit/s
                     per direction, latency from random positions (1..101 ms).
``waxman:N[:S]``     Sparse geometric (Waxman) graph, connected by its Euclidean spanning
                     tree; capacities log-uniform 20 Mbit/s..1 Gbit/s per direction,
                     latency 1 ms + 100 ms per unit distance.
=================== ===============================================================
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

import networkx as nx
import numpy as np

from .errors import TopologyError
from .topology_files import read_csv
from .view import MAX_SITES, NetworkView

__all__ = ["BUILTIN_HELP", "CLOUDS", "builtin", "is_builtin", "netstorm9"]

BUILTIN_HELP = ("built-ins: netstorm9, cloud:aws|gcp|azure|mixed[:N[:seed]], cities, "
                "random:N[:seed], waxman:N[:seed]")
CLOUDS = ("aws", "gcp", "azure", "mixed")
_AWS_CAP = 5e9 / 8  # B/s

#: The paper's 13 undirected links and the released scheduler's srand(2) start rates, MB/s.
NETSTORM9_LINKS = {
    (0, 1): 78.8, (0, 2): 49.8, (1, 2): 86.4, (1, 4): 17.9, (2, 3): 74.5, (3, 4): 14.9,
    (3, 5): 3.7, (4, 6): 36.7, (5, 6): 73.0, (5, 7): 57.2, (5, 8): 76.7, (6, 7): 56.9,
    (7, 8): 39.1,
}


def _data(name: str) -> Path:
    return Path(str(resources.files("netstorm.data").joinpath(name)))


def netstorm9() -> NetworkView:
    """The NetStorm paper's emulated WAN with its seeded start matrix."""
    cap = np.zeros((9, 9))
    for (u, v), mbs in NETSTORM9_LINKS.items():
        cap[u, v] = cap[v, u] = mbs * 1e6
    return NetworkView(sites=tuple(f"s{i}" for i in range(9)), capacity=cap, name="netstorm9")


def _cloud(kind: str, count: int | None, seed: int) -> NetworkView:
    grid = read_csv(_data("cloud_throughput_2022-01.csv"), name="cloud")
    if kind == "mixed":
        keep = list(range(grid.n))
    else:
        keep = [i for i, s in enumerate(grid.sites) if s.startswith(kind + ":")]
    keep.sort(key=lambda i: grid.sites[i])
    if count is not None:
        if not 2 <= count <= len(keep):
            raise TopologyError(f"cloud:{kind}:{count}: site count must be in "
                                f"2..{len(keep)}")
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(keep, size=count, replace=False).tolist(),
                      key=lambda i: grid.sites[i])
    label = f"cloud:{kind}" + (f":{count}:{seed}" if count is not None else "")
    view = grid.restricted(keep, name=label)
    capped = np.array([np.inf if not s.startswith("aws:") else _AWS_CAP for s in view.sites])
    return replace(view, egress=capped, ingress=capped, _graph_cache={})


def _cities() -> NetworkView:
    return read_csv(_data("city_delay_bandwidth.csv"), name="cities")


def _random_mesh(n: int, seed: int) -> NetworkView:
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    cap = np.exp(rng.uniform(np.log(50e6), np.log(5e9), size=(n, n))) / 8
    np.fill_diagonal(cap, 0)
    lat = 1e-3 + 0.1 * dist / np.sqrt(2)
    np.fill_diagonal(lat, 0)
    return NetworkView(sites=tuple(f"r{i}" for i in range(n)), capacity=cap, latency=lat,
                       name=f"random:{n}:{seed}")


def _waxman(n: int, seed: int) -> NetworkView:
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    graph = nx.waxman_graph(n, beta=0.6, alpha=0.2, domain=(0, 0, 1, 1),
                            seed=int(rng.integers(2**31)))
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    full = nx.Graph()
    full.add_weighted_edges_from((u, v, dist[u, v]) for u in range(n) for v in range(u + 1, n))
    edges = set(map(tuple, map(sorted, graph.edges))) | set(
        map(tuple, map(sorted, nx.minimum_spanning_edges(full, data=False))))
    cap, lat = np.zeros((n, n)), np.zeros((n, n))
    for u, v in sorted(edges):
        for a, b in ((u, v), (v, u)):
            cap[a, b] = np.exp(rng.uniform(np.log(20e6), np.log(1e9))) / 8
            lat[a, b] = 1e-3 + 0.1 * dist[u, v]
    return NetworkView(sites=tuple(f"w{i}" for i in range(n)), capacity=cap, latency=lat,
                       name=f"waxman:{n}:{seed}")


def is_builtin(name: str) -> bool:
    """True when ``name`` is (meant to be) a built-in topology name rather than a path."""
    head = name.split(":", 1)[0]
    return name in ("netstorm9", "cities") or head in ("cloud", "random", "waxman")


def _ints(name: str, parts: list[str], lo: int) -> list[int]:
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise TopologyError(f"{name}: site count and seed must be whole numbers "
                            f"({BUILTIN_HELP})") from None
    if values and values[0] < lo:
        raise TopologyError(f"{name}: site count must be >= {lo}")
    if values and values[0] > MAX_SITES:
        raise TopologyError(f"{name}: site count must be <= {MAX_SITES} (MAX_SITES: planners "
                            "hold several n x n matrices)")
    return values


def builtin(name: str) -> NetworkView:
    """The built-in topology called ``name`` (see the module docstring)."""
    parts = name.split(":")
    head = parts[0]
    if name == "netstorm9":
        return netstorm9()
    if name == "cities":
        return _cities()
    if head == "cloud" and len(parts) >= 2 and parts[1] in CLOUDS and len(parts) <= 4:
        values = _ints(name, parts[2:], 2)
        return _cloud(parts[1], values[0] if values else None,
                      values[1] if len(values) > 1 else 0)
    if head in ("random", "waxman") and 2 <= len(parts) <= 3:
        values = _ints(name, parts[1:], 2)
        seed = values[1] if len(values) > 1 else 0
        return _random_mesh(values[0], seed) if head == "random" else _waxman(values[0], seed)
    raise TopologyError(f"{name}: unknown built-in topology ({BUILTIN_HELP})")


