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
# # 03 · What matters for the all-reduce time
#
# One factor at a time, everything else fixed, the simulated time of ResNet-50's all-reduce
# (or, under dynamics, of a training iteration) for the main planners:
#
# 1. **site caps**: every site's egress and ingress limited (a NIC or a cloud's hose cap);
# 2. **latency**: every link's one-way delay scaled;
# 3. **chunk size**: the pipelining unit;
# 4. **number of roots**: `netstorm`'s `roots` R, the parameter server's `servers`, and
#    `treepack`'s `min_fraction` (it has no root count: it keeps every tree of its LP
#    packing above that share, and so decides its roots itself);
# 5. **estimate error**: the first plan made from a wrong view of the capacities, then the
#    bandwidth estimator and the re-plan policy in the loop;
# 6. **dynamics period**: capacities redrawn every P seconds;
# 7. **multipath and relays**: `netstorm`'s auxiliary paths on and off, and a relay-only hub
#    site added to a mesh.
#
# Every factor but the estimate error is one sweep (`netstorm.sim.sweep`); topology
# variants are written as JSON topology files into a temporary folder and named by path.
#
# **Size.** The next cell sets every parameter: small grids by default (the test suite
# runs them), `NETSTORM_NOTEBOOK_FULL=1` for the full study.

# %%
import os
from pathlib import Path

FULL = os.environ.get("NETSTORM_NOTEBOOK_FULL", "0") == "1"
FIGURES = Path(os.environ.get("NETSTORM_NOTEBOOK_FIGURES", "figures"))
CACHE = os.environ.get("NETSTORM_SWEEP_CACHE")   # a folder, or None: no cache
DASK = os.environ.get("NETSTORM_DASK")           # a scheduler address, or None: local

MODEL = "resnet50"
PLANNERS = ["ps", "ring", "netstorm", "treepack"]
if FULL:
    CAPS_TOPOLOGY = "cloud:aws:8"                    # real goodput, real 5 Gbit/s caps
    CAPS_GBIT = [None, 10, 5, 2, 1, 0.5]             # None: uncapped
    MESH = "cities"                                  # real delays, for latency/chunk/roots
    LATENCY_SCALE = [0, 0.5, 1, 2, 4]
    CHUNK_MB = [0.25, 1, 4, 16, 64]
    ROOTS = [1, 2, 3, 5, 10]
    MIN_FRACTION = [0.001, 0.01, 0.03]
    NOISE = [0, 0.1, 0.25, 0.5, 1.0]                 # sigma of the log-normal estimate error
    NOISE_SEEDS = [1, 2, 3]
    NOISE_TOPOLOGY = "random:10:0"
    PERIODS_S = [30, 60, 180, 600, 1800]
    SPAN_S = 1800
    MULTIPATH_TOPOLOGIES = ["netstorm9", "waxman:12:1", "cities", "cloud:gcp:8",
                            "random:12:0"]
    HUB_GBIT = [0.1, 1, 10]
else:
    CAPS_TOPOLOGY = "cloud:aws:4"
    CAPS_GBIT = [None, 1]
    MESH = "random:5:1"
    LATENCY_SCALE = [0, 2]
    CHUNK_MB = [1, 16]
    ROOTS = [1, 5]
    MIN_FRACTION = [0.001]
    NOISE = [0, 0.5]
    NOISE_SEEDS = [1]
    NOISE_TOPOLOGY = "random:5:0"
    PERIODS_S = [60]
    SPAN_S = 120
    MULTIPATH_TOPOLOGIES = ["netstorm9", "random:5:0"]
    HUB_GBIT = [10]
WORKERS = 2
COLORS = {"ps": "C0", "ring": "C1", "netstorm": "C2", "treepack": "C3", "tsengine": "C4",
          "bound": "black"}

# %%
import hashlib
import json
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from netstorm.sim import simulate
from netstorm.sim.sweep import grid, sweep, to_frame

import netstorm as ns

FIGURES.mkdir(parents=True, exist_ok=True)
SCRATCH = Path(tempfile.gettempdir()) / "netstorm-notebooks"   # topology variants
SCRATCH.mkdir(exist_ok=True)
job = ns.Job.from_model(MODEL)


def show(fig, name):
    """Save ``fig`` as FIGURES/name and show it inline (whatever the matplotlib backend)."""
    fig.savefig(FIGURES / name, dpi=130, bbox_inches="tight")
    display(fig)
    plt.close(fig)


def write_view(view):
    """Write ``view`` as a JSON topology file named by its content; return the path.

    The name depends on the content only, so a sweep cache recognises an unchanged variant
    and never mistakes a changed one for it."""
    text = json.dumps(view.to_dict(), sort_keys=True)
    path = SCRATCH / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        path.write_text(text)
    return str(path)


def variant(view, name, **fields):
    """``view`` with some fields replaced (capacity, latency, egress, ingress, ...)."""
    base = {"sites": view.sites, "capacity": view.capacity, "latency": view.latency,
            "egress": view.egress, "ingress": view.ingress, "workers": view.workers}
    return ns.NetworkView(**{**base, **fields}, name=name)


def with_hub(view, gbit):
    """``view`` plus a relay-only site linked both ways to every site at ``gbit`` Gbit/s, its
    one-way latency to each site half the largest latency of that site's links."""
    n = view.n
    cap = np.zeros((n + 1, n + 1))
    lat = np.zeros((n + 1, n + 1))
    cap[:n, :n], lat[:n, :n] = view.capacity, view.latency
    cap[:n, n] = cap[n, :n] = gbit * 1e9 / 8
    lat[:n, n] = lat[n, :n] = view.latency.max(axis=1) / 2
    return ns.NetworkView(sites=(*view.sites, "hub"), capacity=cap, latency=lat,
                          egress=np.append(view.egress, np.inf),
                          ingress=np.append(view.ingress, np.inf),
                          workers=view.workers, name=f"{view.name} + {gbit:g} Gbit/s hub")


# %% [markdown]
# ## The scenarios
#
# Every scenario is tagged with its study, its series (the line it belongs to) and its x
# value; all studies go into one sweep, so the two worker processes stay busy throughout.
# One iteration on a static network is one all-reduce after a fixed compute time; the
# record's `comm_mean_s` is the all-reduce alone. `bound=True` on one scenario per
# topology adds the LP bound.

# %%
rows = []  # (study, series, x, scenario)


def add(study, series, x, scenarios):
    rows.extend((study, series, x, s) for s in scenarios)


one = {"model": MODEL, "iterations": 1}

# 1. site caps
aws = ns.load_topology(CAPS_TOPOLOGY)
for gbit in CAPS_GBIT:
    cap = np.full(aws.n, np.inf if gbit is None else gbit * 1e9 / 8)
    label = "uncapped" if gbit is None else f"{gbit:g} Gbit/s"
    path = write_view(variant(aws, f"{aws.name}, caps {label}", egress=cap, ingress=cap))
    for p in PLANNERS:
        add("caps", p, label, grid({**one, "topology": path, "planner": p,
                                   "bound": p == "treepack"}))

# 2. latency
mesh = ns.load_topology(MESH)
for k in LATENCY_SCALE:
    path = write_view(variant(mesh, f"{mesh.name}, latency x{k}", latency=mesh.latency * k))
    for p in PLANNERS:
        add("latency", p, k, grid({**one, "topology": path, "planner": p,
                                   "bound": p == "treepack"}))

# 3. chunk size (treepack picks its own chunk unless told not to: chunk_bytes=None)
for mb in CHUNK_MB:
    for p in PLANNERS:
        options = {"chunk_bytes": None} if p == "treepack" else {}
        add("chunk", p, mb, grid({**one, "topology": MESH, "planner": p,
                                  "chunk": f"{mb}MB", "options": options}))
add("chunk-auto", "treepack", "auto", grid({**one, "topology": MESH,
                                                 "planner": "treepack"}))

# 4. roots
workers = len(mesh.workers)
for r in [r for r in ROOTS if r <= workers]:
    add("roots", "netstorm (roots)", r, grid({**one, "topology": MESH, "planner": "netstorm",
                                               "options": {"roots": r}}))
    add("roots", "ps (servers)", r, grid({**one, "topology": MESH, "planner": "ps",
                                          "options": {"servers": r}}))
for f in MIN_FRACTION:
    add("roots", "treepack (min_fraction)", f, grid({**one, "topology": MESH,
                                                    "planner": "treepack",
                                                    "options": {"min_fraction": f}}))

# 6. dynamics period: redraws from time 0 on (at_start), every run for the same span
for period in PERIODS_S:
    spec = (f"{{kind: redraw, period: {period} s, low: 20 Mbit/s, high: 155 Mbit/s, "
            "seed: 1, at_start: true}")
    for p in ["ps", "tsengine", "netstorm", "treepack"]:
        add("period", p, period, grid({"model": MODEL, "topology": "netstorm9", "planner": p,
                                       "dynamics": spec, "duration_s": SPAN_S}))

# 7. multipath on and off; a relay-only hub
for t in MULTIPATH_TOPOLOGIES:
    for on in (True, False):
        add("multipath", f"multipath={on}", t, grid({**one, "topology": t,
                                                     "planner": "netstorm",
                                                     "options": {"multipath": on}}))
for gbit in [None, *HUB_GBIT]:
    path = MESH if gbit is None else write_view(with_hub(mesh, gbit))
    label = "no hub" if gbit is None else f"{gbit:g} Gbit/s hub"
    for p in ["ps", "netstorm", "treepack"]:
        add("hub", p, label, grid({**one, "topology": path, "planner": p,
                                  "bound": p == "treepack"}))

print(f"{len(rows)} scenarios:",
      pd.Series([r[0] for r in rows]).value_counts().to_dict())

# %%
started = time.perf_counter()
records = sweep([s for *_, s in rows], workers=WORKERS, dask=DASK, cache=CACHE,
                progress=FULL)
print(f"sweep: {len(records)} records in {time.perf_counter() - started:.1f} s wall")
frame = to_frame(records)
frame["study"], frame["series"], frame["x"] = zip(*[r[:3] for r in rows], strict=True)
failed = frame[frame["error"].notna()]
if len(failed):  # a failed scenario is reported, not fatal: the sweep kept the others
    display(Markdown(f"**{len(failed)} scenario(s) failed** (left out of the plots):"))
    display(failed[["study", "series", "x", "options", "error"]])
frame = frame[frame["error"].isna()]


def study(name, value="comm_mean_s"):
    """One study's results: x down, one column per series."""
    part = frame[frame["study"] == name]
    return part.pivot_table(index="x", columns="series", values=value, sort=False,
                            dropna=False)


def bounds(name):
    part = frame[(frame["study"] == name) & frame["bound_s"].notna()]
    return part.set_index("x")["bound_s"]


def lines(table, xlabel, *, columns=PLANNERS, ylabel="simulated all-reduce (s)",
          logx=False, suffix=""):
    """One line per column of ``table`` against its index, log time axis; the table's
    ``bound`` column, if it has one, dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = table.index.astype(float) if logx else table.index
    for p in columns:
        ax.plot(x, table[p], marker="o", color=COLORS[p], label=p + suffix)
    if "bound" in table:
        ax.plot(x, table["bound"], "k--", label="bound")
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig, ax


def over_bound(table, name):
    """A line of each planner's time over the bound, per row named by ``name(row)``."""
    over = table[PLANNERS].div(table["bound"], axis=0)
    display(Markdown("Time over the bound: " + "; ".join(
        f"{name(i)}: " + ", ".join(f"`{p}` {over.loc[i, p]:.2f}x" for p in PLANNERS)
        for i in over.index)))


# %% [markdown]
# ## 1. Site caps
#
# Every site's egress and ingress capped at the same rate (on the AWS measurements, whose
# sites are capped at 5 Gbit/s by default; the uncapped column lifts that). Dashed: the
# bound.

# %%
caps = study("caps")[PLANNERS]
caps["bound"] = bounds("caps")
display(caps.round(3))
fig, _ = lines(caps, f"egress and ingress cap of every site ({CAPS_TOPOLOGY})")
show(fig, "03_site_caps.png")
over_bound(caps, str)

# %% [markdown]
# ## 2. Latency
#
# Every link's one-way latency multiplied by a factor (0: bandwidth alone). Latency hits
# deep trees and many small chunks: every hop of every path adds it to the pipeline's fill.

# %%
lat = study("latency")[PLANNERS]
lat["bound"] = bounds("latency")
display(lat.round(3))
fig, _ = lines(lat, f"latency scale ({MESH}; 1 = as measured)")
show(fig, "03_latency.png")
over_bound(lat, lambda k: f"x{k:g}")

# %% [markdown]
# ## 3. Chunk size
#
# The unit that pipelines along a path and aggregates at tree nodes. Small chunks fill a
# deep pipeline quickly but pay per-hop latency more often; large ones waste the pipeline.
# `treepack` with `chunk_bytes=None` runs at the job's chunk; its default (`"auto"`)
# chooses one itself (the horizontal line).

# %%
chunk = study("chunk")[PLANNERS]
own = study("chunk-auto").loc["auto", "treepack"]
display(chunk.round(3))
fig, ax = lines(chunk, f"chunk (MB, {MESH})", logx=True, suffix=" at this chunk")
ax.axhline(own, color=COLORS["treepack"], ls=":", label="treepack, its own chunk")
ax.legend(fontsize=8)
show(fig, "03_chunk.png")
best = chunk.idxmin()
display(Markdown("Fastest chunk per planner: " + ", ".join(
    f"`{p}` {best[p]:g} MB ({chunk[p].min():.3f} s, slowest {chunk[p].max():.3f} s)"
    for p in PLANNERS) + f"; treepack choosing its own: {own:.3f} s."))

# %% [markdown]
# ## 4. Number of roots
#
# `netstorm` aggregates each chunk at one of its R best-scoring roots; the parameter server
# at one of its S servers. `treepack` has no root count: it packs as many trees as its LP
# needs and drops those below `min_fraction` of the rate, so raising `min_fraction` leaves
# fewer trees (and possibly fewer roots). The table counts them from the plans.

# %%
roots = study("roots")
counts = []
for f in MIN_FRACTION:
    try:
        made = ns.plan(mesh, job, "treepack", min_fraction=f)
        counts.append({"min_fraction": f, "trees (shards)": len(made.shards),
                       "roots": len({s.root for s in made.shards})})
    except ns.NetstormError as exc:
        counts.append({"min_fraction": f, "error": str(exc)})
display(pd.DataFrame(counts).set_index("min_fraction"))
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for series in ["netstorm (roots)", "ps (servers)"]:
    col = roots[series].dropna()
    left.plot(col.index.astype(float), col, marker="o", color=COLORS[series.split()[0]],
              label=series)
left.set_xlabel(f"roots / servers ({MESH}, {workers} workers)")
left.set_ylabel("simulated all-reduce (s)")
tp = roots["treepack (min_fraction)"].dropna()
right.plot(tp.index.astype(float), tp, marker="o", color=COLORS["treepack"], label="treepack")
right.set_xscale("log")
right.set_xlabel("treepack min_fraction")
for ax in (left, right):
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
show(fig, "03_roots.png")
display(roots.round(3))

# %% [markdown]
# ## 5. Estimate error
#
# The first plan is made from a wrong view: every link's capacity multiplied by
# exp(N(0, σ²)), a log-normal error. The run then goes on with the bandwidth estimator and
# each planner's re-plan policy in the loop, so the first iteration shows the cost of the
# error and the last one what awareness recovers. `Scenario` has no field for a planner
# view, so this study calls `simulate(..., planner_view=...)` directly (one process).

# %%
truth = ns.load_topology(NOISE_TOPOLOGY)


def noisy(view, sigma, seed):
    rng = np.random.default_rng(seed)
    cap = view.capacity * np.exp(rng.normal(0.0, sigma, view.capacity.shape))
    return view.with_capacity(np.where(view.capacity > 0, cap, 0.0))


errors = []
for sigma in NOISE:
    for seed in NOISE_SEEDS if sigma > 0 else NOISE_SEEDS[:1]:
        guess = noisy(truth, sigma, seed)
        for p in ["ring", "netstorm", "treepack"]:
            r = simulate(truth, job, p, iterations=4, planner_view=guess, seed=0)
            errors.append({"sigma": sigma, "seed": seed, "planner": p,
                           "first iteration": r.comm_s[0], "last iteration": r.comm_s[-1],
                           "re-plans": len(r.switches)})
errors = pd.DataFrame(errors)
base = errors[errors["sigma"] == 0].set_index("planner")["first iteration"]
errors["first / exact"] = errors["first iteration"] / errors["planner"].map(base)
errors["last / exact"] = errors["last iteration"] / errors["planner"].map(base)
summary = errors.groupby(["planner", "sigma"])[["first / exact", "last / exact",
                                                 "re-plans"]].mean()
display(summary.round(3))
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for p in ["ring", "netstorm", "treepack"]:
    part = summary.loc[p]
    ax.plot(part.index, part["first / exact"], marker="o", color=COLORS[p],
            label=f"{p}: first plan (from the wrong view)")
    ax.plot(part.index, part["last / exact"], marker="s", ls="--", color=COLORS[p],
            label=f"{p}: after awareness (iteration 4)")
ax.set_xlabel(f"σ of the log-normal capacity error ({NOISE_TOPOLOGY})")
ax.set_ylabel("all-reduce / with the exact view")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
show(fig, "03_estimate_error.png")

# %% [markdown]
# ## 6. Dynamics period
#
# On netstorm9, every link redrawn uniformly in 20–155 Mbit/s every P seconds, from time 0
# on, every planner run for the same simulated span. Each planner re-plans under its own
# policy (`tsengine` every iteration, `netstorm` on any change, `treepack` with
# hysteresis, `ps` never); the faster the network changes, the more of each period a plan
# spends on capacities it was not made for.

# %%
period = study("period", "iteration_mean_s")[["ps", "tsengine", "netstorm", "treepack"]]
replans = study("period", "replans")[["ps", "tsengine", "netstorm", "treepack"]]
display(Markdown(f"Mean iteration time (s) over {SPAN_S} s of simulated time:"))
display(period.round(2))
display(Markdown("Re-plans:"))
display(replans)
fig, _ = lines(period, "redraw period P (s)", columns=period.columns, logx=True,
               ylabel="mean iteration time (s)")
show(fig, "03_dynamics_period.png")

# %% [markdown]
# ## 7. Multipath and relays
#
# Left: `netstorm`'s auxiliary paths off, over on (above 1: they help). Right: a relay-only
# hub site linked to every site of the mesh, at three link speeds, against no hub; a relay
# helps only where it brings capacity the direct links lack.

# %%
multi = study("multipath")
gain = (multi["multipath=False"] / multi["multipath=True"]).rename("off / on")
hub = study("hub")[["ps", "netstorm", "treepack"]]
hub["bound"] = bounds("hub")
display(pd.concat([multi, gain], axis=1).round(3))
display(hub.round(3))
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
left.bar(range(len(gain)), gain.values, color="tab:purple")
left.axhline(1, color="black", lw=0.8)
left.set_xticks(range(len(gain)), gain.index, rotation=20, ha="right")
left.set_ylabel("netstorm all-reduce: multipath off / on")
x = np.arange(len(hub.index))
for k, p in enumerate(["ps", "netstorm", "treepack", "bound"]):
    right.bar(x + (k - 1.5) * 0.2, hub[p], width=0.2, label=p, color=COLORS[p])
right.set_xticks(x, hub.index)
right.set_yscale("log")
right.set_ylabel("simulated all-reduce (s)")
right.legend(fontsize=8)
left.set_title("netstorm's auxiliary paths", fontsize=10)
right.set_title(f"a relay-only hub added to {MESH}", fontsize=10)
for ax in (left, right):
    ax.grid(alpha=0.3, axis="y")
fig.tight_layout()
show(fig, "03_multipath_relays.png")
helps = gain[gain > 1.01].index.tolist()
hurts = gain[gain < 0.99].index.tolist()
change = hub[["ps", "netstorm", "treepack"]].div(hub.loc["no hub", ["ps", "netstorm",
                                                                    "treepack"]])
display(Markdown(
    f"Multipath shortened `netstorm`'s all-reduce by more than 1 % on "
    f"{', '.join(helps) or 'none'}, and lengthened it by more than 1 % on "
    f"{', '.join(hurts) or 'none'} (of {len(gain)} topologies).\n\n"
    "With a hub, each planner's time relative to no hub: " + "; ".join(
        f"{i}: " + ", ".join(f"`{p}` {change.loc[i, p]:.2f}" for p in change.columns)
        for i in change.index if i != "no hub") + "."))
