# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Write a planner
#
# A tutorial: write a planner of your own, check it with netstorm's conformance suite
# (`netstorm.testing`), register it by name, and compare it with the built-ins and with
# the LP bound in a sweep.
#
# **Size.** The next cell sets every parameter: small by default (the test suite runs it),
# `NETSTORM_NOTEBOOK_FULL=1` for the full comparison.

# %%
import os
from pathlib import Path

FULL = os.environ.get("NETSTORM_NOTEBOOK_FULL", "0") == "1"
FIGURES = Path(os.environ.get("NETSTORM_NOTEBOOK_FIGURES", "figures"))

MODEL = "resnet50"
BUILTINS = ["ps", "ring", "netstorm", "treepack"]
if FULL:
    TOPOLOGIES = ["netstorm9", "cities", "cloud:aws:8", "cloud:gcp:8", "random:8:0",
                  "waxman:10:1", "random:16:0"]
else:
    TOPOLOGIES = ["netstorm9", "random:5:0"]

# %%
import heapq
import json
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from netstorm.sim.sweep import grid, sweep, to_frame

import netstorm as ns
from netstorm import testing

FIGURES.mkdir(parents=True, exist_ok=True)
job = ns.Job.from_model(MODEL)


def show(fig, name):
    """Save ``fig`` as FIGURES/name and show it inline (whatever the matplotlib backend)."""
    fig.savefig(FIGURES / name, dpi=130, bbox_inches="tight")
    display(fig)
    plt.close(fig)


# %% [markdown]
# ## 1. The contract
#
# A planner is a function `planner(view, job, *, seed=None, state=None, **options) -> Plan`:
#
# - `view` (`netstorm.NetworkView`): the sites, `capacity[u, v]` in bytes/s (0: no direct
#   link), `latency[u, v]` in seconds, per-site `egress`/`ingress` caps, and which sites are
#   `workers` (the others only relay);
# - `job` (`netstorm.Job`): the gradient's size, element size and chunk;
# - it must be pure and deterministic (ties broken by site index), so every site computes
#   the same plan; randomness comes from `seed`, memory across calls lives in `state`.
#
# A `Plan` cuts the gradient into `Shard`s. Each shard has a `fraction` of the bytes, a
# `root`, a `reduce_tree` and a `broadcast_tree`, both written `{site: parent}`: partial
# sums flow from every site to its parent up to the root, and the sum flows back down from
# each parent to its children. A tree edge without a direct link needs a `Route` (relay
# paths); our planner uses direct links only, so it needs none.
#
# ## 2. A planner: widest trees
#
# For each of `roots` roots (the workers with the most usable capacity, in plus out), the
# reduce tree is the *widest-path* in-tree: every site reaches the root along the path whose
# narrowest link is as wide as possible (Dijkstra with "bottleneck" in place of "sum"). The
# broadcast tree is the widest-path out-tree from the root. Relay-only sites that end up as
# leaves carry nothing and are pruned. The gradient is split evenly over the roots.

# %%
def usable(view, u, v):
    """What link u -> v can carry: its capacity, within u's egress and v's ingress caps."""
    return min(view.capacity[u, v], view.egress[u], view.ingress[v])


def widest_tree(view, root, inward):
    """``{site: parent}``: every site's widest path to (``inward``) or from the root.

    Modified Dijkstra: a site's width is the narrowest link on its best path, and the
    site with the widest path is settled first (ties to the lowest index)."""
    width = np.zeros(view.n)
    width[root] = np.inf
    parent, done = {}, set()
    heap = [(-np.inf, root)]
    while heap:
        _, v = heapq.heappop(heap)
        if v in done:
            continue
        done.add(v)
        for u in range(view.n):
            link = usable(view, u, v) if inward else usable(view, v, u)
            if u in done or link <= 0:
                continue
            through = min(width[v], link)
            if through > width[u]:
                width[u], parent[u] = through, v
                heapq.heappush(heap, (-through, u))
    workers = set(view.workers)
    while True:  # prune relay-only leaves until none is left
        leaves = [s for s in parent if s not in workers and s not in parent.values()]
        if not leaves:
            return parent
        for s in leaves:
            del parent[s]


def widest_trees(view, job, *, seed=None, state=None, roots=1):
    """Plan an all-reduce over ``roots`` widest-path tree pairs, one even shard each.

    Parameters
    ----------
    view, job
        The network and the gradient (the plan does not depend on the gradient's size).
    seed, state
        Part of the planner contract; this planner is deterministic and stateless.
    roots
        How many roots (at most one per worker): the workers with the largest usable
        in + out capacity.
    """
    del job, seed, state
    if roots < 1:
        raise ns.InputError(f"widest-trees: roots must be >= 1, got {roots}")
    roots = min(roots, len(view.workers))  # a view with fewer workers gets one root each
    score = {w: sum(usable(view, w, v) + usable(view, v, w) for v in range(view.n))
             for w in view.workers}
    chosen = sorted(view.workers, key=lambda w: (-score[w], w))[:roots]
    shards = tuple(ns.Shard(fraction=1 / roots, root=r,
                            reduce_tree=widest_tree(view, r, inward=True),
                            broadcast_tree=widest_tree(view, r, inward=False))
                   for r in sorted(chosen))
    return ns.Plan(version=1, planner="widest-trees", sites=view.sites, shards=shards)


# %% [markdown]
# `netstorm.plan` calls any planner callable, checks the plan (`check_plan`) and fills in
# the cost model's prediction:

# %%
view = ns.load_topology("netstorm9")
mine = ns.plan(view, job, widest_trees)
print(f"{len(mine.shards)} shard(s), root {view.sites[mine.shards[0].root]}; "
      f"reduce tree {{child: parent}}: "
      f"{ {view.sites[c]: view.sites[p] for c, p in mine.shards[0].reduce_tree.items()} }")
print(f"predicted all-reduce: {mine.predicted_time_s:.2f} s; bound: "
      f"{ns.bound(view, job).time_s:.2f} s")

# %% [markdown]
# ## 3. Check it with `netstorm.testing`
#
# `check_planner` runs the planner over views that exercise the hard cases (a sparse mesh
# that needs relays, a relay-only site in a line, per-site caps, asymmetric links, a single
# worker) and checks that every plan is valid, that planning is deterministic, and that no
# prediction beats the LP bound. It raises `PlanError` naming the view and the problem.

# %%
print("views:", [v.name for v in testing.conformance_views()])
testing.check_planner(widest_trees)
testing.check_planner(widest_trees, roots=2)
print("widest_trees passes the conformance suite (roots=1 and roots=2)")

# %% [markdown]
# What a broken planner looks like: one that forgets to prune relay-only leaves.

# %%
def unpruned(view, job, *, seed=None, state=None):
    r = view.workers[0]
    down = widest_tree(view, r, inward=False)
    up = dict(widest_tree(view, r, inward=True))
    for s in view.relays:  # put a relay-only site back in as a leaf
        if s not in up:
            up[s] = r
    return ns.Plan(version=1, planner="unpruned", sites=view.sites,
                   shards=(ns.Shard(1.0, r, up, down),))


try:
    testing.check_planner(unpruned)
except ns.PlanError as exc:
    print("PlanError:", exc)

# %% [markdown]
# `testing.run_programs` executes a plan's compiled per-site programs in memory, with real
# gradients and messages delivered in a random order, and returns what every worker ends
# with: the mean of all workers' gradients, if the plan is right.

# %%
small = ns.Job(buckets=4_000, chunk_bytes=1_000)
line = next(v for v in testing.conformance_views() if v.name == "relay-line")
rng = np.random.default_rng(0)
grads = {w: rng.standard_normal(small.gradient_bytes // small.element_size)
         .astype(np.float32) for w in line.workers}
plan2 = ns.plan(line, small, widest_trees, roots=2)
out = testing.run_programs(ns.compile(plan2, small, line.workers, view=line), grads, seed=1)
mean = np.mean(list(grads.values()), axis=0)
print(f"{line.name}: every worker holds the mean:",
      all(np.allclose(out[w], mean, atol=1e-5) for w in line.workers))

# %% [markdown]
# ## 4. Register it
#
# `register_planner` makes the planner known by name: to `netstorm.plan`, the simulator,
# sweeps, and the command line run from this process. It can also bring a `make_state`
# (for a stateful planner) and a `default_policy` (when to re-plan as the estimator's view
# changes; `"hysteresis"` when not given). `replace=True` lets this cell run twice.
#
# A planner registered here lives in this process (and in processes forked from it). To
# use it from `netstorm` commands, spawned worker processes or a Dask cluster, ship it as
# a package that advertises it under the entry-point group `netstorm.planners`, as
# `examples/my_planner/` does.

# %%
ns.register_planner("widest-trees", widest_trees, replace=True, default_policy="hysteresis")
print("registered:", "widest-trees" in ns.planner_names())
print(f"by name: {ns.plan(view, job, 'widest-trees', roots=3).predicted_time_s:.2f} s "
      "predicted with 3 roots")

# %% [markdown]
# ## 5. Compare it in a sweep
#
# One all-reduce of ResNet-50 per topology and planner, in the simulator, divided by the
# bound. Our planner appears twice, with one root and with three (planner options are part
# of a scenario). The sweep runs in this process (`workers=1`), where the planner is
# registered.

# %%
common = {"topology": TOPOLOGIES, "model": MODEL, "iterations": 1}
scenarios = (grid({**common, "planner": [p for p in BUILTINS if p != "treepack"]})
             + grid({**common, "planner": "treepack", "bound": True})
             + grid({**common, "planner": "widest-trees",
                     "options": [{"roots": 1}, {"roots": 3}]}))
started = time.perf_counter()
frame = to_frame(sweep(scenarios, workers=1, progress=False))
print(f"{len(frame)} scenarios in {time.perf_counter() - started:.1f} s")
assert frame["error"].isna().all(), frame.loc[frame["error"].notna(), "error"]
frame["label"] = [f"widest-trees, {json.loads(o)['roots']} root(s)" if p == "widest-trees" else p
                  for p, o in zip(frame["planner"], frame["options"], strict=True)]
bound = frame.groupby("topology")["bound_s"].max()
frame["simulated / bound"] = frame["comm_mean_s"] / frame["topology"].map(bound)
labels = [*BUILTINS, "widest-trees, 1 root(s)", "widest-trees, 3 root(s)"]
table = frame.pivot(index="topology", columns="label", values="simulated / bound")
table = table.loc[TOPOLOGIES, labels]
table.loc["geometric mean"] = np.exp(np.log(table).mean())
display(Markdown("**Simulated all-reduce / LP bound** (1.00x is optimal)"))
display(table.round(2))

# %%
fig, ax = plt.subplots(figsize=(9, 4))
x = np.arange(len(TOPOLOGIES))
width = 0.8 / len(labels)
for k, label in enumerate(labels):
    ax.bar(x + (k - (len(labels) - 1) / 2) * width, table.loc[TOPOLOGIES, label], width,
           label=label, hatch="//" if label.startswith("widest") else None)
ax.axhline(1, color="black", lw=0.9)
ax.set_yscale("log")
ax.set_xticks(x, TOPOLOGIES, rotation=20, ha="right")
ax.set_ylabel("simulated all-reduce / LP bound")
ax.set_title(f"A planner written in this notebook against the built-ins ({MODEL})")
ax.legend(fontsize=8, ncol=3)
ax.grid(alpha=0.3, axis="y", which="both")
show(fig, "04_custom_vs_builtin.png")

# %%
geo = table.loc["geometric mean"].sort_values()
display(Markdown("Geometric mean over these topologies: "
                 + ", ".join(f"{k} {v:.2f}x" for k, v in geo.items()) + "."))
