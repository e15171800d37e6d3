"""Overlapping the all-reduce with the backward pass bucket by bucket, against hand timings."""

from __future__ import annotations

import numpy as np
import pytest
from netstorm.sim import simulate
from netstorm.sim.interpreter import bucket_ready_s

from netstorm import Job, NetworkView, Plan, Shard

MB = 1e6


def test_bucket_ready_times_by_hand() -> None:
    job = Job(buckets=(4, 4, 8), compute_s=3.0)
    # forward 1 s; backward 2 s over 16 bytes, last bucket first: 8, then 4, then 4 bytes
    assert bucket_ready_s(job, 3.0) == pytest.approx([3.0, 2.5, 2.0])
    assert bucket_ready_s(job, 3.0, backward_fraction=0.0) == pytest.approx([3.0] * 3)
    with pytest.raises(ValueError):
        bucket_ready_s(job, 3.0, backward_fraction=1.5)


def two_sites() -> NetworkView:
    cap = np.array([[0.0, 10 * MB], [10 * MB, 0.0]])
    return NetworkView(sites=("a", "b"), capacity=cap)


def halves(view: NetworkView, job: Job, **_: object) -> Plan:
    """Two shards, one rooted at each site (a two-site reduce-scatter + all-gather)."""
    return Plan(1, "halves", view.sites, (Shard(0.5, 0, {1: 0}, {1: 0}),
                                          Shard(0.5, 1, {0: 1}, {0: 1})))


@pytest.mark.parametrize("bucket_mb, serial, overlapped", [
    # Two buckets of 2 MB, 1 MB chunks (0.1 s per chunk per link), compute 1 s with the
    # backward pass the last 2/3: bucket 1 is ready at 1/3 + 1/3 = 2/3 s.
    # Serial: from t = 1 each link carries 2 partial sums then 2 means: 1 + 4 * 0.1.
    # Overlapped: bucket 1 goes up and down in [2/3, 2/3 + 0.2], before bucket 0 is ready
    # at 1 s; bucket 0 then takes 0.2 s: 1.2.
    (2, 1.4, 1.2),
    # Four-MB buckets, 2 MB chunks (0.2 s): bucket 1 up [2/3, 13/15], down [13/15, 16/15]
    # spills past t = 1, so bucket 0's partial sum waits for the link until 16/15, goes up
    # by 19/15 and down by 22/15. Serial: 1 + 4 * 0.2.
    (4, 1.8, 22 / 15),
])
def test_overlap_hand_cases(bucket_mb: int, serial: float, overlapped: float) -> None:
    view = two_sites()
    nbytes = int(bucket_mb * MB)
    job = Job(buckets=(nbytes, nbytes), chunk_bytes=nbytes // 2, compute_s=1.0)
    for overlap, want in ((False, serial), (True, overlapped)):
        r = simulate(view, job, halves, iterations=2, aware=False, overlap=overlap)
        assert r.iteration_s == pytest.approx([want, want]), overlap
        assert r.comm_s == pytest.approx([want - 1.0] * 2)


def test_overlap_with_one_bucket_changes_nothing() -> None:
    view = two_sites()
    job = Job(buckets=int(4 * MB), chunk_bytes=int(1 * MB), compute_s=1.0)
    a = simulate(view, job, halves, iterations=1, aware=False)
    b = simulate(view, job, halves, iterations=1, aware=False, overlap=True)
    assert a.iteration_s == pytest.approx(b.iteration_s)
    assert a.iteration_s[0] == pytest.approx(1.4)
