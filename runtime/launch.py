"""One process per site on this machine, torchrun-style (DESIGN 9, 11): the library half of
``netstorm run``, configured by a :class:`LaunchConfig` (the command line lives in
:mod:`netstorm.cli.run`).

Every child gets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and the
``NETSTORM_*`` settings (:mod:`netstorm.runtime.config`), so the same script runs here, under
torchrun, or by hand on several hosts. Output is streamed line by line, prefixed by the site
name; the first child that fails stops the others and its status is the run's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netstorm.dynamics import Dynamics, parse_dynamics
from netstorm.errors import InputError
from netstorm.plan_files import load_plan
from netstorm.registry import planner_info
from netstorm.topology import load_topology
from netstorm.view import NetworkView

from .config import EMULATE_MODES, WIRE_DTYPES
from .deadlines import THREAD_STOP_S, launcher_grace
from .netns import NetnsWAN, check_available
from .ports import free_ports
from .procs import describe_exit, pump, shell_status, stop

__all__ = ["LaunchConfig", "run", "summary"]

#: The script sites run when the launch names none: the built-in training.
BUILTIN_TRAINING = ("-m", "netstorm.runtime.train")


@dataclass(frozen=True)
class LaunchConfig:
    """What ``netstorm run`` starts (the options of the same names; see its ``--help``).

    Attributes
    ----------
    topology
        A topology file or built-in name: one site (``procs_per_site`` processes) each.
    planner, policy, plan
        The planner every site plans with, the re-plan policy (``None``: the planner's
        own), or a plan file to run as it is.
    command
        The site script and its arguments; empty: the built-in training.
    emulate, time_scale, dynamics
        How the WAN is emulated (``inprocess``, ``netns``, ``none``), K, capacity changes.
    iterations, mbytes
        Steps of the built-in training; size of the all-reduce check's buffer (MB).
    procs_per_site, wire, timeout_s
        Processes per site, the wire encoding, the runtime's timeout.
    elastic, rejoin
        A site that dies leaves the run; a killed site is restarted (once) and joins again.
    log_dir
        Keep the sites' JSON lines logs here (``None``: in a temporary folder, removed).
    env
        More environment for every site.
    sites_to_stderr
        Stream the sites' output to stderr instead of stdout (``--json``: stdout carries
        only the summary).
    """

    topology: str
    planner: str = "treepack"
    command: tuple[str, ...] = ()
    policy: str | None = None
    plan: str | None = None
    emulate: str = "inprocess"
    time_scale: float = 1.0
    dynamics: str | None = None
    iterations: int = 5
    mbytes: float = 16.0
    procs_per_site: int = 1
    wire: str = "fp32"
    timeout_s: float = 120.0
    elastic: bool = False
    rejoin: bool = False
    log_dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    sites_to_stderr: bool = False

    def __post_init__(self) -> None:
        if not self.time_scale > 0 or not self.mbytes > 0 or self.iterations < 1:
            raise InputError("--time-scale and --mbytes must be > 0 and --iterations >= 1")
        if self.procs_per_site < 1:
            raise InputError(f"--procs-per-site must be >= 1, got {self.procs_per_site}")
        if not self.timeout_s > 0:
            raise InputError(f"--timeout must be > 0 seconds, got {self.timeout_s:g}")
        if self.emulate not in EMULATE_MODES:
            raise InputError(f"--emulate must be one of {', '.join(EMULATE_MODES)}, got "
                             f"{self.emulate!r}")
        if self.wire not in WIRE_DTYPES:
            raise InputError(f"--wire must be one of {', '.join(WIRE_DTYPES)}, got "
                             f"{self.wire!r}")
        if self.rejoin and not self.elastic:
            raise InputError("--rejoin needs --elastic (only an elastic run takes a site back)")
        if self.elastic and self.procs_per_site > 1:
            raise InputError("--elastic runs one process per site (--procs-per-site 1)")
        if self.plan and self.elastic:
            raise InputError("--plan with --elastic: a plan file is for one membership, and "
                             "an elastic run re-plans when a site leaves or joins")


def run(config: LaunchConfig) -> tuple[int, dict[str, Any]]:
    """Start the sites, wait for them; return ``(exit status, summary)``.

    Raises
    ------
    NetstormError
        Bad input (unknown topology or planner, a plan file or dynamics that do not fit
        the topology): the CLI exits 2.
    """
    view = load_topology(config.topology)
    planner_info(config.planner)  # every site would fail alike: say it once, here
    if config.plan:
        load_plan(config.plan, view)
    dynamics = parse_dynamics(config.dynamics)
    if dynamics is not None:
        dynamics.validate(view)
    if config.emulate == "netns":
        check_available()
    with contextlib.ExitStack() as keep:
        if config.log_dir:
            logs = Path(config.log_dir)
            logs.mkdir(parents=True, exist_ok=True)
        else:  # the summary is all that is kept: the logs go with the run
            logs = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="netstorm-")))
        for name in view.sites:
            (logs / f"{name}.jsonl").unlink(missing_ok=True)
        status, doc = _Launch(config, view, logs, dynamics).run()
        if not config.log_dir:
            doc["log_dir"] = None
        return status, doc


def _base_env(config: LaunchConfig, view: NetworkView) -> dict[str, str]:
    """Every site's environment but its rank's own variables."""
    threads = str(max(1, (os.cpu_count() or 1) // (view.n * config.procs_per_site)))
    # torchrun's layout: torch's store (a training script's init_process_group) on
    # MASTER_PORT, the runtime's coordinator on its own port
    store_port, coordinator_port = free_ports(2)
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store_port),
                NETSTORM_COORD_PORT=str(coordinator_port),
                WORLD_SIZE=str(view.n * config.procs_per_site),
                NETSTORM_SECRET=secrets.token_hex(32),
                NETSTORM_TOPOLOGY=str(config.topology), NETSTORM_PLANNER=config.planner,
                NETSTORM_EMULATE=config.emulate, NETSTORM_TIME_SCALE=str(config.time_scale),
                NETSTORM_TIMEOUT=str(config.timeout_s), NETSTORM_WIRE=config.wire,
                NETSTORM_ITERATIONS=str(config.iterations),
                NETSTORM_MBYTES=str(config.mbytes), NUMBA_NUM_THREADS=threads,
                OMP_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    base.update(config.env)
    if config.policy:
        base["NETSTORM_POLICY"] = config.policy
    if config.elastic:
        base["NETSTORM_ELASTIC"] = "1"
    if config.plan:
        base["NETSTORM_PLAN"] = str(Path(config.plan).resolve())
    if config.dynamics:
        base["NETSTORM_DYNAMICS"] = config.dynamics
    return base


class _Launch:
    """One launch: its processes, what it saw of them, and the summary."""

    def __init__(self, config: LaunchConfig, view: NetworkView, logs: Path,
                 dynamics: Dynamics | None) -> None:
        self.config = config
        self.view = view
        self.logs = logs
        self.dynamics = dynamics  # (the kernel's links follow them under netns)
        self.command = list(config.command) or [sys.executable, *BUILTIN_TRAINING]
        self.layout = list(itertools.product(range(view.n), range(config.procs_per_site)))
        self.names = [f"site {self._label(rank)} (rank {rank})"
                      for rank in range(len(self.layout))]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pumps: list[threading.Thread] = []
        self.lost: list[dict[str, Any]] = []  # elastic: sites that died, the others went on
        self.rejoined: list[dict[str, Any]] = []  # --rejoin: sites restarted to join again
        self.wan: NetnsWAN | None = None
        self.base = _base_env(config, view)

    def _label(self, rank: int) -> str:
        site, local = self.layout[rank]
        name = self.view.sites[site]
        return name if self.config.procs_per_site == 1 else f"{name}/{local}"

    def start(self, rank: int, join: bool = False) -> subprocess.Popen[bytes]:
        """Start rank ``rank``'s process (``join``: it joins an elastic run under way)."""
        site, local = self.layout[rank]
        per = self.config.procs_per_site
        env = dict(self.base, RANK=str(rank), LOCAL_RANK=str(local if per > 1 else rank),
                   NETSTORM_LOG=str(self.logs / f"{self.view.sites[site]}.jsonl"))
        if join:
            env["NETSTORM_JOIN"] = "1"
        if per > 1:
            env["LOCAL_WORLD_SIZE"] = str(per)
        argv = self.command
        if self.wan is not None:
            address = self.wan.addresses[site]
            env.update(MASTER_ADDR=self.wan.addresses[0], NETSTORM_BIND=address,
                       NETSTORM_ADVERTISE=address,
                       GLOO_SOCKET_IFNAME="eth0")  # gloo's too, not loopback
            argv = ["ip", "netns", "exec", self.wan.namespaces[site], *self.command]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        out = sys.stderr if self.config.sites_to_stderr else sys.stdout
        self.pumps.append(pump(proc.stdout, self._label(rank), out))
        return proc

    def restart(self, rank: int) -> subprocess.Popen[bytes]:
        self.rejoined.append({"site": self.names[rank], "at": time.time()})
        print(f"netstorm run: {self.names[rank]} restarted: it joins again at the "
              "workers' next iteration boundary", file=sys.stderr, flush=True)
        return self.start(rank, join=True)

    def run(self) -> tuple[int, dict[str, Any]]:
        config = self.config
        started = time.perf_counter()
        status = 0
        failure: dict[str, Any] | None = None
        with contextlib.ExitStack() as stack:
            try:
                if config.emulate == "netns":
                    self.wan = stack.enter_context(NetnsWAN(self.view, config.time_scale))
                halt = threading.Event()
                stack.callback(halt.set)
                self.procs = [self.start(rank) for rank in range(len(self.layout))]
                if self.wan is not None and self.dynamics is not None:
                    self.wan.follow(self.dynamics, time.time(), halt)
                failure = _watch(self.procs, self.names,
                                 grace=launcher_grace(config.timeout_s),
                                 lost=self.lost if config.elastic else None,
                                 rejoin=self.restart if config.rejoin else None)
                if failure is not None:
                    status = failure["status"]
                    print(f"netstorm run: {failure['message']}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:
                status = 130
                failure = None
            finally:
                stop(self.procs)  # before the namespaces go (ExitStack unwinds after this)
                for thread in self.pumps:
                    thread.join(timeout=THREAD_STOP_S)
        doc = summary(self.view.sites, self.logs, config.plan or config.planner,
                      time.perf_counter() - started)
        if failure is not None:
            doc["failure"] = failure
        if config.elastic:
            doc["lost"] = self.lost
            doc["rejoined"] = self.rejoined
        return status, doc


def _watch(procs: list[subprocess.Popen[bytes]], names: list[str], *, grace: float,
           lost: list[dict[str, Any]] | None = None,
           rejoin: Callable[[int], subprocess.Popen[bytes]] | None = None
           ) -> dict[str, Any] | None:
    """Wait for every site; ``None`` when all exited 0, else what failed first.

    After the first failure the others get ``grace`` seconds (the runtime's timeout and a
    margin) to notice and stop by themselves, so each reports the failure in its own words,
    naming the site it lost; the rest are then stopped (:func:`~.procs.stop`). With ``lost``
    (an elastic run) a site other than rank 0 (the coordinator) killed by a signal while
    others run is appended there instead: the others go on without it, and only another
    failure ends the run. With ``rejoin``, such a site is restarted once (``rejoin(i)`` is
    its new process, in ``procs[i]``).
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
                lost.append({"site": names[i], "status": shell_status(code), "at": time.time()})
                print(f"netstorm run: {names[i]} {describe_exit(code)}; the others go on "
                      "without it (elastic)", file=sys.stderr, flush=True)
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
    message = f"{names[first]} {describe_exit(code)}"
    if left:
        message += (f"; {', '.join(left)} still running after {grace:.0f} s "
                    "(stopped by the launcher)")
    else:
        message += f"; every other site stopped within {waited:.2f} s"
    return {"site": names[first], "status": shell_status(code), "message": message,
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
