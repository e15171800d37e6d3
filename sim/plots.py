"""Figures: iteration time per planner, and accuracy against (simulated) time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .result import SimResult

__all__ = ["IterationPlot", "plot_accuracy", "plot_iterations", "plot_scaling"]


def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` of its own: no pyplot, so no backend is chosen or changed
    (a notebook's inline backend keeps working) and nothing stays open after saving."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


class IterationPlot(NamedTuple):
    """What :func:`plot_iterations` drew, for callers and tests to check."""

    #: The figure's title (it states the simulated span).
    title: str
    #: Legend entries of the iteration-time panel, in order.
    legend: tuple[str, ...]
    #: The common simulated span in seconds, or ``None`` when the runs were given a number
    #: of iterations and so cover different spans.
    span_s: float | None
    #: Capacity changes drawn (those before the end of the longest run).
    changes: int


def _span_text(seconds: float) -> str:
    """``"30 min"``, ``"90 s"``, ``"2.5 h"``: the unit a reader expects for a span."""
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def plot_iterations(results: Sequence[SimResult], path: str | Path) -> IterationPlot:
    """Iteration time and iterations finished against simulated time, one line per planner.

    Top panel: each iteration drawn across the simulated time it ran, at the height of
    its duration (log scale); re-plans are marked where the new plan's first iteration
    starts. Bottom panel: iterations finished so far, the fair measure of progress. Both
    mark every capacity change the dynamics made.

    Notes
    -----
    Runs given the same ``duration_s`` (``netstorm sim --duration``) cover the same span
    and see the same capacity changes; the title states that span. Runs given a number of
    iterations may not: the title then states each run's span instead, so a planner whose
    iterations all ended before the first change does not pass for one immune to it.
    """
    from matplotlib.lines import Line2D

    first = results[0]
    ends = [r.start_s + r.iteration_s for r in results]
    longest = max((float(e[-1]) for e in ends if len(e)), default=0.0)
    spans = {r.duration_s for r in results}
    span = spans.pop() if len(spans) == 1 else None
    minutes = max(longest, span or 0.0) >= 300
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    changes = sorted({t for r in results for t in r.changes_s if 0 < t <= longest})
    fig = _figure(figsize=(8, 7.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for t in changes:
        for ax in (top, bottom):
            ax.axvline(t / scale, color="#999999", ls=":", lw=0.9, zorder=0)
    replans = 0
    for r, end in zip(results, ends, strict=True):
        edges = np.append(r.start_s, end[-1:]) / scale
        mean = float(np.mean(r.iteration_s)) if len(end) else float("nan")
        if span is not None:
            label = (f"{r.planner}: {int(np.sum(end <= span))} iterations finished within "
                     f"the span ({len(end)} run, mean {mean:.3g} s)")
        else:
            label = (f"{r.planner}: {len(end)} iterations in {_span_text(r.total_s)}, "
                     f"mean {mean:.3g} s")
        artist = top.stairs(r.iteration_s, edges, label=label, lw=1.6, baseline=None)
        colour = artist.get_edgecolor()
        starts = [sw.iteration for sw in r.switches if sw.iteration < len(end)]
        replans += len(starts)
        top.plot(r.start_s[starts] / scale, r.iteration_s[starts], "v", color=colour,
                 mec="black", mew=0.6, ms=6, ls="none")
        bottom.step(np.append(0.0, end) / scale, np.arange(len(end) + 1), where="post",
                    color=colour, lw=1.6)
    handles, labels = top.get_legend_handles_labels()
    extra = [(Line2D([], [], marker="v", color="#777777", mec="black", mew=0.6, ls="none"),
              f"re-plan ({replans}): a new plan from this iteration on")]
    if changes:
        extra.append((Line2D([], [], color="#999999", ls=":"), "capacity change (dynamics)"))
    if span is not None:
        for ax in (top, bottom):
            ax.axvline(span / scale, color="black", ls="--", lw=1)
        extra.append((Line2D([], [], color="black", ls="--"),
                      f"end of the common span ({_span_text(span)})"))
    handles += [h for h, _ in extra]
    labels += [text for _, text in extra]
    if span is not None:
        within = sum(1 for t in changes if t < span)
        title = (f"{first.topology}, {first.model}: every planner run for the same "
                 f"{_span_text(span)} of simulated time\n({within} capacity changes within "
                 f"the span; the last iteration of each may end after it)")
    else:
        counts = "/".join(str(n) for n in sorted({len(r.iteration_s) for r in results}))
        title = (f"{first.topology}, {first.model}: {counts} iterations per planner, so the "
                 f"simulated spans differ\n(from {_span_text(min(r.total_s for r in results))}"
                 f" to {_span_text(longest)}; --duration runs all for the same span)")
    top.set_title(title, fontsize=9)
    top.set_ylabel("iteration time (s)")
    top.set_yscale("log")
    bottom.set_ylabel("iterations finished")
    bottom.set_xlabel(f"simulated time ({unit})")
    bottom.set_xlim(0, max(longest, span or 0.0) / scale * 1.01)
    for ax in (top, bottom):
        ax.grid(alpha=0.25)
    rows = -(-len(labels) // 2)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.022 * rows + 0.015, 1, 1))
    fig.savefig(path, dpi=120)
    return IterationPlot(title=title, legend=tuple(labels), span_s=span,
                         changes=len(changes))


def plot_accuracy(curves: Sequence[dict[str, Any]], path: str | Path, *, model: str,
                  topology: str) -> tuple[str, str]:
    """Test accuracy against simulated training time (minutes), in the style of the
    NetStorm paper's figure; each curve is ``{"planner", "time_s", "accuracy"}``.

    The axis labels name the model whose gradient traffic was simulated (the accuracy
    comes from a small real model trained on sklearn's digits).

    Returns
    -------
    tuple of str
        The x and y axis labels drawn.
    """
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for c in curves:
        ax.plot([t / 60 for t in c["time_s"]], c["accuracy"], label=c["planner"])
    xlabel = (f"simulated training time (min), charged with {model} gradient traffic "
              f"on {topology}")
    ylabel = "test accuracy (MLP on sklearn digits)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return xlabel, ylabel


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | Path) -> tuple[str, ...]:
    """Simulation time per iteration and transfers per second against sites, one line per
    planner and engine (``netstorm bench sim``'s ``scaling`` rows); returns the legend.

    Both axes are logarithmic: a line's slope is the exponent of its cost in sites."""
    from matplotlib.ticker import NullLocator

    fig = _figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault((row["planner"], row["engine"]), []).append(row)
    planners = sorted({planner for planner, _ in lines})
    labels = []
    for (planner, engine), points in sorted(lines.items()):
        sites = [p["sites"] for p in points]
        style = "-o" if engine == "compiled" else "--s"
        colour = f"C{planners.index(planner)}"
        label = f"{planner}, {engine}"
        left.plot(sites, [p["sim_s_per_iteration"] for p in points], style, color=colour,
                  label=label)
        right.plot(sites, [p["transfers_per_s"] for p in points], style, color=colour,
                   label=label)
        labels.append(label)
    ticks = sorted({row["sites"] for row in rows})
    left.set_ylabel("wall time per iteration (s, planning excluded)")
    right.set_ylabel("hop transfers simulated per second")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sites (random:N:1 full mesh, ResNet-50)")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.25, which="both")
    right.legend(fontsize=8)
    fig.suptitle("netstorm sim: the compiled core against the executor path", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return tuple(labels)
