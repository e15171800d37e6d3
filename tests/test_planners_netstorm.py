"""The paper's planner's compiled steps against the plain rules they transcribe.

``root_scores`` groups tree edges by depth on all roots at once and the multipath split runs
compiled (``netstorm.planners._netstorm_nb``); here they are checked, value for value, against
direct transcriptions of the paper's rules (a path walk per root and site; a Python loop over
the tree edges), on built-in views and on random ones with relays and site caps.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
from hypothesis import given, settings

from netstorm import Job, NetworkView, link_loads
from netstorm.builtin_topologies import builtin
from netstorm.cli.bench.planner import redraw
from netstorm.plan import Plan, Route, Shard
from netstorm.planners._routing import out_tree
from tests.strategies import views

paper = importlib.import_module("netstorm.planners.netstorm")
JOB = Job(buckets=40_000_000, chunk_bytes=1_000_000)
BUILTIN = ("netstorm9", "cloud:aws:11", "random:12:3", "waxman:16:1")


def scores_by_paths(view: NetworkView) -> np.ndarray:
    """The root score, literally: walk r's cheapest path to every site, hop by hop."""
    scores = np.zeros(view.n)
    for r in range(view.n):
        pred = out_tree(view, r)
        slowest: dict[int, float] = {}
        for j in range(view.n):
            if j == r:
                continue
            if pred[j] < 0:
                break
            path = [j]
            while path[-1] != r:
                path.append(int(pred[path[-1]]))
            for depth, (a, b) in enumerate(itertools.pairwise(reversed(path))):
                slowest[depth] = min(slowest.get(depth, math.inf), view.capacity[a, b])
        else:
            if slowest:
                scores[r] = 1.0 / sum(1.0 / b for b in slowest.values())
    return scores


def split_by_loop(plan: Plan, view: NetworkView, job: Job, primary_busy: int = 2) -> Plan:
    """The multipath split, edge by edge in Python (DESIGN 4.1 step 6's route weights)."""
    loads, _, _ = link_loads(plan, view, job)
    with np.errstate(divide="ignore", invalid="ignore"):
        horizon = float(np.nanmax(np.where(view.capacity > 0, loads / view.capacity, 0)))
    shards = []
    for shard in plan.shards:
        nbytes = shard.fraction * job.gradient_bytes
        routes = []
        for u, v in list(shard.reduce_edges()) + list(shard.broadcast_edges()):
            primary = shard.route(u, v).paths[0]
            limit = (primary_busy + 1) * sum(1.0 / view.capacity[a, b]
                                             for a, b in itertools.pairwise(primary))
            aux = paper.auxiliary_paths(view, u, v, primary, max_cost=limit)
            spare = [max(0.0, min(view.capacity[a, b] - loads[a, b] / horizon
                                  for a, b in itertools.pairwise(p))) for p in aux]
            rates = [nbytes / horizon, *spare]
            keep = [(p, r) for p, r in zip([primary, *aux], rates, strict=True)
                    if r > 1e-3 * sum(rates)]
            if len(keep) > 1:
                weights = [r / sum(r for _, r in keep) for _, r in keep]
                for (path, _), w in zip(keep, weights, strict=True):
                    hops = np.asarray(path)
                    loads[hops[:-1], hops[1:]] += nbytes * (w - (1.0 if path == primary else 0.0))
                routes.append(Route((u, v), tuple(p for p, _ in keep), tuple(weights)))
            elif primary != (u, v):
                routes.append(shard.route(u, v))
        shards.append(Shard(shard.fraction, shard.root, shard.reduce_tree,
                            shard.broadcast_tree, tuple(routes)))
    return Plan(plan.version, plan.planner, plan.sites, tuple(shards))


def check_same_plan(view: NetworkView) -> None:
    single = paper.netstorm(view, JOB, multipath=False)
    want = split_by_loop(single, view, JOB)
    got = paper.netstorm(view, JOB)
    assert got.shards == want.shards  # paths and weights, float for float


def test_root_scores_equal_the_path_walk_on_builtin_views() -> None:
    for name in BUILTIN:
        view = builtin(name)
        assert np.array_equal(paper.root_scores(view), scores_by_paths(view)), name


@settings(max_examples=60, deadline=None)
@given(views(min_sites=2, max_sites=9))
def test_root_scores_equal_the_path_walk(view: NetworkView) -> None:
    assert np.array_equal(paper.root_scores(view), scores_by_paths(view))


def test_multipath_split_equals_the_python_rule_on_builtin_views() -> None:
    for view in [*(builtin(name) for name in BUILTIN), redraw(builtin("netstorm9"), 0)]:
        check_same_plan(view)


@settings(max_examples=40, deadline=None)
@given(views(min_sites=3, max_sites=9))
def test_multipath_split_equals_the_python_rule(view: NetworkView) -> None:
    check_same_plan(view)


def test_auxiliary_paths_break_ties_by_site_index() -> None:
    n = 4
    cap = np.full((n, n), 100e6)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcd"), capacity=cap, latency=np.zeros((n, n)))
    # 0-1-3 and 0-2-3 cost the same: the one through the lower site index comes first
    assert paper.auxiliary_paths(view, 0, 3, (0, 3)) == [(0, 1, 3), (0, 2, 3)]
    assert paper.auxiliary_paths(view, 3, 0, (3, 0)) == [(3, 1, 0), (3, 2, 0)]
    assert paper.auxiliary_paths(view, 0, 3, (0, 3), max_cost=1.5 / 100e6) == []
