"""`netstorm.compile` against independent checks: every program run by the executor in
memory (messages in a random order) yields numpy's mean on every worker, bit-identical;
message bookkeeping; path proportions."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netstorm
from netstorm import Job, NetworkView, Plan, Route, Shard
from netstorm.builtin_topologies import builtin
from netstorm.compiler import compile
from netstorm.layout import assign_paths, bucket_bounds, chunk_layout, shard_elements
from netstorm.program import BROADCAST, REDUCE
from netstorm.testing import run_programs
from tests.strategies import views

SMALL = Job(buckets=4000, chunk_bytes=256)


def check_programs(plan: Plan, view: NetworkView, job: Job, by_bucket: bool = False,
                   seed: int = 0) -> None:
    """Every worker ends with numpy's mean of the workers' gradients, bit-identical."""
    programs = compile(plan, job, view.workers, by_bucket=by_bucket, view=view)
    elems = job.gradient_bytes // job.element_size
    rng = np.random.default_rng(seed)
    grads = {w: rng.standard_normal(elems).astype(np.float32) for w in view.workers}
    results = run_programs(programs, grads, seed=seed)
    want = np.mean([grads[w] for w in view.workers], axis=0, dtype=np.float64)
    first = results[view.workers[0]]
    assert np.isfinite(first).all(), "some element was never stored"
    np.testing.assert_allclose(first, want, rtol=0, atol=1e-5)
    for w in view.workers:
        assert np.array_equal(results[w], first), f"worker {w} differs from the others"
        assert programs[w].stores == sum(st.store for st in programs[w].steps)
    for r in view.relays:
        assert programs[r].stores == 0


@pytest.mark.parametrize("topology", ["netstorm9", "cloud:aws:8", "waxman:8:1"])
def test_every_planner_compiles_to_a_complete_dataflow(topology: str) -> None:
    view = builtin(topology)
    for name in netstorm.planner_names():
        plan = netstorm.plan(view, SMALL, name, seed=0)
        check_programs(plan, view, SMALL)


@settings(max_examples=30)
@given(view=views(max_sites=6))
def test_random_views_and_planners(view: NetworkView) -> None:
    for name in netstorm.planner_names():
        check_programs(netstorm.plan(view, SMALL, name, seed=0), view, SMALL)


def multipath_plan() -> tuple[NetworkView, Plan]:
    cap = np.full((4, 4), 10e6)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=("a", "b", "c", "r"), capacity=cap, workers=(0, 1, 2))
    routes = (Route((0, 2), ((0, 2), (0, 3, 2), (0, 1, 2)), (0.5, 0.3, 0.2)),
              Route((2, 0), ((2, 0), (2, 3, 0)), (0.6, 0.4)))
    shards = (Shard(0.7, 2, {0: 2, 1: 2}, {0: 2, 1: 0}, routes),
              Shard(0.3, 3, {0: 3, 1: 3, 2: 3}, {0: 3, 1: 3, 2: 3}))
    return view, Plan(1, "hand", view.sites, shards)


def test_multipath_and_relay_root() -> None:
    view, plan = multipath_plan()
    netstorm.check_plan(plan, view)
    check_programs(plan, view, SMALL)
    programs = compile(plan, SMALL, view.workers, view=view)
    # the relay-only root scales by 1/3 and stores nothing
    roots = [s for s in programs[3].steps if s.kind == "root"]
    assert roots and all(s.scale == pytest.approx(1 / 3) and not s.store for s in roots)
    # edge 0->2 (reduce): 700 elements in 64-element chunks = 11 chunks over weights
    # .5/.3/.2; the deficit rule, worked by hand, deals paths 0,1,2,0,0,1,0,2,1,0,0
    firsts = [s.sends[0].path for s in programs[0].steps
              if s.kind == "reduce" and s.ref.shard == 0]
    order = {(0, 2): 0, (0, 3, 2): 1, (0, 1, 2): 2}
    assert [order[p] for p in firsts] == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0, 0]
    # relays forward untouched
    fwd = [s for s in programs[1].steps if s.kind == "forward"]
    assert fwd and all(not s.add_local and s.sends[0].path[-1] == 2 for s in fwd)


def test_a_route_rule_lists_every_path_and_makes_relays_optional() -> None:
    view, plan = multipath_plan()
    live = dataclasses.replace(plan, route_rule=netstorm.QueueRule(1, 0))
    programs = compile(live, SMALL, view.workers, view=view)
    sends = [s.sends[0] for s in programs[0].steps if s.kind == "reduce" and s.ref.shard == 0]
    assert sends and all(s.paths == ((0, 2), (0, 3, 2), (0, 1, 2)) for s in sends)
    fwd = [s for s in programs[1].steps if s.kind == "forward" and s.ref.shard == 0]
    assert fwd and all(s.optional for s in fwd)
    assert programs[1].may_arrive and not (programs[1].may_arrive & programs[1].expects)
    for seed in range(5):  # random orders give the queue rule different depths to see
        check_programs(live, view, SMALL, seed=seed)


def test_message_phases_and_determinism() -> None:
    view = builtin("netstorm9")
    plan = netstorm.plan(view, SMALL, "ps")
    a, b = (compile(plan, SMALL, view.workers, view=view),
            compile(plan, SMALL, view.workers, view=view))
    assert a == b
    phases = {m.phase for p in a.values() for s in p.steps for m in s.waits}
    assert phases == {REDUCE, BROADCAST}


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=5), st.integers(0, 200))
def test_assign_paths_tracks_the_weights(raw: list[float], count: int) -> None:
    weights = tuple(w / sum(raw) for w in raw)
    choice = assign_paths(weights, count)
    counts = np.zeros(len(weights))
    for k, c in enumerate(choice):
        counts[c] += 1
        assert np.all(np.abs(counts - np.array(weights) * (k + 1)) < 1.5)


def test_shard_elements_tile_the_gradient() -> None:
    view = builtin("netstorm9")
    job = Job(buckets=4 * 1001, chunk_bytes=64)
    plan = netstorm.plan(view, job, "ps")
    spans = shard_elements(plan, job)
    assert spans[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    assert spans[-1][0] + spans[-1][1] == 1001


BUCKETED = Job(buckets=(4 * 700, 4 * 1900, 4 * 1400), chunk_bytes=256)


@pytest.mark.parametrize("name", ["ps", "ring", "netstorm", "treepack"])
def test_bucket_layout_is_a_complete_dataflow(name: str) -> None:
    view = builtin("netstorm9")
    check_programs(netstorm.plan(view, BUCKETED, name, seed=0), view, BUCKETED, by_bucket=True)


def test_bucket_layout_by_hand() -> None:
    view, plan = multipath_plan()  # shards 0.7 / 0.3
    job = Job(buckets=(4 * 10, 4 * 20), chunk_bytes=4 * 8)
    assert bucket_bounds(job) == [0, 10, 30]
    # last bucket first; bucket [10, 30) splits 14 / 6, bucket [0, 10) splits 7 / 3;
    # each piece is cut into chunks of 8 elements
    assert chunk_layout(plan, job, by_bucket=True) == [
        [(10, 8), (18, 6), (0, 7)], [(24, 6), (7, 3)]]
    # the flat layout ignores buckets: 21 / 9 elements
    assert chunk_layout(plan, job) == [[(0, 8), (8, 8), (16, 5)], [(21, 8), (29, 1)]]
    single = Job(buckets=4 * 30, chunk_bytes=4 * 8)
    assert chunk_layout(plan, single, by_bucket=True) == chunk_layout(plan, single)
    for prog in compile(plan, job, view.workers, by_bucket=True, view=view).values():
        for step in prog.steps:  # no chunk crosses a bucket boundary
            assert (step.ref.offset < 10) == (step.ref.offset + step.ref.elems <= 10)
