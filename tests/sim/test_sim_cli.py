"""`netstorm sim`: JSON shape, trace and plot files, and bad input exiting 2 in one line."""

from __future__ import annotations

import json

import pytest

from netstorm.cli import main


def test_sim_json_trace_and_plot(tmp_path, capsys) -> None:
    trace, plot = tmp_path / "t.json", tmp_path / "p.png"
    code = main(["sim", "-t", "netstorm9", "-m", "resnet18", "-p", "ps,ring", "-n", "3",
                 "--json", "--trace", str(trace), "--plot", str(plot), "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["planner"] for r in doc["results"]] == ["ps", "ring"]
    for r in doc["results"]:
        assert set(r["iteration_time_s"]) == {"mean", "median"}
        assert r["total_time_s"] == pytest.approx(3 * r["iteration_time_s"]["mean"])
        assert r["replans"] == 0
    events = json.loads(trace.read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert "s0->s1" in tracks and "s8" in tracks
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("argv, words", [
    (["-p", "nope"], "unknown planner"),
    (["-m", "resnet9000"], "unknown model"),
    (["-n", "-1"], "iterations"),
    (["-d", "redraw:1s:5"], "redraw"),
])
def test_sim_bad_input_exits_2(argv, words, capsys) -> None:
    assert main(["sim", "-t", "netstorm9", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
