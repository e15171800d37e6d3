"""``netstorm sim``: simulate planners on a topology (DESIGN 11).

Kept apart from :mod:`netstorm.cli.main` so the other commands do not import the simulator
(SimPy, numba) until this one runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from ..awareness import POLICY_NAMES
from ..errors import InputError, PlanError
from ..job import Job
from ..plan_files import fixed_planner, load_plan
from ..registry import planner_names
from .paths import check_writable

__all__ = ["add_arguments", "ddp_buckets", "run"]


def ddp_buckets(job: Job, bucket_bytes: float) -> Job:
    """``job`` with its gradient cut into DDP-style buckets of at most ``bucket_bytes``.

    Notes
    -----
    DDP fills buckets from the last parameter backwards, so every bucket is full except
    the one holding the first layers (bucket 0 in model order), which takes the remainder.
    A job that already has several buckets is returned unchanged.
    """
    if len(job.buckets) > 1:  # type: ignore[arg-type]
        return job
    cap = int(bucket_bytes) // job.element_size * job.element_size
    if cap <= 0:
        raise InputError(f"--bucket-mb must be at least one element, got {bucket_bytes} bytes")
    total = job.gradient_bytes
    full, rest = divmod(total, cap)
    sizes = ((rest,) if rest else ()) + (cap,) * full
    return dataclasses.replace(job, buckets=sizes)


#: Units ``--duration`` accepts, in seconds (bare numbers are seconds).
SPAN_UNITS: dict[str, float] = {"s": 1.0, "min": 60.0, "h": 3600.0}


def _span(text: str) -> float:
    """``--duration``'s value in seconds; argparse turns the error into one usage line."""
    from ..units import parse_quantity

    try:
        seconds = parse_quantity(text, SPAN_UNITS, "s", "--duration")
    except InputError as exc:  # argparse names the option already
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--duration: ")) from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a span must be more than 0 s, got {text!r}")
    return seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sim`` options (the common --topology/--model/--chunk/--json come from main)."""
    p.add_argument("--planner", "-p", default=None,
                   help="comma-separated planners, e.g. ps,netstorm,treepack (default "
                        "treepack, or none when --plan is given)")
    p.add_argument("--plan", action="append", default=[], metavar="FILE.json",
                   help="also simulate a plan from a file (netstorm plan --json writes one), "
                        "checked against the topology, never re-planned; repeatable")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", "-n", type=int, default=20,
                        help="iterations per planner (default 20)")
    length.add_argument("--duration", type=_span, default=None, metavar="SPAN",
                        help="instead of --iterations: run every planner until the same "
                             "simulated time, e.g. 30min, 900s, 2h (each sees the same "
                             "capacity changes)")
    p.add_argument("--dynamics", "-d", default=None,
                   help="redraw:PERIOD:LOW:HIGH[:SEED], scale:AT:SITE|A->B:FACTOR[:DUR], "
                        "trace:FILE.csv, a YAML/JSON file or {kind: ...}; default: the "
                        "topology file's dynamics, else static")
    p.add_argument("--policy", default=None,
                   choices=POLICY_NAMES,
                   help="re-plan policy (default: each planner's faithful one)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of randomised planners (tsengine; default 0)")
    p.add_argument("--window", default=None, help="TCP window cap per transfer, e.g. 4MB")
    p.add_argument("--overlap", action="store_true",
                   help="overlap the all-reduce with the backward pass bucket by bucket "
                        "(as DDP does)")
    p.add_argument("--bucket-mb", type=float, default=25.0,
                   help="with --overlap: gradient bucket size in MB (DDP's default 25)")
    p.add_argument("--engine", choices=["auto", "compiled", "executor"], default="auto",
                   help="what runs the iterations: the compiled core, or every site's "
                        "executor in Python (slow; the same times). Default auto: the "
                        "compiled core, except for the planner --trace records")
    p.add_argument("--trace", metavar="FILE.json", help="Chrome trace of the first planner")
    p.add_argument("--plot", metavar="FILE.png",
                   help="iteration time and iterations finished against simulated time")
    p.add_argument("--train", metavar="FILE.png",
                   help="also train a small torch model on sklearn digits, charged the "
                        "simulated time, and plot accuracy against time")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _dynamics(args: argparse.Namespace) -> Any:
    from ..dynamics import parse_dynamics

    if args.dynamics is not None:
        return parse_dynamics(args.dynamics)
    path = Path(args.topology)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.exists():
        from ..topology_files import read_document

        doc = read_document(path)
        if isinstance(doc, dict) and doc.get("dynamics") is not None:
            return parse_dynamics(doc["dynamics"])
    return None


def run(args: argparse.Namespace, view: Any, job: Job) -> dict[str, Any]:
    """Run the simulations; return the JSON document (and draw the requested files)."""
    if args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    if not (math.isfinite(args.bucket_mb) and args.bucket_mb > 0):
        raise InputError(f"--bucket-mb must be a finite number of MB > 0, got {args.bucket_mb}")
    if args.trace and args.engine == "compiled":
        raise InputError("--trace records every transfer, which only --engine executor "
                         "(or auto) does")
    for option in ("trace", "plot", "train"):
        check_writable(getattr(args, option), f"--{option}")
    given = args.planner if args.planner is not None else "" if args.plan else "treepack"
    names: list[Any] = [p.strip() for p in given.split(",") if p.strip()]
    if not names and not args.plan:
        raise PlanError("--planner: give at least one planner")
    known = planner_names()
    for name in names:
        if name not in known:
            raise PlanError(f"unknown planner {name!r} (available: {', '.join(known)})")
    for path in args.plan:  # checked here, before any simulation starts
        fixed = load_plan(path, view, job)
        names.append(fixed_planner(fixed, f"{path} ({fixed.planner})"))
    if args.overlap:
        job = ddp_buckets(job, args.bucket_mb * 1e6)
    dynamics = _dynamics(args)
    if dynamics is not None:
        dynamics.validate(view)
    window = None
    if args.window is not None:
        from ..units import SIZE_UNITS, parse_quantity

        window = parse_quantity(args.window, SIZE_UNITS, "b", "--window")
        if not window > 0:
            raise InputError(f"--window {args.window!r}: a TCP window must be more than 0 "
                             "bytes (omit --window for no cap)")
    from tqdm import tqdm

    from netstorm.sim import simulate

    results = []
    span = args.duration  # seconds, or None: --iterations each
    bar = tqdm(total=None if span else len(names) * args.iterations, file=sys.stderr,
               unit="it",
               disable=args.no_progress, dynamic_ncols=True)
    try:
        for i, name in enumerate(names):
            bar.set_description(getattr(name, "__name__", name))
            results.append(simulate(
                view, job, name, iterations=args.iterations, duration_s=span,
                dynamics=dynamics,
                policy=args.policy, seed=args.seed, window_bytes=window,
                record=bool(args.trace) and i == 0, overlap=args.overlap,
                engine=args.engine, progress=lambda _it, _t: bar.update(1)))
    finally:
        bar.close()
    doc: dict[str, Any] = {"topology": view.name, "model": job.label(),
                           "iterations": None if span else args.iterations,
                           "duration_s": span,
                           "dynamics": None if dynamics is None else dynamics.kind,
                           "overlap": bool(args.overlap),
                           "buckets": len(job.buckets),  # type: ignore[arg-type]
                           "results": [r.summary() for r in results]}
    if args.trace:
        from netstorm.sim import write_trace

        write_trace(results[0], args.trace)
    if args.plot:
        from netstorm.sim.plots import plot_iterations

        plot_iterations(results, args.plot)
    if args.train:
        from netstorm.sim.plots import plot_accuracy
        from netstorm.sim.training import train_digits

        curves = [train_digits(r, seed=args.seed) for r in results]
        xlabel, _ = plot_accuracy(curves, args.train, model=job.label(), topology=view.name)
        doc["training"] = [{"planner": c["planner"], "initial_accuracy": c["accuracy"][0],
                            "final_accuracy": c["accuracy"][-1], "time_s": c["time_s"][-1]}
                           for c in curves]
        doc["training_time_axis"] = xlabel
    return doc


def table(doc: dict[str, Any]) -> list[list[Any]]:
    """Rows for the readable table."""
    return [[r["planner"], r["iterations"], r["iteration_time_s"]["mean"],
             r["iteration_time_s"]["median"],
             r["comm_time_s"]["mean"], r["total_time_s"], r["replans"],
             r["predicted_time_s"], r["chunk_bytes"] / 1e6] for r in doc["results"]]
