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
# # 01 · Reproducing NetStorm's headline experiment
#
# The NetStorm paper trains a model synchronously over 9 sites joined by 13 wide-area links,
# once on a static network and once while every link's capacity is redrawn uniformly in
# 20–155 Mbit/s every 180 s, and reports **7.5–9.2x** faster training than the MXNet
# parameter server. Its figure plots test accuracy against training time, one line per
# system.
#
# This notebook runs the same experiment in netstorm's simulator (`netstorm.sim`) with
# *hybrid training*: a real (small) torch model is trained on sklearn's digits by
# synchronous SGD over the 9 simulated workers, and every step is charged the simulated time
# of one ResNet-50 iteration (compute, then the all-reduce of ResNet-50's 102 MB gradient)
# on the simulated WAN (`netstorm.sim.training.train_digits`). Planners: `ps` (the MXNet
# parameter server, one shard per site), `mlnet`, `tsengine`, `netstorm` (the paper's
# algorithm) and `treepack` (ours).
#
# **Size.** The next cell sets every parameter. Small by default (the test suite runs it);
# `NETSTORM_NOTEBOOK_FULL=1` runs the full study. Figures go to `figures/` (or to
# `$NETSTORM_NOTEBOOK_FIGURES`).

# %%
import os
from pathlib import Path

FULL = os.environ.get("NETSTORM_NOTEBOOK_FULL", "0") == "1"
FIGURES = Path(os.environ.get("NETSTORM_NOTEBOOK_FIGURES", "figures"))

TOPOLOGY = "netstorm9"
MODEL = "resnet50"
DYNAMICS = "redraw:180s:20Mbit/s:155Mbit/s:1"   # the paper's emulation
PLANNERS = ["ps", "mlnet", "tsengine", "netstorm", "treepack"]
ITERATIONS = 250 if FULL else 20                  # synchronous SGD steps per run
TARGET = 0.90 if FULL else 0.40                   # test accuracy for "time to accuracy"
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from netstorm.sim import simulate
from netstorm.sim.training import train_digits

import netstorm as ns
from netstorm.dynamics import parse_dynamics

FIGURES.mkdir(parents=True, exist_ok=True)


def show(fig, name):
    """Save ``fig`` as FIGURES/name and show it inline (whatever the matplotlib backend)."""
    fig.savefig(FIGURES / name, dpi=130, bbox_inches="tight")
    display(fig)
    plt.close(fig)


view = ns.load_topology(TOPOLOGY)
job = ns.Job.from_model(MODEL)
links = view.capacity[view.capacity > 0] * 8 / 1e6
print(f"{view.name}: {view.n} sites, {len(links) // 2} undirected links, "
      f"{links.min():.0f}–{links.max():.0f} Mbit/s at the start; "
      f"{job.gradient_bytes / 1e6:.0f} MB of gradient, {job.compute_s} s compute per step")

# %% [markdown]
# ## Simulate, then train
#
# Each planner runs the same number of iterations in both conditions. In the static
# condition the network keeps netstorm9's start matrix; with redraws it starts there and
# every directed link gets a new capacity every 180 s. Every planner runs under its own
# re-plan policy with the bandwidth estimator in the loop (`tsengine` re-plans every
# iteration, `netstorm` on any change, `treepack` when the predicted gain beats a
# hysteresis threshold; `ps` and `mlnet` ignore bandwidth). Each run sees the capacity
# changes that happen while *it* trains: a faster planner finishes after fewer of them.

# %%
conditions = {"static": None, "redraws every 180 s": parse_dynamics(DYNAMICS)}
runs, curves = {}, {}
for cond, dynamics in conditions.items():
    for planner in PLANNERS:
        started = time.perf_counter()
        result = simulate(view, job, planner, iterations=ITERATIONS, dynamics=dynamics,
                          seed=SEED)
        runs[cond, planner] = result
        curves[cond, planner] = train_digits(result, seed=SEED)
        print(f"{cond:20s} {planner:9s} {result.total_s / 60:8.1f} simulated min, "
              f"{len(result.switches):3d} re-plans, {len(result.changes_s):3d} capacity "
              f"changes  ({time.perf_counter() - started:.1f} s wall)")

# %% [markdown]
# ## Accuracy against training time
#
# The paper's layout: one panel per condition, test accuracy against training time, one
# line per planner. The time axis is logarithmic, so a constant speedup is a constant
# horizontal shift between two lines. The accuracy curve depends only on the number of
# steps (same seed, same data shards: the all-reduce delivers the same mean gradient
# whichever plan carried it), so the planners differ in how long each step takes.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, cond in zip(axes, conditions, strict=True):
    for planner in PLANNERS:
        c = curves[cond, planner]
        minutes = np.array(c["time_s"][1:]) / 60  # drop t = 0 (log axis)
        ax.plot(minutes, c["accuracy"][1:], label=planner, lw=1.6)
    ax.axhline(TARGET, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_title(f"{TOPOLOGY}, {MODEL} traffic: {cond}")
    ax.set_xlabel("simulated training time (min, log scale)")
    ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel("test accuracy (MLP on sklearn digits)")
axes[1].legend(title="planner", loc="lower right")
fig.suptitle(f"{ITERATIONS} synchronous steps per run; dotted: the target accuracy "
             f"{TARGET:.2f}", fontsize=10)
show(fig, "01_accuracy_vs_time.png")

# %% [markdown]
# ## Speedups over the parameter server
#
# *Time to accuracy*: the simulated training time at which the test accuracy first reaches
# the target. *Per iteration*: the mean simulated iteration time. Both as speedups over
# `ps` (its time divided by the planner's).

# %%
def time_to(curve, target):
    """Simulated seconds until the accuracy first reaches ``target`` (NaN: never)."""
    hits = [t for t, a in zip(curve["time_s"], curve["accuracy"], strict=True) if a >= target]
    return hits[0] if hits else float("nan")


rows = []
for cond in conditions:
    base_tta = time_to(curves[cond, "ps"], TARGET)
    base_it = float(np.mean(runs[cond, "ps"].iteration_s))
    for planner in PLANNERS:
        tta = time_to(curves[cond, planner], TARGET)
        it = float(np.mean(runs[cond, planner].iteration_s))
        rows.append({"condition": cond, "planner": planner,
                     "time to accuracy (min)": tta / 60,
                     "speedup (time to accuracy)": base_tta / tta,
                     "mean iteration (s)": it,
                     "speedup (per iteration)": base_it / it,
                     "re-plans": len(runs[cond, planner].switches)})
speedups = pd.DataFrame(rows).set_index(["condition", "planner"])
display(speedups.round(2))

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
table = speedups["speedup (time to accuracy)"].unstack(0).loc[PLANNERS]
table.plot.bar(ax=ax, rot=0)
ax.axhspan(7.5, 9.2, color="tab:red", alpha=0.15, label="paper: NetStorm over MXNet PS")
ax.axhline(1, color="black", lw=0.8)
ax.set_ylabel(f"speedup over ps\n(time to {TARGET:.2f} accuracy)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, axis="y")
show(fig, "01_speedup.png")

# %%
tta, per_it = "speedup (time to accuracy)", "speedup (per iteration)"
lines = [f"**Measured here**, speedups over `ps` (time to {TARGET:.2f} accuracy / mean "
         f"iteration; {ITERATIONS} steps per run):"]
where = {}
for cond in conditions:
    paper, ours = speedups.loc[(cond, "netstorm")], speedups.loc[(cond, "treepack")]
    lines.append(f"- {cond}: `netstorm` {paper[tta]:.1f}x / {paper[per_it]:.1f}x; "
                 f"`treepack` {ours[tta]:.1f}x / {ours[per_it]:.1f}x.")
    where[cond] = "below" if paper[tta] < 7.5 else "above" if paper[tta] > 9.2 else "inside"
lines.append("\nThe paper reports 7.5–9.2x for NetStorm over the MXNet PS. Where our "
             "`netstorm`'s speedup in time to accuracy falls against that range: "
             + "; ".join(f"{c}: {w} it" for c, w in where.items()) + ".")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Why our numbers differ from the paper's
#
# Our `ps` is not MXNet. It is a *fluid-model* parameter server inside a simulator: the
# gradient is cut into one shard per site, every worker sends each shard to its server and
# gets the sum back, in 4 MB chunks that pipeline along relayed paths, and concurrent
# transfers share every link max-min fairly with no protocol overhead. That is roughly the
# best a parameter server with that placement can do on this network, so the speedups
# above compare NetStorm's *plans* with a near-ideal PS, not with MXNet's implementation.
#
# What the simulator models (DESIGN section 8): every directed link and every site's
# egress/ingress as a shared resource, max-min fair rates recomputed whenever a transfer
# starts or ends, one-way latency (netstorm9 has none), an optional TCP window cap,
# chunk-level pipelining and aggregation at tree nodes, capacity changes mid-run, and the
# bandwidth estimator and re-plan policy in the loop (active probes included).
#
# What it does not model: TCP's congestion control (slow start, losses, unfairness between
# flows with different RTTs), MXNet's server-side costs (serialisation, the key-value store's
# per-key push/pull, ZeroMQ, server CPU), stragglers and compute noise (every site computes
# for the same fixed time), the real overlap of communication with the backward pass (off
# here), and the overhead of re-planning (planning takes wall time, not simulated time).
# Each of these slows a real PS more than a plan that spreads traffic over many trees, so
# the simulated PS baseline is stronger than the paper's, and the simulated speedups
# measure what the plans themselves are worth.
#
# Two further differences in the setting. The static network is the released scheduler's
# seeded start matrix (its range is printed at the top), well above the 20–155 Mbit/s of
# the redraws, and the redraw runs start on it until the first redraw at 180 s: a planner
# that finishes sooner spends a larger share of its run on that faster network, which is
# why its speedup in time to accuracy can exceed its speedup per iteration. And the model
# that learns is a small MLP on digits, charged ResNet-50's traffic: every planner needs
# the same number of steps to the target, so the speedup in time to accuracy is the
# speedup per step over those steps, weighted by the capacities they met.

# %% [markdown]
# ## The iterations under redraws
#
# The simulator's own plot (`netstorm sim --plot`) of the redraw runs: every iteration's
# duration against simulated time, re-plans marked, and iterations finished below.

# %%
from IPython.display import Image
from netstorm.sim.plots import plot_iterations

cond = "redraws every 180 s"
plot_iterations([runs[cond, p] for p in PLANNERS], FIGURES / "01_iterations_redraws.png")
display(Image(filename=str(FIGURES / "01_iterations_redraws.png")))
