"""The compiled core against the executor path: the same times, bytes and decisions.

The compiled core (:mod:`netstorm.sim.core`) is a second implementation of the executor's
firing rule and of the network; the executor path (one :class:`~netstorm.executor.Executor`
per site on :class:`~netstorm.sim.network.Network`) is the oracle. Every planner runs
through both on views that exercise latency, TCP windows, site caps (max-min sharing),
dynamics mid-iteration, re-plans, route rules, overlap and per-site compute times.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netstorm.sim import SimResult, heaps, simulate

from netstorm import Job, NetworkView, QueueRule, plan, planner_names
from netstorm.awareness import BandwidthEstimator
from netstorm.builtin_topologies import builtin
from netstorm.dynamics import Redraw, Trace
from netstorm.level_shift import LevelShiftEstimator
from netstorm.plan_files import fixed_planner
from netstorm.registry import Planner

pytestmark = pytest.mark.timeout(600)


def _same(a: SimResult, b: SimResult) -> None:
    """Equal to floating-point tolerance (in practice the two agree bit for bit)."""
    assert len(a.iteration_s) == len(b.iteration_s)
    np.testing.assert_allclose(a.iteration_s, b.iteration_s, rtol=1e-9, atol=0)
    np.testing.assert_allclose(a.start_s, b.start_s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.link_bytes, b.link_bytes, rtol=1e-12)
    np.testing.assert_allclose(a.link_busy_s, b.link_busy_s, rtol=1e-9, atol=1e-12)
    assert a.transfers == b.transfers
    assert a.versions == b.versions
    assert [(s.iteration, s.version) for s in a.switches] == \
        [(s.iteration, s.version) for s in b.switches]
    np.testing.assert_allclose(a.estimate_error, b.estimate_error, rtol=1e-9, atol=1e-12,
                               equal_nan=True)


def _both(view: NetworkView, job: Job, planner: str | Planner, **kwargs: object
          ) -> tuple[SimResult, SimResult]:
    fast = simulate(view, job, planner, engine="compiled", **kwargs)  # type: ignore[arg-type]
    slow = simulate(view, job, planner, engine="executor", **kwargs)  # type: ignore[arg-type]
    return fast, slow


_CASES = {
    # the paper's mesh; capacities redrawn every 20 s, from time 0: re-plans and probes
    "netstorm9-dynamics": (lambda: builtin("netstorm9"), Job.from_model("resnet50"),
                           {"dynamics": Redraw(20.0, 20e6 / 8, 155e6 / 8, seed=1,
                                               at_start=True), "iterations": 8}),
    # latency and a TCP window that caps long links
    "cities-window": (lambda: builtin("cities"), Job.from_model("resnet50"),
                      {"window_bytes": 4e6, "iterations": 4}),
    # 5 Gbit/s egress and ingress caps: max-min sharing across each site's links
    "aws-caps": (lambda: builtin("cloud:aws:8"), Job.from_model("resnet50"),
                 {"iterations": 4}),
    # overlap with the backward pass, four buckets, a different compute time per site
    "waxman-overlap": (lambda: builtin("waxman:10:1"),
                       Job(buckets=(20_000_000,) * 4, chunk_bytes=2_000_000,
                           compute_s=tuple(0.05 + 0.01 * i for i in range(10))),
                       {"overlap": True, "iterations": 3}),
    # two relay-only sites (they forward, never compute), one with a site cap
    "relays": (lambda: _with_relays(builtin("random:8:3")), Job.from_model("resnet50"),
               {"iterations": 3}),
}


def _with_relays(view: NetworkView) -> NetworkView:
    caps = np.full(view.n, np.inf)
    caps[7] = 200e6 / 8
    return dataclasses.replace(view, workers=tuple(range(6)), egress=caps, ingress=caps,
                               name="random:8:3 with relays r6, r7")


@pytest.mark.parametrize("case", sorted(_CASES))
@pytest.mark.parametrize("planner", planner_names())
def test_compiled_core_equals_the_executor_path(case: str, planner: str) -> None:
    make, job, kwargs = _CASES[case]
    fast, slow = _both(make(), job, planner, **kwargs)
    _same(fast, slow)


def test_the_cases_exercise_what_they_claim() -> None:
    """Route rules move chunks to auxiliary hops, caps bind, dynamics re-plan."""
    view, job = builtin("cloud:aws:8"), Job.from_model("resnet50")
    made = plan(view, job, "netstorm")
    stay = dataclasses.replace(made, route_rule=QueueRule(aux_queue=0, primary_busy=2))
    runs = {}
    for name, p in (("moves", made), ("stays", stay)):
        fast, slow = _both(view, job, fixed_planner(p), iterations=2)
        _same(fast, slow)
        runs[name] = fast
    # with aux_queue=0 no chunk may leave its primary path: the bytes per link differ
    assert not np.allclose(runs["moves"].link_bytes, runs["stays"].link_bytes)
    # some transfer ran slower than its link: a shared egress or ingress cap bound it
    used = runs["moves"].link_bytes > 0
    alone = runs["moves"].link_bytes[used] / view.capacity[used]
    assert (runs["moves"].link_busy_s[used] > alone * 1.01).any()
    make, job, kwargs = _CASES["netstorm9-dynamics"]
    fast, _ = _both(make(), job, "treepack", **kwargs)
    assert fast.switches and fast.changes_s


def _caps_view(n: int, seed: int, share: float) -> NetworkView:
    rng = np.random.default_rng(seed)
    cap = np.exp(rng.uniform(np.log(20e6), np.log(2e9), (n, n))) / 8
    np.fill_diagonal(cap, 0)
    lat = rng.uniform(0, 0.02, (n, n))
    np.fill_diagonal(lat, 0)
    # caps on some sites only: several coupled groups of transfers, not one
    caps = np.where(rng.random(n) < share, rng.uniform(50e6, 500e6, n) / 8, np.inf)
    return NetworkView(sites=tuple(f"s{i}" for i in range(n)), capacity=cap, latency=lat,
                       egress=caps, ingress=caps[::-1].copy(), name=f"caps:{n}:{seed}")


@settings(max_examples=12)
@given(n=st.integers(3, 7), seed=st.integers(0, 10_000), share=st.sampled_from([0, .5, 1]),
       planner=st.sampled_from(["ps", "ring", "treepack", "netstorm", "mlnet"]),
       changes=st.booleans())
def test_random_capped_meshes_with_changes_mid_iteration(
        n: int, seed: int, share: float, planner: str, changes: bool) -> None:
    view = _caps_view(n, seed, share)
    job = Job(buckets=8_000_000, chunk_bytes=1_000_000, compute_s=0.01)
    dynamics = None
    if changes:  # capacity steps at odd instants, inside iterations
        rng = np.random.default_rng(seed + 1)
        rows = []
        for t in (0.013, 0.07, 0.31):
            for u, v in zip(*np.nonzero(view.capacity), strict=True):
                if rng.random() < 0.5:
                    bps = float(view.capacity[u, v] * rng.uniform(0.3, 1.5))
                    rows.append((t, view.sites[u], view.sites[v], bps))
        dynamics = Trace(tuple(rows))
    fast, slow = _both(view, job, planner, iterations=4, dynamics=dynamics)
    _same(fast, slow)


def test_the_compiled_engine_is_the_default_and_record_takes_the_executor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import netstorm.sim.driver as engine

    view, job = builtin("netstorm9"), Job.from_model("resnet50")
    recorded = simulate(view, job, "ring", iterations=1, record=True)
    assert recorded.log  # only the executor path records transfers

    def executor_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default ran the executor path")

    monkeypatch.setattr(engine, "run_iteration", executor_path)
    assert simulate(view, job, "ring", iterations=2).transfers > 0
    with pytest.raises(AssertionError, match="executor path"):
        simulate(view, job, "ring", iterations=1, engine="executor")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="engine"):
        simulate(view, job, "ring", iterations=1, engine="fast")
    with pytest.raises(ValueError, match="record"):
        simulate(view, job, "ring", iterations=1, engine="compiled", record=True)


# -- the pieces ------------------------------------------------------------------------------
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=200))
def test_pairing_heap_pops_in_key_then_seq_order(ops: list[tuple[bool, int]]) -> None:
    """Against heapq over (key, seq): pushes and pops interleaved."""
    size = len(ops)
    f = np.zeros((size, 1))
    i = np.full((size, 3), -1, dtype=np.int64)
    root, ref, got, want = -1, [], [], []
    for row, (push, key) in enumerate(ops):
        if push or root < 0:
            f[row, heaps.KEY], i[row, heaps.SEQ] = key, row
            i[row, heaps.CHILD] = i[row, heaps.SIB] = -1
            root = heaps.meld(f, i, root, row)
            heapq.heappush(ref, (key, row))
        else:
            got.append(root)
            root = heaps.pop(f, i, root)
            want.append(heapq.heappop(ref)[1])
    while root >= 0:
        got.append(root)
        root = heaps.pop(f, i, root)
        want.append(heapq.heappop(ref)[1])
    assert got == want


@pytest.mark.parametrize("estimator", [BandwidthEstimator, LevelShiftEstimator])
def test_batched_observations_equal_one_call_each(estimator: type) -> None:
    view = builtin("netstorm9")
    rng = np.random.default_rng(3)
    count = 400
    src = rng.integers(0, 9, count)
    dst = (src + rng.integers(1, 9, count)) % 9
    nbytes = rng.choice([0.0, 1e5, 4e6], count)
    seconds = rng.uniform(0, 2, count) * rng.choice([0, 1, 1, 1], count)
    when = np.cumsum(rng.uniform(0, 1, count))
    capped = rng.random(count) < 0.3
    one, batch = estimator(view), estimator(view)
    for args in zip(src, dst, nbytes, seconds, when, capped, strict=True):
        one.observe(*args)
    batch.observe_many(src, dst, nbytes, seconds, when, capped)
    np.testing.assert_array_equal(one.estimate(), batch.estimate())
    np.testing.assert_array_equal(one.samples(), batch.samples())
    np.testing.assert_array_equal(one.confidence(when[-1]), batch.confidence(when[-1]))
    with pytest.raises(ValueError, match="finite"):
        batch.observe_many(src[:1], dst[:1], nbytes[:1], np.array([np.inf]), when[:1])


@settings(max_examples=60)
@given(n=st.integers(2, 6), seed=st.integers(0, 10_000), share=st.sampled_from([0.3, 1.0]),
       windowed=st.booleans())
def test_maxmin_over_coupled_transfers_equals_the_reference_solver(
        n: int, seed: int, share: float, windowed: bool) -> None:
    """:func:`netstorm.sim.sharing.maxmin` gives :func:`maxmin_rates`' rates on any set of
    active links under random caps (ties included: capacities repeat), to the last bit or
    one ulp: the reference also carries each link as a one-flow resource, whose remaining
    capacity rounds apart from ``cap - level``."""
    import simpy
    from netstorm.sim import maxmin_rates
    from netstorm.sim.compiled import CompiledNetwork
    from netstorm.sim.sharing import maxmin
    from netstorm.sim.tables import L_RATE_CAP

    rng = np.random.default_rng(seed)
    cap = rng.choice([1e6, 2e6, 5e6, 1e7], (n, n))
    np.fill_diagonal(cap, 0)
    caps = np.where(rng.random(n) < share, rng.choice([3e6, 6e6, 1.2e7], n), np.inf)
    view = NetworkView(sites=tuple(f"s{i}" for i in range(n)), capacity=cap,
                       latency=np.where(cap > 0, 0.01, 0.0), egress=caps,
                       ingress=rng.permutation(caps))
    net = CompiledNetwork(simpy.Environment(), view, window_bytes=5e4 if windowed else None)
    links = np.array([u * n + v for u in range(n) for v in range(n) if u != v])
    flows = np.sort(rng.choice(links, rng.integers(1, len(links) + 1), replace=False))
    got = maxmin(net.k, net.c, flows)
    res = np.stack([flows, n * n + flows // n, n * n + n + flows % n], axis=1)
    want = maxmin_rates(res, np.concatenate([cap.ravel(), view.egress, view.ingress]),
                        net.k.f[flows, L_RATE_CAP])
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)


def test_a_cache_older_than_what_it_compiles_in_is_dropped(tmp_path, monkeypatch) -> None:
    """numba checks a cached function's own file only: a newer dependency must drop the
    cache instead of letting machine code built from its old version load."""
    import os
    import types

    from netstorm.sim.cache import drop_stale

    monkeypatch.setattr("numba.config.CACHE_DIR", "")
    me, dep, cache = tmp_path / "core.py", tmp_path / "tables.py", tmp_path / "__pycache__"
    cache.mkdir()
    files = [cache / "core.run-10.py311.nbi", cache / "core.run-10.py311.1.nbc",
             cache / "corelike.run-3.py311.nbi"]
    for f in (me, dep, *files):
        f.write_text("")
        os.utime(f, (200, 200))
    module = types.ModuleType("tables")
    module.__file__ = str(dep)
    os.utime(dep, (100, 100))
    assert drop_stale(str(me), module) == 0  # the cache is newer: kept
    os.utime(dep, (300, 300))
    assert drop_stale(str(me), module) == 2  # tables changed since: core's files go
    assert [f.exists() for f in files] == [False, False, True]
