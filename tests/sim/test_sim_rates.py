"""The max-min fair rate solver: hand cases, the max-min characterisation, and equality with
the plain-Python reference on random cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from netstorm.sim.rates import maxmin_rates, maxmin_rates_reference

INF = np.inf
SOLVERS = [maxmin_rates, maxmin_rates_reference]


@pytest.mark.parametrize("solve", SOLVERS)
def test_one_flow(solve) -> None:
    assert solve(np.array([[0]]), np.array([10.0])).tolist() == [10.0]


@pytest.mark.parametrize("solve", SOLVERS)
def test_two_flows_on_one_link(solve) -> None:
    assert solve(np.array([[0], [0]]), np.array([10.0])).tolist() == [5.0, 5.0]


@pytest.mark.parametrize("solve", SOLVERS)
def test_flows_sharing_a_site_cap(solve) -> None:
    # links 0 and 1 (10 each) leave one site whose egress (resource 2) is 12
    rates = solve(np.array([[0, 2], [1, 2]]), np.array([10.0, 10.0, 12.0]))
    assert rates.tolist() == [6.0, 6.0]
    # one link is slower than its fair share: the other takes the rest of the cap
    rates = solve(np.array([[0, 2], [1, 2]]), np.array([2.0, 10.0, 12.0]))
    assert rates.tolist() == [2.0, 10.0]


@pytest.mark.parametrize("solve", SOLVERS)
def test_chain_of_bottlenecks(solve) -> None:
    # A uses r0 (cap 3) and r1 (cap 10); B and C use r1; D uses r1 and r2 (cap 1)
    # D is stuck at 1 on r2; A at 3 on r0; B and C split the rest of r1: (10 - 1 - 3) / 2
    res = np.array([[0, 1], [1, -1], [1, -1], [1, 2]])
    rates = solve(res, np.array([3.0, 10.0, 1.0]))
    assert rates.tolist() == pytest.approx([3.0, 3.0, 3.0, 1.0])
    rates = solve(res, np.array([3.0, 12.0, 1.0]))
    assert rates.tolist() == pytest.approx([3.0, 4.0, 4.0, 1.0])


@pytest.mark.parametrize("solve", SOLVERS)
def test_window_cap_and_uncapped(solve) -> None:
    rates = solve(np.array([[0], [0], [1]]), np.array([10.0, INF]), np.array([2.0, INF, INF]))
    assert rates.tolist() == [2.0, 8.0, INF]


def test_empty() -> None:
    assert maxmin_rates(np.zeros((0, 3), dtype=int), np.array([1.0])).shape == (0,)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="resource index"):
        maxmin_rates(np.array([[3]]), np.array([1.0]))
    with pytest.raises(ValueError, match="capacity"):
        maxmin_rates(np.array([[0]]), np.array([-1.0]))


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nres = draw(st.integers(1, 8))
    nflows = draw(st.integers(1, 12))
    res = draw(hnp.arrays(np.int64, (nflows, 3), elements=st.integers(-1, nres - 1)))
    value = st.one_of(st.just(0.0), st.floats(1e-3, 1e9), st.just(INF))  # B/s
    cap = draw(hnp.arrays(np.float64, nres, elements=value))
    fcap = draw(hnp.arrays(np.float64, nflows, elements=value))
    return res, cap, fcap


def is_maxmin(res: np.ndarray, cap: np.ndarray, fcap: np.ndarray, rates: np.ndarray) -> None:
    """The textbook characterisation: feasible, and every flow is held by its own cap or by a
    saturated resource on which no flow is faster."""
    load = np.zeros(len(cap))
    for f, row in enumerate(res):
        for r in row[row >= 0]:
            load[r] += rates[f]
    finite = np.isfinite(cap)
    assert (load[finite] <= cap[finite] * (1 + 1e-9) + 1e-6).all()
    for f, row in enumerate(res):
        if not np.isfinite(rates[f]):
            assert np.isinf(fcap[f]) and all(np.isinf(cap[r]) for r in row[row >= 0])
            continue
        if rates[f] >= fcap[f] * (1 - 1e-9):
            continue
        held = False
        for r in row[row >= 0]:
            users = [g for g, other in enumerate(res) if r in other]
            if (finite[r] and load[r] >= cap[r] * (1 - 1e-9) - 1e-6
                    and rates[f] >= max(rates[g] for g in users) * (1 - 1e-9)):
                held = True
        assert held, f"flow {f} at {rates[f]} could grow"


@settings(max_examples=300)
@given(problems())
def test_numba_equals_reference_and_is_maxmin(problem) -> None:
    res, cap, fcap = problem
    fast = maxmin_rates(res, cap, fcap)
    slow = maxmin_rates_reference(res, cap, fcap)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-6)
    is_maxmin(res, cap, fcap, fast)
