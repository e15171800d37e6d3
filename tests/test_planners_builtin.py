"""The paper's NetStorm and the MLNET, TSEngine and treepack planners."""

from __future__ import annotations

import importlib
import itertools
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstorm import Job, NetworkView, bound, plan, planner_names, predict
from netstorm.builtin_topologies import builtin
from netstorm.planners import TSEngineState
from netstorm.testing import check_planner
from tests.strategies import views

paper = importlib.import_module("netstorm.planners.netstorm")
MB = 1e6
JOB = Job(buckets=40_000_000, chunk_bytes=1_000_000)


@pytest.mark.parametrize("name", ["mlnet", "tsengine", "netstorm", "treepack"])
def test_conformance(name: str) -> None:
    check_planner(name)


def test_every_registered_planner_is_covered() -> None:
    assert {"ps", "ring", "mlnet", "tsengine", "netstorm", "treepack"} <= set(planner_names())


def test_root_scores_reproduce_the_paper_scheduler() -> None:
    scores = paper.root_scores(builtin("netstorm9")) / 1e6  # MB/s, as the scheduler printed
    expected = [7.47, 8.79, 7.47, 8.00, 10.23, 8.03, 9.34, 7.54, 6.83]
    assert np.round(scores, 2).tolist() == expected


def test_auxiliary_paths_on_netstorm9() -> None:
    view = builtin("netstorm9")
    graph = nx.DiGraph()
    for u, v in view.links:
        graph.add_edge(u, v, w=1 / view.capacity[u, v])
    primary = tuple(nx.dijkstra_path(graph, 0, 8, weight="w"))
    assert paper.auxiliary_paths(view, 0, 8, primary) == []  # the paper's example
    for u, v in itertools.permutations(range(9), 2):
        primary = tuple(nx.dijkstra_path(graph, u, v, weight="w"))
        aux = paper.auxiliary_paths(view, u, v, primary)
        middles = [set(p[1:-1]) for p in [primary, *aux]]
        for a, b in itertools.combinations(middles, 2):
            assert not a & b  # node-disjoint intermediates
        costs = [nx.path_weight(graph, list(p), "w") for p in aux]
        assert costs == sorted(costs) and all(c >= nx.path_weight(graph, list(primary), "w")
                                              for c in costs)
    assert paper.auxiliary_paths(view, 1, 4, (1, 4))  # the slow 1-4 link has a detour


def yen_greedy(view: NetworkView, u: int, v: int, primary: tuple[int, ...]) -> list:
    """The paper's rule, literally: every simple path in cost order, keep the disjoint ones."""
    graph = nx.DiGraph()
    for a, b in view.links:
        graph.add_edge(a, b, w=1 / view.capacity[a, b])
    used, kept = set(primary[1:-1]), []
    for path in map(tuple, nx.shortest_simple_paths(graph, u, v, weight="w")):
        middle = set(path[1:-1])
        if path != primary and middle and not middle & used:
            kept.append(path)
            used |= middle
    return kept


@settings(max_examples=40)
@given(views(min_sites=3, max_sites=6, relays=False, caps=False), st.data())
def test_auxiliary_paths_follow_the_papers_enumeration(view: NetworkView,
                                                       data: st.DataObject) -> None:
    u, v = data.draw(st.sampled_from(list(itertools.permutations(range(view.n), 2))))
    graph = nx.DiGraph()
    for a, b in view.links:
        graph.add_edge(a, b, w=1 / view.capacity[a, b])
    primary = tuple(nx.dijkstra_path(graph, u, v, weight="w"))
    got = paper.auxiliary_paths(view, u, v, primary)
    want = yen_greedy(view, u, v, primary)
    cost = [nx.path_weight(graph, list(p), "w") for p in got]
    assert cost == pytest.approx([nx.path_weight(graph, list(p), "w") for p in want])
    assert len(got) == len(want)


@settings(max_examples=60)
@given(st.dictionaries(st.integers(0, 8), st.floats(0.1, 10), min_size=1, max_size=6),
       st.integers(1, 50), st.integers(1, 7))
def test_chunk_quotas(scores: dict[int, float], chunks: int, chunk_elems: int) -> None:
    elements = chunks * chunk_elems - (chunk_elems - 1) // 2  # a short last chunk
    shares = paper.chunk_quotas(scores, elements, chunk_elems)
    assert sum(shares.values()) == elements
    count = math.ceil(elements / chunk_elems)
    total = sum(scores.values())
    for r, share in shares.items():  # nobody exceeds its quota of whole chunks
        assert share <= math.ceil(scores[r] / total * count) * chunk_elems


def test_netstorm_trees_are_shortest_path_in_trees() -> None:
    view = builtin("netstorm9")
    graph = nx.DiGraph()
    for u, v in view.links:
        graph.add_edge(u, v, w=1 / view.capacity[u, v])
    p = plan(view, JOB, "netstorm", multipath=False)
    assert len(p.shards) == 9 and abs(sum(s.fraction for s in p.shards) - 1) < 1e-12
    for shard in p.shards:
        dist = nx.single_source_dijkstra_path_length(graph.reverse(), shard.root, weight="w")
        for child, parent in shard.reduce_tree.items():
            assert dist[child] == pytest.approx(graph[child][parent]["w"] + dist[parent])
        assert dict(shard.broadcast_tree) == dict(shard.reduce_tree)


def test_netstorm_roots_option_and_multipath_weights() -> None:
    view = builtin("netstorm9")
    p = plan(view, JOB, "netstorm", roots=3)
    scores = paper.root_scores(view)
    assert sorted(s.root for s in p.shards) == sorted(np.argsort(-scores)[:3].tolist())
    multi = [r for s in plan(view, JOB, "netstorm").shards for r in s.routes if len(r.paths) > 1]
    assert multi and all(r.paths[0] == r.edge for r in multi)  # the direct link stays primary


def test_mlnet_builds_fixed_fanout_trees_in_index_order() -> None:
    cap = np.full((7, 7), 10 * MB)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcdefg"), capacity=cap)
    p = plan(view, JOB, "mlnet", fanout=2)
    assert len(p.shards) == 7
    assert dict(p.shards[0].reduce_tree) == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}
    assert dict(p.shards[3].reduce_tree) == {0: 3, 1: 3, 2: 0, 4: 0, 5: 1, 6: 1}
    assert len(plan(view, JOB, "mlnet", fanout=3).shards[0].reduce_tree) == 6


def greedy_broadcast(view: NetworkView, server: int) -> dict[int, int]:
    """Independent oracle: rounds in which every holder, in the order it got the model,
    sends to its fastest unserved site (full mesh, everything measured)."""
    holders, unserved, tree = [server], set(range(view.n)) - {server}, {}
    while unserved:
        for holder in list(holders):
            if not unserved:
                break
            pick = max(sorted(unserved), key=lambda v: view.capacity[holder, v])
            tree[pick] = holder
            unserved.discard(pick)
            holders.append(pick)
    return tree


def test_tsengine_is_seeded_and_stateful() -> None:
    view = builtin("random:7:2")
    assert plan(view, JOB, "tsengine", seed=3).to_json() == \
        plan(view, JOB, "tsengine", seed=3).to_json()
    state = TSEngineState(np.random.default_rng(5))
    versions = [plan(view, JOB, "tsengine", state=state).version for _ in range(3)]
    assert versions == [1, 2, 3] and state.plans == 3


def test_tsengine_is_greedy_when_it_knows_everything() -> None:
    view = builtin("random:7:2")
    for seed in range(4):
        shard = plan(view, JOB, "tsengine", seed=seed, max_greed=1.0).shards[0]
        assert dict(shard.broadcast_tree) == greedy_broadcast(view, 0)
        assert shard.root == 0 and set(shard.reduce_tree) == set(range(1, 7))


def test_tsengine_explores_when_it_knows_nothing() -> None:
    view = builtin("random:7:2")
    blind = NetworkView(sites=view.sites, capacity=view.capacity, confidence=np.zeros((7, 7)))
    trees = {tuple(sorted(plan(blind, JOB, "tsengine", seed=s).shards[0]
                          .broadcast_tree.items())) for s in range(6)}
    assert len(trees) > 1


def test_treepack_reaches_the_bound_bandwidth_on_a_uniform_mesh() -> None:
    cap = np.full((6, 6), 10 * MB)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcdef"), capacity=cap)
    pred = predict(plan(view, JOB, "treepack"), view, JOB)
    assert pred.bandwidth_s == pytest.approx(bound(view, JOB).bandwidth_s, rel=1e-6)


@pytest.mark.parametrize("name", ["netstorm9", "waxman:12:3", "cloud:aws:6"])
def test_treepack_bandwidth_term_is_near_the_lp(name: str) -> None:
    view = builtin(name)
    pred = predict(plan(view, JOB, "treepack"), view, JOB)
    assert pred.bandwidth_s <= bound(view, JOB).bandwidth_s * 1.10


def test_treepack_beats_the_paper_on_netstorm9() -> None:
    view, job = builtin("netstorm9"), Job.from_model("resnet50")
    ours = plan(view, job, "treepack").predicted_time_s
    theirs = plan(view, job, "netstorm").predicted_time_s
    assert ours is not None and theirs is not None and ours < theirs


def test_treepack_handles_relay_only_sites() -> None:
    view = builtin("netstorm9")
    relayed = NetworkView(sites=view.sites, capacity=view.capacity, workers=(0, 2, 5, 8))
    p = plan(relayed, JOB, "treepack")  # plan() has run check_plan: relays are never leaves
    # treepack trees use direct links only, and {0, 2} reach {5, 8} only through relay-only
    # sites, so every tree must aggregate through one
    for shard in p.shards:
        assert set(shard.reduce_tree) - set(relayed.workers)
        assert set(shard.broadcast_tree) - set(relayed.workers)
    assert p.predicted_time_s is not None
    assert p.predicted_time_s >= bound(relayed, JOB).time_s * (1 - 1e-6)


def test_delay_budget_is_the_farthest_workers_fastest_path() -> None:
    from netstorm.planners.treepack import delay_budget

    view = builtin("random:7:2")
    budget = delay_budget(view, JOB, 1.5)
    graph = nx.DiGraph()
    for u, v in zip(*np.nonzero(view.capacity), strict=True):
        graph.add_edge(int(u), int(v),
                       t=view.latency[u, v] + JOB.chunk_bytes / view.capacity[u, v])
    for r in range(view.n):
        into = nx.single_source_dijkstra_path_length(graph.reverse(), r, weight="t")
        out = nx.single_source_dijkstra_path_length(graph, r, weight="t")
        assert budget.up[r] == pytest.approx(1.5 * max(into.values()))
        assert budget.down[r] == pytest.approx(1.5 * max(out.values()))


def test_treepack_on_a_latency_bound_mesh_beats_its_unbudgeted_packing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # random meshes have 1-100 ms links: deep max-rate trees pay their latency on every hop,
    # and the delay-budget packings find shallower trees the cost model prefers
    module = importlib.import_module("netstorm.planners.treepack")
    view, job = builtin("random:10:4"), Job.from_model("resnet50")
    ours = predict(plan(view, job, "treepack"), view, job).time_s
    monkeypatch.setattr(module, "_BUDGETS", (module._Budgets(10**9, None, ()),))
    without = predict(plan(view, job, "treepack"), view, job).time_s
    assert ours < without * 0.9  # measured: 0.478 s against 0.619 s


def test_treepack_mixes_its_budget_trees_at_26_to_48_sites(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # random:26:2 (measured): 0.289 s with both budgets and one LP over their trees, 0.321 s
    # with the two budgets apart (the 1.25 one adds nothing here) or the 1.5 one alone
    module = importlib.import_module("netstorm.planners.treepack")
    view, job = builtin("random:26:2"), Job.from_model("resnet50")
    ours = predict(plan(view, job, "treepack"), view, job).time_s
    monkeypatch.setattr(module, "_BUDGETS", (module._Budgets(48, 5, ((1.25, True), (1.5, True))),
                                             module._Budgets(10**9, None, ())))
    apart = predict(plan(view, job, "treepack"), view, job).time_s
    assert ours < apart * 0.95


def test_treepack_packs_delay_budgets_above_48_sites_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # random:49:2 (measured): 0.247 s predicted, 0.259 s simulated with two rounds of the
    # 1.25 and 1.5 shared budgets and one LP over their trees; 0.356 s and 0.370 s without
    from netstorm.sim import allreduce

    module = importlib.import_module("netstorm.planners.treepack")
    view, job = builtin("random:49:2"), Job.from_model("resnet50")
    ours = plan(view, job, "treepack")
    monkeypatch.setattr(module, "_BUDGETS", (*module._BUDGETS[:-1],
                                             module._Budgets(10**9, None, ())))
    without = plan(view, job, "treepack")
    assert predict(ours, view, job).time_s < 0.8 * predict(without, view, job).time_s
    assert allreduce(ours, view, job)[0] < 0.8 * allreduce(without, view, job)[0]


def test_treepack_reaches_the_bound_where_direct_stars_are_optimal() -> None:
    # AWS regions behind 5 Gbit/s site caps: the caps bind, and the best split over direct
    # stars meets the bound; deeper trees mix phases at capped sites, which the simulator's
    # fair sharing does not schedule as the fluid model assumes (0.42 s simulated before)
    from netstorm.sim import allreduce

    view, job = builtin("cloud:aws:11"), Job.from_model("resnet50")
    ours = plan(view, job, "treepack")
    low = bound(view, job).time_s
    assert predict(ours, view, job).time_s == pytest.approx(low, rel=1e-6)
    assert allreduce(ours, view, job)[0] == pytest.approx(low, rel=1e-3)


@pytest.mark.parametrize("name", ["random:12:1", "netstorm9", "waxman:16:2"])
def test_column_fills_equal_shard_fill(name: str) -> None:
    from netstorm.cost import shard_fill
    from netstorm.packing import pack_trees
    from netstorm.plan import Shard

    module = importlib.import_module("netstorm.planners.treepack")
    view, job = builtin(name), Job.from_model("resnet50").with_chunk(250_000)
    pool = list(pack_trees(view, max_rounds=8, solver="simplex",
                           variants=[None, module.progress_masks(view, job, 0.3)]).pool)
    want = [shard_fill(Shard(1.0, c.root, module._tree(c.reduce_parent),
                             module._tree(c.broadcast_parent)), view, job) for c in pool]
    assert module.column_fills(view, job, pool) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_treepack_keeps_its_largest_tree_when_every_tree_is_under_min_fraction() -> None:
    # cities packs many small trees: a threshold above every tree's share once left no shard
    view, job = builtin("cities"), Job.from_model("resnet50")
    alone = plan(view, job, "treepack", min_fraction=0.99)
    assert len(alone.shards) == 1 and alone.shards[0].fraction == 1.0
    assert alone.predicted_time_s >= plan(view, job, "treepack").predicted_time_s
