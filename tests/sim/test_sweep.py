"""Sweeps: the grid's expansion, records equal to direct simulations, local and Dask runs
alike, a failed scenario reported without losing the others, the cache, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netstorm.sim import simulate
from netstorm.sim.sweep import Scenario, grid, load_grid, sweep, to_frame, write_records

from netstorm.cli.main import main
from netstorm.errors import InputError
from netstorm.job import Job
from netstorm.topology import load_topology

pytestmark = pytest.mark.timeout(180)

SMALL = {"topology": ["random:4:1", "random:5:2"], "planner": ["ps", "treepack"],
         "model": "8MB", "iterations": 2}


def same(a: list[dict], b: list[dict]) -> bool:
    """Records equal but for the wall clock."""
    strip = [[{k: v for k, v in r.items() if k != "wall_s"} for r in rs] for rs in (a, b)]
    return strip[0] == strip[1]


def test_the_grid_varies_the_list_fields_first_slowest() -> None:
    scenarios = grid({**SMALL, "seed": [0, 1]})
    assert len(scenarios) == 8
    assert [(s.topology, s.planner, s.seed) for s in scenarios[:3]] == [
        ("random:4:1", "ps", 0), ("random:4:1", "ps", 1), ("random:4:1", "treepack", 0)]
    assert all(s.model == "8MB" and s.iterations == 2 for s in scenarios)
    keys = [s.key() for s in scenarios]
    assert len(set(keys)) == 8 and keys == [s.key() for s in grid({**SMALL, "seed": [0, 1]})]
    with_options = grid({"topology": "netstorm9", "planner": "ps",
                         "options": [{"servers": 1}, {"servers": 2}]})
    assert [dict(s.options) for s in with_options] == [{"servers": 1}, {"servers": 2}]


@pytest.mark.parametrize(("spec", "says"), [
    ({"topology": "netstorm9", "colour": "red"}, "unknown field 'colour'"),
    ({"planner": "ps"}, "no topology"),
    ({"topology": "netstorm9", "iterations": 0}, "iterations must be"),
    ({"topology": "netstorm9", "planner": []}, "planner is an empty list"),
    ({"topology": "netstorm9", "options": 3}, "options must be a mapping"),
    ({"topology": "netstorm9", "duration_s": -1}, "duration_s"),
])
def test_a_bad_grid_names_the_field(spec: dict, says: str) -> None:
    with pytest.raises(InputError, match=says):
        grid(spec)


def test_records_are_the_simulations_and_alike_in_process_and_on_processes() -> None:
    scenarios = grid(SMALL)
    here = sweep(scenarios, workers=1, progress=False)
    pool = sweep(scenarios, workers=2, progress=False)
    assert same(here, pool)
    for s, record in zip(scenarios, here, strict=True):  # oracle: the simulator itself
        direct = simulate(load_topology(s.topology), Job.from_model(s.model), s.planner,
                          iterations=s.iterations, seed=s.seed).summary()
        assert record["iteration_mean_s"] == direct["iteration_time_s"]["mean"]
        assert record["predicted_s"] == direct["predicted_time_s"]
        assert record["key"] == s.key() and record["error"] is None


def test_a_failed_scenario_keeps_the_others_and_says_why() -> None:
    scenarios = [*grid(SMALL), Scenario(topology="random:4:1", planner="nope"),
                 Scenario(topology="no-such-file.yaml")]
    records = sweep(scenarios, workers=2, progress=False)
    assert len(records) == 6
    assert all(r["error"] is None and r["iteration_mean_s"] > 0 for r in records[:4])
    assert "unknown planner 'nope'" in records[4]["error"]
    assert "no-such-file.yaml" in records[5]["error"] and records[5]["total_s"] is None


def test_the_cache_skips_finished_scenarios(tmp_path: Path) -> None:
    scenarios = grid(SMALL)
    new: list[dict] = []
    first = sweep(scenarios[:2], workers=1, cache=tmp_path, progress=False,
                  on_record=new.append)
    assert len(new) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    # the cached record is what comes back (marked here to tell it from a re-run)
    marked = tmp_path / f"{scenarios[0].key()}.json"
    record = json.loads(marked.read_text())
    marked.write_text(json.dumps({**record, "transfers": -1}))
    new.clear()
    again = sweep(scenarios, workers=1, cache=tmp_path, progress=False, on_record=new.append)
    assert len(new) == 2  # only the two not run before
    assert again[0]["transfers"] == -1 and same(again[1:2], first[1:2])


def test_dask_gives_the_same_records_as_local_processes() -> None:
    distributed = pytest.importorskip("distributed")
    scenarios = [*grid(SMALL), Scenario(topology="random:4:1", planner="nope")]
    local = sweep(scenarios, workers=2, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        on_dask = sweep(scenarios, dask=cluster.scheduler_address, progress=False)
    assert same(local, on_dask)
    assert on_dask[-1]["error"] is not None


def test_records_are_written_and_framed(tmp_path: Path) -> None:
    records = sweep(grid(SMALL)[:2], workers=1, progress=False)
    for suffix in (".csv", ".json", ".parquet"):
        if suffix == ".parquet":
            pytest.importorskip("pyarrow")
        write_records(records, tmp_path / f"r{suffix}")
    assert json.loads((tmp_path / "r.json").read_text()) == records
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(tmp_path / "r.parquet")
    assert list(frame["planner"]) == ["ps", "treepack"]
    assert list(to_frame(records)["iteration_mean_s"]) == [r["iteration_mean_s"]
                                                            for r in records]
    csv = pd.read_csv(tmp_path / "r.csv")
    assert list(csv["iteration_mean_s"]) == pytest.approx(list(frame["iteration_mean_s"]))


def test_netstorm_sweep_runs_a_grid_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("grid:\n  topology: random:4:1\n  planner: [ps, ring]\n"
                         "  model: 8MB\n  iterations: 2\nout: records.csv\ncache: cache\n")
    scenarios, settings = load_grid(grid_file)
    assert len(scenarios) == 2 and settings["out"] == str(tmp_path / "records.csv")
    assert main(["sweep", str(grid_file), "--json", "--no-progress", "--workers", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenarios"] == 2 and doc["failed"] == 0
    assert (tmp_path / "records.csv").read_text().count("\n") == 3
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    grid_file.write_text("scenarios:\n  - {topology: random:4:1, planner: nope}\n"
                         "  - {topology: random:4:1, planner: ps, model: 8MB, iterations: 1}\n")
    assert main(["sweep", str(grid_file), "--no-progress", "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 scenarios failed" in captured.err and "ps" in captured.out
    grid_file.write_text("grid: {topology: random:4:1, colour: red}\n")
    assert main(["sweep", str(grid_file)]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
