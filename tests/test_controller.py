"""The re-plan controller with an injected clock and planner, and the registry's run
keywords (``make_state``, ``default_policy``) as the simulator's loop uses them."""

from __future__ import annotations

import dataclasses

import netstorm.sim
import numpy as np
import pytest

import netstorm
from netstorm import (
    BandwidthEstimator,
    Controller,
    Job,
    NetworkView,
    Plan,
    PlanError,
    ReplanPolicy,
    Shard,
    Switch,
    planner_info,
    register_planner,
)
from netstorm.awareness import (
    AnyChangePolicy,
    EveryIterationPolicy,
    StaticPolicy,
    policy_named,
)
from netstorm.builtin_topologies import builtin
from netstorm.compiler import compile
from netstorm.planners import TSEngineState, ps

JOB = Job(buckets=4 * 600, chunk_bytes=4 * 100)
MB = 1e6


def mesh4() -> NetworkView:
    cap = np.full((4, 4), 10 * MB)
    np.fill_diagonal(cap, 0)
    return NetworkView(sites=("a", "b", "c", "d"), capacity=cap, name="mesh4")


class Fake:
    """``make_plan``: records every view it is given and returns a star plan whose root
    moves on by one site per call (version 7, predicted time tiny), advancing the injected
    timer by 0.25 s as if planning took that long."""

    def __init__(self, view: NetworkView) -> None:
        self.views: list[NetworkView] = []
        self.plans: list[Plan] = []
        self.sites = view.sites
        self.tick = [100.0]

    def timer(self) -> float:
        return self.tick[0]

    def __call__(self, view: NetworkView, job: Job) -> Plan:
        self.views.append(view)
        root = len(self.views) % len(self.sites)
        star = {s: root for s in range(len(self.sites)) if s != root}
        made = Plan(7, "fake", self.sites, (Shard(1.0, root, star, star),),
                    predicted_time_s=1e-9)
        self.plans.append(made)
        self.tick[0] += 0.25
        return made


def controller(policy: object = None, estimator: bool = True, **kw: object
               ) -> tuple[Controller, Fake, list[float], BandwidthEstimator | None]:
    view = mesh4()
    fake = Fake(view)
    now = [0.0]
    est = BandwidthEstimator(view) if estimator else None
    ctl = Controller(view, JOB, fake, policy=policy, estimator=est,  # type: ignore[arg-type]
                     clock=lambda: now[0], timer=fake.timer, **kw)  # type: ignore[arg-type]
    return ctl, fake, now, est


def versions(ctl: Controller) -> set[int]:
    return {p.plan_version for p in ctl.programs.values()}


def test_the_first_plan_is_version_1_and_compiled() -> None:
    ctl, fake, _, _ = controller(policy_named("every-iteration"))
    assert len(fake.views) == 1 and fake.views[0] is ctl.reference
    assert ctl.version == 1 and ctl.plan.version == 1
    assert ctl.plan == dataclasses.replace(fake.plans[0], version=1)
    assert versions(ctl) == {1} and set(ctl.programs) == {0, 1, 2, 3}
    assert ctl.programs == compile(ctl.plan, JOB, view=ctl.reference)
    assert ctl.switches == []
    assert ctl.boundary(0) is None  # never before the first iteration
    assert ctl.version == 1 and len(fake.views) == 1


def test_every_iteration_switches_at_every_boundary() -> None:
    ctl, fake, now, est = controller(policy_named("every-iteration"))
    assert est is not None
    got = []
    for it in range(1, 5):
        now[0] = 3.0 * it + 0.5
        est.observe(0, 1, 2 * MB * it, 1.0, now[0])  # a new rate on 0 -> 1 each time
        old = ctl.programs
        sw = ctl.boundary(it)
        assert sw == Switch(iteration=it, time_s=now[0], version=it + 1, planning_s=0.25,
                            reason="every iteration")
        got.append(sw)
        assert ctl.version == it + 1 and versions(ctl) == {it + 1}
        assert ctl.programs is not old
        # the candidate was made from the estimate at that time and is now the plan
        assert len(fake.views) == it + 1
        assert fake.views[-1].capacity[0, 1] == 2 * MB * it
        assert np.array_equal(fake.views[-1].capacity, est.estimate())
        assert ctl.reference is fake.views[-1]
        assert ctl.plan == dataclasses.replace(fake.plans[-1], version=it + 1)
        assert ctl.plan.shards[0].root == (it + 1) % 4
        assert ctl.programs == compile(ctl.plan, JOB, view=ctl.reference)
    assert ctl.switches == got


@pytest.mark.parametrize("kind", ["static", "no-estimator"])
def test_nothing_changes_without_a_policy_or_estimator(kind: str) -> None:
    if kind == "static":
        ctl, fake, now, est = controller(StaticPolicy())
    else:
        ctl, fake, now, est = controller(policy_named("every-iteration"), estimator=False)
    plan, programs = ctl.plan, ctl.programs
    for it in range(1, 5):
        now[0] = float(it)
        if est is not None:
            est.observe(0, 1, 50 * MB * it, 1.0, now[0])
        assert ctl.boundary(it) is None
    assert ctl.plan is plan and ctl.programs is programs and ctl.version == 1
    assert len(fake.views) == 1 and ctl.switches == []


def test_default_policy_is_static() -> None:
    ctl, fake, now, est = controller(None)
    assert isinstance(ctl.policy, StaticPolicy) and est is not None
    now[0] = 5.0
    est.observe(0, 1, 99 * MB, 1.0, now[0])
    assert ctl.boundary(1) is None and len(fake.views) == 1


def test_min_interval_spaces_the_switches() -> None:
    # change_tol=0: any moved estimate is a reason to look; the fake's candidate always
    # predicts 1e-9 s, so every look switches unless the interval forbids it
    ctl, fake, now, est = controller(ReplanPolicy(min_interval_s=10, change_tol=0.0))
    assert est is not None
    times = [1.0, 5.0, 10.9, 11.0, 12.0, 20.9, 21.0, 40.0, 45.0]
    for it, t in enumerate(times, start=1):
        now[0] = t
        est.observe(0, 1, MB * 2.0 ** it, 1.0, t)  # a jump every time: the estimate moves
        ctl.boundary(it)
    # by hand: 1 switches (no switch before); 5 and 10.9 are < 1 + 10; 11 switches; 12 and
    # 20.9 are < 21; 21 switches; 40 switches; 45 < 50
    assert [s.time_s for s in ctl.switches] == [1.0, 11.0, 21.0, 40.0]
    assert [s.iteration for s in ctl.switches] == [1, 4, 7, 8]
    assert [s.version for s in ctl.switches] == [2, 3, 4, 5] and ctl.version == 5
    assert len(fake.views) == 1 + 4  # blocked boundaries do not even ask the planner
    assert all(b.time_s - a.time_s >= 10
               for a, b in zip(ctl.switches, ctl.switches[1:], strict=False))


# ---------------------------------------------------------------------------------------
# register_planner(make_state=, default_policy=)

@pytest.fixture
def registry_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from netstorm import registry

    netstorm.planner_names()  # load the built-ins and plug-ins, then register into a copy
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


class State:
    def __init__(self, seed: int | None) -> None:
        self.seed = seed


def test_make_state_and_default_policy_drive_the_simulator(registry_copy: None) -> None:
    made: list[State] = []
    seen: list[object] = []

    def make_state(seed: int | None) -> State:
        made.append(State(seed))
        return made[-1]

    def stateful(view: NetworkView, job: Job, *, seed: int | None = None,
                 state: object = None) -> Plan:
        seen.append(state)
        return ps(view, job)

    register_planner("test-stateful", stateful, make_state=make_state,
                     default_policy="every-iteration")
    info = planner_info("test-stateful")
    assert info.func is stateful and info.make_state is make_state
    state = info.new_state(11)
    assert made == [state] and state.seed == 11
    assert isinstance(info.policy(), EveryIterationPolicy)
    assert isinstance(info.policy("static"), StaticPolicy)

    view = builtin("netstorm9")
    job = Job(buckets=4 * 3000, chunk_bytes=4000)
    result = netstorm.sim.simulate(view, job, "test-stateful", iterations=3, seed=5)
    assert len(made) == 2 and made[1].seed == 5  # one fresh state for the run
    assert len(seen) == 3  # the first plan and one candidate per later boundary
    assert {id(s) for s in seen} == {id(made[1])}
    assert len(result.switches) == 2 and result.versions == (1, 2, 3)
    assert [s.iteration for s in result.switches] == [1, 2]
    assert all(s.reason == "every iteration" for s in result.switches)

    # a policy named by the caller wins over the default
    seen.clear()
    static = netstorm.sim.simulate(view, job, "test-stateful", iterations=3,
                                   policy="static")
    assert len(seen) == 1 and static.switches == () and static.versions == (1, 1, 1)


def test_a_stateless_planner_gets_no_state_and_our_policy(registry_copy: None) -> None:
    seen: list[object] = []

    def plain(view: NetworkView, job: Job, *, seed: int | None = None,
              state: object = None) -> Plan:
        seen.append(state)
        return ps(view, job)

    policy = ReplanPolicy(min_interval_s=3.0)
    register_planner("test-plain", plain)
    register_planner("test-own-policy", plain, default_policy=policy)
    info = planner_info("test-plain")
    assert info.new_state(1) is None
    assert info.policy() == ReplanPolicy()
    assert planner_info("test-own-policy").policy() is policy
    netstorm.sim.simulate(builtin("netstorm9"), JOB, "test-plain", iterations=2)
    assert seen and all(s is None for s in seen)


def test_bad_run_keywords_are_plan_errors(registry_copy: None) -> None:
    def p(view: NetworkView, job: Job, *, seed: object = None, state: object = None) -> Plan:
        return ps(view, job)

    with pytest.raises(PlanError, match="make_state must be callable"):
        register_planner("test-bad", p, make_state=5)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="unknown re-plan policy 'sometimes'"):
        register_planner("test-bad", p, default_policy="sometimes")
    with pytest.raises(PlanError, match="default_policy must be a policy"):
        register_planner("test-bad", p, default_policy=42)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="unknown planner 'test-bad'"):
        planner_info("test-bad")  # nothing was registered

    def attrs(view: NetworkView, job: Job, *, seed: object = None,
              state: object = None) -> Plan:
        return ps(view, job)

    attrs.make_state = "not callable"  # type: ignore[attr-defined]
    with pytest.raises(PlanError, match="make_state must be callable"):
        planner_info(attrs)


def test_builtin_run_keywords() -> None:
    ts = planner_info("tsengine")
    assert ts.make_state is not None and ts.default_policy == "every-iteration"
    a, b = ts.new_state(3), ts.new_state(3)
    assert isinstance(a, TSEngineState) and a is not b and a.plans == 0
    assert a.rng.integers(2**32, size=4).tolist() == b.rng.integers(2**32, size=4).tolist()
    assert (ts.new_state(4).rng.integers(2**32, size=4).tolist()
            != ts.new_state(3).rng.integers(2**32, size=4).tolist())
    assert isinstance(ts.policy(), EveryIterationPolicy)
    assert planner_info("netstorm").default_policy == "any-change"
    assert isinstance(planner_info("netstorm").policy(), AnyChangePolicy)
    for name in ("ps", "ring", "mlnet"):
        info = planner_info(name)
        assert info.default_policy == "static" and isinstance(info.policy(), StaticPolicy)
        assert info.new_state(0) is None
    tp = planner_info("treepack")
    assert isinstance(tp.policy(), ReplanPolicy) and tp.new_state(0) is None
