"""Hypothesis strategies shared by the planning-core tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from netstorm import NetworkView

MB = 1e6


@st.composite
def views(draw: st.DrawFn, min_sites: int = 2, max_sites: int = 6, relays: bool = True,
          caps: bool = True) -> NetworkView:
    """Random strongly connected views: a random spanning cycle plus random extra links,
    capacities 1..200 MB/s, latencies 0..50 ms, optional relay-only sites and site caps."""
    n = draw(st.integers(min_sites, max_sites))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cap = np.zeros((n, n))
    for i in range(n):  # a Hamiltonian cycle keeps it strongly connected
        cap[order[i], order[(i + 1) % n]] = 1.0
    density = draw(st.floats(0.0, 1.0))
    cap = np.where((rng.random((n, n)) < density) | (cap > 0), 1.0, 0.0)
    np.fill_diagonal(cap, 0)
    cap = cap * rng.uniform(1, 200, size=(n, n)) * MB
    lat = rng.uniform(0, 0.05, size=(n, n)) * (cap > 0)
    workers = tuple(range(n))
    if relays and n > 2 and draw(st.booleans()):
        k = draw(st.integers(1, n - 2))
        workers = tuple(sorted(rng.choice(n, size=n - k, replace=False).tolist()))
    egress = ingress = None
    if caps and draw(st.booleans()):
        egress = np.where(rng.random(n) < 0.5, rng.uniform(20, 300, n) * MB, np.inf)
        ingress = np.where(rng.random(n) < 0.5, rng.uniform(20, 300, n) * MB, np.inf)
    return NetworkView(sites=tuple(f"n{i}" for i in range(n)), capacity=cap, latency=lat,
                       egress=egress, ingress=ingress, workers=workers, name=f"hyp{seed}")
