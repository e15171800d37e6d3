"""The simulator: link model by hand, payload-mode correctness for every planner, and
agreement with the cost model on static networks."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from netstorm.sim import Network, allreduce

import netstorm
from netstorm import Job, NetworkView, Plan
from netstorm.builtin_topologies import builtin
from tests.sim.test_sim_schedule import multipath_plan

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
    view, plan = multipath_plan()
    netstorm.check_plan(plan, view)
    check_mean(plan, view, MANY)


def test_payload_catches_a_broken_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: a program that drops one worker's slice of one chunk is caught."""
    import dataclasses

    import netstorm.sim.driver as engine

    real = engine.compile

    def broken(plan, job, workers=None, **kwargs):
        programs = dict(real(plan, job, workers, **kwargs))
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


# Static agreement with predict() (ResNet-50, job chunk 4 MB; treepack picks its own chunk
# and serves least slack first). Measured sim / predict:
#   netstorm9:    mlnet 1.13, netstorm 1.04, ps 1.01, ring 1.00, treepack 1.00, tsengine 1.02
#   cloud:aws:8:  mlnet 1.05, netstorm 1.07, ps 1.00, ring 1.00, treepack 1.00, tsengine 1.06
#   random:16:1:  mlnet 1.15, netstorm 1.38, ps 1.00, ring 1.18, treepack 1.03, tsengine 1.00
#   (random:16:2, not run here for time: netstorm 1.34, treepack 1.00.)
# predict() is a fluid estimate with one chunk of pipeline fill and the best preemptive
# schedule of every link's crossings; whole-chunk path choice on multipath edges and
# max-min sharing of site caps are in it. Cases outside 10 %:
# - mlnet: store-and-forward of whole chunks. Fixed fan-out trees over relays, ~3 chunks
#   per shard: a parent waits for its slowest child's whole chunk at every level, which
#   one chunk of fill does not cover. The gap is granularity and closes with small chunks
#   (netstorm9: 1.23 at 16 MB, 1.13 at 4 MB, 1.04 at 1 MB, 1.01 at 250 kB; checked below).
# - netstorm and ring on random:16: not granularity (the gap *grows* with smaller chunks:
#   netstorm 1.06 at 16 MB, 1.40 at 4 MB, 1.63 at 250 kB). Each physical link carries
#   tree edges of many shards in different phases (ring: all 16 shards on the same 16
#   links); in progress order a link does not know which downstream link is the
#   bottleneck, so the bottleneck idles while upstream links serve other shards. The model
#   assumes each link serves its crossings in the best order. treepack's plans ask for the
#   least-slack order (netstorm.send_order), which closes the gap for them; it is not
#   imposed on the other planners (it cost ps and mlnet up to 25 % on netstorm9).
WIDE = {"mlnet": 0.20, ("netstorm", "random:16:1"): 0.50, ("ring", "random:16:1"): 0.25}


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


def test_mlnet_gap_is_chunk_granularity() -> None:
    """The mlnet disagreement above is store-and-forward granularity: it closes with
    small chunks."""
    view = builtin("netstorm9")
    base = Job.from_model("resnet50", compute_s=0.0)
    plan = netstorm.plan(view, base, "mlnet")
    ratios = []
    for chunk in (4_000_000, 250_000):
        job = Job.from_model("resnet50", compute_s=0.0, chunk_bytes=chunk)
        ratios.append(allreduce(plan, view, job)[0] / netstorm.predict(plan, view, job).time_s)
    assert ratios[0] > 1.10
    assert abs(ratios[1] - 1) < 0.03, ratios


def test_link_schedules_bring_predict_to_the_simulator_on_cities(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the plan treepack made while the cost model paired the earliest head with the shortest
    # tail of a link alone: it mixes early reduce and late broadcast traffic of different
    # shards on the same links. That model predicted 0.38 s; the per-link schedules predict
    # 0.48 s; the simulator, serving least slack first, runs it in 0.49 s (0.55 s in
    # progress order)
    import dataclasses

    import netstorm.cost as cost

    view = builtin("cities")
    job = Job.from_model("resnet50", compute_s=0.0)
    with monkeypatch.context() as patch:
        patch.setattr(cost, "_link_schedules", lambda crossings, capacity, known: known)
        plan = netstorm.plan(view, job, "treepack")
        optimistic = netstorm.predict(plan, view, job).time_s
    sim_t, _ = allreduce(plan, view, job)
    assert sim_t / optimistic > 1.20
    assert 0.95 <= sim_t / netstorm.predict(plan, view, job).time_s <= 1.10
    progress_t, _ = allreduce(dataclasses.replace(plan, send_order="progress"), view, job)
    assert sim_t < progress_t * 0.95
