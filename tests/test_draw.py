"""Drawings stay readable as views grow: at most ``top`` labelled links, a matrix of every
link, shards drawn one by one only when few, and captions that say what is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from netstorm import Job, draw
from netstorm.builtin_topologies import builtin
from netstorm.cost import predict
from netstorm.registry import plan
from netstorm.view import NetworkView

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the drawing functions save (closed, but their artists stay)."""
    kept: list[Any] = []
    save = draw._save

    def keep(fig: Any, path: str | Path, caption: str) -> Path:
        kept.append(fig)
        return save(fig, path, caption)

    monkeypatch.setattr(draw, "_save", keep)
    return kept


def edge_labels(ax: Any, view: NetworkView) -> list[str]:
    """The texts of a graph panel that are not site names: its link labels."""
    return [t.get_text() for t in ax.texts if t.get_text() not in view.sites]


def test_a_64_site_topology_labels_only_its_top_links(figures: list[Any],
                                                      tmp_path: Path) -> None:
    view = builtin("random:64:1")
    drawn = draw.draw_topology(view, tmp_path / "t.png", top=10)
    assert drawn.path.read_bytes()[:8] == PNG
    graph, matrix = figures[-1].axes[:2]
    labels = edge_labels(graph, view)
    assert len(labels) == len(drawn.labelled) == 10
    mbits = view.capacity[view.capacity > 0] * 8 / 1e6
    assert sorted(labels) == sorted(f"{c:.0f}" for c in np.sort(mbits)[-10:])
    assert "the 10 highest-capacity of 4032 links" in drawn.caption
    assert "others in the matrix only" in drawn.caption  # too many to draw faintly
    # the matrix beside it holds every link, in Mbit/s, and nothing where there is none
    cells = matrix.images[0].get_array()
    assert cells.count() == 4032
    assert np.allclose(cells.compressed(), mbits)


def test_a_small_topology_is_drawn_whole_one_label_per_symmetric_pair(
        figures: list[Any], tmp_path: Path) -> None:
    view = builtin("netstorm9")
    drawn = draw.draw_topology(view, tmp_path / "t.png")
    assert np.allclose(view.capacity, view.capacity.T)  # the premise: symmetric links
    pairs = [(u, v) for u, v in view.links if u < v]
    labels = edge_labels(figures[-1].axes[0], view)
    assert sorted(drawn.labelled) == pairs
    assert sorted(labels) == sorted(f"{view.capacity[e] * 8 / 1e6:.0f}" for e in pairs)
    assert drawn.caption.startswith(f"Graph: all {len(view.links)} links")


def test_a_plan_of_many_shards_is_summarised_with_its_bottleneck_boxed(
        figures: list[Any], tmp_path: Path) -> None:
    view, job = builtin("cities"), Job.from_model("resnet50")
    made = plan(view, job, "treepack")
    assert len(made.shards) > draw.FEW_SHARDS
    drawn = draw.draw_plan(made, view, job, tmp_path / "p.png", top=12)
    fig = figures[-1]
    graph, matrix = fig.axes[:2]
    assert len(edge_labels(graph, view)) == len(drawn.labelled) <= 12
    assert not [ax for ax in fig.axes if ax.get_title().startswith("shard ")]
    bars = [ax for ax in fig.axes if "summarised by root" in ax.get_title()]
    assert len(bars) == 1
    heights = [p.get_height() for p in bars[0].patches]
    assert sum(heights) == pytest.approx(100.0)  # every shard's share, by its root
    assert "share of the gradient by root site" in drawn.caption
    # utilisation: load time over the predicted bandwidth time, 1 on the bottleneck
    pred = predict(made, view, job)
    tail, head = (view.index(s) for s in pred.bottleneck.removeprefix("link ").split("->"))
    cells = matrix.images[0].get_array()
    assert cells[tail, head] == pytest.approx(1.0)
    expect = pred.link_bytes[tail, head] / view.capacity[tail, head] / pred.bandwidth_s
    assert expect == pytest.approx(1.0)
    boxes = [p for p in matrix.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [b.get_xy() for b in boxes] == [(head - 0.5, tail - 0.5)]


def test_a_plan_of_few_shards_draws_each_tree(figures: list[Any], tmp_path: Path) -> None:
    view, job = builtin("netstorm9"), Job.from_model("resnet50")
    made = plan(view, job, "treepack")
    assert len(made.shards) <= draw.FEW_SHARDS
    drawn = draw.draw_plan(made, view, job, tmp_path / "p.png")
    titles = [ax.get_title() for ax in figures[-1].axes]
    assert [t.split(":")[0] for t in titles if t.startswith("shard ")] == \
        [f"shard {i}" for i in range(len(made.shards))]
    used = int((predict(made, view, job).link_bytes > 0).sum())
    assert drawn.caption.startswith(f"Top left: all {used} links in use")


def test_drawing_leaves_pyplot_and_its_backend_alone(tmp_path: Path) -> None:
    """Figures are made without pyplot: a notebook's backend is not switched to Agg and
    no figure stays open in pyplot's registry."""
    import matplotlib
    import matplotlib.pyplot as plt
    from netstorm.sim.plots import plot_scaling

    original = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands for a notebook's backend: anything but Agg
    try:
        opened = plt.get_fignums()
        view = builtin("netstorm9")
        draw.draw_topology(view, tmp_path / "t.png")
        draw.draw_plan(plan(view, Job.from_model("resnet18"), "ring"), view,
                       Job.from_model("resnet18"), tmp_path / "p.png")
        plot_scaling([{"sites": 9, "planner": "ps", "engine": "compiled",
                       "sim_s_per_iteration": 1e-3, "transfers_per_s": 5e5}],
                     tmp_path / "s.png")
        assert matplotlib.get_backend() == "pdf" and plt.get_fignums() == opened
    finally:
        matplotlib.use(original)
    for name in ("t.png", "p.png", "s.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
