"""The coordinator's re-planning on noisy link timings, without sockets: every link of
netstorm9 reported each collective at its capacity times a per-link bias (1-1.6x) times
lognormal scatter (sigma 0.55), what receiver-timed rates looked like on 9 netns sites
sharing 2 cores. A steady network must not be re-planned on noise; a real 10x drop on the
plan's busiest link must be."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from netstorm.runtime.control import Broadcast, Coordination
from netstorm.runtime.messages import Horizon, Report

from netstorm.awareness import ReplanPolicy
from netstorm.builtin_topologies import builtin
from netstorm.cost import predict
from netstorm.registry import plan

pytestmark = pytest.mark.timeout(120)
NUMEL = 16 << 20  # 64 MB


def drive(boundaries: int, *, noisy: bool, seed: int, drop_at: int | None = None
          ) -> tuple[list[int], tuple[int, int] | None, Coordination]:
    """Boundaries at which the plan switched, and the link dropped to a tenth (if any)."""
    view = builtin("netstorm9")
    rng = np.random.default_rng(seed)
    bias = rng.uniform(1.0, 1.6, size=view.capacity.shape)
    now = [0.0]
    coord = Coordination(view, "fp", lambda v, job: plan(v, job, "treepack", seed=0),
                         ReplanPolicy(threshold=0.2), window=2, timeout_s=60.0,
                         clock=lambda: now[0], wall=lambda: 0.0, noisy=noisy)
    sent: list[Any] = []
    truth = view.capacity.copy()
    links = [(int(u), int(v)) for u, v in zip(*np.nonzero(truth > 0), strict=True)]
    dropped, switches = None, []
    for b in range(boundaries):
        if b == drop_at:
            assert coord.controller is not None
            load = predict(coord.controller.plan, view, coord.controller.job).link_bytes
            dropped = max(links, key=lambda link: load[link] / truth[link])
            truth[dropped] /= 10
        now[0] += 0.05  # about what a boundary took in real time
        timed = tuple((u, v, float(truth[u, v] * bias[u, v] * rng.lognormal(0, 0.55)), 1.0)
                      for u, v in links)
        for rank in range(view.n):  # the receivers report; one report carries them all
            sent += coord.receive(rank, Report(b, NUMEL, (), timed if rank == 0 else ()))
        last = sent[-1]
        assert isinstance(last, Broadcast) and isinstance(last.msg, Horizon)
        if last.msg.switch is not None:
            switches.append(b)
    return switches, dropped, coord


def test_steady_noisy_links_are_not_replanned_on_noise() -> None:
    counts = [len(drive(30, noisy=True, seed=s)[0]) for s in range(3)]
    # measured when written: 1-4 in 30, most while the first samples replace the
    # configured capacities; the EWMA below switches on most boundaries
    assert sum(counts) <= 9, counts
    assert len(drive(15, noisy=False, seed=0)[0]) >= 8


def test_a_real_drop_is_replanned_within_three_collectives() -> None:
    for seed in range(2):
        switches, dropped, coord = drive(24, noisy=True, seed=seed, drop_at=20)
        after = [b for b in switches if b >= 20]
        assert after and after[0] <= 22, (seed, switches)
        assert dropped is not None and coord.controller is not None
        job = coord.controller.job
        view = builtin("netstorm9")
        # the new plan moves less over the dropped link than the one it replaced
        assert predict(coord.controller.plan, view, job).link_bytes[dropped] < \
            predict(plan(view, job, "treepack", seed=0), view, job).link_bytes[dropped]
