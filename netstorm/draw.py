"""PNG drawings of topologies and plans (matplotlib, imported lazily).

A graph of every link is unreadable beyond a dozen sites, so each drawing pairs a graph that
shows only the ``top`` links that matter most (every link of a small view), each labelled,
with a site-by-site matrix that shows every link. A plan's shards are drawn tree by tree
when there are few, and summarised by root site otherwise. Each figure's caption says what
is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .cost import predict
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = ["FEW_SHARDS", "TOP_LINKS", "Drawing", "draw_plan", "draw_topology"]

#: Most labels a graph panel carries: views with more links show their top ones only.
TOP_LINKS = 24
#: Most shards drawn one tree each; a plan with more is summarised by root site.
FEW_SHARDS = 4
#: Links beyond the labelled ones are drawn faintly behind them up to this many.
_FAINT_LINKS = 400
#: Matrix cells carry their value as text up to this many sites.
_ANNOTATED_SITES = 10

Link = tuple[int, int]


class Drawing(NamedTuple):
    """What a drawing shows, for callers and tests to check."""

    #: The PNG written.
    path: Path
    #: The figure's title.
    title: str
    #: The caption under the figure: what every mark means and what was left out.
    caption: str
    #: Labelled links of the graph panel; a symmetric pair drawn with one label is
    #: listed once, as ``(u, v)`` with ``u < v``.
    labelled: tuple[Link, ...]


def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` of its own: no pyplot, so no backend is chosen or changed
    (a notebook's inline backend keeps working) and nothing stays open after saving."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _layout(view: NetworkView) -> dict[int, np.ndarray]:
    """Kamada-Kawai for small sparse views, where it shows the structure; a circle for the
    rest (a dense mesh has no structure to show, and Kamada-Kawai is cubic in sites)."""
    graph = nx.Graph(view.to_networkx())
    sparse = graph.number_of_edges() <= 3 * view.n
    if view.n <= 24 and sparse and graph.number_of_edges() > 0:
        return nx.kamada_kawai_layout(graph)
    return nx.circular_layout(graph)


def _node_size(view: NetworkView) -> float:
    return 520.0 if view.n <= 16 else max(90.0, 520.0 * 16 / view.n)


def _nodes(ax: Any, view: NetworkView, pos: dict[int, np.ndarray],
           roots: Sequence[int] = ()) -> None:
    graph = view.to_networkx()
    size = _node_size(view)
    colours = ["#4C72B0" if graph.nodes[i]["worker"] else "#BBBBBB" for i in graph]
    if roots:
        nx.draw_networkx_nodes(graph, pos, ax=ax, nodelist=list(roots), node_color="none",
                               edgecolors="red", linewidths=2.0, node_size=size * 1.6)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=size)
    nx.draw_networkx_labels(graph, pos, ax=ax, labels=dict(enumerate(view.sites)),
                            font_size=7 if view.n <= 24 else 5,
                            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none",
                                  "pad": 1})


def _top_links(rank: dict[Link, float], label: dict[Link, str],
               top: int) -> tuple[list[Link], list[Link], list[Link]]:
    """Pick the links to label: the largest ``rank`` first, ``top`` labels in all.

    A pair whose two directions have the same ``label`` takes one label and is drawn as
    one line; the other links are drawn as directed arcs.

    Returns
    -------
    tuple of lists
        The symmetric pairs ``(u, v)`` with ``u < v``, the directed links, and every link
        left unlabelled.
    """
    ranked = sorted(rank, key=lambda e: (-rank[e], e))
    pairs: list[Link] = []
    arcs: list[Link] = []
    taken: set[Link] = set()
    for u, v in ranked:
        if len(pairs) + len(arcs) >= top:
            break
        if (u, v) in taken:
            continue
        if (v, u) in rank and label[(v, u)] == label[(u, v)]:
            pairs.append((min(u, v), max(u, v)))
            taken |= {(u, v), (v, u)}
        else:
            arcs.append((u, v))
            taken.add((u, v))
    rest = [e for e in ranked if e not in taken]
    return pairs, arcs, rest


def _graph_links(ax: Any, view: NetworkView, pos: dict[int, np.ndarray],
                 rank: dict[Link, float], label: dict[Link, str], top: int, *,
                 colour: Callable[[Link], Any], width: Callable[[Link], float]
                 ) -> tuple[list[Link], list[Link], int]:
    """Draw the top links labelled (and the rest faintly, when not too many).

    ``colour`` and ``width`` get a directed link, or a symmetric pair ``(u, v)``,
    ``u < v``, drawn as one line.
    """
    graph = view.to_networkx()
    pairs, arcs, rest = _top_links(rank, label, top)
    size = _node_size(view)
    arc = {"connectionstyle": "arc3,rad=0.1", "arrowsize": 8, "node_size": size}
    faint = len(rest) if len(rest) <= _FAINT_LINKS else 0
    if faint:
        nx.draw_networkx_edges(graph, pos, ax=ax, edgelist=rest, edge_color="#DDDDDD",
                               width=0.5, arrows=False)
    if pairs:
        flat = nx.Graph()
        flat.add_nodes_from(graph)
        flat.add_edges_from(pairs)
        nx.draw_networkx_edges(flat, pos, ax=ax, edgelist=pairs,
                               edge_color=[colour(e) for e in pairs],
                               width=[width(e) for e in pairs], node_size=size)
        # off the midpoint: on a circle every diameter's midpoint is the centre
        nx.draw_networkx_edge_labels(flat, pos, ax=ax, font_size=6, label_pos=0.4,
                                     edge_labels={e: label[e] for e in pairs},
                                     node_size=size)
    if arcs:
        nx.draw_networkx_edges(graph, pos, ax=ax, edgelist=arcs,
                               edge_color=[colour(e) for e in arcs],
                               width=[width(e) for e in arcs], **arc)
        # networkx puts a label at label_pos from the head: 0.7 is nearer the sender
        nx.draw_networkx_edge_labels(graph, pos, ax=ax, font_size=6, label_pos=0.7,
                                     edge_labels={e: label[e] for e in arcs},
                                     connectionstyle=arc["connectionstyle"],
                                     node_size=size)
    return pairs, arcs, faint


def _which(pairs: list[Link], arcs: list[Link], total: int, what: str, faint: int,
           by: str) -> str:
    """``"the 24 highest-capacity of 240 links"`` or ``"all 26 links"``, and the rest."""
    shown = 2 * len(pairs) + len(arcs)
    if shown >= total:
        head = f"all {total} {what}"
    else:
        head = f"the {shown} {by} of {total} {what}"
        head += (f" ({faint} others in light grey)" if faint
                 else " (the others in the matrix only)")
    forms = []
    if pairs:
        forms.append("a line without arrows: both directions, one label")
    if arcs:
        forms.append("an arrow: one direction, its label nearer the sender")
    return "; ".join([head, ", ".join(forms)] if forms else [head])


def _matrix(ax: Any, fig: Any, view: NetworkView, values: np.ndarray, *, label: str,
            cmap: str, log: bool, text: Callable[[float], str],
            vmin: float | None = None, vmax: float | None = None,
            mark: Link | None = None) -> None:
    """Sender-by-receiver heat map of ``values``; cells without a link are left blank."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle

    shown = np.ma.masked_where(view.capacity <= 0, values)
    some = shown.count() > 0
    low = (float(shown.min()) if some else 0.0) if vmin is None else vmin
    high = (float(shown.max()) if some else 1.0) if vmax is None else vmax
    norm = (LogNorm(max(low, 1e-12), max(high, low * 1.0001, 1e-12)) if log
            else Normalize(low, high if high > low else low + 1))
    colours = colormaps[cmap].with_extremes(bad="#F2F2F2")
    image = ax.imshow(shown, cmap=colours, norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    step = 1 if view.n <= 24 else math.ceil(view.n / 16)
    ticks = list(range(0, view.n, step))
    names = [view.sites[i] for i in ticks]
    size = 7 if view.n <= 24 else 6
    ax.set_xticks(ticks, names, rotation=90, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("to (receiver)")
    ax.set_ylabel("from (sender)")
    if view.n <= _ANNOTATED_SITES:
        for u, v in view.links:
            bright = norm(values[u, v]) > 0.6
            ax.text(v, u, text(values[u, v]), ha="center", va="center", fontsize=5.5,
                    color="black" if bright else "white")
    if mark is not None:
        u, v = mark
        ax.add_patch(Rectangle((v - 0.5, u - 0.5), 1, 1, fill=False, ec="red", lw=2))


def _caps_note(view: NetworkView) -> str:
    if not view.has_site_caps:
        return ""
    capped = [i for i in range(view.n)
              if math.isfinite(view.egress[i]) or math.isfinite(view.ingress[i])]
    return f" Site egress/ingress caps ({len(capped)} sites) are not drawn."


def _save(fig: Any, path: str | Path, caption: str) -> Path:
    out = Path(path)
    fig.text(0.01, 0.005, caption, fontsize=7.5, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=120)
    return out


def draw_topology(view: NetworkView, path: str | Path, *, top: int = TOP_LINKS) -> Drawing:
    """Draw a view: a graph of its ``top`` highest-capacity links, labelled in Mbit/s,
    beside a sender-by-receiver matrix of every link's capacity.

    Parameters
    ----------
    view
        The topology.
    path
        The PNG to write.
    top
        Most labelled links in the graph; a view with no more links shows them all.
    """
    values = {(u, v): float(view.capacity[u, v]) for u, v in view.links}
    labels = {e: f"{c * 8 / 1e6:.0f}" for e, c in values.items()}
    pos = _layout(view)
    fig = _figure(figsize=(14, 6.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    title = f"{view.name}: {view.n} sites, {len(values)} directed links"
    fig.suptitle(title)
    high = max(values.values(), default=1.0)
    pairs, arcs, faint = _graph_links(
        left, view, pos, values, labels, top, colour=lambda e: "#555555",
        width=lambda e: 0.5 + 4 * values[e] / high)
    _nodes(left, view, pos)
    left.axis("off")
    left.set_title("links by capacity (width), labelled in Mbit/s", fontsize=9)
    caps = view.capacity * 8 / 1e6
    positive = caps[caps > 0]
    spread = positive.max() / positive.min() if positive.size else 1.0
    _matrix(right, fig, view, caps, label="capacity (Mbit/s)", cmap="viridis",
            log=spread > 20, text=lambda x: f"{x:.0f}")
    right.set_title("every link's capacity (blank: no link)", fontsize=9)
    workers = "" if not view.relays else " Grey sites relay only."
    which = _which(pairs, arcs, len(values), "links", faint, "highest-capacity")
    caption = (f"Graph: {which}. "
               f"Matrix: capacity of every directed link, Mbit/s."
               f"{workers}{_caps_note(view)}")
    return Drawing(_save(fig, path, caption), title, caption, tuple(pairs + arcs))


def _shard_trees(axes: Sequence[Any], plan: Plan, view: NetworkView,
                 pos: dict[int, np.ndarray]) -> bool:
    """One small graph per shard: its reduce tree as arrows toward the root and, where it
    is not that tree reversed, its broadcast tree as dashed arrows from the root.

    Returns whether any broadcast tree was drawn.
    """
    graph = view.to_networkx()
    size = _node_size(view) * 0.6
    drawn = False
    for ax, (i, shard) in zip(axes, enumerate(plan.shards), strict=False):
        up = list(shard.reduce_edges())
        down = list(shard.broadcast_edges())
        tree = nx.DiGraph()
        tree.add_nodes_from(graph)
        tree.add_edges_from(up + down)
        nx.draw_networkx_edges(tree, pos, ax=ax, edgelist=up, edge_color="#4C72B0",
                               arrowsize=7, node_size=size, width=1.4,
                               connectionstyle="arc3,rad=0.1")
        if {(v, u) for u, v in down} != set(up):
            drawn = True
            nx.draw_networkx_edges(tree, pos, ax=ax, edgelist=down, edge_color="#DD8452",
                                   style="dashed", arrowsize=7, node_size=size, width=1.2,
                                   connectionstyle="arc3,rad=0.3")  # apart from reduce
        nx.draw_networkx_nodes(graph, pos, ax=ax, nodelist=[shard.root], node_color="none",
                               edgecolors="red", linewidths=2, node_size=size * 1.7)
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#4C72B0", node_size=size)
        nx.draw_networkx_labels(graph, pos, ax=ax, labels=dict(enumerate(view.sites)),
                                font_size=5)
        ax.set_title(f"shard {i}: {shard.fraction:.0%} of the gradient, root "
                     f"{view.sites[shard.root]}", fontsize=8)
        ax.axis("off")
    return drawn


def _shard_summary(ax: Any, plan: Plan, view: NetworkView, shown: int = 64) -> None:
    """Bars: the share of the gradient whose shards each site roots (and how many)."""
    share = np.zeros(view.n)
    count = np.zeros(view.n, dtype=int)
    for shard in plan.shards:
        share[shard.root] += shard.fraction
        count[shard.root] += 1
    order = [int(i) for i in np.argsort(-share, kind="stable") if count[i]]
    names = [view.sites[i] for i in order[:shown]]
    values = [share[i] for i in order[:shown]]
    counts = [count[i] for i in order[:shown]]
    colours = ["#4C72B0"] * len(names)
    if len(order) > shown:  # one grey bar for the rest, together
        rest = order[shown:]
        names.append(f"{len(rest)} other roots together")
        values.append(float(share[rest].sum()))
        counts.append(int(count[rest].sum()))
        colours.append("#BBBBBB")
    bars = ax.bar(range(len(names)), [100 * x for x in values], color=colours)
    many = len(names) > 16
    ax.bar_label(bars, [str(c) if many else f"{c} shard{'s' if c > 1 else ''}"
                        for c in counts], fontsize=5 if many else 6)
    ax.set_xticks(range(len(names)), names, rotation=90 if many else 45,
                  ha="center" if many else "right", fontsize=5 if many else 7)
    ax.set_ylabel("% of the gradient rooted there")
    ax.set_title(f"{len(plan.shards)} shards summarised by root site"
                 + (" (number of shards on each bar)" if many else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_plan(plan: Plan, view: NetworkView, job: Job, path: str | Path, *,
              top: int = TOP_LINKS) -> Drawing:
    """Draw a plan: its busiest links, every link's utilisation, and its shards.

    Top left: the ``top`` links in use with the highest utilisation (all of them in a
    small plan), coloured by utilisation, as wide as their load and labelled with the MB
    they carry per iteration. Top right: every link's utilisation, the bottleneck link
    boxed in red. Bottom: each shard's trees when there are at most :data:`FEW_SHARDS`
    shards, else the share of the gradient rooted at each site.

    Notes
    -----
    A link's utilisation is its load time (bytes over capacity) over the plan's predicted
    bandwidth time, so the bottleneck is at 1.
    """
    from matplotlib import colormaps

    pred = predict(plan, view, job)
    loads = pred.link_bytes
    busy = np.where(view.capacity > 0, loads / np.maximum(view.capacity, 1e-300), 0.0)
    util = busy / max(pred.bandwidth_s, 1e-12)
    used = {(u, v): float(util[u, v]) for u, v in view.links if loads[u, v] > 0}
    few = len(plan.shards) <= FEW_SHARDS
    fig = _figure(figsize=(14, 10))
    grid = fig.add_gridspec(2, max(len(plan.shards), 1) if few else 1,
                            height_ratios=[1.7, 0.9 if few else 0.7])
    top_row = grid[0, :].subgridspec(1, 2, width_ratios=[1.25, 1])
    left, right = fig.add_subplot(top_row[0]), fig.add_subplot(top_row[1])
    title = (f"{plan.planner} on {view.name}, {job.label()}: {pred.time_s:.3g} s predicted, "
             f"bottleneck {pred.bottleneck}, {len(plan.shards)} shards, "
             f"chunk {plan.job_for(job).chunk_bytes / 1e6:.3g} MB")
    fig.suptitle(title, fontsize=11)
    pos = _layout(view)
    cmap = colormaps["viridis"]
    high = max((float(loads[e]) for e in used), default=1.0)
    labels = {e: f"{loads[e] / 1e6:.3g}" for e in used}

    def busier(e: Link) -> float:  # a symmetric pair's line shows its busier direction
        return max(used.get(e, 0.0), used.get((e[1], e[0]), 0.0))

    # the busiest links first, to the percent; among equally busy ones the heaviest
    rank = {e: round(u, 2) + 1e-3 * loads[e] / high for e, u in used.items()}
    pairs, arcs, faint = _graph_links(
        left, view, pos, rank, labels, top, colour=lambda e: cmap(min(busier(e), 1.0)),
        width=lambda e: 0.6 + 4 * math.sqrt(loads[e] / high))
    roots = sorted({s.root for s in plan.shards})
    ringed = len(roots) <= view.n // 2  # rings on most sites would say nothing
    _nodes(left, view, pos, roots if ringed else ())
    left.axis("off")
    left.set_title("links in use: colour = utilisation, label = MB per iteration, "
                   "width grows with it", fontsize=9)
    mark = _bottleneck_link(pred.bottleneck, view)
    _matrix(right, fig, view, util, label="utilisation: load time / bandwidth time",
            cmap="viridis", log=False, vmin=0.0, vmax=1.0, text=lambda x: f"{x:.0%}",
            mark=mark)
    right.set_title("every link's utilisation (blank: no link)"
                    + (", bottleneck boxed" if mark else ""), fontsize=9)
    if few:
        broadcast = _shard_trees(
            [fig.add_subplot(grid[1, i]) for i in range(len(plan.shards))], plan, view, pos)
        shards = ("Bottom: each shard's reduce tree, blue arrows toward its root (red ring)"
                  + ("; dashed orange arrows: its broadcast tree, where that is not the "
                     "reduce tree reversed." if broadcast
                     else "; each broadcasts down the same tree reversed."))
    else:
        _shard_summary(fig.add_subplot(grid[1, 0]), plan, view)
        shards = "Bottom: the shards' share of the gradient by root site."
    rings = ("Red rings: shard roots. " if ringed
             else f"{len(roots)} of {view.n} sites root shards (not ringed). ")
    which = _which(pairs, arcs, len(used), "links in use", faint, "most utilised")
    which = which.replace("one label", "one label, the busier one's colour")
    caption = (f"Top left: {which}. {rings}"
               f"Top right: utilisation of every directed link."
               f" {shards}{_caps_note(view)}")
    return Drawing(_save(fig, path, caption), title, caption, tuple(pairs + arcs))


def _bottleneck_link(bottleneck: str, view: NetworkView) -> Link | None:
    """``(u, v)`` when the bottleneck is ``"link u->v"`` (not a site cap)."""
    if not bottleneck.startswith("link "):
        return None
    tail, _, head = bottleneck[len("link "):].partition("->")
    try:
        return view.index(tail), view.index(head)
    except (KeyError, ValueError):
        return None
