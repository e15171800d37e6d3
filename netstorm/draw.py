"""PNG drawings of topologies and plans (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from .cost import link_loads, predict
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = ["draw_plan", "draw_topology"]


def _layout(view: NetworkView) -> dict[int, np.ndarray]:
    graph = nx.Graph(view.to_networkx())
    if graph.number_of_edges() == 0:
        return nx.circular_layout(graph)
    return nx.kamada_kawai_layout(graph)


def _figure(view: NetworkView, title: str):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.5))
    ax.set_title(title)
    ax.axis("off")
    return fig, ax, plt


def _nodes(ax, view: NetworkView, pos: dict) -> None:  # type: ignore[no-untyped-def]
    graph = view.to_networkx()
    colors = ["#4C72B0" if graph.nodes[i]["worker"] else "#BBBBBB" for i in graph]
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colors, node_size=520)
    nx.draw_networkx_labels(graph, pos, ax=ax, labels=dict(enumerate(view.sites)),
                            font_size=7, bbox={"facecolor": "white", "alpha": 0.8,
                                               "edgecolor": "none", "pad": 1})


def draw_topology(view: NetworkView, path: str | Path) -> Path:
    """Draw sites (grey: relay-only) and links, width by capacity, labelled in Mbit/s."""
    pos = _layout(view)
    fig, ax, plt = _figure(view, f"{view.name}: {view.n} sites, {len(view.links)} links")
    graph = view.to_networkx()
    caps = np.array([d["capacity"] for _, _, d in graph.edges(data=True)])
    widths = 0.5 + 4 * caps / caps.max() if len(caps) else []
    nx.draw_networkx_edges(graph, pos, ax=ax, width=widths, edge_color="#555555",
                           connectionstyle="arc3,rad=0.08", arrowsize=8, node_size=520)
    if len(caps) <= 60:
        labels = {(u, v): f"{d['capacity'] * 8 / 1e6:.0f}"
                  for u, v, d in graph.edges(data=True)}
        nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=6,
                                     label_pos=0.3, connectionstyle="arc3,rad=0.08")
    _nodes(ax, view, pos)
    ax.text(0.0, -0.02, "edge labels: Mbit/s (u->v label nearer u)", transform=ax.transAxes,
            fontsize=7)
    return _save(fig, plt, path)


def _dominant_shard(plan: Plan, view: NetworkView, job: Job,
                    edges: list[tuple[int, int]]) -> np.ndarray:
    """For every link, the index of the shard that moves the most bytes over it."""
    per_shard = np.stack([link_loads(Plan(plan.version, plan.planner, plan.sites, (shard,)),
                                     view, job)[0] * shard.fraction
                          for shard in plan.shards])
    return np.array([int(np.argmax(per_shard[:, u, v])) for u, v in edges])


def draw_plan(plan: Plan, view: NetworkView, job: Job, path: str | Path) -> Path:
    """Draw a plan in two panels.

    Left: the trees, each link coloured by the shard that moves the most bytes over it (the
    eight largest shards get their own colour, the rest grey) and as wide as its load.
    Right: each link's utilisation (load time over the predicted bandwidth time). Shard
    roots are ringed in red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pred = predict(plan, view, job)
    pos = _layout(view)
    graph = view.to_networkx()
    edges = list(graph.edges)
    loads = np.array([pred.link_bytes[u, v] for u, v in edges])
    used = loads > 0
    edges = [e for e, keep in zip(edges, used, strict=True) if keep]
    loads = loads[used]
    widths = 0.4 + 5 * loads / max(loads.max(initial=0), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5))
    fig.suptitle(f"{plan.planner} on {view.name}, {job.label()}: {pred.time_s:.2f} s "
                 f"predicted, bottleneck {pred.bottleneck}, "
                 f"chunk {plan.job_for(job).chunk_bytes / 1e6:.3g} MB")
    order = sorted(range(len(plan.shards)), key=lambda i: -plan.shards[i].fraction)
    palette = [plt.cm.tab10(k) for k in range(10)]
    colour_of = {i: palette[k] for k, i in enumerate(order[:8])}
    owner = _dominant_shard(plan, view, job, edges) if edges else np.zeros(0, int)
    colours = [colour_of.get(int(i), "#BBBBBB") for i in owner]
    style = {"connectionstyle": "arc3,rad=0.08", "arrowsize": 8, "node_size": 520}
    nx.draw_networkx_edges(graph, pos, ax=left, edgelist=edges, edge_color=colours,
                           width=widths, **style)
    util = np.array([pred.link_bytes[u, v] / view.capacity[u, v] for u, v in edges])
    util = util / max(pred.bandwidth_s, 1e-12)
    nx.draw_networkx_edges(graph, pos, ax=right, edgelist=edges, edge_color=util,
                           edge_cmap=plt.cm.viridis, edge_vmin=0, edge_vmax=1, width=widths,
                           **style)
    roots = sorted({s.root for s in plan.shards})
    for ax in (left, right):
        ax.axis("off")
        nx.draw_networkx_nodes(graph, pos, ax=ax, nodelist=roots, node_color="none",
                               edgecolors="red", linewidths=2.5, node_size=800)
        _nodes(ax, view, pos)
    left.set_title(f"{len(plan.shards)} shards: links by dominant shard, width = load")
    handles = [Line2D([], [], color=colour_of[i], lw=3,
                      label=f"shard {i}: root {view.sites[plan.shards[i].root]}, "
                            f"{plan.shards[i].fraction:.0%}") for i in order[:8]]
    left.legend(handles=handles, loc="lower left", fontsize=7, frameon=False)
    right.set_title("link utilisation")
    sm = plt.cm.ScalarMappable(cmap=plt.cm.viridis, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=right, shrink=0.6, label="load time / bandwidth time")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
