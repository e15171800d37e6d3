"""LevelShiftEstimator against oracles: the geometric mean of a level's samples (numpy),
the disjoint halves of :meth:`split`, shift detection delays on lognormal noise, the false
alarm rate on a steady network, and the controller planning on one half and judging on the
other."""

from __future__ import annotations

import numpy as np
import pytest

from netstorm import Controller, Job, NetworkView, Plan, ReplanPolicy, Shard
from netstorm.builtin_topologies import builtin
from netstorm.level_shift import LevelShiftEstimator

SIGMA = 0.55  # the spread of receiver-timed rates measured on 9 netns sites sharing 2 cores


def pair(rate: float = 1.0) -> NetworkView:
    return NetworkView(sites=("a", "b"), capacity=np.array([[0, rate], [rate, 0]]))


def feed(est: LevelShiftEstimator, rates: np.ndarray, start: int = 0) -> None:
    for t, r in enumerate(rates, start=start):
        est.observe(0, 1, float(r), 1.0, float(t))


def test_a_steady_level_is_the_geometric_mean_of_its_samples() -> None:
    # within 3 spreads of each other: nothing is winsorised, nothing is a shift
    rates = np.array([1.0, 1.2, 0.9, 1.1, 0.95, 1.05, 1.15, 0.85])
    est = LevelShiftEstimator(pair())
    feed(est, rates)
    assert est.shifts == []
    assert est.estimate()[0, 1] == pytest.approx(np.exp(np.log(rates).mean()), rel=1e-12)
    fit, judge = est.split(8.0)
    assert fit.capacity[0, 1] == pytest.approx(np.exp(np.log(rates[0::2]).mean()), rel=1e-12)
    assert judge.capacity[0, 1] == pytest.approx(np.exp(np.log(rates[1::2]).mean()), rel=1e-12)
    assert fit.capacity[1, 0] == judge.capacity[1, 0] == 1.0  # never observed: the prior


def test_one_wild_timing_is_winsorised_not_believed() -> None:
    rng = np.random.default_rng(1)
    est = LevelShiftEstimator(pair())
    feed(est, rng.lognormal(0, SIGMA, 30))
    before = est.estimate()[0, 1]
    est.observe(0, 1, 100.0, 1.0, 30.0)  # 100x: log 4.6, but only 3 spreads are counted
    after = est.estimate()[0, 1]
    assert est.shifts == []
    assert 1 < after / before < np.exp(3 * 0.8 / 31)  # spread at most 0.8 after shrinkage


@pytest.mark.parametrize(("drop", "median", "most"), [(0.1, 2, 5), (0.2, 4, 9)])
def test_a_step_change_is_a_shift_within_a_few_samples(drop: float, median: int,
                                                        most: int) -> None:
    delays = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        est = LevelShiftEstimator(pair())
        feed(est, rng.lognormal(0, SIGMA, 20))
        delays.append(np.inf)
        for t in range(1, 21):
            est.observe(0, 1, drop * rng.lognormal(0, SIGMA), 1.0, 19.0 + t)
            if est.shifts:
                delays[-1] = t
                # the new level is made of post-change samples only
                assert est.estimate()[0, 1] < 3 * drop
                break
    assert np.median(delays) <= median
    assert np.mean(np.array(delays) <= most) >= (1.0 if drop == 0.1 else 0.95)


def test_one_wild_timing_rarely_starts_a_level() -> None:
    shifted = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        est = LevelShiftEstimator(pair())
        feed(est, rng.lognormal(0, SIGMA, 30))
        feed(est, [100.0, rng.lognormal(0, SIGMA)], start=30)  # 100x then a normal one
        shifted += bool(est.shifts)
    assert shifted <= 6  # 2 of these 200 when written


def test_exact_timings_shift_on_a_small_change() -> None:
    # no noise: the spread shrinks to its floor as samples agree, and a 20 % step is a shift
    est = LevelShiftEstimator(pair(), prior_weight=0.0)
    feed(est, np.full(40, 5.0))
    feed(est, np.full(2, 4.0), start=40)
    assert len(est.shifts) == 1
    assert est.estimate()[0, 1] == pytest.approx(4.0, rel=1e-12)


def test_a_small_change_still_moves_the_estimate_through_memory() -> None:
    rng = np.random.default_rng(3)
    est = LevelShiftEstimator(pair(), memory=20)
    feed(est, rng.lognormal(0, SIGMA, 40))
    feed(est, 0.5 * rng.lognormal(0, SIGMA, 60), start=40)  # 2x: 1.3 spreads, no shift
    assert est.estimate()[0, 1] < 0.7


def test_a_steady_network_gives_almost_no_false_shifts() -> None:
    view = builtin("netstorm9")
    links = list(zip(*np.nonzero(view.capacity > 0), strict=True))
    est = LevelShiftEstimator(view)
    rng = np.random.default_rng(0)
    for t in range(100):
        for u, v in links:
            est.observe(u, v, view.capacity[u, v] * rng.lognormal(0, SIGMA), 1.0, t)
    # 2,600 samples; an EWMA (alpha 0.5, jump 0.3) moves on about half of them
    assert len(est.shifts) <= 2
    err = np.log(est.estimate()[view.capacity > 0] / view.capacity[view.capacity > 0])
    assert np.abs(err).max() < 0.25


def test_bad_settings_are_refused() -> None:
    for kw in ({"z": 0}, {"window": 0}, {"window": 9}, {"memory": 8}, {"sigma_floor": 0},
               {"prior_weight": -1}):
        with pytest.raises(ValueError):
            LevelShiftEstimator(pair(), **kw)  # type: ignore[arg-type]


def test_the_controller_plans_on_one_half_and_judges_on_the_other() -> None:
    view = pair(10.0)
    seen: list[NetworkView] = []

    def make(v: NetworkView, job: Job) -> Plan:
        seen.append(v)
        return Plan(1, "fake", v.sites, (Shard(1.0, 0, {1: 0}, {1: 0}),))

    est = LevelShiftEstimator(view)
    ctl = Controller(view, Job(buckets=4000), make, policy=ReplanPolicy(change_tol=0.0),
                     estimator=est, clock=lambda: 1.0)
    feed(est, [8.0, 12.0, 8.0, 12.0])  # even samples 8, odd 12
    ctl.boundary(1)
    assert seen[-1].capacity[0, 1] == pytest.approx(8.0)  # planned on the even half
    assert ctl.reference.capacity[0, 1] == pytest.approx(8.0)
    assert ctl._judged.capacity[0, 1] == pytest.approx(12.0)
