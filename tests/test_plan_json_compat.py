"""Plan files written by the previous release (no ``route_rule``) still load, and the
``route_rule`` key is written, read back and validated; ``QueueRule.choose`` by hand."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import netstorm
from netstorm import Job, Plan, QueueRule
from netstorm.builtin_topologies import builtin

DATA = Path(__file__).parent / "data"
OLD = ["plan-netstorm9-netstorm-0.1.json", "plan-netstorm9-treepack-0.1.json"]


@pytest.mark.parametrize("name", OLD)
def test_previous_release_plans_load(name: str) -> None:
    text = (DATA / name).read_text()
    raw = json.loads(text)
    assert "route_rule" not in raw  # the file predates the key
    plan = Plan.from_json(text)
    netstorm.check_plan(plan, builtin("netstorm9"))
    assert plan.route_rule is None
    assert plan.planner == raw["planner"] and len(plan.shards) == len(raw["shards"])
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert "route_rule" not in json.loads(plan.to_json())
    # the loaded values are the file's
    for shard, want in zip(plan.shards, raw["shards"], strict=True):
        assert shard.fraction == want["fraction"] and shard.root == want["root"]
        assert {str(k): v for k, v in shard.reduce_tree.items()} == want["reduce_tree"]
        assert [r.to_dict() for r in shard.routes] == sorted(
            want["routes"], key=lambda r: tuple(r["edge"]))


def test_the_old_multipath_plan_compiles_without_live_sends() -> None:
    plan = Plan.from_json((DATA / OLD[0]).read_text())
    assert any(len(r.paths) > 1 for s in plan.shards for r in s.routes)
    programs = netstorm.compile(plan, Job(buckets=4 * 2000, chunk_bytes=400))
    sends = [send for p in programs.values() for st in p.steps for send in st.sends]
    assert sends and all(len(s.paths) == 1 and s.rule is None for s in sends)
    assert not any(p.may_arrive for p in programs.values())


def test_a_netstorm_plan_carries_its_route_rule() -> None:
    view = builtin("netstorm9")
    plan = netstorm.plan(view, Job(buckets=4 * 3000, chunk_bytes=1024), "netstorm")
    assert plan.route_rule == QueueRule(aux_queue=1, primary_busy=2)
    data = json.loads(plan.to_json())
    assert data["route_rule"] == {"aux_queue": 1, "primary_busy": 2}
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.route_rule == QueueRule(1, 2)
    other = netstorm.plan(view, Job(buckets=4 * 3000, chunk_bytes=1024), "netstorm",
                          aux_queue=3, primary_busy=0)
    assert Plan.from_json(other.to_json()).route_rule == QueueRule(3, 0)


@pytest.mark.parametrize("rule", [
    {"aux_queue": -1, "primary_busy": 2},
    {"aux_queue": 1, "primary_busy": -3},
    {"aux_queue": 1.5, "primary_busy": 2},
    {"aux_queue": True, "primary_busy": 2},
    {"aux_queue": "1", "primary_busy": 2},
    {"aux_queue": 1, "primary_busy": 2, "aux_wait": 4},
    {"depth": 1},
    [1, 2],
])
def test_a_bad_route_rule_is_rejected(rule: object) -> None:
    data = json.loads((DATA / OLD[0]).read_text())
    data["route_rule"] = rule
    with pytest.raises(ValueError, match="route_rule"):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize("key, value", [("shards", 5), ("sites", 5)])
def test_a_type_error_elsewhere_does_not_blame_route_rule(key: str, value: object) -> None:
    data = json.loads((DATA / OLD[0]).read_text())
    data[key] = value
    with pytest.raises(ValueError) as err:
        Plan.from_dict(data)
    assert "route_rule" not in str(err.value)


def test_partial_route_rules_take_the_defaults() -> None:
    data = json.loads((DATA / OLD[0]).read_text())
    data["route_rule"] = {"primary_busy": 0}
    assert Plan.from_dict(data).route_rule == QueueRule(aux_queue=1, primary_busy=0)
    data["route_rule"] = None
    assert Plan.from_dict(data).route_rule is None


def test_queue_rule_choose_by_hand() -> None:
    rule = QueueRule(aux_queue=2, primary_busy=3)

    def depths(table: dict[int, int]) -> Callable[[int], int]:
        return lambda hop: table[hop]

    hops = (5, 6, 7)  # the primary's first hop, then two auxiliary paths'
    # primary not busy (depth <= primary_busy): the primary, whatever the others hold
    assert rule.choose(hops, depths({5: 0, 6: 0, 7: 0})) == 0
    assert rule.choose(hops, depths({5: 3, 6: 0, 7: 0})) == 0
    # primary busy: the first auxiliary path holding fewer than aux_queue
    assert rule.choose(hops, depths({5: 4, 6: 1, 7: 0})) == 1
    assert rule.choose(hops, depths({5: 4, 6: 2, 7: 1})) == 2
    assert rule.choose(hops, depths({5: 9, 6: 5, 7: 0})) == 2
    # every auxiliary path busy too: the primary
    assert rule.choose(hops, depths({5: 4, 6: 2, 7: 2})) == 0
    assert rule.choose(hops, depths({5: 50, 6: 9, 7: 3})) == 0
    # one path: always it; aux_queue 0 never diverts
    assert rule.choose((5,), depths({5: 99})) == 0
    assert QueueRule(0, 0).choose(hops, depths({5: 9, 6: 0, 7: 0})) == 0
    assert QueueRule().choose(hops, depths({5: 3, 6: 0, 7: 0})) == 1  # defaults 1 / 2
    assert QueueRule().to_dict() == {"aux_queue": 1, "primary_busy": 2}
