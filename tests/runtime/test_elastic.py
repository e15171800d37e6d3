"""Elastic runs: a site leaves mid-run and the others go on without it.

In threads (fast): a site abandons the run between collectives or with collectives in
flight, as a killed process does (its sockets close); the survivors agree it left, redo what
was not confirmed everywhere and go on, exact over the surviving workers (numpy's mean) and
bit-identical. Through ``netstorm run --elastic`` (real processes): a SIGKILLed site leaves,
the all-reduce check and DDP training finish on the others; a lost coordinator stops the run
naming it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from netstorm.runtime import Site
from netstorm.runtime.bench_faults import children
from netstorm.runtime.elastic import ElasticSite, without

from netstorm import NetworkView
from netstorm.builtin_topologies import builtin
from netstorm.errors import NetstormError
from netstorm.testing import conformance_views
from tests.runtime.harness import config, free_port, in_threads

pytestmark = pytest.mark.timeout(150)
NUMEL = 50_000


def grad(name: str, it: int) -> np.ndarray:
    return np.random.default_rng((sum(map(ord, name)), it)).standard_normal(
        NUMEL, dtype=np.float32)


def test_without_keeps_the_others_in_order() -> None:
    view = builtin("random:5:1")
    less = without(view, (1, 3))
    assert less.sites == (view.sites[0], view.sites[2], view.sites[4])
    np.testing.assert_array_equal(less.capacity, view.capacity[np.ix_([0, 2, 4], [0, 2, 4])])
    assert less.workers == (0, 1, 2)
    with pytest.raises(NetstormError, match="every site"):
        without(view, tuple(range(5)))
    line = next(v for v in conformance_views() if v.name == "relay-line")
    relay = next(r for r in range(line.n) if r not in line.workers)
    with pytest.raises(NetstormError, match="cannot reach"):
        without(line, (relay,))


def mesh_with_a_relay() -> NetworkView:
    view = builtin("random:4:1")
    return dataclasses.replace(view, workers=(0, 1, 2), _graph_cache={})


@pytest.mark.parametrize(("view_name", "victim", "in_flight"),
                         [("random:4:1", 2, False), ("random:4:1", 3, True),
                          ("mesh with a relay", 3, True)])
def test_survivors_redo_and_go_on_exact(view_name: str, victim: int, in_flight: bool) -> None:
    view = mesh_with_a_relay() if view_name == "mesh with a relay" else builtin(view_name)
    port = free_port()
    iterations, dies_at = 8, 3
    died = threading.Event()

    def make(cfg, v):  # type: ignore[no-untyped-def]
        return Site(cfg, v, "treepack")

    def one(rank: int) -> list[tuple[tuple[str, ...], np.ndarray]] | None:
        site = ElasticSite(config(view, rank, port, elastic=True, timeout_s=20.0), view, make)
        name = site.name
        if not site.is_worker:
            if rank == victim:
                died.wait(30)  # a relay dies once the others are under way
                site.site.abandon()
                return None
            site.serve()
            return None
        out = []
        try:
            for it in range(iterations):
                if rank == victim and it == dies_at:
                    if in_flight:  # mid-collective: its partners wait on its frames
                        site.allreduce_async(grad(name, it))
                        time.sleep(0.05)
                    site.site.abandon()  # as a killed process: sockets closed, no goodbye
                    died.set()
                    return None
                if it == dies_at and victim not in view.workers:
                    died.set()
                buf = grad(name, it)
                site.allreduce(buf)
                v = site.view
                out.append((tuple(v.sites[w] for w in v.workers), buf))
            # stats span the memberships (a caller reading the last row after a recovery
            # found the new site's empty list)
            assert len(site.stats()["collectives"]) >= iterations
            return out
        finally:
            if rank != victim:
                site.close()

    results = in_threads(view.n, one, timeout=120)
    survivors = {r: res for r, res in results.items() if res is not None}
    assert len(survivors) == len(view.workers) - (victim in view.workers)
    for it in range(iterations):
        members = {res[it][0] for res in survivors.values()}
        assert len(members) == 1  # every survivor took the same membership for it
        workers = members.pop()
        lost = view.sites[victim]
        if not (in_flight and it == dies_at):  # (in flight, it may have finished everywhere
            assert (lost in workers) == (it < dies_at and victim in view.workers)  # first)
        want = np.mean([grad(n, it) for n in workers], axis=0, dtype=np.float64)
        first = next(iter(survivors.values()))[it][1]
        np.testing.assert_allclose(first, want, rtol=0, atol=2e-6)
        for res in survivors.values():
            assert np.array_equal(res[it][1], first)


def test_a_lost_relay_that_disconnects_the_others_fails_every_survivor_clearly() -> None:
    view = next(v for v in conformance_views() if v.name == "relay-line")
    relay = next(r for r in range(view.n) if r not in view.workers)
    port = free_port()

    def make(cfg, v):  # type: ignore[no-untyped-def]
        return Site(cfg, v, "treepack")

    def one(rank: int) -> str | None:
        site = ElasticSite(config(view, rank, port, elastic=True, timeout_s=20.0), view, make)
        if rank == relay:
            time.sleep(0.5)
            site.site.abandon()
            return None
        try:
            for it in range(1000):
                site.allreduce(grad(site.name, it))
        except NetstormError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            site.site.abandon()
        return "never failed"

    said = [s for s in in_threads(view.n, one, timeout=60).values() if s is not None]
    assert len(said) == len(view.workers)
    assert all("the run cannot go on" in s and "cannot reach" in s for s in said), said


def netstorm_run(tmp_path: Path, victim: int, *script: str, after: str,
                 extra: tuple[str, ...] = ()) -> tuple[int, list[str], dict]:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "netstorm", "run", "--topology", "random:3:1", "--elastic",
         "--emulate", "none", "--timeout", "8", "--json", *extra, "--", *script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert launcher.stderr is not None
        for line in launcher.stderr:
            lines.append(line.rstrip("\n"))
            if after in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(90), "\n".join(lines[-20:])
        kids = children(launcher.pid)
        subprocess.run(["kill", "-9", str(kids[victim])], check=True)
        assert launcher.stdout is not None
        out = launcher.stdout.read()  # (communicate() would race the reader for stderr)
        launcher.wait(120)
        reader.join(5)
        return launcher.returncode, lines, json.loads(out)
    finally:
        if launcher.poll() is None:
            for pid in children(launcher.pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
            launcher.kill()
            launcher.wait()


def test_netstorm_run_elastic_checks_every_result_without_the_killed_site(
        tmp_path: Path) -> None:
    status, lines, doc = netstorm_run(
        tmp_path, 2, sys.executable, "-m", "netstorm.runtime.demo", after="iteration 10:",
        extra=("--iterations", "60", "--mbytes", "1", "--planner", "ring"))
    assert status == 0, lines[-15:]  # the demo exits 1 on any result off numpy's mean
    assert [d["site"] for d in doc["lost"]] == ["site r2 (rank 2)"]
    assert any("iteration 59:" in ln and "2 workers" in ln for ln in lines), lines[-5:]
    assert sum("the run goes on without it" in ln for ln in lines) == 2


def test_ddp_training_goes_on_after_a_kill(tmp_path: Path) -> None:
    status, lines, doc = netstorm_run(
        tmp_path, 1, sys.executable, "-m", "netstorm.runtime.train", "--steps", "60",
        "--width", "64", "--eval-every", "20", after="step 20/60", extra=("--iterations", "60"))
    assert status == 0, "\n".join(ln for ln in lines if "step" not in ln)
    assert [d["site"] for d in doc["lost"]] == ["site r1 (rank 1)"]
    assert any("step 60/60" in ln for ln in lines), lines[-5:]
    assert doc["accuracy"] > 0.5


def test_a_lost_coordinator_stops_the_run_naming_it(tmp_path: Path) -> None:
    status, lines, doc = netstorm_run(
        tmp_path, 0, sys.executable, "-m", "netstorm.runtime.demo", after="iteration 5:",
        extra=("--iterations", "100000", "--mbytes", "1"))
    assert status != 0 and doc["lost"] == []
    said = [ln for ln in lines if "stopped:" in ln]
    assert len(said) == 2 and all("site r0" in ln and "rank 0" in ln for ln in said), said
