"""Time limits of the tree packing and the bound, on a fake clock (no timed test).

``netstorm.packing._clock`` is replaced by a clock that only moves when a test moves it: by
a slow first kernel call (what compiling on a cold numba cache looks like), or by every
master LP solve. The budget must go to solving, and a packing stopped by it must still give
a valid bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from netstorm import Job, NetworkView, bound, packing, simple_bounds
from netstorm import _arborescence_nb as kernels
from netstorm.builtin_topologies import builtin

JOB = Job(buckets=100_000_000, chunk_bytes=4_000_000)


class FakeClock:
    """A clock that stands still until moved."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(packing, "_clock", fake)
    return fake


def slow_first_kernel_call(monkeypatch: pytest.MonkeyPatch, clock: FakeClock,
                           seconds: float) -> list[int]:
    """The Edmonds kernel's first call takes ``seconds`` on ``clock`` (a cold-cache compile);
    returns the list of calls so far."""
    real = kernels.edmonds
    calls: list[int] = []

    def edmonds(w: np.ndarray, root: int) -> np.ndarray:
        if not calls:
            clock.now += seconds
        calls.append(root)
        return real(w, root)

    monkeypatch.setattr(kernels, "edmonds", edmonds)
    return calls


def test_the_budget_excludes_a_slow_first_kernel_call(monkeypatch: pytest.MonkeyPatch,
                                                      clock: FakeClock) -> None:
    view = builtin("netstorm9")
    reference = packing.pack_trees(view, time_limit_s=np.inf)
    calls = slow_first_kernel_call(monkeypatch, clock, seconds=1000.0)
    result = packing.pack_trees(view, time_limit_s=5.0)
    assert calls and clock.now == 1000.0  # the slow call happened, yet the packing ...
    assert result.certified and result.gap < 1e-3  # ... converged as if it had not
    assert result.rate == pytest.approx(reference.rate, rel=1e-6)
    assert result.rounds == reference.rounds


def test_a_cold_kernel_leaves_the_bound_unchanged(monkeypatch: pytest.MonkeyPatch,
                                                  clock: FakeClock) -> None:
    view = builtin("netstorm9")
    warm = bound(view, JOB, time_limit_s=5.0)
    slow_first_kernel_call(monkeypatch, clock, seconds=1000.0)
    cold = bound(view, JOB, time_limit_s=5.0)
    assert (cold.time_s, cold.gap, cold.exact) == (warm.time_s, warm.gap, warm.exact)


def test_the_limit_stops_the_column_generation(monkeypatch: pytest.MonkeyPatch,
                                               clock: FakeClock) -> None:
    view = builtin("random:16:1")
    optimum = packing.pack_trees(view, time_limit_s=np.inf)
    assert optimum.rounds > 4
    real = packing._Master.solve
    solves: list[float] = []

    def solve(self: packing._Master, time_limit: float = np.inf) -> object:
        solves.append(time_limit)
        clock.now += 1.0  # every master LP solve takes a second
        return real(self, time_limit)

    monkeypatch.setattr(packing._Master, "solve", solve)
    early = packing.pack_trees(view, time_limit_s=3.5)
    assert len(solves) == 4  # three rounds in time, the fourth solve reaches the limit
    assert solves[:3] == [3.5, 2.5, 1.5]  # HiGHS is handed what is left
    assert early.rounds == 4 and early.gap > optimum.gap
    # still a valid bound: the packing found never beats the optimum, the bound never
    # falls below it
    assert early.rate <= optimum.rate * (1 + 1e-9)
    assert early.upper_bound >= optimum.rate * (1 - 1e-9)


def test_no_time_left_still_gives_a_valid_bound(clock: FakeClock) -> None:
    view = builtin("random:12:3")
    result = packing.pack_trees(view, time_limit_s=0.0)
    assert result.rounds == 0 and result.rate == 0.0 and result.upper_bound == np.inf
    assert len(result.pool) == 2  # the first root's starting tree and direct star only
    low = bound(view, JOB, time_limit_s=0.0)
    assert not low.exact and low.gap == 1.0
    assert low.rate_Bps == min(simple_bounds(view).values())


def test_the_vertex_falls_back_to_the_last_optimum() -> None:
    view = builtin("random:6:1")
    res = packing._Resources(view, float(view.capacity.max()))
    master = packing._Master(res.capacity)
    for pair in packing.star_columns(view)[:2]:
        master.add(res.usage(packing._edges(pair.reduce_parent, True) +
                             packing._edges(pair.broadcast_parent, False)))
    solved = master.solve()
    assert solved is not None
    for pair in packing.star_columns(view)[2:4]:  # columns added after the last solve
        master.add(res.usage(packing._edges(pair.reduce_parent, True) +
                             packing._edges(pair.broadcast_parent, False)))
    rate, x = master.vertex(time_limit=0.0)  # no time for the re-solve
    assert rate == solved[0] and len(x) == 4 and (x[2:] == 0).all()
    rate, x = master.vertex()  # with time: the re-solve over all four columns
    assert rate >= solved[0] and len(x) == 4


def test_a_flow_lp_out_of_time_leaves_the_simple_bounds() -> None:
    cap = np.full((4, 4), 10e6)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcd"), capacity=cap, workers=(0, 1, 2))
    solved = bound(view, JOB, method="flow-lp")
    assert solved.method == "flow-lp" and solved.exact
    late = bound(view, JOB, method="flow-lp", time_limit_s=0.0)
    assert late.method == "simple" and not late.exact
    assert late.rate_Bps == min(simple_bounds(view).values()) >= solved.rate_Bps
