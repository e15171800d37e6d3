"""``netstorm run``: its options, turned into a :class:`~netstorm.runtime.launch.LaunchConfig`
(``config_from_args``: argparse never reaches the library), one run or the experiment, and
their readable summaries."""

from __future__ import annotations

import argparse
from typing import Any

from netstorm.runtime import launch
from netstorm.runtime.launch import LaunchConfig

from ..awareness import POLICY_NAMES
from ..errors import InputError
from ..registry import planner_info
from . import experiment

__all__ = ["add_arguments", "config_from_args", "execute", "format_summary", "is_experiment"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``run`` options; the script and its arguments follow ``--``."""
    p.add_argument("--topology", "-t", required=True,
                   help="topology file or built-in name (one site per process)")
    p.add_argument("--planner", "-p", default="treepack",
                   help="planner; several, comma-separated, run the experiment: the "
                        "built-in training once per planner, time to --target accuracy "
                        "beside the simulator's prediction")
    p.add_argument("--policy", default=None,
                   choices=POLICY_NAMES,
                   help="when to re-plan (default: the planner's own; NETSTORM_POLICY)")
    p.add_argument("--emulate", default="inprocess", choices=["inprocess", "netns", "none"],
                   help="shape every link as the topology says in the site processes "
                        "(default), in the kernel (netns: a network namespace per site, "
                        "tc htb per link; root only), or run unshaped")
    p.add_argument("--dynamics", "-d", default=None,
                   help="capacity changes applied live (as netstorm sim --dynamics)")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="emulated rates times K, delays and dynamics times 1/K")
    p.add_argument("--iterations", "-n", type=int, default=5,
                   help="steps of the built-in training")
    p.add_argument("--mbytes", type=float, default=16.0,
                   help="all-reduce size, MB, of the all-reduce check "
                        "(-- python -m netstorm.runtime.demo)")
    p.add_argument("--procs-per-site", type=int, default=1, metavar="L",
                   help="processes per site (LOCAL_RANK, LOCAL_WORLD_SIZE): they reduce "
                        "inside the site, one leader per site takes part in the plan")
    p.add_argument("--wire", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="how gradients travel between sites (sums stay float32)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a silent peer is an error (NETSTORM_TIMEOUT)")
    p.add_argument("--elastic", action="store_true",
                   help="a site that dies leaves the run: the others re-plan without it, "
                        "redo the interrupted all-reduce and go on (NETSTORM_ELASTIC)")
    p.add_argument("--rejoin", action="store_true",
                   help="with --elastic: restart a site killed by a signal (once); it joins "
                        "again at the workers' next iteration boundary, with their state "
                        "(NETSTORM_JOIN)")
    p.add_argument("--plan", default=None, metavar="FILE.json",
                   help="run this plan (netstorm plan --json writes one), checked against the "
                        "topology, instead of planning; it is never re-planned "
                        "(NETSTORM_PLAN)")
    p.add_argument("--log-dir", default=None,
                   help="write one JSON lines file per site (per collective, switches)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: per-iteration times, plan versions, "
                        "accuracy, failures")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="experiment: report each planner's time to this test accuracy")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="experiment: plot accuracy against time, one line per planner")
    p.add_argument("script", nargs=argparse.REMAINDER,
                   help="-- python script.py ARGS (default: the built-in training, "
                        "python -m netstorm.runtime.train)")


def config_from_args(args: argparse.Namespace) -> LaunchConfig:
    """The launch ``args`` describe (one planner: the first of a comma list)."""
    script = list(args.script)
    if script and script[0] == "--":
        script = script[1:]
    return LaunchConfig(
        topology=args.topology, planner=args.planner.split(",")[0].strip(),
        command=tuple(script), policy=args.policy, plan=args.plan, emulate=args.emulate,
        time_scale=args.time_scale, dynamics=args.dynamics, iterations=args.iterations,
        mbytes=args.mbytes, procs_per_site=args.procs_per_site, wire=args.wire,
        timeout_s=args.timeout, elastic=args.elastic, rejoin=args.rejoin,
        log_dir=args.log_dir, sites_to_stderr=args.json)


def is_experiment(args: argparse.Namespace) -> bool:
    """Several planners, ``--target`` or ``--plot``: the experiment, not one run."""
    return "," in args.planner or args.target is not None or args.plot is not None


def execute(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    """``netstorm run``: one run or the experiment; ``(status, summary, its text)``."""
    planners = [p.strip() for p in args.planner.split(",") if p.strip()]
    if not planners:
        raise InputError("--planner: no planner given")
    for name in planners:  # before the first planner's run, not after it
        planner_info(name)
    config = config_from_args(args)
    if is_experiment(args):
        target = 0.9 if args.target is None else args.target
        status, doc = experiment.run(config, planners, target=target, plot=args.plot)
        return status, doc, experiment.format_table(doc)
    status, doc = launch.run(config)
    return status, doc, format_summary(doc)


def format_summary(doc: dict[str, Any]) -> str:
    """The readable summary of one run."""
    lines = [f"{doc['planner']}: {len(doc['iterations'])} iterations in {doc['wall_s']:.1f} s"]
    for i, row in enumerate(doc["iterations"]):
        lines.append(f"  iteration {i}: {row['time_s']:.3f} s (plan v{row['plan_version']})")
    for sw in doc["switches"]:
        lines.append(f"  plan v{sw['version']} from collective {sw['from_seq']}: "
                     f"{sw['reason']}")
    return "\n".join(lines)
