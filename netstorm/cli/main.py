"""The ``netstorm`` command line (DESIGN 11).

Every command takes ``--json`` and then prints exactly one JSON object on stdout; without it,
a readable table. Bad input exits 2 with one line on stderr: a usage error, or any
:class:`~netstorm.errors.NetstormError`. Any other exception is a bug, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..bound import Bound, bound
from ..errors import InputError, NetstormError
from ..job import Job
from ..plan_files import fixed_planner, load_plan
from ..registry import plan, planner_names
from ..topology import load_topology
from ..units import SIZE_UNITS, parse_quantity
from .paths import check_writable

__all__ = ["main"]


class _UsageError(Exception):
    """argparse refused the command line (``prog`` names the (sub)command)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise _UsageError(self.prog, message)


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: map them to null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(_finite(obj), indent=None))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "-" if not math.isfinite(x) else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"
        return str(x)

    body = [[cell(x) for x in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True))) for r in body]
    return "\n".join(lines)


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _job(args: argparse.Namespace) -> Job:
    job = Job.from_model(args.model)
    if args.chunk:
        chunk = int(parse_quantity(args.chunk, SIZE_UNITS, "b", "--chunk"))
        job = Job(job.buckets, job.element_size, chunk, job.compute_s, job.model)
    return job


def _add_common(p: argparse.ArgumentParser, model: bool = True) -> None:
    p.add_argument("--topology", "-t", required=True,
                   help="built-in name (netstorm9, cloud:aws:8, cities, random:N:seed, "
                        "waxman:N:seed) or a .yaml/.json/.csv file")
    if model:
        p.add_argument("--model", "-m", default="resnet50",
                       help="named model (resnet50, vgg16, ...) or a size such as 100MB")
        p.add_argument("--chunk", default=None,
                       help="the job's chunk size, e.g. 4MB (default 4 MB); treepack may "
                            "choose a smaller one for its plan")
    p.add_argument("--json", action="store_true", help="print one JSON object")


#: Seconds the bound's LP may take where it is shown beside plans (``plan``, ``compare``).
#: On large full meshes its column generation tails off for minutes; what it has by then
#: is still a valid bound, with its gap shown (``netstorm bound --time-limit`` for more).
BOUND_SECONDS = 5.0


def _gap_note(low: Bound) -> str:
    """``", LP gap 0.7 %"`` when the bound's LP stopped short of its optimum, else ``""``."""
    return f", LP gap {low.gap:.1%}" if low.gap > 1e-3 else ""


def _cmd_plan(args: argparse.Namespace) -> None:
    check_writable(args.draw, "--draw")
    view, job = load_topology(args.topology), _job(args)
    started = time.perf_counter()
    result = plan(view, job, args.planner, seed=args.seed, **_options(args.option))
    elapsed = time.perf_counter() - started
    low = bound(view, job, time_limit_s=BOUND_SECONDS)
    if args.draw:
        from ..draw import draw_plan

        draw_plan(result, view, job, args.draw)
    if args.json:
        _emit({**result.to_dict(), "bound_time_s": low.time_s, "bound_gap": low.gap,
               "planning_s": elapsed})
        return
    rows = [[i, view.sites[s.root], f"{s.fraction:.4f}", len(s.reduce_tree),
             len(s.routes), sum(len(r.paths) > 1 for r in s.routes)]
            for i, s in enumerate(result.shards)]
    print(_table(["shard", "root", "fraction", "tree sites", "routed edges", "multipath"],
                 rows))
    t = result.predicted_time_s or 0.0
    chunk = result.job_for(job).chunk_bytes
    print(f"\n{result.planner} on {view.name}, {job.label()}: predicted {t:.3f} s, "
          f"bound {low.time_s:.3f} s ({t / low.time_s:.2f}x{_gap_note(low)}), "
          f"chunk {chunk / 1e6:.3g} MB"
          f"{'' if result.chunk_bytes is None else ' (chosen by the plan)'}, "
          f"send order {result.send_order}, planned in {elapsed:.3f} s")


def _cmd_bound(args: argparse.Namespace) -> None:
    view, job = load_topology(args.topology), _job(args)
    if not (args.time_limit > 0 and math.isfinite(args.time_limit)):
        raise InputError(f"--time-limit must be a finite number of seconds > 0, got "
                         f"{args.time_limit}")
    low = bound(view, job, method=args.method, time_limit_s=args.time_limit)
    if args.json:
        _emit(low.to_dict())
        return
    rows = [["bound (" + low.method + ")", low.time_s], ["bandwidth term", low.bandwidth_s],
            ["bandwidth + bottleneck latency", low.priced_s],
            ["per-site reach (latency included)", low.reach_s],
            ["round-trip latency term", low.latency_s], ["volume bound", low.volume_time_s],
            ["cut bound", low.cut_time_s], ["per-site bound", low.site_time_s]]
    print(_table(["", "seconds"], rows))
    print(f"\nrate {low.rate_Bps * 8 / 1e9:.3f} Gbit/s of gradient, "
          f"solved in {low.solve_s:.3f} s on {view.name} ({view.n} sites){_gap_note(low)}")


def _cmd_compare(args: argparse.Namespace) -> None:
    view, job = load_topology(args.topology), _job(args)
    names = args.planners.split(",") if args.planners else planner_names()
    low = bound(view, job, time_limit_s=BOUND_SECONDS)
    if args.simulate:
        from netstorm.sim import allreduce  # loaded only when asked for
    results: list[dict[str, Any]] = []
    files = {}
    for path in args.plan:
        given = load_plan(path, view, job)
        name = f"{path} ({given.planner})"
        files[name] = fixed_planner(given, name)
    for name in [*names, *files]:
        started = time.perf_counter()
        p = plan(view, job, files.get(name, name), seed=args.seed)
        elapsed = time.perf_counter() - started
        t = p.predicted_time_s or math.inf
        result = {"planner": name, "predicted_time_s": t, "vs_bound": t / low.time_s,
                  "shards": len(p.shards), "chunk_bytes": p.job_for(job).chunk_bytes,
                  "planning_s": elapsed}
        if args.simulate:
            result["simulated_time_s"] = allreduce(p, view, job)[0]
        results.append(result)
    if args.json:
        _emit({"topology": view.name, "model": job.label(), "bound_time_s": low.time_s,
               "bound_gap": low.gap, "results": results})
        return
    ranked = sorted(results, key=lambda r: r["simulated_time_s" if args.simulate
                                             else "predicted_time_s"])
    rows = [[r["planner"], r["predicted_time_s"], f"{r['vs_bound']:.2f}x", r["shards"],
             r["chunk_bytes"] / 1e6, r["planning_s"]] for r in ranked]
    rows.append([f"bound ({low.method}{_gap_note(low)})", low.time_s, "1.00x", "", "",
                 low.solve_s])
    header = ["planner", "predicted s", "vs bound", "shards", "chunk MB", "plan s"]
    if args.simulate:  # a simulated column after "vs bound"; the bound holds for it too
        header.insert(3, "simulated s")
        simulated = [r["simulated_time_s"] for r in ranked] + [low.time_s]
        for line, seconds in zip(rows, simulated, strict=True):
            line.insert(3, seconds)
    print(f"all-reduce of {job.label()} ({job.gradient_bytes / 1e6:.1f} MB) on {view.name}\n")
    print(_table(header, rows))


def _cmd_topo(args: argparse.Namespace) -> None:
    check_writable(args.draw, "--draw")
    view = load_topology(args.topology)
    if args.draw:
        from ..draw import draw_topology

        draw_topology(view, args.draw)
    if args.json:
        _emit(view.to_dict())
        return
    workers = set(view.workers)
    sites = [[name, "yes" if i in workers else "relay", view.egress[i] * 8 / 1e6,
              view.ingress[i] * 8 / 1e6] for i, name in enumerate(view.sites)]
    print(f"{view.name}: {view.n} sites, {len(view.links)} directed links\n")
    print(_table(["site", "worker", "egress Mbit/s", "ingress Mbit/s"], sites))
    links = [[view.sites[u], view.sites[v], view.capacity[u, v] * 8 / 1e6,
              view.latency[u, v] * 1e3] for u, v in view.links]
    print()
    print(_table(["src", "dst", "Mbit/s", "latency ms"], links))


def _cmd_sim(args: argparse.Namespace) -> None:
    from . import sim as sim_command

    view, job = load_topology(args.topology), _job(args)
    doc = sim_command.run(args, view, job)
    if args.json:
        _emit(doc)
        return
    length = (f"{doc['duration_s']:g} s per planner" if doc["duration_s"]
              else f"{doc['iterations']} iterations")
    print(f"simulated {length} of {job.label()} on {view.name} "
          f"(dynamics: {doc['dynamics'] or 'static'})\n")
    print(_table(["planner", "iterations", "iter mean s", "iter median s", "comm mean s",
                  "total s", "replans", "predicted s", "chunk MB"], sim_command.table(doc)))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from netstorm.sim.sweep import load_grid, sweep, write_records

    scenarios, settings = load_grid(args.file)
    out = args.out or settings.get("out")
    check_writable(out, "--out")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    started = time.perf_counter()
    records = sweep(scenarios, workers=args.workers or settings.get("workers"),
                    dask=args.dask, cache=args.cache or settings.get("cache"),
                    progress=not args.no_progress)
    wall = time.perf_counter() - started
    if out:
        write_records(records, out)
    failed = [r for r in records if r["error"] is not None]
    if args.json:
        _emit({"file": args.file, "scenarios": len(records), "failed": len(failed),
               "wall_s": wall, "out": out, "records": records})
    else:
        fields = [f for f in ("topology", "model", "planner", "dynamics", "seed",
                              "iterations", "duration_s", "policy", "chunk", "window",
                              "options") if len({str(r[f]) for r in records}) > 1]
        fields = fields or ["topology", "planner"]
        rows = [[*(r[f] for f in fields), r["iteration_mean_s"] or math.nan,
                 r["comm_mean_s"] or math.nan, r["replans"] if r["error"] is None else "",
                 (r["error"] or "")[:60]] for r in records]
        print(_table([*fields, "iter mean s", "comm mean s", "replans", "error"], rows))
        print(f"\n{len(records)} scenarios in {wall:.1f} s, {len(failed)} failed"
              f"{f'; records in {out}' if out else ''}")
    if failed:
        print(f"netstorm sweep: {len(failed)} of {len(records)} scenarios failed (their "
              f"records say why), e.g. {failed[0]['error']}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args: argparse.Namespace) -> None:
    from . import bench

    if args.plot is not None:
        if args.what != "sim":
            raise InputError(f"bench {args.what}: --plot draws only for bench sim")
        check_writable(args.plot, "--plot")
    result = bench.run(args.what, quick=args.quick, plot=args.plot)
    if args.json:
        _emit(result)
    else:
        print(bench.format_table(result))


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import execute

    status, doc, text = execute(args)
    if args.json:
        _emit(doc)
    else:
        print(text)
    return status


def _cmd_measure(args: argparse.Namespace) -> int:
    import os

    from netstorm.runtime import launch, measure
    from netstorm.runtime.launch import LaunchConfig

    if os.environ.get("RANK") is not None:  # one rank of a run on several hosts
        return measure.main(["--out", args.out, "--seconds", str(args.seconds)])
    if not args.topology:
        raise InputError("netstorm measure: run it on every host with RANK, WORLD_SIZE, "
                         "MASTER_ADDR, MASTER_PORT and NETSTORM_SECRET set, or give "
                         "--topology T to measure T emulated on this machine")
    script = (sys.executable, "-m", "netstorm.runtime.measure", "--out", args.out,
              "--seconds", str(args.seconds), "--emulate-topology", args.topology)
    status, _ = launch.run(LaunchConfig(topology=args.topology, planner="ring",
                                        time_scale=args.time_scale, command=script,
                                        sites_to_stderr=args.json))
    if status:
        return status
    truth, got = load_topology(args.topology), load_topology(args.out)
    rows = [[truth.sites[u], truth.sites[v], truth.capacity[u, v] * 8 / 1e6,
             got.capacity[u, v] * 8 / 1e6] for u, v in truth.links]
    if args.json:
        _emit({"topology_file": args.out, "links": [
            {"src": a, "dst": b, "configured_mbit_s": c, "measured_mbit_s": m}
            for a, b, c, m in rows]})
    else:
        print(_table(["src", "dst", "configured Mbit/s", "measured Mbit/s"], rows))
        print(f"\nwrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="netstorm", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"netstorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="plan one all-reduce and print the plan")
    _add_common(p)
    p.add_argument("--planner", "-p", default="treepack",
                   help="planner name (ps, ring, mlnet, tsengine, netstorm, treepack, or a "
                        "plug-in; default treepack)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of a randomised planner (tsengine); the same seed, the same "
                        "plan (default 0)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="planner option (value parsed as JSON when it can be)")
    p.add_argument("--draw", metavar="FILE.png", help="draw the plan on the topology")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("bound", help="lower bound on the all-reduce time")
    _add_common(p)
    p.add_argument("--method", default="auto",
                   choices=["auto", "flow-lp", "tree-packing", "simple"],
                   help="which bound: the flow LP, the tree-packing LP (both phases), the "
                        "simple closed forms, or auto (the tightest that fits the view)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="seconds the bound may take (compiling kernels on a first run "
                        "aside); the LP stops then, the bound stays valid, with its gap "
                        "shown (default 60)")
    p.set_defaults(func=_cmd_bound)

    p = sub.add_parser("compare", help="predicted time of every planner against the bound")
    _add_common(p)
    p.add_argument("--planners", default=None, help="comma-separated (default: all)")
    p.add_argument("--plan", action="append", default=[], metavar="FILE.json",
                   help="also a plan from a file (netstorm plan --json writes one), checked "
                        "against the topology; repeatable")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the randomised planners (default 0)")
    p.add_argument("--simulate", action="store_true",
                   help="also run each plan once in the simulator (static network) and "
                        "rank by the simulated time: the cost model is optimistic for "
                        "some baselines")
    p.set_defaults(func=_cmd_compare)

    topo = sub.add_parser("topo", help="inspect topologies")
    tsub = topo.add_subparsers(dest="topo_command", required=True, parser_class=_Parser)
    p = tsub.add_parser("show", help="list sites and links")
    p.add_argument("topology", help="built-in name or a .yaml/.json/.csv file")
    p.add_argument("--json", action="store_true",
                   help="print the topology as one JSON object (a topology file itself)")
    p.add_argument("--draw", metavar="FILE.png", help="draw the topology")
    p.set_defaults(func=_cmd_topo)

    p = sub.add_parser("sim", help="simulate planners on the (dynamic) WAN")
    _add_common(p)
    from .sim import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser("sweep", help="run a grid of simulations (a YAML grid file) in "
                                     "parallel, locally or on a Dask cluster")
    p.add_argument("file", metavar="FILE.yaml", help="the grid file (see the README)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the records: .csv, .json or .parquet")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="keep each finished record here; a sweep run again skips them")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per CPU)")
    p.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="run on this Dask scheduler (tcp://host:8786) instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with every record")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("run", help="run one process per site on an emulated WAN "
                                   "(the built-in demo, or -- python script.py ARGS)")
    from .run import add_arguments as run_arguments

    run_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("measure", help="time every ordered pair of sites and write a "
                                       "topology file (on every host, or emulated here)")
    p.add_argument("--out", required=True, metavar="FILE.yaml",
                   help="the topology file to write (what was measured)")
    p.add_argument("--seconds", type=float, default=3.0, help="streaming time in all")
    p.add_argument("--topology", "-t", default=None,
                   help="measure this topology emulated on this machine (a check)")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="emulated rates times K (with --topology)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser("bench", help="benchmark figures (not pass/fail)")
    p.add_argument("what", nargs="?", default="bound",
                   choices=["bound", "ddp", "faults", "kernels", "planner", "runtime", "sim",
                            "soak"],
                   help="which benchmark (default bound)")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="bench sim: draw simulation time against sites here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
        status = args.func(args)
    except _UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    except NetstormError as exc:
        print(f"netstorm: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
