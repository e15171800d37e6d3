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
import torch
from netstorm.runtime import Site
from netstorm.runtime.elastic import ElasticSite, without
from netstorm.runtime.procs import children

from netstorm import NetworkView
from netstorm.builtin_topologies import builtin
from netstorm.errors import NetstormError, PeerError
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


@pytest.mark.parametrize("view_name", ["random:3:1", "mesh with a relay"])
def test_a_site_that_left_joins_again_with_the_workers_state(view_name: str) -> None:
    # SGD on a float32 "model": each step all-reduces every worker's gradient and applies
    # it. Site 2 leaves at step 3, the others go on; it comes back as a newcomer, gets the
    # workers' state and step at a boundary, and trains with them to the end
    view = mesh_with_a_relay() if view_name == "mesh with a relay" else builtin(view_name)
    port, victim, steps, leaves_at = free_port(), 2, 14, 3

    def make(cfg, v):  # type: ignore[no-untyped-def]
        return Site(cfg, v, "treepack")

    sites: dict[int, ElasticSite] = {}

    def one(rank: int) -> tuple[list[tuple[int, tuple[str, ...]]], np.ndarray, dict] | None:
        site = sites[rank] = ElasticSite(config(view, rank, port, elastic=True,
                                                timeout_s=20.0), view, make)
        if not site.is_worker:
            site.serve()
            return None
        state = np.zeros(NUMEL, dtype=np.float32)
        trace: list[tuple[int, tuple[str, ...]]] = []
        step = 0
        while step < steps:
            if rank == victim and step == leaves_at and not trace[-1:] == [(-1, ())]:
                site.site.abandon()  # as a killed process
                trace.append((-1, ()))
                site = ElasticSite(config(view, rank, port, elastic=True, join=True,
                                          timeout_s=20.0), view, make)
                state = np.full(NUMEL, np.nan, dtype=np.float32)  # nothing of its own
                step = site.admit(state, 0)
            else:
                if step == leaves_at + 1:  # the others hold on until it knocked (a short
                    deadline = time.monotonic() + 30  # run would end before it is back)
                    while not sites[0].waiting and time.monotonic() < deadline:
                        time.sleep(0.01)
                step = site.admit(state, step)
            g = grad(site.name, step)
            site.allreduce(g)
            state -= np.float32(0.1) * g
            v = site.view
            trace.append((step, tuple(v.sites[w] for w in v.workers)))
            step += 1
        stats = site.stats()
        site.close()
        return trace, state, stats

    results = {r: res for r, res in in_threads(view.n, one, timeout=120).items()
               if res is not None}
    finals = [res[1] for res in results.values()]
    assert all(np.array_equal(f, finals[0]) for f in finals[1:])  # bit-identical, newcomer too
    trace = results[0][0]
    assert [s for s, _ in trace] == list(range(steps))
    name = view.sites[victim]
    without_it = [s for s, members in trace if name not in members]
    assert without_it and without_it[0] == leaves_at  # it left, then the others went on
    back = without_it[-1] + 1
    assert back < steps and all(name in m for s, m in trace if s >= back)  # it came back
    came = [s for s, _ in results[victim][0] if s >= 0]
    assert came == list(range(leaves_at)) + list(range(back, steps))
    # oracle: numpy's SGD over the members of each step
    want = np.zeros(NUMEL, dtype=np.float32)
    for s, members in trace:
        mean = np.mean([grad(n, s) for n in members], axis=0, dtype=np.float64)
        want -= np.float32(0.1) * mean.astype(np.float32)
    np.testing.assert_allclose(finals[0], want, rtol=0, atol=1e-5)
    assert [j["joined"] for j in results[0][2]["joins"]] == [[name]]
    assert [loss["lost"] for loss in results[0][2]["losses"]] == [[name]]


def test_a_stranger_or_a_member_cannot_enter() -> None:
    view = builtin("random:3:1")
    port = free_port()
    entered = threading.Event()

    def make(cfg, v):  # type: ignore[no-untyped-def]
        return Site(cfg, v, "treepack")

    def one(rank: int) -> str | None:
        # (a member's knock waits for its old self to be found gone: the silence limit)
        site = ElasticSite(config(view, rank, port, elastic=True, timeout_s=4.0), view, make)
        try:
            if rank == 2:  # a member knocking as itself, then a site of another topology
                said = []
                for v in (view, builtin("random:3:2")):
                    try:
                        ElasticSite(config(v, 1, port, elastic=True, join=True,
                                           timeout_s=5.0), v, make)
                    except PeerError as exc:
                        said.append(str(exc))
                entered.set()
                return " | ".join(said)
            while not entered.is_set():  # training goes on meanwhile, undisturbed
                site.admit(np.zeros(4, dtype=np.float32), 0)
                site.allreduce(np.ones(1000, dtype=np.float32))
            return None
        finally:
            site.close() if rank != 2 else site.site.abandon()

    said = in_threads(view.n, one, timeout=60)[2]
    assert "refused by rank 0: site r1 is in the run" in said, said
    assert "another topology" in said, said


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


def test_a_killed_site_rejoins_ddp_training_with_the_workers_state(tmp_path: Path) -> None:
    # --rejoin restarts the killed site; it joins at a step boundary, receives the
    # parameters and momentum, and ends with the others' bytes
    saved = tmp_path / "params"
    status, lines, doc = netstorm_run(
        tmp_path, 1, sys.executable, "-m", "netstorm.runtime.train", "--steps", "400",
        "--eval-every", "20", "--save", str(saved), after="step 20/400",
        extra=("--iterations", "400", "--rejoin"))
    assert status == 0, "\n".join(ln for ln in lines if "step" not in ln)
    assert [d["site"] for d in doc["lost"]] == ["site r1 (rank 1)"]
    assert [d["site"] for d in doc["rejoined"]] == ["site r1 (rank 1)"]
    joined = [ln for ln in lines if "[r1] site r1: joined at step" in ln]
    assert len(joined) == 1, lines[-10:]
    assert int(joined[0].split("joined at step ")[1].split()[0]) < 400
    params = [torch.load(saved / f"{r}.pt") for r in range(3)]
    for p in params[1:]:
        assert all(torch.equal(p[k], params[0][k]) for k in p)
    assert doc["accuracy"] > 0.9


def test_a_lost_coordinator_stops_the_run_naming_it(tmp_path: Path) -> None:
    status, lines, doc = netstorm_run(
        tmp_path, 0, sys.executable, "-m", "netstorm.runtime.demo", after="iteration 5:",
        extra=("--iterations", "100000", "--mbytes", "1"))
    assert status != 0 and doc["lost"] == []
    said = [ln for ln in lines if "stopped:" in ln]
    assert len(said) == 2 and all("site r0" in ln and "rank 0" in ln for ln in said), said
