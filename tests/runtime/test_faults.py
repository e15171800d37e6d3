"""A site lost mid-run, through ``netstorm run`` with real processes: killed (SIGKILL) or
stopped (SIGSTOP: alive, holding its sockets open, saying nothing). Every other site must
stop by itself, naming the lost site, within the timeout plus 5 s; the launcher exits
non-zero naming it and leaves no process behind."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from netstorm.cli.bench.faults import Trial, trial

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


def lose_a_site(tmp_path: Path, victim: int, how: signal.Signals) -> Trial:
    """Run the all-reduce check on 3 sites, send ``how`` to rank ``victim`` once iterations
    are going (:func:`netstorm.cli.bench.faults.trial`); no site process may be left."""
    topo = tmp_path / "triangle.yaml"
    topo.write_text(TRIANGLE)
    record = trial(str(topo), victim, how, timeout_s=TIMEOUT_S, planner="ring", mbytes=0.5,
                   after_iteration=5)
    assert record.status is not None, record.lines[-20:]
    assert record.left_behind == [], f"site processes left behind: {record.left_behind}"
    return record


@pytest.mark.parametrize("victim", [1, 0])  # a site, and the coordinator's
def test_a_killed_site_is_named_by_every_other_site(tmp_path: Path, victim: int) -> None:
    name = "abc"[victim]
    record = lose_a_site(tmp_path, victim, signal.SIGKILL)
    lines = record.lines
    assert record.status == 128 + signal.SIGKILL
    last = [ln for ln in lines if ln.startswith("netstorm run:")]
    assert last == [f"netstorm run: site {name} (rank {victim}) was killed by SIGKILL; "
                    f"every other site stopped within {last[0].rsplit(' ', 2)[1]} s"], lines[-8:]
    assert record.launcher_line == last[0]
    for other in set("abc") - {name}:
        said = [ln for ln in lines if ln.startswith(f"[{other}] stopped:")]
        # "site b (rank 1, ...)", or "the coordinator (site a, rank 0)"
        assert len(said) == 1 and re.search(rf"site {name}\W+rank {victim}\b", said[0]), \
            lines[-8:]
    assert sorted(record.named_by) == sorted(set("abc") - {name}) and record.detected
    assert record.launcher_exit_s is not None and record.launcher_exit_s < TIMEOUT_S + 5
    assert record.others_stopped_s is not None
    assert record.others_stopped_s <= record.launcher_exit_s


@pytest.mark.parametrize("victim", [2, 0])
def test_a_stopped_site_is_named_after_its_silence(tmp_path: Path, victim: int) -> None:
    name = "abc"[victim]
    record = lose_a_site(tmp_path, victim, signal.SIGSTOP)
    lines = record.lines
    assert record.status == 1
    for other in set("abc") - {name}:
        said = [ln for ln in lines if ln.startswith(f"[{other}] stopped:")]
        assert len(said) == 1, lines[-8:]
        assert re.search(rf"site {name}\W+rank {victim}\)? sent nothing for", said[0]), said
    last = [ln for ln in lines if ln.startswith("netstorm run:")]
    assert len(last) == 1 and f"site {name} (rank {victim}) still running" in last[0]
    assert record.detected
    # the others stopped by themselves in silence_limit (3 s) + 1 s; the launcher then
    # waits out its grace (timeout + 5 s) for the stopped one and kills it
    assert record.others_stopped_s is not None and record.others_stopped_s < TIMEOUT_S + 5
    assert record.launcher_exit_s is not None and record.launcher_exit_s < 2 * TIMEOUT_S + 5 + 5
