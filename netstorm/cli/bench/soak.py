"""``netstorm bench soak``: a long run under changing capacities, its memory and descriptors.

One ``netstorm run --emulate inprocess --dynamics redraw:... -- python -m
netstorm.runtime.demo`` (default: ``netstorm9``, 500 iterations): every site's links get new
capacities every few seconds of wall time, the coordinator re-plans as it sees them, and the
demo checks every iteration's result against numpy's mean (it exits non-zero if any differs
by more than 1e-4). Meanwhile, once a second, every site process is sampled: its resident
memory (``VmRSS`` of ``/proc/<pid>/status``) and its open file descriptors (the entries of
``/proc/<pid>/fd``); the site processes are the launcher's children
(``/proc/<launcher>/task/<launcher>/children``), each named by its ``RANK``.

Reported per site: RSS and descriptors at the first sample once the first worker printed
iteration 10 (everything is imported, planned and connected by then), at the last sample
taken before the last iteration's line (the site still in its loop, not yet closing), and
their maximum; growth from iteration 10 to the end is the leak to look for. For the run: its
exit status, iterations done, plan switches (``netstorm run --json``'s ``switches``), the
largest ``max |error|`` the first worker printed, the median all-reduce time (the slowest
site's, per collective) and the mean wall time per iteration from iteration 10 on.

Sizing: the all-reduce is ``mbytes`` MB (default 4); the time scale K (unless given) makes
the plan's predicted all-reduce time, on the topology with every link at the middle of the
redraw range (20..155 Mbit/s, the NetStorm paper's), ``network_s`` (0.25 s) of wall time, so
that with the demo's own work an iteration takes about 0.3-0.5 s; the redraw period is
``period_s`` (4 s) of wall time, ``K * period_s`` emulated. Quick mode: ``random:3:1``, 30
iterations (under a minute with start-up). The run has a deadline (120 s + 4 s per
iteration); whatever happens, the launcher's process group is killed when it ends.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from netstorm.runtime.procs import children, clean_env, kill_groups, rank_of, sample

from ...dynamics import Redraw, parse_dynamics
from ...job import Job
from ...registry import plan as make_plan
from ...topology import load_topology

__all__ = ["SoakError", "run", "time_scale"]

#: The redraw range (the NetStorm paper's emulation).
LOW = "20Mbit/s"
HIGH = "155Mbit/s"
#: The iteration after which a sample counts as the run's settled state.
SETTLED_ITERATION = 10


class SoakError(RuntimeError):
    """The soak run could not be started (the message says why)."""


def time_scale(topology: str, mbytes: float, *, planner: str = "treepack", low: str = LOW,
               high: str = HIGH, network_s: float = 0.25) -> float:
    """K at which ``planner``'s all-reduce of ``mbytes`` MB takes about ``network_s`` s of
    wall time on ``topology`` with every link at the mean of ``[low, high]``
    (two significant digits).

    Parameters
    ----------
    topology
        A topology file or built-in name.
    mbytes
        The all-reduce size, MB.
    planner
        The planner the run uses.
    low, high
        The redraw range, as the dynamics string writes it (``"20Mbit/s"``).
    network_s
        The wall time aimed at.

    Returns
    -------
    float
        The time scale K (``netstorm run --time-scale``).
    """
    view = load_topology(topology)
    redraw = parse_dynamics(f"redraw:1s:{low}:{high}")
    assert isinstance(redraw, Redraw)
    mid = (redraw.low_Bps + redraw.high_Bps) / 2  # a redrawn link's mean
    cap = np.where(view.capacity > 0, mid, 0.0)
    view = dataclasses.replace(view, capacity=cap, _graph_cache={})
    job = Job(buckets=int(mbytes * 1e6) // 4 * 4, chunk_bytes=4_000_000)
    predicted = float(make_plan(view, job, planner, seed=0).predicted_time_s or network_s)
    return float(f"{predicted / network_s:.2g}")


def _site_row(name: str, rank: int, samples: list[tuple[float, int, float, int]],
              iterations: int) -> dict[str, Any]:
    """One site's figures from its samples ``(time, iteration seen, RSS MB, fds)``."""
    settled = next((s for s in samples if s[1] >= SETTLED_ITERATION), None)
    looping = [s for s in samples if s[1] < iterations - 1]
    last = looping[-1] if looping else (samples[-1] if samples else None)
    return {"benchmark": "soak", "site": name, "rank": rank, "samples": len(samples),
            "rss_MB_at_10": None if settled is None else round(settled[2], 1),
            "rss_MB_end": None if last is None else round(last[2], 1),
            "rss_MB_max": round(max(s[2] for s in samples), 1) if samples else None,
            "rss_growth_MB": (None if settled is None or last is None
                              else round(last[2] - settled[2], 1)),
            "fds_at_10": None if settled is None else settled[3],
            "fds_end": None if last is None else last[3],
            "fds_max": max(s[3] for s in samples) if samples else None,
            "end_iteration": None if last is None else last[1]}


def run(quick: bool = False, sites_topology: str | None = None, iterations: int | None = None,
        *, mbytes: float = 4.0, time_scale_k: float | None = None, period_s: float = 4.0,
        low: str = LOW, high: str = HIGH, seed: int = 1, planner: str = "treepack",
        network_s: float = 0.25, timeout_s: float = 120.0, deadline_s: float | None = None,
        interval_s: float = 1.0) -> dict[str, Any]:
    """The soak run; figures per site and for the run.

    Parameters
    ----------
    quick
        ``random:3:1`` and 30 iterations unless ``sites_topology`` or ``iterations`` say
        otherwise.
    sites_topology
        The topology (default ``netstorm9``; quick: ``random:3:1``).
    iterations
        Iterations of the demo (default 500; quick: 30).
    mbytes
        The all-reduce size, MB.
    time_scale_k
        ``--time-scale``; default :func:`time_scale` (an iteration's network part about
        ``network_s`` s).
    period_s
        Wall seconds between redraws.
    low, high, seed
        The redraw range and seed.
    planner
        ``netstorm run --planner``.
    network_s
        See ``time_scale_k``.
    timeout_s
        ``netstorm run --timeout``.
    deadline_s
        Wall seconds the whole run gets (default 120 + 4 per iteration); past it the run is
        killed and reported with status ``None``.
    interval_s
        Seconds between samples.

    Returns
    -------
    dict
        ``{"benchmark": "soak", "command": [...], "results": [one row per site],
        "summary": [one row for the run]}``.

    Raises
    ------
    SoakError
        The launcher could not be started.
    """
    topology = sites_topology or ("random:3:1" if quick else "netstorm9")
    n_iter = iterations or (30 if quick else 500)
    deadline = deadline_s if deadline_s is not None else 120.0 + 4.0 * n_iter
    k = time_scale_k if time_scale_k is not None else time_scale(
        topology, mbytes, planner=planner, low=low, high=high, network_s=network_s)
    dynamics = f"redraw:{period_s * k:.4g}s:{low}:{high}:{seed}"
    parse_dynamics(dynamics)  # malformed: DynamicsError now, not in every site
    sites = load_topology(topology).sites
    command = [sys.executable, "-m", "netstorm", "run", "--topology", topology, "--planner",
               planner, "--emulate", "inprocess", "--time-scale", f"{k:g}", "--dynamics",
               dynamics, "--timeout", f"{timeout_s:g}", "-n", str(n_iter), "--mbytes",
               f"{mbytes:g}", "--json", "--", sys.executable, "-m", "netstorm.runtime.demo"]
    print(f"bench soak: {' '.join(command[3:-4])}", file=sys.stderr, flush=True)
    try:
        launcher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env=dict(clean_env(), PYTHONUNBUFFERED="1"),
                                    start_new_session=True)
    except OSError as exc:
        raise SoakError(f"bench soak: cannot start netstorm run: {exc}") from exc
    output = _Output(launcher)
    started = time.monotonic()
    try:
        status, samples = _sample_sites(launcher, len(sites), output, deadline, interval_s)
    finally:
        kill_groups([launcher])
        output.close()
    wall = time.monotonic() - started
    doc = output.summary()
    times = [row["time_s"] for row in doc.get("iterations", [])]
    at = output.at
    settled, last = SETTLED_ITERATION, max(at, default=-1)
    per_iteration = ((at[last] - at[settled]) / (last - settled)
                     if settled in at and last > settled else None)
    rows = [_site_row(name, rank, samples.get(rank, []), n_iter) for rank, name in enumerate(sites)]
    run_row = {"benchmark": "soak-run", "topology": topology, "status": status,
               "iterations": n_iter, "iterations_done": output.iteration + 1,
               "switches": len(doc.get("switches", [])), "max_error": output.max_error,
               "median_allreduce_s": statistics.median(times) if times else None,
               "wall_per_iteration_s": per_iteration,
               "wall_s": round(wall, 1), "time_scale": k, "mbytes": mbytes,
               "dynamics": dynamics, "redraw_every_s": period_s}
    result: dict[str, Any] = {
        "benchmark": "soak", "command": command, "results": rows, "summary": [run_row],
        "sampling": f"every {interval_s:g} s: VmRSS of /proc/PID/status, entries of "
                    f"/proc/PID/fd; at_10 is the first sample after the first worker "
                    f"printed iteration {SETTLED_ITERATION}"}
    if status != 0:
        result["tail"] = output.tail
    return result


class _Output:
    """The launcher's output, read on two threads: its sites' lines (stderr, under
    ``--json``: the iteration each worker printed, its error, the last lines) and the
    run's JSON summary (stdout)."""

    PATTERN = re.compile(r"^\[[^\]]+\] iteration (\d+):.*max \|error\| ([0-9.eE+-]+)")

    def __init__(self, launcher: subprocess.Popen[str]) -> None:
        self.launcher = launcher
        self.iteration = -1
        self.max_error: float | None = None
        self.tail: list[str] = []
        self.at: dict[int, float] = {}  # iteration -> when its line came
        self._out: list[str] = []
        self.threads = [threading.Thread(target=self._read_err, daemon=True),
                        threading.Thread(target=self._read_out, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _read_err(self) -> None:
        assert self.launcher.stderr is not None
        for line in self.launcher.stderr:
            line = line.rstrip("\n")
            self.tail = [*self.tail[-19:], line]
            found = self.PATTERN.match(line)
            if found:
                self.iteration = int(found.group(1))
                self.at[self.iteration] = time.monotonic()
                self.max_error = max(float(found.group(2)), self.max_error or 0.0)
                if self.iteration % 50 == 0:
                    print(f"bench soak: iteration {self.iteration}", file=sys.stderr,
                          flush=True)

    def _read_out(self) -> None:
        assert self.launcher.stdout is not None
        self._out.append(self.launcher.stdout.read())

    def summary(self) -> dict[str, Any]:
        """``netstorm run --json``'s object (empty when it printed none)."""
        text = self._out[0].strip() if self._out else ""
        try:
            return dict(json.loads(text.splitlines()[-1])) if text else {}
        except ValueError:
            return {}

    def close(self) -> None:
        for thread in self.threads:
            thread.join(10)
        for stream in (self.launcher.stdout, self.launcher.stderr):
            if stream is not None:
                stream.close()


def _sample_sites(launcher: subprocess.Popen[str], n: int, output: _Output, deadline: float,
                  interval_s: float,
                  ) -> tuple[int | None, dict[int, list[tuple[float, int, float, int]]]]:
    """Sample every site process each ``interval_s`` until the launcher exits or
    ``deadline`` seconds passed: its exit status (``None``: still running) and, per rank,
    ``(seconds, iteration seen, RSS MB, fds)`` samples."""
    samples: dict[int, list[tuple[float, int, float, int]]] = {}
    pids: dict[int, int] = {}  # rank -> pid
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if launcher.poll() is not None:
            return launcher.returncode, samples
        if len(pids) < n:
            for pid in children(launcher.pid):
                rank = rank_of(pid)
                if rank is not None:
                    pids.setdefault(rank, pid)
        now = time.monotonic() - started
        for rank, pid in pids.items():
            got = sample(pid)
            if got is not None:
                samples.setdefault(rank, []).append((now, output.iteration, *got))
        time.sleep(interval_s)
    return None, samples
