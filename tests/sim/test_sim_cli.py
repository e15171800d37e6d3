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


def test_sim_train_accuracy_improves_on_the_simulated_clock(tmp_path, capsys) -> None:
    """Hybrid training: the digits MLP learns, and its clock is the simulated one."""
    from netstorm.sim import plot_accuracy, simulate, train_digits

    from netstorm import Job
    from netstorm.builtin_topologies import builtin

    view = builtin("netstorm9")
    result = simulate(view, Job.from_model("resnet18"), "ps", iterations=30, aware=False)
    curve = train_digits(result, eval_every=10)
    assert curve["iterations"] == [0, 10, 20, 30]
    # the time axis is the simulated time of resnet18's traffic, iteration by iteration
    assert curve["time_s"] == pytest.approx(
        [0.0, *(result.iteration_s.cumsum()[[9, 19, 29]])])
    assert curve["time_s"][-1] == pytest.approx(result.total_s)
    assert curve["accuracy"][-1] > curve["accuracy"][0] + 0.3  # 10 classes: ~0.1 at start
    xlabel, _ = plot_accuracy([curve], tmp_path / "a.png", model=result.model,
                              topology=result.topology)
    assert "resnet18" in xlabel and "netstorm9" in xlabel and "simulated" in xlabel

    plot = tmp_path / "acc.png"
    code = main(["sim", "-t", "netstorm9", "-m", "resnet18", "-p", "ps,ring", "-n", "6",
                 "--json", "--train", str(plot), "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    for row, res in zip(doc["training"], doc["results"], strict=True):
        assert row["planner"] == res["planner"]
        assert row["time_s"] == pytest.approx(res["total_time_s"])
        assert row["final_accuracy"] > row["initial_accuracy"]
    assert "resnet18" in doc["training_time_axis"]
    assert plot.stat().st_size > 1000


def test_sim_overlap_flag_cuts_ddp_buckets(capsys) -> None:
    code = main(["sim", "-t", "netstorm9", "-m", "resnet50", "-p", "ring", "-n", "2",
                 "--json", "--no-progress"])
    serial = json.loads(capsys.readouterr().out)
    code2 = main(["sim", "-t", "netstorm9", "-m", "resnet50", "-p", "ring", "-n", "2",
                  "--json", "--no-progress", "--overlap", "--bucket-mb", "25"])
    over = json.loads(capsys.readouterr().out)
    assert code == code2 == 0
    assert (serial["overlap"], serial["buckets"]) == (False, 1)
    # 25,557,032 fp32 parameters = 102.2 MB: four full 25 MB buckets and a 2.2 MB one
    assert (over["overlap"], over["buckets"]) == (True, 5)
    assert over["results"][0]["overlap"] is True
    # the all-reduce of the last buckets runs during the backward pass
    assert (over["results"][0]["iteration_time_s"]["mean"]
            < serial["results"][0]["iteration_time_s"]["mean"])


def test_ddp_buckets_by_hand() -> None:
    from netstorm import Job
    from netstorm.cli.sim import ddp_buckets

    assert ddp_buckets(Job(buckets=4 * 10), 4 * 3).buckets == (4, 12, 12, 12)
    assert ddp_buckets(Job(buckets=4 * 9), 4 * 3).buckets == (12, 12, 12)
    assert ddp_buckets(Job(buckets=(8, 8)), 4).buckets == (8, 8)  # already bucketed


def test_sim_duration_runs_every_planner_over_the_same_span(capsys) -> None:
    code = main(["sim", "-t", "netstorm9", "-m", "resnet18", "-p", "ps,ring", "--duration",
                 "60s", "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["duration_s"] == 60 and doc["iterations"] is None
    rows = doc["results"]
    assert [r["planner"] for r in rows] == ["ps", "ring"]
    assert all(r["total_time_s"] >= 60 for r in rows)
    # the last iteration started before the span ended: without it, the span is not reached
    assert all(r["total_time_s"] - r["iteration_time_s"]["mean"] < 60 for r in rows)


def test_sim_runs_a_plan_file_as_it_is(tmp_path, capsys) -> None:
    assert main(["plan", "-t", "netstorm9", "-m", "resnet18", "-p", "ring", "--json"]) == 0
    plan_file = tmp_path / "ring.json"
    plan_file.write_text(capsys.readouterr().out)
    assert main(["sim", "-t", "netstorm9", "-m", "resnet18", "-p", "ring", "--plan",
                 str(plan_file), "-n", "2", "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["planner"] for r in rows] == ["ring", f"{plan_file} (ring)"]
    # the file holds ring's plan: the same simulated time as planning it here
    assert rows[1]["iteration_time_s"] == rows[0]["iteration_time_s"]


def test_sim_engines_agree_from_the_command_line(capsys) -> None:
    """``--engine executor`` gives the compiled core's figures (the default)."""
    docs = []
    for engine in ("auto", "executor"):
        assert main(["sim", "-t", "cities", "-m", "resnet18", "-p", "netstorm", "-n", "2",
                     "--json", "--no-progress", "--engine", engine]) == 0
        docs.append(json.loads(capsys.readouterr().out)["results"][0])
    for key in ("iteration_time_s", "transfers", "link_utilisation", "total_time_s"):
        assert docs[0][key] == docs[1][key]
    assert 0 < docs[0]["setup_s"] <= docs[0]["wall_s"]


def test_plot_scaling_draws_a_line_per_planner_and_engine(tmp_path) -> None:
    from netstorm.sim.plots import plot_scaling

    rows = [{"sites": n, "planner": p, "engine": e, "sim_s_per_iteration": n * 1e-3,
             "transfers_per_s": 5e5} for n in (9, 32) for p in ("ps", "treepack")
            for e in ("compiled", "executor")]
    legend = plot_scaling(rows, tmp_path / "s.png")
    assert legend == ("ps, compiled", "ps, executor", "treepack, compiled",
                      "treepack, executor")
    assert (tmp_path / "s.png").stat().st_size > 1000
