"""``netstorm bench faults``: how fast a run stops, and whom it blames, when a site is lost.

Each trial is one ``netstorm run`` of the all-reduce check (``python -m
netstorm.runtime.demo``, real site processes on this machine). Once the first worker printed
``iteration 3:`` the trial waits a random fraction of the last iteration's wall time (the
time between the ``iteration 2:`` and ``iteration 3:`` lines), so the signal lands anywhere
in an iteration, then sends the signal to one site process:

``SIGKILL``  the site is gone; its peers see their connections closed at once.
``SIGSTOP``  the site is alive and holds its sockets open but says nothing; its peers find
             it only by the control plane's heartbeats (silent for half the timeout, at
             least 2 s; :func:`netstorm.runtime.deadlines.silence_limit`). The launcher then
             waits out its grace (timeout + 5 s) for the stopped one and kills it.

What a trial measures (:class:`Trial`): the launcher's exit status and its one ``netstorm
run:`` line; which surviving sites printed ``stopped: ...`` naming the lost site (``site X
(rank r...``); the seconds from the signal to every other site process exited (their pids,
read from ``/proc/<launcher>/task/<launcher>/children`` before the signal, polled every
10 ms: a zombie not yet reaped counts as exited) and to the launcher's exit; and any site
process still alive after the launcher exited (there must be none). A loss is *detected*
when every surviving site named the lost one.

The benchmark (:func:`run`): 4 sites (``random:4:1``, planner treepack, ``--emulate
none``, ``--timeout 5``, ``--mbytes 4``); 20 SIGKILL trials (quick: 4) and 5 SIGSTOP
trials (quick: 2), each on a rank drawn by a seeded generator (rank 0, whose process also
runs the coordinator, included) at a random point of an iteration. Every trial has
deadlines; whatever happens, its launcher's whole process group is killed when it ends.
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from netstorm.runtime.deadlines import STOP_GRACE_S, launcher_grace
from netstorm.runtime.procs import alive, children, clean_env, kill_groups, rank_of, start_time

from ...topology import load_topology

__all__ = ["Trial", "TrialError", "run", "trial"]

#: The benchmark's settings (DESIGN/issue 15: 4 sites, unshaped, 5 s timeout, 4 MB).
TOPOLOGY = "random:4:1"
PLANNER = "treepack"
TIMEOUT_S = 5.0
MBYTES = 4.0
SEED = 15

#: Seconds a launch gets to print the iteration a trial waits for.
START_DEADLINE_S = 120.0


class TrialError(RuntimeError):
    """A trial could not reach the point where it sends its signal (the run failed or
    never got going); the message holds the output's tail."""


@dataclass
class Trial:
    """One lost site: what was done, and what the run did about it.

    Attributes
    ----------
    victim, victim_site
        The rank signalled and its site's name.
    signal
        The signal's name (``"SIGKILL"``, ``"SIGSTOP"``).
    delay_fraction
        Where in an iteration it was sent: the fraction of the last iteration's wall time
        waited after the ``iteration N:`` line.
    status
        The launcher's exit status; ``None`` when it was still running at the trial's
        deadline (the trial killed it).
    launcher_line
        The launcher's last ``netstorm run: ...`` line (``None`` when it printed none).
    stopped
        Each surviving site's ``stopped: ...`` line (without the ``[site] `` prefix).
    named_by
        The surviving sites whose ``stopped:`` line names the victim (``site X`` then
        ``rank r``).
    survivors
        The other sites' names, in rank order.
    others_stopped_s
        Seconds from the signal until every other site process had exited (``None``: not
        by the trial's deadline).
    launcher_exit_s
        Seconds from the signal until the launcher exited (``None``: not by the deadline).
    left_behind
        Pids of site processes still alive after the launcher exited (must be empty).
    lines
        The launcher's whole output (the sites' lines prefixed by ``[site] ``).
    recovered_s
        Elastic trials: seconds from the signal until an iteration completed without the
        victim (``None``: not by the deadline); the trial then stops the run.
    rejoined_s
        Rejoin trials: seconds from the signal until an iteration completed with every
        worker again, the victim restarted by ``--rejoin`` (``None``: not by the deadline).
    """

    victim: int
    victim_site: str
    signal: str
    delay_fraction: float
    recovered_s: float | None = None
    rejoined_s: float | None = None
    status: int | None = None
    launcher_line: str | None = None
    stopped: dict[str, str] = field(default_factory=dict)
    named_by: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    others_stopped_s: float | None = None
    launcher_exit_s: float | None = None
    left_behind: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list, repr=False)

    @property
    def detected(self) -> bool:
        """Every surviving site named the victim."""
        return bool(self.survivors) and set(self.named_by) == set(self.survivors)

    def row(self) -> dict[str, Any]:
        """The benchmark's row: everything but the output."""
        doc = asdict(self)
        del doc["lines"]
        doc["detected"] = self.detected
        return doc


def _named(line: str, site: str, rank: int) -> bool:
    # "site b (rank 1, 127.0.0.1:...)", "the coordinator (site a, rank 0)"
    return re.search(rf"\bsite {re.escape(site)}\W+rank {rank}\b", line) is not None


def trial(topology: str, victim: int, how: signal.Signals = signal.SIGKILL, *,
          delay_fraction: float = 0.0, timeout_s: float = TIMEOUT_S, planner: str = PLANNER,
          mbytes: float = MBYTES, after_iteration: int = 3,
          start_deadline_s: float = START_DEADLINE_S, elastic: bool = False,
          rejoin: bool = False) -> Trial:
    """Run the all-reduce check on every site of ``topology`` and send ``how`` to rank
    ``victim`` during an iteration; return what happened.

    Parameters
    ----------
    topology
        A topology file or built-in name; one site process per site (as many as it has).
    victim
        The rank to signal (0: the site whose process also runs the coordinator).
    how
        The signal: ``SIGKILL`` (gone) or ``SIGSTOP`` (silent), or any other.
    delay_fraction
        After the first worker printed ``iteration {after_iteration}:``, wait this fraction
        of the last iteration's wall time (between that line and the one before) first.
    timeout_s
        ``netstorm run --timeout`` (a stopped site is named after half of it, at least 2 s).
    planner, mbytes
        ``netstorm run --planner`` and ``--mbytes`` (unshaped: ``--emulate none``).
    after_iteration
        The iteration whose line starts the countdown (at least 1).
    start_deadline_s
        Seconds the run gets to print that line.
    elastic
        ``netstorm run --elastic``: the others go on without the victim; the trial ends at
        the first iteration they complete without it (:attr:`Trial.recovered_s`).
    rejoin
        With ``elastic``, ``--rejoin`` too: the trial ends at the first iteration completed
        with every worker again (:attr:`Trial.rejoined_s`).

    Returns
    -------
    Trial
        The record; :attr:`Trial.lines` holds the launcher's whole output.

    Raises
    ------
    TrialError
        The run ended or stalled before the signal could be sent.
    ValueError
        ``victim`` is not a rank of ``topology``, or ``after_iteration`` < 1.
    """
    sites = load_topology(topology).sites
    if not 0 <= victim < len(sites):
        raise ValueError(f"victim rank {victim} not in 0..{len(sites) - 1}")
    if after_iteration < 1:
        raise ValueError(f"after_iteration must be >= 1, got {after_iteration}")
    record = Trial(victim=victim, victim_site=sites[victim], signal=how.name,
                   delay_fraction=delay_fraction,
                   survivors=[s for r, s in enumerate(sites) if r != victim])
    env = dict(clean_env(), PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "netstorm", "run", "--topology", str(topology), "--planner",
         planner, "--emulate", "none", "--timeout", str(timeout_s), "--iterations", "1000000",
         *(["--elastic"] if elastic else []), *(["--rejoin"] if rejoin else []),
         "--mbytes", str(mbytes), "--", sys.executable, "-m", "netstorm.runtime.demo"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=True)  # its own process group: killed as one at the end
    output = _Output(launcher, record.lines, after_iteration,
                     workers=len(load_topology(topology).workers))
    try:
        if not output.going.wait(start_deadline_s) or after_iteration not in output.seen \
                or launcher.poll() is not None:
            raise TrialError(f"no 'iteration {after_iteration}:' from {topology} within "
                             f"{start_deadline_s:g} s (launcher status {launcher.poll()}):\n"
                             + output.tail())
        last = output.seen[after_iteration]
        period = last - output.seen.get(after_iteration - 1, last)
        time.sleep(max(0.0, last + delay_fraction * period - time.monotonic()))
        pids = _sites(launcher.pid, len(sites))
        started = {pid: start_time(pid) for pid in pids}
        try:
            os.kill(pids[victim], how)
        except ProcessLookupError:
            raise TrialError(f"rank {victim} exited before the signal:\n"
                             + output.tail()) from None
        _follow(record, launcher, output, pids, started, elastic=elastic, rejoin=rejoin,
                limit=launcher_grace(timeout_s) + STOP_GRACE_S + 15)
    finally:
        kill_groups([launcher])
        output.close()
    said = [ln for ln in record.lines if ln.startswith("netstorm run:")]
    record.launcher_line = said[-1] if said else None
    for name in record.survivors:
        mine = [ln for ln in record.lines if ln.startswith(f"[{name}] stopped:")]
        if mine:
            record.stopped[name] = mine[-1][len(f"[{name}] "):]
            if _named(mine[-1], record.victim_site, victim):
                record.named_by.append(name)
    return record


class _Output:
    """The launcher's output, read on a thread: every line, when each iteration's line
    came, and when lines of iterations with fewer workers (and then all again) came."""

    PATTERN = re.compile(r"^\[[^\]]+\] iteration (\d+):")
    COUNTED = re.compile(r", (\d+) workers")

    def __init__(self, launcher: subprocess.Popen[str], lines: list[str], after: int, *,
                 workers: int) -> None:
        self.launcher = launcher
        self.lines = lines
        self.after = after
        self.workers = workers
        self.seen: dict[int, float] = {}  # iteration -> when its line arrived
        self.fewer: list[float] = []  # lines of iterations without every worker
        self.back: list[float] = []  # lines with every worker again (after fewer)
        self.going = threading.Event()  # iteration ``after`` printed, or the output ended
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.launcher.stdout is not None
        for line in self.launcher.stdout:
            self.lines.append(line.rstrip("\n"))
            found = self.PATTERN.match(line)
            if not found:
                continue
            now = time.monotonic()
            self.seen[int(found.group(1))] = now
            count = self.COUNTED.search(line)
            if count and int(count.group(1)) < self.workers:
                self.fewer.append(now)
            elif count and self.fewer:
                self.back.append(now)
            if int(found.group(1)) >= self.after:
                self.going.set()
        self.going.set()  # the output ended: the run is over, whatever it printed

    def tail(self) -> str:
        return "\n".join(self.lines[-15:])

    def close(self) -> None:
        self.thread.join(10)
        if self.launcher.stdout is not None:
            self.launcher.stdout.close()


def _sites(launcher: int, n: int) -> list[int]:
    """The launcher's site processes, by rank."""
    pids = children(launcher)
    by_rank = {r: p for p in pids if (r := rank_of(p)) is not None}
    if sorted(by_rank) != list(range(n)):
        raise TrialError(f"launcher's children {pids} have ranks {sorted(by_rank)}, "
                         f"expected 0..{n - 1}")
    return [by_rank[r] for r in range(n)]


def _follow(record: Trial, launcher: subprocess.Popen[str], output: _Output, pids: list[int],
            started: dict[int, int | None], *, elastic: bool, rejoin: bool,
            limit: float) -> None:
    """After the signal: until the run recovered (elastic) or the launcher exited, or
    ``limit`` seconds; fills ``record``'s timings, status and processes left behind."""
    hit = time.monotonic()
    others = [pid for r, pid in enumerate(pids) if r != record.victim]

    def all_gone() -> bool:
        return not any(alive(p, started[p]) for p in others)

    while time.monotonic() < hit + limit:
        now = time.monotonic()
        if elastic and output.fewer and (output.back or not rejoin):
            record.recovered_s = output.fewer[0] - hit
            record.rejoined_s = output.back[0] - hit if output.back else None
            break
        if record.others_stopped_s is None and all_gone():
            record.others_stopped_s = now - hit
        if launcher.poll() is not None:
            record.launcher_exit_s = now - hit
            break
        time.sleep(0.01)
    if launcher.poll() is not None:
        record.status = launcher.returncode
        if record.others_stopped_s is None and all_gone():
            record.others_stopped_s = record.launcher_exit_s
        record.left_behind = [p for p in pids if alive(p, started[p])]


def _summary(trials: list[Trial], sig: str, errors: int) -> dict[str, Any]:
    done = [t for t in trials if t.signal == sig]
    others = [t.others_stopped_s for t in done if t.others_stopped_s is not None]
    exits = [t.launcher_exit_s for t in done if t.launcher_exit_s is not None]
    return {"benchmark": "faults-summary", "signal": sig, "trials": len(done) + errors,
            "detected": sum(t.detected for t in done),
            "failed_to_start": errors,
            "others_stopped_median_s": statistics.median(others) if others else None,
            "others_stopped_worst_s": (max(others) if len(others) == len(done) else None),
            "launcher_exit_median_s": statistics.median(exits) if exits else None,
            "launcher_exit_worst_s": max(exits) if len(exits) == len(done) else None,
            "hung": sum(t.launcher_exit_s is None for t in done),
            "left_behind": sum(len(t.left_behind) for t in done)}


def run(quick: bool = False, *, seed: int = SEED, topology: str = TOPOLOGY,
        kills: int | None = None, stops: int | None = None,
        elastic: int | None = None) -> dict[str, Any]:
    """The benchmark: SIGKILL and SIGSTOP trials on random ranks at random points.

    Parameters
    ----------
    quick
        4 SIGKILL and 2 SIGSTOP trials instead of 20 and 5.
    seed
        Seeds the choice of rank and point in the iteration.
    topology
        The sites (default ``random:4:1``).
    kills, stops
        Override the number of SIGKILL and SIGSTOP trials.
    elastic
        SIGKILL trials of ranks other than 0 under ``--elastic --rejoin`` (default 10,
        quick 2): the seconds from the kill to the first iteration completed without the
        victim, and to the first with every worker again (the victim restarted, joined).

    Returns
    -------
    dict
        ``{"benchmark": "faults", "results": [one row per trial], "summary": [one row per
        signal: detected of trials, median and worst seconds from the signal to every
        other site stopped and to the launcher's exit, processes left behind]}``. A trial
        whose run never got going is a row with ``"error"`` and counts as not detected.
    """
    n_kill = kills if kills is not None else (4 if quick else 20)
    n_stop = stops if stops is not None else (2 if quick else 5)
    n_sites = load_topology(topology).n
    rng = random.Random(seed)
    plan = [(signal.SIGKILL, rng.randrange(n_sites), rng.random()) for _ in range(n_kill)]
    plan += [(signal.SIGSTOP, rng.randrange(n_sites), rng.random()) for _ in range(n_stop)]
    n_elastic = elastic if elastic is not None else (2 if quick else 10)
    plan += [(signal.SIGKILL, 1 + rng.randrange(n_sites - 1), rng.random())
             for _ in range(n_elastic)]
    trials: list[Trial] = []
    rows: list[dict[str, Any]] = []
    errors = {signal.SIGKILL.name: 0, signal.SIGSTOP.name: 0}
    recovered: list[float | None] = []
    rejoined: list[float | None] = []
    for i, (how, victim, frac) in enumerate(plan):
        goes_on = i >= n_kill + n_stop
        try:
            t = trial(topology, victim, how, delay_fraction=frac, timeout_s=TIMEOUT_S,
                      planner=PLANNER, mbytes=MBYTES, elastic=goes_on, rejoin=goes_on)
        except TrialError as exc:
            if not goes_on:
                errors[how.name] += 1
            rows.append({"benchmark": "faults", "trial": i, "signal": how.name,
                         "victim": victim, "delay_fraction": frac, "detected": False,
                         "error": str(exc).splitlines()[0]})
            continue
        if goes_on:
            recovered.append(t.recovered_s)
            rejoined.append(t.rejoined_s)
            rows.append({"benchmark": "faults-elastic", "trial": i, "victim": victim,
                         "delay_fraction": round(frac, 3), "recovered_s": t.recovered_s,
                         "rejoined_s": t.rejoined_s})
            print(f"bench faults: trial {i + 1}/{len(plan)}: elastic, SIGKILL rank {victim}: "
                  f"an iteration without it {t.recovered_s} s later, with it again (restarted"
                  f") {t.rejoined_s} s later", file=sys.stderr, flush=True)
            continue
        trials.append(t)
        row = t.row()
        rows.append({"benchmark": "faults", "trial": i, "signal": row["signal"],
                     "victim": row["victim"], "victim_site": row["victim_site"],
                     "delay_fraction": round(frac, 3), "detected": row["detected"],
                     "named_by": ",".join(row["named_by"]), "status": row["status"],
                     "others_stopped_s": row["others_stopped_s"],
                     "launcher_exit_s": row["launcher_exit_s"],
                     "left_behind": len(row["left_behind"]),
                     "launcher_line": row["launcher_line"], "stopped": row["stopped"]})
        print(f"bench faults: trial {i + 1}/{len(plan)}: {how.name} rank {victim}: "
              f"{'detected' if t.detected else 'NOT detected'}, others stopped in "
              f"{t.others_stopped_s} s", file=sys.stderr, flush=True)
    return {"benchmark": "faults", "topology": topology, "planner": PLANNER,
            "emulate": "none", "timeout_s": TIMEOUT_S, "mbytes": MBYTES, "seed": seed,
            "results": rows,
            "summary": [_summary(trials, sig, n) for sig, n in errors.items()]
            + [_elastic_summary(recovered, rejoined, n_elastic)]}


def _elastic_summary(recovered: list[float | None], rejoined: list[float | None],
                     trials: int) -> dict[str, Any]:
    seen = [r for r in recovered if r is not None]
    back = [r for r in rejoined if r is not None]
    return {"benchmark": "faults-summary", "signal": "SIGKILL (elastic)", "trials": trials,
            "detected": len(seen),
            "recovered_median_s": statistics.median(seen) if seen else None,
            "recovered_worst_s": max(seen) if len(seen) == trials else None,
            "rejoined": len(back),
            "rejoined_median_s": statistics.median(back) if back else None,
            "rejoined_worst_s": max(back) if len(back) == trials else None}
