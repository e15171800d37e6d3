"""``netstorm run``: real site processes on loopback, torchrun-style environment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

NETSTORM = [sys.executable, "-m", "netstorm"]
LINE = """
name: line
units: {bandwidth: Gbit/s, latency: ms}
sites: [{name: a}, {name: r, worker: false}, {name: b}]
links:
  - {src: a, dst: r, bandwidth: 1, latency: 1, symmetric: true}
  - {src: r, dst: b, bandwidth: 1, latency: 1, symmetric: true}
"""


def run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETSTORM, "run", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_allreduce_check_runs_a_process_per_site_and_checks_results(tmp_path: Path) -> None:
    # a relay-only site among the workers: its process relays inside init() and exits 0
    topo = tmp_path / "line.yaml"
    topo.write_text(LINE)
    done = run("--topology", str(topo), "--planner", "ring", "--iterations", "2",
               "--mbytes", "1", "--emulate", "none", "--log-dir", str(tmp_path / "logs"),
               "--json", "--", sys.executable, "-m", "netstorm.runtime.demo")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert doc["planner"] == "ring" and doc["accuracy"] is None
    assert len(doc["iterations"]) == 2
    assert all(row["time_s"] > 0 and row["plan_version"] >= 1 for row in doc["iterations"])
    assert doc["bytes"].get("a->r", 0) > 0 and doc["bytes"].get("r->b", 0) > 0  # relayed
    assert "[a] iteration 1" in done.stderr  # children's output, prefixed by site
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "a.jsonl", "b.jsonl", "r.jsonl"]


def test_without_a_script_it_trains_ddp_through_the_hook(tmp_path: Path) -> None:
    topo = tmp_path / "line.yaml"
    topo.write_text(LINE)
    done = run("--topology", str(topo), "--iterations", "10", "--emulate", "none", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert len(doc["iterations"]) == 10 and doc["accuracy"] > 0.3  # chance is 0.1
    assert doc["bytes"].get("a->r", 0) > 0  # the gradients went through the relay
    assert "[a] step 10/10: loss" in done.stderr


def test_the_first_failing_site_stops_the_others_and_sets_the_status(tmp_path: Path) -> None:
    marker = f"netstorm-test-{time.time_ns()}"
    script = ("import os, sys, time; rank = int(os.environ['RANK']); "
              f"tag = '{marker}'; time.sleep(0.5 if rank == 1 else 60); "
              "sys.exit(3 if rank == 1 else 0)")
    started = time.monotonic()
    done = run("--topology", "random:3:1", "--timeout", "5", "--", sys.executable, "-c", script)
    assert done.returncode == 3
    assert time.monotonic() - started < 30  # the sleepers were stopped, not waited for
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps  # no child left behind


def test_a_plan_file_runs_as_it_is(tmp_path: Path) -> None:
    # a parameter server on r0 alone: every byte crosses a link of r0, which the default
    # planner (treepack) would not do
    made = subprocess.run([*NETSTORM, "plan", "-t", "random:3:1", "-p", "ps", "-o",
                           "servers=1", "--json"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    plan_file = tmp_path / "ps1.json"
    plan_file.write_text(made.stdout)
    done = run("--topology", "random:3:1", "--plan", str(plan_file), "--iterations", "2",
               "--mbytes", "1", "--emulate", "none", "--json", "--", sys.executable, "-m",
               "netstorm.runtime.demo")
    assert done.returncode == 0, done.stderr[-2000:]  # (the demo checks every result)
    doc = json.loads(done.stdout)
    assert doc["planner"] == str(plan_file) and len(doc["iterations"]) == 2
    used = {link for link, n in doc["bytes"].items() if n > 0}
    assert used and all("r0" in link for link in used), used


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = run("--topology", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nope.yaml" in missing.stderr
    topo = tmp_path / "bad.yaml"
    topo.write_text("sites: [{name: a}, {name: b}]\n"
                    "links: [{src: a, dst: c, bandwidth: 1 Gbit/s}]\n")
    unknown = run("--topology", str(topo))
    assert unknown.returncode == 2
    assert "c" in unknown.stderr and unknown.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(("args", "named"), [
    (("--planner", "nope"), "unknown planner 'nope'"),
    (("--planner", "ps,nope", "--target", "0.5"), "unknown planner 'nope'"),
    (("--timeout", "-1"), "--timeout"),
    (("--timeout", "abc"), "--timeout"),
    (("--time-scale", "0"), "--time-scale"),
    (("--iterations", "0"), "--iterations"),
    (("--mbytes", "0"), "--mbytes"),
    (("--procs-per-site", "0"), "--procs-per-site"),
    (("--dynamics", "bogus"), "unknown kind 'bogus'"),
    (("--dynamics", "scale:1s:a->zz:0.5"), "unknown site 'a'"),
    (("--wire", "fp8"), "--wire"),
    (("--emulate", "carrier-pigeon"), "--emulate"),
    (("--policy", "nope"), "--policy"),
])
def test_every_bad_argument_is_one_line_and_exit_2(args: tuple[str, ...], named: str) -> None:
    done = run("--topology", "random:3:1", *args, "--", sys.executable, "-c", "pass",
               timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0 and named in done.stderr, done.stderr


def test_the_same_script_runs_under_torchrun(tmp_path: Path) -> None:
    """torchrun's agent holds MASTER_PORT for its own store: the coordinator takes the next
    port, and the demo (the script netstorm run starts) runs unchanged."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, NETSTORM_SECRET="torchrun-test", NETSTORM_EMULATE="none")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
         "--master-port", str(port), "-m", "netstorm.runtime.demo", "--topology",
         "random:3:1", "--iterations", "2", "--mbytes", "1"],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "iteration 1:" in done.stdout


def test_a_script_gets_its_topology_and_planner_from_netstorm_run(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import numpy as np, netstorm.runtime as nr\n"
                      "site = nr.init()\n"
                      "x = np.full(1000, float(site.rank), np.float32)\n"
                      "site.allreduce(x)\n"
                      "print('got', site.plan.planner, x[0], x[-1], flush=True)\n"
                      "site.close()\n")
    done = run("--topology", "random:3:1", "--planner", "ring", "--emulate", "none", "--",
               sys.executable, str(script))
    assert done.returncode == 0, done.stdout[-2000:]
    assert done.stdout.count("got ring 1.0 1.0") == 3  # the mean of ranks 0, 1, 2


def test_several_planners_run_the_experiment_with_the_simulator_beside_it(
        tmp_path: Path) -> None:
    fig = tmp_path / "fig.png"
    done = run("--topology", "random:3:1", "-p", "ring,treepack", "--iterations", "6",
               "--target", "0.3", "--plot", str(fig), "--json", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert [r["planner"] for r in doc["runs"]] == ["ring", "treepack"]
    for r in doc["runs"]:
        assert r["steps"] == 6 and len(r["accuracy"]) == 6 and None not in r["accuracy"]
        assert r["time_s"] == sorted(r["time_s"]) and len(r["sim_time_s"]) == 6
        assert r["compute_s"] > 0 and sum(r["buckets"]) == 4 * 1_126_410  # the MLP's grads
        assert r["time_to_target_s"] is not None and r["sim_time_to_target_s"] is not None
    assert set(doc["ratios"]) == {"treepack vs ring"}
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_an_experiment_runs_the_built_in_training_only() -> None:
    done = run("--topology", "random:3:1", "-p", "ring,treepack", "--", sys.executable,
               "-c", "pass")
    assert done.returncode == 2 and "built-in training" in done.stderr
