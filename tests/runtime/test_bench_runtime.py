"""``netstorm bench runtime`` on a tiny configuration: every part returns finite, positive
figures under its documented keys, and no site process outlives a launch (a finished one, a
failed one, or one killed at its deadline). Speeds are not asserted."""

from __future__ import annotations

import math
import os
import subprocess
import time
from typing import Any

import pytest

from netstorm.cli.bench import format_table
from netstorm.cli.bench import runtime as bench

pytestmark = pytest.mark.timeout(300)

KEYS = {
    "loopback": ("sites", "mbytes", "impl", "time_s", "min_s", "first_call_s", "algbw_MB_s",
                 "gloo_over_this", "cpu_cores_per_process", "cpu_cores_total"),
    "shaped": ("sites", "mbytes", "planner", "link_mbit_s", "time_s", "predicted_s",
               "rate_fidelity", "link_bytes", "link_rate_over_configured",
               "cpu_cores_per_process"),
    "fidelity": ("topology", "mbytes", "planner", "time_scale", "runtime_s", "sim_s",
                 "runtime_over_sim", "predicted_s", "moved_MB_s", "cpu_cores_per_process",
                 "cpu_cores_total"),
    "memory": ("sites", "mbytes", "planner", "rank", "rss_after_init_MB",
               "first_call_growth_x", "later_call_growth_x", "peak_since_init_x",
               "first_call_s", "time_s"),
}
POSITIVE = {"time_s", "min_s", "first_call_s", "algbw_MB_s", "gloo_over_this", "predicted_s",
            "rate_fidelity", "link_bytes", "link_rate_over_configured", "runtime_s", "sim_s",
            "runtime_over_sim", "moved_MB_s", "time_scale", "rss_after_init_MB",
            "cpu_cores_per_process", "cpu_cores_total"}


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of every process a launch starts."""
    pids: list[int] = []

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return pids


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tiny_run_has_every_figure_and_leaves_no_process(children: list[int]) -> None:
    doc = bench.run(quick=True, sites=(2,), loopback_mb=1, shaped_mb=1, fidelity_mb=1,
                    memory_mb=1, reps=2, fidelity_topology="random:3:1")
    assert doc["benchmark"] == "runtime" and doc["quick"] is True
    rows = doc["results"]
    assert not [r for r in rows if "error" in r], rows
    by_part: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_part.setdefault(row["benchmark"], []).append(row)
    assert set(by_part) == set(KEYS)
    assert [r["impl"] for r in by_part["loopback"]] == ["netstorm treepack", "netstorm ring",
                                                        "gloo"]
    assert [r["planner"] for r in by_part["fidelity"]] == ["ps", "netstorm", "treepack"]
    assert len(by_part["memory"]) == 2  # one row per site
    for part, keys in KEYS.items():
        for row in by_part[part]:
            for key in keys:
                value = row[key]
                if isinstance(value, float):
                    assert math.isfinite(value), (part, key, value)
                    if key in POSITIVE:
                        assert value > 0, (part, key, value)
    for row in by_part["loopback"]:
        assert row["finite"] and row["max_error"] < 1e-4
    assert all(gone(pid) for pid in children)
    assert len(children) == 2 + 2 + 3 + 2  # loopback, shaped, fidelity, memory launches
    table = format_table(doc)
    assert "gloo_over_this" in table and "runtime_over_sim" in table


def test_a_launch_past_its_deadline_is_killed(children: list[int]) -> None:
    # 2 of 3 sites: the coordinator waits for the third until the launch's deadline
    phase = {"kind": "netstorm", "topology": "random:3:1", "planner": "ring",
             "policy": "static", "numel": 1000, "warmup": 0, "reps": 1}
    started = time.monotonic()
    with pytest.raises(bench.BenchError, match="still running after 6 s"):
        bench.launch(2, [phase], timeout_s=6, env={"WORLD_SIZE": "3",
                                                   "NETSTORM_TIMEOUT": "100"})
    assert time.monotonic() - started < 30
    assert len(children) == 2 and all(gone(pid) for pid in children)


def test_a_failing_site_fails_the_launch_with_its_message(children: list[int]) -> None:
    phase = {"kind": "netstorm", "topology": "random:2:1", "planner": "no-such-planner",
             "numel": 1000, "warmup": 0, "reps": 1}
    with pytest.raises(bench.BenchError, match="no-such-planner"):
        bench.launch(2, [phase], timeout_s=60)
    assert all(gone(pid) for pid in children)


def test_bench_ddp_reports_each_comm_against_gloo() -> None:
    from netstorm.cli.bench import ddp

    result = ddp.run(quick=True, sites=2)
    rows = result["results"]
    assert [r["comm"] for r in rows] == ["gloo", "hook", "backend"]
    assert rows[0]["vs_gloo"] == 1.0
    for r in rows:
        assert r["step_ms"] > 0 and math.isfinite(r["vs_gloo"]) and r["gradient_MB"] > 1
    assert "vs_gloo" in format_table(result)
