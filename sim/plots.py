"""Figures: iteration time per planner, and accuracy against (simulated) time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import SimResult

__all__ = ["plot_accuracy", "plot_iterations"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_iterations(results: Sequence[SimResult], path: str | Path) -> None:
    """Iteration time against iteration, one line per planner, plan switches marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        (line,) = ax.plot(range(1, len(r.iteration_s) + 1), r.iteration_s, label=r.planner)
        for sw in r.switches:
            ax.axvline(sw.iteration + 1, color=line.get_color(), alpha=0.15, lw=0.8)
    first = results[0]
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"iteration time (s), {first.model} gradients")
    ax.set_yscale("log")
    ax.set_title(f"{first.topology}: simulated iteration time per planner")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
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
    plt.close(fig)
    return xlabel, ylabel
