"""The simulator: link model by hand, payload-mode correctness for every planner, and
agreement with the cost model on static networks."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from netstorm.sim import Network, allreduce

import netstorm
from netstorm import Job, NetworkView, Plan, Route, Shard
from netstorm.builtin_topologies import builtin

MB = 1e6


def pair(cap: float = 10 * MB, latency: float = 0.0, egress: float = np.inf) -> NetworkView:
    c = np.zeros((3, 3))
    c[0, 1] = c[0, 2] = c[1, 0] = c[2, 0] = cap
    return NetworkView(sites=("a", "b", "c"), capacity=c,
                       latency=np.where(c > 0, latency, 0.0),
                       egress=np.array([egress, np.inf, np.inf]))


def run_sends(view: NetworkView, sends, changes=(), window=None) -> dict:
    env = simpy.Environment()
    net = Network(env, view, window_bytes=window)
    arrived = {}
    for name, src, dst, nbytes in sends:
        net.send(src, dst, nbytes, lambda name=name: arrived.__setitem__(name, env.now))

    def change():
        for t, cap in changes:
            yield env.timeout(t - env.now)
            net.set_capacity(cap)

    env.process(change())
    env.run()
    return arrived


def test_one_transfer_takes_bytes_over_capacity_plus_latency() -> None:
    got = run_sends(pair(latency=0.05), [("x", 0, 1, 20 * MB)])
    assert got["x"] == pytest.approx(2.0 + 0.05)


def test_one_link_sends_in_turn() -> None:
    got = run_sends(pair(), [("x", 0, 1, 10 * MB), ("y", 0, 1, 10 * MB)])
    assert (got["x"], got["y"]) == pytest.approx((1.0, 2.0))


def test_links_share_an_egress_cap_fairly() -> None:
    # two links of 10 MB/s out of a 12 MB/s egress: 6 each until the short one ends
    got = run_sends(pair(egress=12 * MB), [("x", 0, 1, 6 * MB), ("y", 0, 2, 12 * MB)])
    assert got["x"] == pytest.approx(1.0)
    assert got["y"] == pytest.approx(1.0 + 6 / 10)  # then alone at the link's 10 MB/s


def test_capacity_change_mid_transfer() -> None:
    view = pair()
    slower = np.array(view.capacity) / 4
    got = run_sends(view, [("x", 0, 1, 20 * MB)], changes=[(1.0, slower)])
    assert got["x"] == pytest.approx(1.0 + 10 / 2.5)  # 10 MB at 10, 10 MB at 2.5


def test_window_caps_a_transfer_by_rtt() -> None:
    got = run_sends(pair(latency=0.1), [("x", 0, 1, 10 * MB)], window=1 * MB)
    assert got["x"] == pytest.approx(10 / 5 + 0.1)  # 1 MB / 0.2 s = 5 MB/s


# Few chunks per shard: each fused_reduce call costs ~8 ms on a 2-core box (kernel launch
# overhead), and the hand multipath test below exercises many chunks per edge.
SMALL = Job(buckets=4 * 3000, chunk_bytes=2048)
MANY = Job(buckets=4 * 3000, chunk_bytes=256)


def gradients(view: NetworkView, elems: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {w: rng.integers(-1000, 1000, elems).astype(np.float32) for w in view.workers}


def check_mean(plan: Plan, view: NetworkView, job: Job) -> None:
    elems = job.gradient_bytes // job.element_size
    grads = gradients(view, elems)
    _, out = allreduce(plan, view, job, payload=grads)
    # integer-valued fp32 sums are exact in any order; the root scales once by 1/W in fp32
    total = np.sum([grads[w].astype(np.float64) for w in view.workers], axis=0)
    want = total.astype(np.float32) * np.float32(1 / len(view.workers))
    assert set(out) == set(view.workers)
    for w in view.workers:
        np.testing.assert_array_equal(out[w], want, err_msg=f"{plan.planner} site {w}")


@pytest.mark.parametrize("topology", ["netstorm9", "cloud:aws:8", "waxman:10:2"])
def test_payload_every_planner_yields_the_mean(topology: str) -> None:
    view = builtin(topology)
    for name in netstorm.planner_names():
        check_mean(netstorm.plan(view, SMALL, name, seed=0), view, SMALL)


def test_payload_multipath_and_relay_only_root() -> None:
    cap = np.full((4, 4), 10 * MB)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=("a", "b", "c", "r"), capacity=cap, workers=(0, 1, 2))
    routes = (Route((0, 2), ((0, 2), (0, 3, 2), (0, 1, 2)), (0.5, 0.3, 0.2)),
              Route((2, 0), ((2, 0), (2, 3, 0)), (0.6, 0.4)))
    shards = (Shard(0.7, 2, {0: 2, 1: 2}, {0: 2, 1: 0}, routes),
              Shard(0.3, 3, {0: 3, 1: 3, 2: 3}, {0: 3, 1: 3, 2: 3}))
    plan = Plan(1, "hand", view.sites, shards)
    netstorm.check_plan(plan, view)
    check_mean(plan, view, MANY)


def test_payload_catches_a_broken_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: a program that drops one worker's slice of one chunk is caught."""
    import dataclasses

    import netstorm.sim.engine as engine

    real = engine.compile

    def broken(plan, job, workers=None):
        programs = dict(real(plan, job, workers))
        prog = programs[1]
        i = next(i for i, s in enumerate(prog.steps) if s.add_local and s.waits)
        steps = list(prog.steps)
        steps[i] = dataclasses.replace(steps[i], add_local=False)
        programs[1] = dataclasses.replace(prog, steps=tuple(steps))
        return programs

    monkeypatch.setattr(engine, "compile", broken)
    view = builtin("netstorm9")
    with pytest.raises(AssertionError):
        check_mean(netstorm.plan(view, SMALL, "ps"), view, SMALL)


# Static agreement with predict(). Planners and topologies where the simulated schedule
# cannot follow the fluid model get a documented wider band (see sim/README in the report):
# - mlnet: fixed fan-out trees in index order over relays; a parent waits for its slowest
#   child's chunk, and with ~3 chunks per shard the pipeline never reaches steady state;
# - treepack: LP-tight plans load many links and site caps to 100% at once, so any stall
#   on any of them shows; with site caps (AWS) the sim shares a cap max-min fairly among
#   a site's active links while the fluid model lets it split in proportion to the loads;
# - netstorm on random meshes: 16 shards of ~1.6 chunks each, whole chunks on slow
#   auxiliary paths, so the pipeline term dominates and is only approximated.
# - ring on random:16: 16 chain-shaped shards of 15 relayed hops, ~2 chunks each.
WIDE = {"mlnet": 0.25, "treepack": 0.60, ("netstorm", "random:16:1"): 0.70,
        ("netstorm", "cloud:aws:8"): 0.15, ("ring", "random:16:1"): 0.25}


@pytest.mark.parametrize("topology", ["netstorm9", "cloud:aws:8", "random:16:1"])
def test_static_agreement_with_predict(topology: str) -> None:
    view = builtin(topology)
    job = Job.from_model("resnet50", compute_s=0.0)
    report = []
    for name in netstorm.planner_names():
        plan = netstorm.plan(view, job, name, seed=0)
        sim_t, _ = allreduce(plan, view, job)
        pred = netstorm.predict(plan, view, job).time_s
        tol = WIDE.get((name, topology), WIDE.get(name, 0.10))
        report.append((name, sim_t / pred))
        assert abs(sim_t / pred - 1) <= tol, f"{name} on {topology}: sim {sim_t:.3f} s, " \
                                             f"predicted {pred:.3f} s"
    within = [n for n, r in report if abs(r - 1) <= 0.10]
    assert "ps" in within, report  # the simplest scheme agrees closely everywhere
