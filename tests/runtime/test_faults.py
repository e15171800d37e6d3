"""A site lost mid-run, through ``netstorm run`` with real processes: killed (SIGKILL) or
stopped (SIGSTOP: alive, holding its sockets open, saying nothing). Every other site must
stop by itself, naming the lost site, within the timeout plus 5 s; the launcher exits
non-zero naming it and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 6.0  # silence_limit: 3 s, well before a collective times out
TRIANGLE = """
name: triangle
units: {bandwidth: Gbit/s, latency: ms}
sites: [{name: a}, {name: b}, {name: c}]
links:
  - {src: a, dst: b, bandwidth: 1, latency: 1, symmetric: true}
  - {src: b, dst: c, bandwidth: 1, latency: 1, symmetric: true}
  - {src: a, dst: c, bandwidth: 1, latency: 1, symmetric: true}
"""


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def lose_a_site(tmp_path: Path, victim: int, how: signal.Signals
                ) -> tuple[int, list[str], float]:
    """Run the all-reduce check on 3 sites, send ``how`` to rank ``victim`` once iterations
    are going; return the launcher's status, its output lines, and the seconds from the
    signal to the launcher's exit."""
    topo = tmp_path / "triangle.yaml"
    topo.write_text(TRIANGLE)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "netstorm", "run", "--topology", str(topo), "--planner", "ring",
         "--emulate", "none", "--timeout", str(TIMEOUT_S), "--iterations", "100000",
         "--mbytes", "0.5", "--", sys.executable, "-m", "netstorm.runtime.demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    going = threading.Event()

    def read() -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            lines.append(line.rstrip("\n"))
            if "iteration 5:" in line:
                going.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert going.wait(60), "\n".join(lines[-20:])
        sites = children(launcher.pid)
        assert len(sites) == 3
        os.kill(sites[victim], how)
        hit = time.monotonic()
        status = launcher.wait(TIMEOUT_S + 5 + 15)
        took = time.monotonic() - hit
        reader.join(5)
        ps = subprocess.run(["ps", "-o", "pid=", "-p", ",".join(map(str, sites))],
                            capture_output=True, text=True).stdout.split()
        assert ps == [], f"site processes left behind: {ps}"
        return status, lines, took
    finally:
        if launcher.poll() is None:
            for pid in children(launcher.pid):
                os.kill(pid, signal.SIGKILL)
            launcher.kill()
            launcher.wait()


@pytest.mark.parametrize("victim", [1, 0])  # a site, and the coordinator's
def test_a_killed_site_is_named_by_every_other_site(tmp_path: Path, victim: int) -> None:
    name = "abc"[victim]
    status, lines, took = lose_a_site(tmp_path, victim, signal.SIGKILL)
    assert status == 128 + signal.SIGKILL
    last = [ln for ln in lines if ln.startswith("netstorm run:")]
    assert last == [f"netstorm run: site {name} (rank {victim}) was killed by SIGKILL; "
                    f"every other site stopped within {last[0].rsplit(' ', 2)[1]} s"], lines[-8:]
    for other in set("abc") - {name}:
        said = [ln for ln in lines if ln.startswith(f"[{other}] stopped:")]
        # "site b (rank 1, ...)", or "the coordinator (site a, rank 0)"
        assert len(said) == 1 and re.search(rf"site {name}\W+rank {victim}\b", said[0]), \
            lines[-8:]
    assert took < TIMEOUT_S + 5


@pytest.mark.parametrize("victim", [2, 0])
def test_a_stopped_site_is_named_after_its_silence(tmp_path: Path, victim: int) -> None:
    name = "abc"[victim]
    status, lines, took = lose_a_site(tmp_path, victim, signal.SIGSTOP)
    assert status == 1
    for other in set("abc") - {name}:
        said = [ln for ln in lines if ln.startswith(f"[{other}] stopped:")]
        assert len(said) == 1, lines[-8:]
        assert re.search(rf"site {name}\W+rank {victim}\)? sent nothing for", said[0]), said
    last = [ln for ln in lines if ln.startswith("netstorm run:")]
    assert len(last) == 1 and f"site {name} (rank {victim}) still running" in last[0]
    # the others stopped by themselves in silence_limit (3 s) + 1 s; the launcher then
    # waits out its grace (timeout + 5 s) for the stopped one and kills it
    assert took < 2 * TIMEOUT_S + 5 + 5
