"""BandwidthEstimator against hand-computed oracles: the EWMA as a closed-form weighted sum
(for weights other than 1/2, where ``alpha`` and ``1 - alpha`` differ), the jump rule on
both sides of its threshold, and confidence growth and decay against the docstring formula.
"""

from __future__ import annotations

import numpy as np
import pytest

from netstorm import NetworkView
from netstorm.awareness import BandwidthEstimator

MB = 1e6
PRIOR_RATE = 50 * MB


def prior() -> NetworkView:
    cap = np.full((3, 3), PRIOR_RATE)
    np.fill_diagonal(cap, 0)
    return NetworkView(sites=("a", "b", "c"), capacity=cap)


def ewma_closed_form(samples: np.ndarray, alpha: float) -> np.ndarray:
    """Estimate after each sample: the first sample, then
    ``e_n = (1 - a)^n s_0 + sum_{k=1..n} a (1 - a)^(n - k) s_k`` (no recurrence)."""
    out = []
    for n in range(len(samples)):
        weights = alpha * (1 - alpha) ** (n - np.arange(n + 1))
        weights[0] = (1 - alpha) ** n
        out.append(float(weights @ samples[: n + 1]))
    return np.array(out)


# Every sample is within 25 % of the previous estimate (checked below), under jump = 0.3.
SAMPLES = np.array([10.0, 11.5, 9.5, 12.0, 10.0, 11.0, 9.0]) * MB


@pytest.mark.parametrize("alpha", [0.2, 0.9])
def test_ewma_matches_the_closed_form(alpha: float) -> None:
    expected = ewma_closed_form(SAMPLES, alpha)
    assert np.all(np.abs(SAMPLES[1:] - expected[:-1]) <= 0.25 * expected[:-1])  # no jumps
    est = BandwidthEstimator(prior(), alpha=alpha, jump=0.3)
    got = []
    for i, (nbytes, seconds) in enumerate(zip(SAMPLES * 2, np.full(len(SAMPLES), 2.0),
                                              strict=True)):
        est.observe(0, 1, nbytes, seconds, when=float(i))  # rate = bytes / seconds
        got.append(est.estimate()[0, 1])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the weight of the newest sample is alpha, not 1 - alpha: after 10 -> 11.5,
    # 10 + alpha * 1.5 (0.2: 10.3, 0.9: 11.35)
    assert got[1] == pytest.approx((10 + alpha * 1.5) * MB)
    # other links are untouched: they keep the prior
    others = np.ones((3, 3), dtype=bool)
    others[0, 1] = False
    np.fill_diagonal(others, False)
    assert np.all(est.estimate()[others] == PRIOR_RATE)


def test_first_sample_replaces_the_prior_even_when_close() -> None:
    est = BandwidthEstimator(prior(), alpha=0.2, jump=0.3)
    est.observe(1, 2, 55 * MB, 1.0, when=0.0)  # 10 % above the prior: still not averaged
    assert est.estimate()[1, 2] == pytest.approx(55 * MB)


@pytest.mark.parametrize("alpha", [0.2, 0.9])
def test_jump_rule_on_both_sides_of_the_threshold(alpha: float) -> None:
    est = BandwidthEstimator(prior(), alpha=alpha, jump=0.3)
    est.observe(0, 2, 10 * MB, 1.0, when=0.0)
    e = 10 * MB
    # 29 % above: averaged
    est.observe(0, 2, 12.9 * MB, 1.0, when=1.0)
    e = e + alpha * (12.9 * MB - e)
    assert est.estimate()[0, 2] == pytest.approx(e)
    # more than 30 % above the *current* estimate: replaces it
    high = e * 1.31
    est.observe(0, 2, high, 1.0, when=2.0)
    assert est.estimate()[0, 2] == pytest.approx(high)
    # 29 % below: averaged
    low_ok = high * 0.71
    est.observe(0, 2, low_ok, 1.0, when=3.0)
    e = high + alpha * (low_ok - high)
    assert est.estimate()[0, 2] == pytest.approx(e)
    # more than 30 % below: replaces it
    drop = e * 0.69
    est.observe(0, 2, drop, 1.0, when=4.0)
    assert est.estimate()[0, 2] == pytest.approx(drop)


def test_a_wider_jump_averages_what_a_narrow_one_replaces() -> None:
    narrow = BandwidthEstimator(prior(), alpha=0.2, jump=0.3)
    wide = BandwidthEstimator(prior(), alpha=0.2, jump=1.0)
    for est in (narrow, wide):
        est.observe(2, 0, 10 * MB, 1.0, when=0.0)
        est.observe(2, 0, 15 * MB, 1.0, when=1.0)  # 50 % above
    assert narrow.estimate()[2, 0] == pytest.approx(15 * MB)
    assert wide.estimate()[2, 0] == pytest.approx(11 * MB)  # 10 + 0.2 * 5


def confidence_formula(n: int, k: float, age: float, half_life: float) -> float:
    return (1 - np.exp(-n / k)) * 2.0 ** (-age / half_life)


@pytest.mark.parametrize(("k", "half_life"), [(3.0, 600.0), (1.5, 20.0)])
def test_confidence_grows_with_samples_and_decays_with_age(k: float, half_life: float) -> None:
    est = BandwidthEstimator(prior(), alpha=0.2, samples_for_confidence=k,
                             half_life_s=half_life)
    assert np.all(est.confidence(when=0.0) == 0)  # nothing observed anywhere
    previous = 0.0
    for n in range(1, 6):
        est.observe(1, 0, 10 * MB, 1.0, when=float(n))
        now_conf = est.confidence(when=float(n))[1, 0]
        assert now_conf == pytest.approx(confidence_formula(n, k, 0.0, half_life))
        assert now_conf > previous
        previous = now_conf
    # ignored observations (zero bytes or zero seconds) add no sample and no timestamp
    est.observe(1, 0, 0, 1.0, when=100.0)
    est.observe(1, 0, 10 * MB, 0.0, when=100.0)
    assert est.samples()[1, 0] == 5
    for age in (0.0, half_life / 2, half_life, 3 * half_life):
        assert est.confidence(when=5.0 + age)[1, 0] == pytest.approx(
            confidence_formula(5, k, age, half_life))
    assert est.confidence(when=5.0 + half_life)[1, 0] == pytest.approx(previous / 2)
    # a query before the last sample is not a negative age: no boost above the undecayed
    assert est.confidence(when=0.0)[1, 0] == pytest.approx(previous)
    # the other links were never observed
    assert est.confidence(when=5.0)[0, 1] == 0
    view = est.view(when=5.0 + half_life)
    assert view.confidence is not None
    assert view.confidence[1, 0] == pytest.approx(confidence_formula(5, k, half_life,
                                                                     half_life))
    assert view.capacity[1, 0] == pytest.approx(10 * MB)


def test_a_cap_bound_sample_raises_the_estimate_but_never_lowers_it() -> None:
    """A transfer slowed by a shared site cap says the link is at least that fast."""
    view = NetworkView(sites=("a", "b"), capacity=np.array([[0, 100 * MB], [100 * MB, 0]]))
    est = BandwidthEstimator(view)
    est.observe(0, 1, 30 * MB, 1.0, when=1.0, capped=True)
    assert est.estimate()[0, 1] == 100 * MB  # 30 MB/s under a cap: no news about the link
    assert est.samples()[0, 1] == 1 and est.stale_links(0.5, when=1.2) == [(1, 0)]
    est.observe(0, 1, 150 * MB, 1.0, when=2.0, capped=True)
    assert est.estimate()[0, 1] == 150 * MB  # faster than believed: believed
    est.observe(0, 1, 30 * MB, 1.0, when=3.0)
    assert est.estimate()[0, 1] == 30 * MB  # not capped: a level shift, taken at once
