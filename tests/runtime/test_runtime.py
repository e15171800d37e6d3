"""The TCP runtime end to end on loopback: every site a :class:`~netstorm.runtime.Site` in
its own thread (the same code as one process per site, without paying each process's start),
numpy's mean as the oracle; the launcher's multi-process path in test_launch.py."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from netstorm.runtime import Site, wire
from netstorm.runtime.engine import ARENA_POOL
from netstorm.runtime.links import connect
from netstorm.runtime.versions import KEEP_VERSIONS

from netstorm import NetworkView
from netstorm.builtin_topologies import builtin
from netstorm.errors import NetstormError, PeerError
from netstorm.planners import BUILTIN
from netstorm.registry import plan
from netstorm.testing import conformance_views
from tests.runtime.harness import SECRET, config, data_header, free_port, run_sites

pytestmark = pytest.mark.timeout(120)

def grads(view: NetworkView, numel: int, it: int = 0) -> dict[int, np.ndarray]:
    return {w: np.random.default_rng((w, it)).standard_normal(numel, dtype=np.float32)
            for w in view.workers}


def check_exact(view: NetworkView, results: dict[int, list[np.ndarray]], numel: int) -> None:
    iterations = len(next(iter(results.values())))
    for it in range(iterations):
        g = grads(view, numel, it)
        want = np.mean([g[w] for w in view.workers], axis=0, dtype=np.float64)
        first = results[view.workers[0]][it]
        np.testing.assert_allclose(first, want, rtol=0, atol=2e-6)
        for w in view.workers:
            assert np.array_equal(results[w][it], first), f"worker {w} differs"


def allreduce_loop(view: NetworkView, numel: int, iterations: int) -> Callable[[Site], Any]:
    def body(site: Site) -> list[np.ndarray]:
        out = []
        for it in range(iterations):
            buf = grads(view, numel, it)[site.rank]
            site.allreduce(buf)
            out.append(buf)
        return out
    return body


def relay_line() -> NetworkView:
    """5 sites on a line, the middle one relay-only: every plan must relay through it."""
    return next(v for v in conformance_views() if v.name == "relay-line")


VIEWS = {"netstorm9": lambda: builtin("netstorm9"), "random4": lambda: builtin("random:4:1"),
         "relay-line": relay_line}


@pytest.mark.parametrize("topology", sorted(VIEWS))
@pytest.mark.parametrize("planner", sorted(BUILTIN))
def test_every_planner_is_exact_and_bit_identical(topology: str, planner: str) -> None:
    view = VIEWS[topology]()
    numel = 40_000  # 160 kB in 16 kB chunks: several chunks per shard, relays, multipath
    results = run_sites(view, planner, allreduce_loop(view, numel, 2),
                        site_kw={"chunk_bytes": 16_000, "policy": "static"})
    check_exact(view, results, numel)


def test_the_runtime_runs_the_netstorm_plan_with_its_queue_rule() -> None:
    view = builtin("netstorm9")
    numel = 400_000

    def body(site: Site) -> Any:
        assert site.plan is None  # no collective yet
        out = allreduce_loop(view, numel, 2)(site)
        return out, site.plan, site.stats()["diverted"]

    results = run_sites(view, "netstorm", body, site_kw={"chunk_bytes": 16_000},
                        emulate="inprocess", time_scale=1.0)  # slow links: queues build
    check_exact(view, {w: r[0] for w, r in results.items()}, numel)
    plans = {r[1].to_json() for r in results.values()}
    assert len(plans) == 1  # every site planned the same
    plan = results[0][1]
    assert plan.route_rule is not None and any(len(r.paths) > 1
                                               for s in plan.shards for r in s.routes)
    assert sum(r[2] for r in results.values()) > 0  # drained auxiliary links took chunks


def test_forced_replans_every_iteration_stay_exact() -> None:
    view = builtin("random:4:1")
    numel, iterations = 20_000, 30

    def body(site: Site) -> tuple[list[np.ndarray], dict[str, Any], tuple[int, int]]:
        out = allreduce_loop(view, numel, iterations)(site)
        # what a site keeps must not grow with the versions (a soak of 228 re-plans grew
        # every site by 1-3 GB): a bounded pool of arenas, the last few versions' plans
        return out, site.stats(), (len(site.engine.free_arenas), len(site.versions._plans))

    results = run_sites(view, "treepack", body,
                        site_kw={"policy": "every-iteration", "window": 2,
                                 "chunk_bytes": 16_000})
    check_exact(view, {w: r[0] for w, r in results.items()}, numel)
    for _, _, (arenas, plans) in results.values():
        assert arenas <= ARENA_POOL and plans <= KEEP_VERSIONS + 2, (arenas, plans)
    stats = {w: r[1] for w, r in results.items()}
    versions = [row["plan_version"] for row in stats[0]["collectives"]]
    assert versions == sorted(versions) and versions[-1] >= iterations - 4, versions
    for w in view.workers:  # every site ran every collective under the same version
        assert [row["plan_version"] for row in stats[w]["collectives"]] == versions


def test_world_size_must_match_the_topology() -> None:
    view = builtin("random:4:1")
    cfg = dataclasses.replace(config(view, 0, free_port()), world_size=3)
    with pytest.raises(NetstormError, match="WORLD_SIZE is 3 but topology"):
        Site(cfg, view, "ring")


def test_a_port_in_use_is_a_clear_error() -> None:
    view = builtin("random:4:1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(PeerError, match=f"cannot listen on 127.0.0.1:{port}"):
            Site(config(view, 0, port), view, "ring")


@pytest.mark.parametrize("override, error, match", [
    ({"secret": b"wrong"}, PeerError, "authentication failed"),
    ({"wire": "fp16"}, NetstormError, "wire fp16 vs fp32"),
])
def test_a_site_that_disagrees_with_rank_0_cannot_join(override: dict[str, Any],
                                                      error: type, match: str) -> None:
    view = builtin("random:2:1")
    port = free_port()
    box: dict[str, Any] = {}

    def coordinator() -> None:
        try:
            Site(config(view, 0, port, timeout_s=3.0), view, "ring")
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=coordinator, daemon=True)
    t.start()
    with pytest.raises(error, match=match):
        Site(config(view, 1, port, timeout_s=3.0, **override), view, "ring")
    t.join(timeout=10)
    assert isinstance(box.get("error"), NetstormError)  # nobody joined: a clear error


@pytest.mark.parametrize("damage", ["checksum", "oversize", "version"])
def test_a_bad_frame_fails_the_collective_with_its_cause(damage: str) -> None:
    """A peer holding the secret sends a damaged frame: the receiving site names the cause,
    every site's all-reduce raises instead of hanging."""
    view = builtin("random:2:1")
    numel = 1000

    def body(site: Site) -> str:
        if site.rank == 1:
            conn = connect(site.sender.addresses[0], rank=1, secret=SECRET, timeout=5,
                           name="forger")
            conn.send_control({"type": "data"})
            message, elems = site_message(site, numel)
            payload = np.ones(elems, np.float32)
            header = data_header(message, payload, plan_version=1, seq=0, numel=numel)
            if damage == "checksum":
                header = dataclasses.replace(header, checksum=header.checksum ^ 1)
            elif damage == "version":  # a frame of another plan version: never mixed in
                header = dataclasses.replace(header, plan_version=7)
            else:
                header = dataclasses.replace(header, length=2 << 30)
            conn.write(wire.pack_header(header))
            conn.write(memoryview(payload).cast("B"))
            time.sleep(0.5)  # the forged frame lands before the genuine one could win the race
        try:
            site.allreduce(np.ones(numel, np.float32))
        except NetstormError as exc:
            return str(exc)
        return "no error"

    try:
        results = run_sites(view, "ps", body, timeout_s=10.0)
    except NetstormError as exc:  # the frame can land while the receiver is still in init()
        results = {0: str(exc)}
    cause = {"checksum": "checksum mismatch", "oversize": "over the limit",
             "version": "frame of plan version 7"}[damage]
    assert any(cause in r for r in results.values()), results
    assert all(r != "no error" for r in results.values()), results


def site_message(site: Site, numel: int) -> tuple[Any, int]:
    """A message site 0 expects from site 1 in collective 0 (ps plan), and its elements."""
    from netstorm.compiler import compile
    from netstorm.job import Job
    from netstorm.registry import plan

    job = Job(buckets=numel * 4, chunk_bytes=site.chunk_bytes)
    prog = compile(plan(site.view, job, "ps"), job, site.view.workers)[0]
    message = sorted(m for m in prog.expects if m.src == 1)[0]
    step = next(st for st in prog.steps if message in st.waits)
    return message, step.ref.elems


@pytest.mark.parametrize("factor", [0.1, 0.05])  # a tenth; a collapse to a twentieth
def test_a_link_that_drops_is_seen_and_planned_around(factor: float) -> None:
    """Emulated 4-site mesh; link a->b drops to ``factor`` while the run goes on: the
    sender's measurements show it, the coordinator re-plans (the switch is reported with its
    reason), and the new plan moves bytes off it."""
    from netstorm import link_loads
    from netstorm.job import Job

    view = _four()
    numel, iterations = 1_000_000, 30  # the drop lands early, whatever the load
    drop = f"scale:1.5s:a->b:{factor}"  # 1.5 s of topology time: a quarter second at scale 6

    def body(site: Site) -> tuple[list[np.ndarray], dict[str, Any], Any]:
        out = allreduce_loop(view, numel, iterations)(site)
        return out, site.stats(), site.plan

    results = run_sites(view, "treepack", body, emulate="inprocess", time_scale=6.0,
                        dynamics=drop, site_kw={"chunk_bytes": 500_000})
    check_exact(view, {w: r[0] for w, r in results.items()}, numel)
    stats, last = results[0][1], results[0][2]
    assert stats["switches"], "no re-plan after the drop"
    first = stats["switches"][0]
    assert first["from_seq"] <= first["after_seq"] + 2  # takes effect two collectives later
    assert first["reason"].startswith("predicted")  # why: the old plan's time vs the new
    job = Job(buckets=numel * 4, chunk_bytes=500_000)
    before = plan(view, job, "treepack")
    share = link_loads(last, view, job)[0][0, 1] / link_loads(before, view, job)[0][0, 1]
    assert share < 0.5, f"the new plan still sends {share:.0%} of the bytes over a->b"


def _four() -> NetworkView:
    mbit = 1e6 / 8
    cap = np.array([[0, 400, 300, 200], [400, 0, 400, 300],
                    [300, 400, 0, 400], [200, 300, 400, 0]], dtype=float) * mbit
    return NetworkView(sites=("a", "b", "c", "d"), capacity=cap,
                       latency=np.where(cap > 0, 0.005, 0.0), name="four")


def test_several_connections_per_link_stay_exact() -> None:
    """Two connections per link: frames of one link leave on either, in any order."""
    view = builtin("netstorm9")
    numel = 40_000

    def body(site: Site) -> Any:
        out = allreduce_loop(view, numel, 2)(site)
        return out, {len(link.conns) for link in site.sender.links.values()}

    results = run_sites(view, "netstorm", body, connections=2,
                        site_kw={"chunk_bytes": 16_000})
    check_exact(view, {w: r[0] for w, r in results.items()}, numel)
    assert all(r[1] == {2} for r in results.values())


@pytest.mark.parametrize("encoding", ["fp16", "bf16"])
def test_a_16_bit_wire_rounds_alike_on_every_worker(encoding: str) -> None:
    """Gradients travel in 16 bits, sums stay float32: each worker ends on the wire type's
    grid with the same bytes, within the encoding's rounding of numpy's mean. An odd size:
    16-bit frames of an odd number of elements are not whole float32s."""
    view = builtin("netstorm9")
    numel = 30_001
    results = run_sites(view, "treepack", allreduce_loop(view, numel, 2), wire=encoding,
                        site_kw={"chunk_bytes": 24_000})
    unit = 2.0**-11 if encoding == "fp16" else 2.0**-8  # the unit roundoff
    for it in range(2):
        g = grads(view, numel, it)
        want = np.mean([g[w] for w in view.workers], axis=0, dtype=np.float64)
        first = results[view.workers[0]][it]
        assert all(np.array_equal(results[w][it], first) for w in view.workers)
        if encoding == "fp16":
            on_grid = first.astype(np.float16).astype(np.float32)
        else:
            on_grid = (first.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        assert np.array_equal(on_grid, first)
        # every partial sum is rounded once per hop: a few units of the largest gradient
        scale = max(float(np.abs(g[w]).max()) for w in view.workers)
        err = np.abs(first - want)
        assert err.max() < 4 * unit * scale and err.max() > 0


def test_a_sites_ingress_cap_is_emulated_on_the_receiving_side() -> None:
    """Site c may take in 50 Mbit/s in all over links of 400: every plan then waits on c's
    ingress, as the cost model predicts (8x longer than without the cap)."""
    import yaml

    from netstorm import Job, predict
    from netstorm.topology_files import view_from_document

    view = view_from_document(yaml.safe_load("""
name: ingress3
units: {bandwidth: Mbit/s, latency: ms}
sites: [{name: a}, {name: b}, {name: c, ingress: 50}]
links:
  - {src: a, dst: b, bandwidth: 400, latency: 1, symmetric: true}
  - {src: b, dst: c, bandwidth: 400, latency: 1, symmetric: true}
  - {src: a, dst: c, bandwidth: 400, latency: 1, symmetric: true}
"""), "ingress3")
    numel = 1_000_000

    def body(site: Site) -> float:
        times = []
        for it in range(3):
            buf = grads(view, numel, it)[site.rank]
            started = time.perf_counter()
            site.allreduce(buf)
            times.append(time.perf_counter() - started)
        return min(times[1:])

    took = run_sites(view, "ring", body, emulate="inprocess",
                     site_kw={"chunk_bytes": 500_000, "policy": "static"})
    job = Job(buckets=4 * numel, chunk_bytes=500_000)
    want = predict(plan(view, job, "ring"), view, job).time_s
    assert 0.85 * want < max(took.values()) < 1.3 * want, (took, want)
