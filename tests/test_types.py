"""NetworkView, Job, Plan: validation, immutability, JSON and networkx round trips."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from hypothesis import given

from netstorm import MODELS, Job, NetworkView, Plan, PlanError, Route, Shard, check_plan, plan
from netstorm.builtin_topologies import builtin
from tests.strategies import views


def tiny(**kw: object) -> NetworkView:
    cap = np.array([[0, 10e6, 0], [10e6, 0, 5e6], [0, 5e6, 0]])
    return NetworkView(sites=("a", "b", "c"), capacity=cap, **kw)  # type: ignore[arg-type]


def test_view_is_read_only_and_copies_its_input() -> None:
    cap = np.array([[0, 1.0], [2.0, 0]])
    view = NetworkView(sites=("a", "b"), capacity=cap)
    cap[0, 1] = 99
    assert view.capacity[0, 1] == 1.0
    with pytest.raises(ValueError):
        view.capacity[0, 1] = 5
    with pytest.raises(AttributeError):
        view.name = "x"  # type: ignore[misc]
    assert view.links == [(0, 1), (1, 0)]
    assert np.isinf(view.egress).all() and view.workers == (0, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"capacity": np.ones((3, 3))}, "diagonal"),
    ({"capacity": np.zeros((2, 2))}, "shape"),
    ({"capacity": -np.eye(3)[::-1]}, "negative"),
    ({"workers": ()}, "at least one worker"),
    ({"workers": (0, 7)}, "out of range"),
    ({"egress": np.zeros(3)}, "egress cap must be > 0"),
    ({"latency": np.full((3, 3), np.nan)}, "NaN"),
    ({"sites": ("a", "a", "b")}, "duplicate site names: a"),
])
def test_view_validation(kwargs: dict, message: str) -> None:
    base = {"sites": ("a", "b", "c"), "capacity": np.zeros((3, 3))}
    with pytest.raises(ValueError, match=message):
        NetworkView(**{**base, **kwargs})


def test_unreachable_workers_are_reported() -> None:
    cap = np.zeros((3, 3))
    cap[0, 1] = cap[1, 0] = cap[1, 2] = 1e6  # c can be reached but has no way out
    view = NetworkView(sites=("a", "b", "c"), capacity=cap)
    assert (2, 0) in view.unreachable_workers() and (0, 2) not in view.unreachable_workers()


@given(views())
def test_networkx_round_trip(view: NetworkView) -> None:
    graph = view.to_networkx()
    assert graph.number_of_edges() == len(view.links)
    for u, v in view.links:
        assert graph.edges[u, v]["capacity"] == view.capacity[u, v]
    assert NetworkView.from_networkx(graph, name=view.name) == view
    assert NetworkView.from_dict(json.loads(json.dumps(view.to_dict()))) == view


def test_from_networkx_with_named_nodes() -> None:
    g = nx.DiGraph()
    g.add_edge("x", "y", capacity=5.0, latency=0.01)
    g.add_edge("y", "x", capacity=7.0)
    g.nodes["y"]["worker"] = False
    view = NetworkView.from_networkx(g)
    assert view.sites == ("x", "y") and view.workers == (0,)
    assert view.capacity[1, 0] == 7.0 and view.latency[0, 1] == 0.01


def test_job_from_models_and_sizes() -> None:
    job = Job.from_model("resnet50")
    assert job.gradient_bytes == MODELS["resnet50"].params * 4
    assert job.compute_s == MODELS["resnet50"].compute_s and job.model == "resnet50"
    assert Job.from_model("100MB").gradient_bytes == 100_000_000
    assert Job.from_model("gpt2", element_size=2).gradient_bytes == 124_439_808 * 2
    assert Job.from_model("vgg16", chunk_bytes=1_000_000).chunk_bytes == 1_000_000
    assert Job((4, 8, 12)).gradient_bytes == 24
    with pytest.raises(ValueError, match="unknown model 'resnet51'"):
        Job.from_model("resnet51")


@pytest.mark.parametrize("kwargs, message", [
    ({"buckets": 0}, "positive"), ({"buckets": (8, -4)}, "positive"),
    ({"buckets": 10}, "multiples of element_size"), ({"element_size": 3}, "element_size"),
    ({"chunk_bytes": 2}, "chunk_bytes"), ({"compute_s": -1.0}, "compute_s"),
])
def test_job_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Job(**{"buckets": 16, **kwargs})


def test_plan_json_round_trip_is_lossless() -> None:
    view = builtin("netstorm9")
    for name in ("ps", "ring"):
        p = plan(view, Job.from_model("resnet50"), name)
        text = p.to_json()
        back = Plan.from_json(text)
        assert back == p and back.to_json() == text
        assert json.loads(text)["shards"][0]["reduce_tree"]  # keys are strings in JSON


def test_design_example_plan_loads() -> None:
    doc = {"version": 3, "planner": "treepack", "sites": ["a", "b", "c", "d"],
           "shards": [{"fraction": 1.0, "root": 2, "reduce_tree": {"0": 2, "1": 0},
                       "broadcast_tree": {"0": 2, "1": 0},
                       "routes": [{"edge": [1, 0], "paths": [[1, 0], [1, 3, 0]],
                                   "weights": [0.7, 0.3]}]}], "predicted_time_s": 1.9}
    p = Plan.from_dict(doc)
    assert p.shards[0].route(1, 0).weights == (0.7, 0.3)
    assert p.shards[0].route(0, 2) == Route.direct(0, 2)
    assert p.to_dict() == doc
    assert p.chunk_bytes is None  # written before plans carried a chunk: the job's is used
    assert Plan.from_dict({**doc, "chunk_bytes": 1024}).chunk_bytes == 1024


def _shard(**kw: object) -> Shard:
    base = {"fraction": 1.0, "root": 0, "reduce_tree": {1: 0, 2: 1},
            "broadcast_tree": {1: 0, 2: 1}}
    return Shard(**{**base, **kw})  # type: ignore[arg-type]


def _plan(*shards: Shard) -> Plan:
    return Plan(version=1, planner="t", sites=("a", "b", "c"), shards=shards)


def test_check_plan_accepts_a_valid_chain() -> None:
    check_plan(_plan(_shard()), tiny())


@pytest.mark.parametrize("shards, message", [
    ((_shard(fraction=0.5),), "sum to"),
    ((_shard(fraction=0.0), _shard()), "must be > 0"),
    ((_shard(reduce_tree={1: 0}),), r"workers \[2\] are not in the tree"),
    ((_shard(reduce_tree={1: 2, 2: 1}),), "cycle"),
    ((_shard(reduce_tree={0: 1, 1: 0, 2: 1}),), "root 0 has a parent"),
    ((_shard(broadcast_tree={1: 0, 2: 0}),), "no direct link and no route"),
    ((_shard(broadcast_tree={1: 0, 2: 0},
             routes=(Route((0, 2), ((0, 1, 2), (0, 2)), (0.5, 0.5)),)),), "not a link"),
    ((_shard(routes=(Route((0, 2), ((0, 1, 2),), (1.0,)),)),), "not a tree edge"),
    ((_shard(routes=(Route((0, 1), ((0, 1),), (0.4,)),)),), "sum to 1"),
    ((_shard(routes=(Route((0, 1), ((0, 2, 1),), (1.0,)),)),), "not a link"),
    ((_shard(root=5),), "outside"),
])
def test_check_plan_rejects(shards: tuple[Shard, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        check_plan(_plan(*shards), tiny())


def test_check_plan_rejects_relay_only_leaves() -> None:
    view = tiny(workers=(0, 1))
    with pytest.raises(PlanError, match="relay-only site 2 is a leaf"):
        check_plan(_plan(_shard()), view)
    check_plan(_plan(_shard(reduce_tree={1: 0}, broadcast_tree={1: 0})), view)
