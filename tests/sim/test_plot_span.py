"""Planners compared over one simulated span: ``simulate(duration_s=)``, ``sim --duration``
and the iteration plot that states the span and labels its marks."""

from __future__ import annotations

import pytest
from netstorm.sim import SimResult, plot_iterations, simulate

from netstorm import Job
from netstorm.builtin_topologies import builtin
from netstorm.cli import main
from netstorm.dynamics import parse_dynamics

SPAN_S = 60.0
REDRAW = "redraw:20s:20Mbit/s:155Mbit/s:1"  # changes at 20, 40 and 60 s


@pytest.fixture(scope="module")
def runs() -> list[SimResult]:
    view, job = builtin("netstorm9"), Job.from_model("resnet18")
    dynamics = parse_dynamics(REDRAW)
    return [simulate(view, job, p, duration_s=SPAN_S, dynamics=dynamics)
            for p in ("ps", "netstorm", "ring")]


def test_every_planner_runs_through_the_common_span(runs: list[SimResult]) -> None:
    counts = set()
    for r in runs:
        ends = r.start_s + r.iteration_s
        assert r.total_s >= SPAN_S  # reaches the span ...
        assert r.start_s[-1] < SPAN_S <= ends[-1]  # ... and starts nothing after it
        assert list(r.start_s[1:]) == pytest.approx(list(ends[:-1]))  # back to back
        # every run sees the same redraws inside the span, whatever its iteration time
        assert [t for t in r.changes_s if t < SPAN_S] == [20.0, 40.0]
        counts.add(len(r.iteration_s))
        row = r.summary()
        assert row["duration_s"] == SPAN_S and row["iterations"] == len(r.iteration_s)
    assert len(counts) > 1  # different planners fit different numbers of iterations


def test_plot_states_the_span_and_labels_replans(runs: list[SimResult], tmp_path) -> None:
    assert sum(len(r.switches) for r in runs) > 0  # netstorm re-plans on the redraws
    png = tmp_path / "span.png"
    drawn = plot_iterations(runs, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn.span_s == SPAN_S
    assert "same 60 s of simulated time" in drawn.title
    assert "2 capacity changes within the span" in drawn.title
    replans = sum(len(r.switches) for r in runs)
    assert f"re-plan ({replans})" in " ".join(drawn.legend)
    assert any(label.startswith("capacity change") for label in drawn.legend)
    for r in runs:  # each planner's entry counts the iterations that ended in the span
        done = int(((r.start_s + r.iteration_s) <= SPAN_S).sum())
        assert any(label.startswith(f"{r.planner}: {done} iterations finished within")
                   for label in drawn.legend)


def test_plot_of_equal_iteration_counts_says_the_spans_differ(tmp_path) -> None:
    view, job = builtin("netstorm9"), Job.from_model("resnet18")
    dynamics = parse_dynamics(REDRAW)
    runs = [simulate(view, job, p, iterations=3, dynamics=dynamics) for p in ("ps", "ring")]
    drawn = plot_iterations(runs, tmp_path / "n.png")
    assert drawn.span_s is None
    assert "3 iterations per planner, so the simulated spans differ" in drawn.title
    # the spans named are the runs' own, shortest and longest
    shortest = min(r.total_s for r in runs)
    assert f"from {shortest:.3g} s" in drawn.title


def test_simulate_refuses_a_span_that_is_not_positive() -> None:
    view, job = builtin("netstorm9"), Job.from_model("resnet18")
    with pytest.raises(ValueError, match="duration_s must be > 0"):
        simulate(view, job, "ps", duration_s=0.0)


@pytest.mark.parametrize("argv, words", [
    (["--duration", "0"], "more than 0 s"),
    (["--duration", "5 parsecs"], "unknown unit 'parsecs'"),
    (["--duration", "10min", "-n", "5"], "not allowed with argument --duration"),
])
def test_sim_duration_bad_input_exits_2(argv: list[str], words: str, capsys) -> None:
    assert main(["sim", "-t", "netstorm9", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
