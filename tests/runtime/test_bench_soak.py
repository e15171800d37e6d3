"""``netstorm bench soak`` on a tiny run: every site sampled, the demo's lines parsed."""

from __future__ import annotations

import os

import pytest
from netstorm.runtime.procs import sample

from netstorm.cli.bench import soak as bench_soak

pytestmark = pytest.mark.timeout(120)


def test_sample_and_time_scale() -> None:
    got = sample(os.getpid())
    assert got is not None and got[0] > 1 and got[1] >= 3  # MB, stdin/out/err at least
    assert sample(2**22 + 12345) is None  # above pid_max's default: no such pid
    small, large = (bench_soak.time_scale("random:3:1", mb) for mb in (1, 16))
    assert 0 < small < large  # more bytes, the same wall time: a faster emulated network


def test_a_short_soak_reports_every_site() -> None:
    doc = bench_soak.run(sites_topology="random:2:1", iterations=14, mbytes=1,
                         time_scale_k=4, period_s=1.0, deadline_s=90, interval_s=0.25)
    run = doc["summary"][0]
    assert run["status"] == 0, doc.get("tail")
    assert run["iterations_done"] == 14
    assert run["max_error"] is not None and run["max_error"] < 1e-4
    assert run["wall_per_iteration_s"] is not None
    assert [r["site"] for r in doc["results"]] == ["r0", "r1"]
    for row in doc["results"]:
        assert row["samples"] >= 2
        assert row["rss_MB_at_10"] is not None and row["rss_MB_at_10"] > 10
        assert row["fds_end"] is not None and row["fds_end"] >= 3
        assert row["rss_MB_max"] >= max(row["rss_MB_at_10"], row["rss_MB_end"])
