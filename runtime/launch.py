"""``netstorm run``: one process per site on this machine, torchrun-style (DESIGN 9, 11).

Every child gets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and the
``NETSTORM_*`` settings (:mod:`netstorm.runtime.config`), so the same script runs here, under
torchrun, or by hand on several hosts. Output is streamed line by line, prefixed by the site
name; the first child that fails stops the others and its status is the run's.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from netstorm.dynamics import parse_dynamics
from netstorm.errors import InputError, NetstormError
from netstorm.plan_files import load_plan
from netstorm.registry import planner_info
from netstorm.topology import load_topology

from .netns import NetnsWAN, check_available
from .ports import free_ports

__all__ = ["add_arguments", "execute", "format_summary", "is_experiment", "options", "run",
           "summary"]


#: Seconds, beyond the runtime's timeout, that sites get to stop by themselves after one
#: failed (a dead peer is seen at once; a silent one after the timeout).
GRACE_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``run`` options; the script and its arguments follow ``--``."""
    p.add_argument("--topology", "-t", required=True,
                   help="topology file or built-in name (one site per process)")
    p.add_argument("--planner", "-p", default="treepack",
                   help="planner; several, comma-separated, run the experiment: the "
                        "built-in training once per planner, time to --target accuracy "
                        "beside the simulator's prediction")
    p.add_argument("--policy", default=None,
                   choices=["hysteresis", "any-change", "every-iteration", "static"],
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


def options(argv: list[str]) -> argparse.Namespace:
    """``netstorm run``'s options from ``argv`` (its defaults for the rest)."""
    parser = argparse.ArgumentParser(prog="netstorm run")
    add_arguments(parser)
    return parser.parse_args(argv)


def _pump(stream: IO[bytes], prefix: str, out: IO[str]) -> None:
    for raw in iter(stream.readline, b""):
        out.write(f"[{prefix}] {raw.decode(errors='replace')}")
        out.flush()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only when resumed
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Start the sites, wait for them; return ``(exit status, summary)``.

    Raises
    ------
    NetstormError
        Bad input (unknown topology, nothing to run): the CLI exits 2.
    """
    view = load_topology(args.topology)
    script = list(args.script)
    if script and script[0] == "--":
        script = script[1:]
    if args.time_scale <= 0 or args.iterations < 1 or args.mbytes <= 0:
        raise InputError("--time-scale and --mbytes must be > 0 and --iterations >= 1")
    if args.procs_per_site < 1:
        raise InputError(f"--procs-per-site must be >= 1, got {args.procs_per_site}")
    if not args.timeout > 0:
        raise InputError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if getattr(args, "rejoin", False) and not args.elastic:
        raise InputError("--rejoin needs --elastic (only an elastic run takes a site back)")
    if args.elastic and args.procs_per_site > 1:
        raise InputError("--elastic runs one process per site (--procs-per-site 1)")
    planner_info(args.planner)  # every site would fail alike: say it once, here
    if getattr(args, "plan", None):
        if args.elastic:
            raise InputError("--plan with --elastic: a plan file is for one membership, and "
                             "an elastic run re-plans when a site leaves or joins")
        load_plan(args.plan, view)  # every site would fail alike: say it once, here
    dynamics = parse_dynamics(args.dynamics)
    if dynamics is not None:
        dynamics.validate(view)
    command = script or [sys.executable, "-m", "netstorm.runtime.train"]
    if args.emulate == "netns":
        check_available()
    with contextlib.ExitStack() as keep:
        if args.log_dir:
            logs = Path(args.log_dir)
            logs.mkdir(parents=True, exist_ok=True)
        else:  # the summary is all that is kept: the logs go with the run
            logs = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="netstorm-")))
        for name in view.sites:
            (logs / f"{name}.jsonl").unlink(missing_ok=True)
        status, doc = _launch(args, view, command, logs)
        if not args.log_dir:
            doc["log_dir"] = None
        return status, doc


def _launch(args: argparse.Namespace, view: Any, command: list[str],
            logs: Path) -> tuple[int, dict[str, Any]]:
    threads = str(max(1, (os.cpu_count() or 1) // (view.n * args.procs_per_site)))
    # torchrun's layout: torch's store (a training script's init_process_group) on
    # MASTER_PORT, the runtime's coordinator on its own port
    store_port, coordinator_port = free_ports(2)
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store_port),
                NETSTORM_COORD_PORT=str(coordinator_port),
                WORLD_SIZE=str(view.n * args.procs_per_site), NETSTORM_SECRET=secrets.token_hex(32),
                NETSTORM_TOPOLOGY=str(args.topology), NETSTORM_PLANNER=args.planner,
                NETSTORM_EMULATE=args.emulate, NETSTORM_TIME_SCALE=str(args.time_scale),
                NETSTORM_TIMEOUT=str(args.timeout), NETSTORM_WIRE=args.wire,
                NETSTORM_ITERATIONS=str(args.iterations),
                NETSTORM_MBYTES=str(args.mbytes), NUMBA_NUM_THREADS=threads,
                OMP_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    base.update(getattr(args, "env", None) or {})
    if args.policy:
        base["NETSTORM_POLICY"] = args.policy
    if args.elastic:
        base["NETSTORM_ELASTIC"] = "1"
    if getattr(args, "plan", None):
        base["NETSTORM_PLAN"] = str(Path(args.plan).resolve())
    if args.dynamics:
        base["NETSTORM_DYNAMICS"] = args.dynamics
    out = sys.stderr if args.json else sys.stdout
    dynamics = parse_dynamics(args.dynamics) if args.emulate == "netns" else None
    procs: list[subprocess.Popen[bytes]] = []
    names: list[str] = []
    failure: dict[str, Any] | None = None
    lost: list[dict[str, Any]] = []  # elastic: sites that died while the others went on
    rejoined: list[dict[str, Any]] = []  # --rejoin: sites restarted to join again
    pumps = []
    started = time.perf_counter()
    status = 0
    with contextlib.ExitStack() as stack:
        wan = None
        try:
            if args.emulate == "netns":
                wan = stack.enter_context(NetnsWAN(view, args.time_scale))
            stop = threading.Event()
            stack.callback(stop.set)
            per = args.procs_per_site
            layout = list(itertools.product(range(view.n), range(per)))

            def start(rank: int, join: bool = False) -> subprocess.Popen[bytes]:
                site, local = layout[rank]
                name = view.sites[site]
                env = dict(base, RANK=str(rank), LOCAL_RANK=str(local if per > 1 else rank),
                           NETSTORM_LOG=str(logs / f"{name}.jsonl"))
                if join:
                    env["NETSTORM_JOIN"] = "1"
                if per > 1:
                    env["LOCAL_WORLD_SIZE"] = str(per)
                    name = f"{name}/{local}"
                argv = command
                if wan is not None:
                    env.update(MASTER_ADDR=wan.addresses[0], NETSTORM_BIND=wan.addresses[site],
                               NETSTORM_ADVERTISE=wan.addresses[site],
                               GLOO_SOCKET_IFNAME="eth0")  # gloo's too, not loopback
                    argv = ["ip", "netns", "exec", wan.namespaces[site], *command]
                proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
                pump = threading.Thread(target=_pump, args=(proc.stdout, name, out),
                                        daemon=True)
                pump.start()
                pumps.append(pump)
                return proc

            for rank, (site, local) in enumerate(layout):
                procs.append(start(rank))
                name = view.sites[site] if per == 1 else f"{view.sites[site]}/{local}"
                names.append(f"site {name} (rank {rank})")
            if wan is not None and dynamics is not None:
                wan.follow(dynamics, time.time(), stop)

            def restart(rank: int) -> subprocess.Popen[bytes]:
                rejoined.append({"site": names[rank], "at": time.time()})
                print(f"netstorm run: {names[rank]} restarted: it joins again at the "
                      "workers' next iteration boundary", file=sys.stderr, flush=True)
                return start(rank, join=True)

            failure = _watch(procs, names, grace=args.timeout + GRACE_S,
                             lost=lost if args.elastic else None,
                             rejoin=restart if getattr(args, "rejoin", False) else None)
            if failure is not None:
                status = failure["status"]
                print(f"netstorm run: {failure['message']}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            status = 130
            failure = None
        finally:
            _stop(procs)  # before the namespaces go (ExitStack unwinds after this)
            for pump in pumps:
                pump.join(timeout=2)
    doc = summary(view.sites, logs, getattr(args, "plan", None) or args.planner,
                  time.perf_counter() - started)
    if failure is not None:
        doc["failure"] = failure
    if args.elastic:
        doc["lost"] = lost
        doc["rejoined"] = rejoined
    return status, doc


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (a signal ``k`` is ``128 + k``)."""
    return 128 - code if code < 0 else code


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _watch(procs: list[subprocess.Popen[bytes]], names: list[str], *, grace: float,
           lost: list[dict[str, Any]] | None = None,
           rejoin: Callable[[int], subprocess.Popen[bytes]] | None = None
           ) -> dict[str, Any] | None:
    """Wait for every site; ``None`` when all exited 0, else what failed first.

    After the first failure the others get ``grace`` seconds (the runtime's timeout and a
    margin) to notice and stop by themselves, so each reports the failure in its own words,
    naming the site it lost; the rest are then stopped (:func:`_stop`). With ``lost`` (an
    elastic run) a site other than rank 0 (the coordinator) killed by a signal while others
    run is appended there instead: the others go on without it, and only another failure
    ends the run. With ``rejoin``, such a site is restarted once (``rejoin(i)`` is its new
    process, in ``procs[i]``).
    """
    gone: set[int] = set()
    restarted: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0) and i not in gone]
        if failed and lost is not None and any(c is None for c in codes):
            killed = [i for i in failed if (codes[i] or 0) < 0 and i > 0]  # rank 0 coordinates
            for i in killed:
                code = codes[i]
                assert code is not None
                lost.append({"site": names[i], "status": _status(code), "at": time.time()})
                print(f"netstorm run: {names[i]} {_how(code)}; the others go on without it "
                      "(elastic)", file=sys.stderr, flush=True)
                if rejoin is not None and i not in restarted:
                    restarted.add(i)  # watched again from the next look on
                    procs[i] = rejoin(i)
                else:
                    gone.add(i)
            failed = [i for i in failed if i not in killed]
        if failed:
            break
        if all(c is not None for c in codes):
            return None
        if lost is not None and any(c == 0 for c in codes):  # the others are done: a site
            _linger(procs, names, grace, lost)  # still running was lost silently (stopped)
            return None
        time.sleep(0.02)
    first = failed[0]
    code = codes[first]
    assert code is not None
    seen = time.monotonic()
    deadline = seen + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.02)
    waited = time.monotonic() - seen
    left = [names[i] for i, p in enumerate(procs) if p.poll() is None]
    message = f"{names[first]} {_how(code)}"
    if left:
        message += (f"; {', '.join(left)} still running after {grace:.0f} s "
                    "(stopped by the launcher)")
    else:
        message += f"; every other site stopped within {waited:.2f} s"
    return {"site": names[first], "status": _status(code), "message": message,
            "others_stopped_s": None if left else waited, "stopped_by_launcher": left}


def _linger(procs: list[subprocess.Popen[bytes]], names: list[str], grace: float,
            lost: list[dict[str, Any]]) -> None:
    """An elastic run whose workers are done: give the sites still running ``grace``
    seconds to finish too; those that do not were left behind by the others (stopped or cut
    off): they are recorded in ``lost`` and stopped by the caller."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for i, p in enumerate(procs):
        if p.poll() is None:
            lost.append({"site": names[i], "status": None, "at": time.time()})
            print(f"netstorm run: {names[i]} still running after the others finished; the "
                  "run went on without it (elastic; stopped by the launcher)",
                  file=sys.stderr, flush=True)


def summary(sites: tuple[str, ...], logs: Path, planner: str, wall_s: float) -> dict[str, Any]:
    """DESIGN 11's ``run --json`` object from the sites' JSON lines logs.

    ``iterations``: per iteration the slowest site's time and the plan version, from the
    records a training script logs (``{"iteration": i, "time_s": ...}``) or, without them,
    one per collective; ``switches``: every plan switch; ``bytes``: bytes received per link.
    """
    rows: dict[str, dict[int, dict[str, Any]]] = {"iteration": {}, "collective": {}}
    switches: dict[int, Any] = {}
    links: dict[str, float] = {}
    accuracy = None
    for name in sites:
        path = logs / f"{name}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "switch" in rec:
                switches[rec["switch"]["version"]] = rec["switch"]
            for key in rows:
                if key in rec:
                    row = rows[key].setdefault(rec[key], {"time_s": 0.0,
                                                          "plan_version": rec["plan_version"]})
                    row["time_s"] = max(row["time_s"], rec["time_s"])
            for link in rec.get("links", ()):
                if link.get("timed_by", "sender") == "sender":  # count each byte once
                    edge = f"{link['src']}->{link['dst']}"
                    links[edge] = links.get(edge, 0.0) + link["bytes"]
            accuracy = rec.get("accuracy", accuracy)
    chosen = rows["iteration"] or rows["collective"]
    return {"planner": planner, "iterations": [chosen[i] for i in sorted(chosen)],
            "accuracy": accuracy, "switches": [switches[v] for v in sorted(switches)],
            "bytes": links, "wall_s": wall_s, "log_dir": str(logs)}


def is_experiment(args: argparse.Namespace) -> bool:
    """Several planners, ``--target`` or ``--plot``: the experiment, not one run."""
    return "," in args.planner or args.target is not None or args.plot is not None


def execute(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    """``netstorm run``: one run or the experiment; ``(status, summary, its text)``."""
    for name in args.planner.split(","):  # before the first planner's run, not after it
        planner_info(name)
    if is_experiment(args):
        from . import experiment

        if args.target is None:
            args.target = 0.9
        status, doc = experiment.run(args)
        return status, doc, experiment.format_table(doc)
    status, doc = run(args)
    return status, doc, format_summary(doc)


def main(argv: list[str] | None = None) -> int:
    """``python -m netstorm.runtime.launch`` (the same as ``netstorm run``)."""
    args = options(sys.argv[1:] if argv is None else argv)
    try:
        status, doc, text = execute(args)
    except NetstormError as exc:
        print(f"netstorm run: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc) if args.json else text)
    return status


def format_summary(doc: dict[str, Any]) -> str:
    """The readable summary of :func:`run`."""
    lines = [f"{doc['planner']}: {len(doc['iterations'])} iterations in {doc['wall_s']:.1f} s"]
    for i, row in enumerate(doc["iterations"]):
        lines.append(f"  iteration {i}: {row['time_s']:.3f} s (plan v{row['plan_version']})")
    for sw in doc["switches"]:
        lines.append(f"  plan v{sw['version']} from collective {sw['from_seq']}: "
                     f"{sw['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
