"""The per-site reach bound against hand figures, a covering LP, Dijkstra and the simulator."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq, linprog

from netstorm import Job, NetworkView, bound, plan, planner_names
from netstorm.builtin_topologies import builtin
from netstorm.reach import fastest_paths, priced_rows, reach_time
from tests.strategies import views

MB = 1e6
M = 100e6


def test_two_sites_pay_the_slower_direction() -> None:
    view = NetworkView(sites=("a", "b"), capacity=np.array([[0, 10 * MB], [20 * MB, 0]]),
                       latency=np.array([[0, 0.03], [0.08, 0]]))
    assert reach_time(view, M) == pytest.approx(max(0.03 + M / (10 * MB), 0.08 + M / (20 * MB)))


def test_a_relay_adds_its_onward_path() -> None:
    # a and b are workers joined only through relay r: a's data leaves over a -> r alone
    # and still has r -> b ahead of it
    cap = np.array([[0, 0, 10 * MB], [0, 0, 50 * MB], [50 * MB, 50 * MB, 0]])
    lat = np.array([[0, 0, 0.01], [0, 0, 0.02], [0.04, 0.05, 0]])
    view = NetworkView(sites=("a", "b", "r"), capacity=cap, latency=lat, workers=(0, 1))
    assert reach_time(view, M) == pytest.approx(0.01 + 0.05 + M / (10 * MB))


def test_an_egress_cap_limits_the_site() -> None:
    cap = np.full((3, 3), 100 * MB)
    np.fill_diagonal(cap, 0)
    lat = np.full((3, 3), 0.01)
    np.fill_diagonal(lat, 0)
    view = NetworkView(sites=("a", "b", "c"), capacity=cap, latency=lat,
                       egress=np.array([5 * MB, np.inf, np.inf]))
    assert reach_time(view, M) == pytest.approx(0.01 + M / (5 * MB))


@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_priced_rows_is_the_root_of_its_equation(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.uniform(0, 5, k) * (rng.random(k) < 0.8)
    delay = rng.uniform(0, 3, (3, k))
    got = priced_rows(10.0, w, delay)
    for row, t in zip(delay, got, strict=True):
        if not (w > 0).any():
            assert t == np.inf
            continue
        def f(x: float, row: np.ndarray = row) -> float:
            return float((w * np.maximum(x - row, 0)).sum()) - 10.0
        assert t == pytest.approx(brentq(f, 0, 1e4), rel=1e-9)


@given(views(max_sites=5))
@settings(max_examples=25, deadline=None)
def test_fastest_paths_agree_with_dijkstra(view: NetworkView) -> None:
    dist = fastest_paths(np.where(view.capacity > 0, view.latency, np.inf))
    graph = nx.DiGraph()
    graph.add_weighted_edges_from((u, v, view.latency[u, v]) for u, v in view.links)
    for u, lengths in nx.all_pairs_dijkstra_path_length(graph):
        for v, d in lengths.items():
            assert dist[u, v] == pytest.approx(d, abs=1e-12)


def _covered(view: NetworkView, u: int, t: float, egress: bool) -> bool:
    """Whether u's links can cover every other worker by time t: the covering LP.

    Variables y[v, tau]: bytes on link u -> v (v -> u) whose message reaches every worker
    within tau of v (carries every worker's data within tau of v). A worker j is covered by
    the y with ``d(v, j) <= tau`` (``d(j, v) <= tau``); the bytes of levels >= tau0 fit in
    the link's window ``(t - l - tau0)^+``. Maximise the least coverage.
    """
    d = fastest_paths(np.where(view.capacity > 0, view.latency, np.inf))
    others = [j for j in view.workers if j != u]
    links = [v for v in range(view.n) if (view.capacity[u, v] if egress else view.capacity[v, u])]
    var = [(v, tau) for v in links
           for tau in sorted({float(d[v, j] if egress else d[j, v]) for j in others})]
    rows, rhs = [], []
    for j in others:
        rows.append([-float((d[v, j] if egress else d[j, v]) <= tau) for v, tau in var] + [1.0])
        rhs.append(0.0)
    for v in links:
        c = (view.capacity[u, v] if egress else view.capacity[v, u]) / M
        lat = view.latency[u, v] if egress else view.latency[v, u]
        for tau0 in {tau for w, tau in var if w == v}:
            rows.append([float(w == v and tau >= tau0) for w, tau in var] + [0.0])
            rhs.append(c * max(0.0, t - lat - tau0))
    res = linprog(np.r_[np.zeros(len(var)), -1.0], A_ub=np.array(rows), b_ub=rhs,
                  bounds=[(0, None)] * (len(var) + 1), method="highs")
    return bool(-res.fun >= 1 - 1e-9)


@given(views(max_sites=4, caps=False))
@settings(max_examples=12, deadline=None)
def test_reach_time_equals_the_covering_lp(view: NetworkView) -> None:
    got = reach_time(view, M)
    want = 0.0
    for u in view.workers:
        for egress in (True, False):
            lo, hi = 0.0, 100.0
            for _ in range(45):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if _covered(view, u, mid, egress) else (mid, hi)
            want = max(want, hi)
    assert got == pytest.approx(want, rel=1e-6)


def test_reach_bound_holds_against_the_simulator() -> None:
    from netstorm.sim import allreduce

    job = Job(buckets=20_000_000, chunk_bytes=250_000)
    view = builtin("random:6:5")
    low = bound(view, job)
    assert low.reach_s > low.priced_s  # the latency-bound mesh where the reach term binds
    assert low.time_s == pytest.approx(low.reach_s)
    for name in planner_names():
        if name == "tsengine":
            continue  # stateful and randomised
        seconds, _ = allreduce(plan(view, job, name), view, job)
        assert seconds >= low.reach_s * (1 - 1e-6), name
