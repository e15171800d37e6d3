"""``netstorm measure``: every ordered pair timed, a topology file written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from netstorm.runtime.measure import measure, write_topology

from netstorm import NetworkView
from netstorm.topology import load_topology
from tests.runtime.harness import free_port, in_threads

pytestmark = pytest.mark.timeout(120)


def emulated() -> NetworkView:
    mbit = 1e6 / 8
    cap = np.array([[0, 80, 40], [120, 0, 60], [40, 200, 0]], dtype=float) * mbit
    return NetworkView(sites=("a", "b", "c"), capacity=cap, name="three")


def run_measure(view: NetworkView, **kw: Any) -> dict[int, NetworkView]:
    port = free_port()
    return in_threads(view.n, lambda rank: measure(
        1.5, rank=rank, world_size=view.n, master_addr="127.0.0.1", master_port=port,
        secret=b"measure-test", bind="127.0.0.1", advertise="127.0.0.1", timeout_s=30.0,
        **kw))


def test_an_emulated_topology_is_measured_back(tmp_path: Path) -> None:
    view = emulated()
    views = run_measure(view, emulate=view)
    first = views[0]
    for v in views.values():  # every rank returns the same matrix
        assert np.array_equal(v.capacity, first.capacity)
    links = view.capacity > 0
    ratio = first.capacity[links] / view.capacity[links]
    assert np.all(np.abs(ratio - 1) < 0.1), ratio
    path = tmp_path / "measured.yaml"
    write_topology(first, path)
    back = load_topology(path)
    assert back.sites == view.sites
    np.testing.assert_allclose(back.capacity, first.capacity, rtol=1e-4)


def test_loopback_is_measured_with_round_trips() -> None:
    view = NetworkView(sites=("x", "y"), capacity=np.array([[0, 1.0], [1.0, 0]]))
    views = run_measure(view)  # the real (loopback) network, unshaped
    got = views[0]
    assert got.sites == ("site0", "site1")
    assert np.all(got.capacity[~np.eye(2, dtype=bool)] > 10e6)  # loopback: > 10 MB/s
    assert np.all(got.latency[~np.eye(2, dtype=bool)] > 0)


def test_the_cli_measures_an_emulated_topology(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    topo = tmp_path / "two.yaml"
    topo.write_text("units: {bandwidth: Mbit/s}\nsites: [{name: a}, {name: b}]\n"
                    "links: [{src: a, dst: b, bandwidth: 50}, {src: b, dst: a, bandwidth: 90}]\n")
    out = tmp_path / "measured.yaml"
    done = subprocess.run([sys.executable, "-m", "netstorm", "measure", "--topology", str(topo),
                           "--out", str(out), "--seconds", "1", "--json"],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    for link in doc["links"]:
        assert abs(link["measured_mbit_s"] / link["configured_mbit_s"] - 1) < 0.1, link
    assert load_topology(out).n == 2
    bad = subprocess.run([sys.executable, "-m", "netstorm", "measure", "--out", str(out)],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in __import__("os").environ.items()
                              if k != "RANK"})
    assert bad.returncode == 2 and "every host" in bad.stderr


def test_init_can_plan_on_the_network_it_measures_first() -> None:
    from netstorm.runtime import init

    port = free_port()
    numel = 50_000
    grads = [np.random.default_rng(r).standard_normal(numel, dtype=np.float32)
             for r in range(3)]

    def one(rank: int) -> tuple[str, np.ndarray]:
        site = init("measure", "treepack", rank=rank, world_size=3, master_addr="127.0.0.1",
                    master_port=port, secret=b"measure-test", bind="127.0.0.1",
                    advertise="127.0.0.1", timeout_s=30.0, emulate="none")
        try:
            buf = grads[rank].copy()
            site.allreduce(buf)
            return site.view.name, buf
        finally:
            site.close()

    got = in_threads(3, one)
    assert {name for name, _ in got.values()} == {"measured"}
    want = np.mean(grads, axis=0, dtype=np.float64)
    np.testing.assert_allclose(got[0][1], want, atol=2e-6)
    assert all(np.array_equal(buf, got[0][1]) for _, buf in got.values())
