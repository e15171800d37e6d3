"""``netstorm bench planner``: the quick mode from the CLI, its keys, and the bound holding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netstorm import builtin_topologies
from netstorm.cli.bench import format_table
from netstorm.cli.bench.planner import PLANNERS, noisy, redraw

TOL = 1e-6


@pytest.fixture(scope="module")
def quick() -> dict:
    proc = subprocess.run([sys.executable, "-m", "netstorm", "bench", "planner", "--quick",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # exactly one JSON object on stdout


def test_quick_has_every_figure(quick: dict) -> None:
    assert quick["benchmark"] == "planner" and quick["quick"] is True
    assert quick["planners"] == list(PLANNERS)
    assert {"views", "summary", "treepack_speedup_vs_netstorm", "planning_time",
            "robustness", "results"} <= set(quick)
    names = [v["view"] for v in quick["views"]]
    assert names[:2] == ["netstorm9", "netstorm9~r0"] and len(names) == len(set(names))
    for view in quick["views"]:
        assert {"bound_time_s", "bound_bandwidth_s", "sites"} <= set(view)
        for key in ("quality", "bandwidth_ratio", "predicted_time_s", "bandwidth_s", "fill_s",
                    "planning_s"):
            assert set(view[key]) == set(PLANNERS)
    for view in quick["views"]:  # the simulator runs the same plans; bound <= simulated
        assert set(view["simulated_time_s"]) == set(PLANNERS)
        assert min(view["simulated_time_s"].values()) >= view["bound_time_s"] * (1 - 1e-6)
        for name in PLANNERS:
            assert view["simulated_quality"][name] == pytest.approx(
                view["simulated_time_s"][name] / view["bound_time_s"])
    assert set(quick["simulated_over_predicted"]) == set(PLANNERS)
    for name in PLANNERS:
        assert set(quick["summary"][name]) == {
            "quality_geomean", "quality_worst", "simulated_quality_geomean",
            "simulated_quality_worst", "bandwidth_ratio_geomean", "bandwidth_ratio_worst"}
    speedup = quick["treepack_speedup_vs_netstorm"]
    assert speedup["views"] == ["netstorm9~r0"] and speedup["geomean"] > 0
    (redrawn,) = [v for v in quick["views"] if v["view"] == "netstorm9~r0"]
    for kind, key in (("", "predicted_time_s"), ("simulated_", "simulated_time_s")):
        ratio = redrawn[key]["netstorm"] / redrawn[key]["treepack"]
        assert speedup[f"{kind}per_view"] == pytest.approx([ratio])
        assert speedup[f"{kind}geomean"] == pytest.approx(ratio)
    assert [t["sites"] for t in quick["planning_time"]] == [16]
    assert all(t["planning_s"] > 0 for t in quick["planning_time"])
    assert {(r["view"], r["planner"]) for r in quick["robustness"]} == {
        ("netstorm9~r0", "netstorm"), ("netstorm9~r0", "treepack")}
    for r in quick["robustness"]:  # one re-plan from measurements mends the estimate error
        assert r["replans"] == 1 and abs(r["replanned_loss"]) < 0.01, r
    assert "treepack" in format_table(quick).splitlines()[0]


def test_no_planner_beats_the_bound(quick: dict) -> None:
    for view in quick["views"]:
        for name in PLANNERS:
            assert view["quality"][name] >= 1 - TOL, (view["view"], name)
            assert view["bandwidth_ratio"][name] >= 1 - TOL, (view["view"], name)
    for stats in quick["summary"].values():
        for key in ("quality", "simulated_quality"):
            assert stats[f"{key}_worst"] >= stats[f"{key}_geomean"] >= 1 - TOL


def test_redraw_and_noise_keep_the_links_and_are_seeded() -> None:
    base = builtin_topologies.builtin("netstorm9")
    one, again, other = redraw(base, 3), redraw(base, 3), redraw(base, 4)
    assert one == again and one.capacity.tolist() != other.capacity.tolist()
    links = base.capacity > 0
    assert np.array_equal(one.capacity > 0, links)
    mbits = one.capacity[links] * 8 / 1e6
    assert np.allclose(mbits, np.round(mbits)) and mbits.min() >= 20 and mbits.max() <= 155
    est = noisy(one, seed=7)
    ratio = est.capacity[links] / one.capacity[links]
    assert np.array_equal(est.capacity > 0, links)
    assert ratio.min() >= 0.7 and ratio.max() <= 1.3 and noisy(one, seed=7) == est


def test_latency_front_script_runs_above_the_bound() -> None:
    """``benchmarks/latency_front.py`` on a small latency mesh: every family's best plan is
    predicted no faster than the bound, as any tree plan must be."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_front.py"
    proc = subprocess.run([sys.executable, str(script), "random:6:5", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["view"] == "random:6:5" and row["pool_trees"] > 0
    assert len(row["per_budget"]) == 10
    for key in ("treepack", "budgets", "capped"):
        assert row[key] >= 1 - TOL
