"""The planner registry and the reference planners ps and ring."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings

from netstorm import (
    Job,
    NetworkView,
    Plan,
    PlanError,
    bound,
    get_planner,
    plan,
    planner_names,
    predict,
    register_planner,
)
from netstorm.builtin_topologies import builtin
from netstorm.planners import ring_order
from netstorm.testing import check_planner
from tests.strategies import views

MB = 1e6
JOB = Job(buckets=90_000_000, chunk_bytes=1_000_000)


def mesh(n: int, c: float) -> NetworkView:
    cap = np.full((n, n), c)
    np.fill_diagonal(cap, 0)
    return NetworkView(sites=tuple(map(str, range(n))), capacity=cap)


@pytest.mark.parametrize("name", ["ps", "ring"])
def test_builtin_planners_pass_the_conformance_suite(name: str) -> None:
    check_planner(name)


def test_ps_on_a_uniform_mesh_meets_the_bound() -> None:
    # each link u->v carries M/N up (shard v) and M/N down (shard u): 2M/(N c), the LP bound
    view = mesh(5, 10 * MB)
    pred = predict(plan(view, JOB, "ps"), view, JOB)
    assert pred.bandwidth_s == pytest.approx(2 * JOB.gradient_bytes / (5 * 10 * MB))
    assert pred.bandwidth_s == pytest.approx(bound(view, JOB).bandwidth_s)


def test_single_server_ps_is_a_star() -> None:
    view = mesh(4, 10 * MB)
    p = plan(view, JOB, "ps", servers=1)
    assert len(p.shards) == 1 and dict(p.shards[0].reduce_tree) == {1: 0, 2: 0, 3: 0}
    pred = predict(p, view, JOB)
    assert pred.egress_bytes[0] == pytest.approx(3 * JOB.gradient_bytes)


def test_ps_relays_over_the_cheapest_path() -> None:
    view = builtin("netstorm9")
    p = plan(view, JOB, "ps")
    graph = nx.DiGraph()
    for u, v in view.links:
        graph.add_edge(u, v, weight=1 / view.capacity[u, v])
    for shard in p.shards:
        for route in shard.routes:
            u, v = route.edge
            assert view.capacity[u, v] == 0  # only missing links are routed
            expected = nx.shortest_path_length(graph, u, v, weight="weight")
            got = sum(1 / view.capacity[a, b] for a, b in itertools.pairwise(route.paths[0]))
            assert got == pytest.approx(expected)


def test_ring_volume_on_a_uniform_mesh() -> None:
    n = 6
    view = mesh(n, 10 * MB)
    pred = predict(plan(view, JOB, "ring"), view, JOB)
    busiest = pred.link_bytes.max()
    assert busiest == pytest.approx(2 * (n - 1) / n * JOB.gradient_bytes)
    assert np.count_nonzero(pred.link_bytes) == n  # only ring edges carry traffic


@settings(max_examples=30)
@given(views(min_sites=3, max_sites=7, relays=False, caps=False))
def test_ring_order_maximises_the_bottleneck(view: NetworkView) -> None:
    graph = view.to_networkx()
    widest = {}
    for u, v in itertools.permutations(view.workers, 2):  # direct link, else cheapest relay
        path = [u, v] if view.capacity[u, v] else nx.shortest_path(
            graph, u, v, weight=lambda a, b, d: 1 / d["capacity"])
        widest[u, v] = min(view.capacity[a, b] for a, b in itertools.pairwise(path))
    first, *rest = view.workers
    best = max(min(widest[a, b] for a, b in itertools.pairwise((first, *perm, first)))
               for perm in itertools.permutations(rest))
    order = ring_order(view)
    assert sorted(order) == list(view.workers)
    got = min(widest[a, b] for a, b in itertools.pairwise((*order, order[0])))
    assert got == pytest.approx(best)


def test_registry_names_callables_and_errors() -> None:
    assert {"ps", "ring"} <= set(planner_names())
    with pytest.raises(PlanError, match="unknown planner 'nope'"):
        plan(mesh(3, MB), JOB, "nope")
    with pytest.raises(PlanError, match=r"does not take|unexpected keyword"):
        plan(mesh(3, MB), JOB, "ps", colour="red")
    with pytest.raises(PlanError, match="must accept the keyword argument 'state'"):
        register_planner("bad", lambda view, job, *, seed=None: None)
    with pytest.raises(PlanError, match="already registered"):
        register_planner("ps", get_planner("ps")[1])


def test_a_callable_planner_is_checked() -> None:
    def broken(view: NetworkView, job: Job, *, seed: object = None,
               state: object = None) -> Plan:
        good = get_planner("ps")[1](view, job)
        return Plan(good.version, "broken", good.sites, good.shards[:1])  # fractions != 1

    with pytest.raises(PlanError, match="invalid plan: shard fractions sum to"):
        plan(mesh(3, MB), JOB, broken)

    def not_a_plan(view: NetworkView, job: Job, *, seed: object = None,
                   state: object = None) -> dict:
        return {}

    with pytest.raises(PlanError, match="returned dict, not a Plan"):
        plan(mesh(3, MB), JOB, not_a_plan)


def test_registered_planner_is_found_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from netstorm import registry

    planner_names()  # load the built-ins and plug-ins, then register into a copy
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))

    @register_planner("half-ps", replace=True)
    def half(view: NetworkView, job: Job, *, seed: object = None,
             state: object = None) -> Plan:
        return get_planner("ps")[1](view, job, servers=max(1, len(view.workers) // 2))

    p = plan(mesh(4, MB), JOB, "half-ps")
    assert len(p.shards) == 2 and p.predicted_time_s is not None
    check_planner("half-ps")


def test_the_registry_fills_once_when_threads_race_for_it() -> None:
    """A fresh interpreter whose first planner lookups come from several threads at once (a
    runtime site's threads) finds every built-in."""
    import subprocess
    import sys

    code = ("import threading, netstorm\n"
            "errors = []\n"
            "def look():\n"
            "    try: netstorm.planner_info('ring')\n"
            "    except Exception as exc: errors.append(exc)\n"
            "threads = [threading.Thread(target=look) for _ in range(8)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "assert not errors, errors\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
