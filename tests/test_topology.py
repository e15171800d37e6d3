"""Topology files and built-ins: what loads, and one clear message for what does not."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from netstorm import TopologyError, load_topology
from netstorm.builtin_topologies import NETSTORM9_LINKS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

GOOD = """
name: three-sites
units: {bandwidth: Mbit/s, latency: ms}
sites:
  - {name: oregon, egress: 5000, ingress: "4 Gbit/s"}
  - {name: virginia}
  - {name: relay1, worker: false}
links:
  - {src: oregon, dst: virginia, bandwidth: 790, latency: 33}
  - {src: virginia, dst: oregon, bandwidth: 700, latency: 33}
  - {src: virginia, dst: relay1, bandwidth: "1.2 Gbit/s", latency: 5, symmetric: true}
  - {src: relay1, dst: oregon, bandwidth: "10 MB/s"}
  - {src: oregon, dst: relay1, bandwidth: 100}
"""


def write(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_topology_loads_with_units(tmp_path: Path) -> None:
    view = load_topology(write(tmp_path, GOOD))
    assert view.name == "three-sites" and view.sites == ("oregon", "virginia", "relay1")
    assert view.workers == (0, 1) and view.relays == (2,)
    assert view.capacity[0, 1] == pytest.approx(790e6 / 8)
    assert view.capacity[1, 2] == view.capacity[2, 1] == pytest.approx(1.2e9 / 8)
    assert view.capacity[2, 0] == pytest.approx(10e6)
    assert view.latency[0, 1] == pytest.approx(0.033) and view.latency[2, 1] == 0.005
    assert view.egress[0] == pytest.approx(5e9 / 8) and view.ingress[0] == pytest.approx(5e8)
    assert np.isinf(view.egress[1])


def test_json_topology_loads_with_other_default_units(tmp_path: Path) -> None:
    doc = {"units": {"bandwidth": "MB/s", "latency": "s"}, "sites": [{"name": "a"},
           {"name": "b"}], "links": [{"src": "a", "dst": "b", "bandwidth": 5,
                                      "latency": 0.1, "symmetric": True}]}
    view = load_topology(write(tmp_path, json.dumps(doc), "t.json"))
    assert view.capacity[1, 0] == 5e6 and view.latency[0, 1] == 0.1 and view.name == "t"


ERRORS = [
    ("colour: red\nsites: []\nlinks: []", "topo.yaml: unknown key 'colour'"),
    ("sites: [{name: a, size: 3}]\nlinks: []", r"sites\[0\]: unknown key 'size'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: c, bandwidth: 5}]",
     r"links\[0\].dst: unknown site 'c'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: 0}]",
     r"links\[0\].bandwidth: must be > 0"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: -5}]",
     r"links\[0\].bandwidth: must be > 0"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: 5 parsecs}]",
     r"links\[0\].bandwidth: unknown unit 'parsecs'"),
    ("units: {bandwidth: furlongs}\nsites: [{name: a}]\nlinks: []",
     "units.bandwidth: unknown unit 'furlongs'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: 5, "
     "symmetric: true}, {src: b, dst: a, bandwidth: 3}]",
     r"links\[1\]: duplicate link b->a \(already in links\[0\]\)"),
    ("sites: [{name: a}, {name: a}]\nlinks: []", r"sites\[1\]: duplicate site name 'a'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: 5}]",
     "worker 'a' cannot be reached from 'b'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b, bandwidth: 5, latency: -1, "
     "symmetric: true}]", r"links\[0\].latency: must be >= 0"),
    ("sites: [{name: a}]\nlinks: [{src: a, dst: a, bandwidth: 5}]", "to itself"),
    ("sites: [{name: a, worker: false}]\nlinks: []", "no worker sites"),
    ("sites: [{name: a, worker: maybe}]\nlinks: []", "worker: must be true or false"),
    ("sites: [{name: a}]", "missing key 'links'"),
    ("sites: [{name: a}, {name: b}]\nlinks: [{src: a, dst: b}]", "missing key 'bandwidth'"),
    ("sites: [{name: a, egress: 0}]\nlinks: []", r"sites\[0\].egress: must be > 0"),
    ("sites: [a, b]\nlinks: []", r"sites\[0\]: expected a mapping"),
    ("sites: {a: 1}\nlinks: []", "sites must be a non-empty list"),
    ("sites: [{name: a\nlinks: []", "topo.yaml: not valid YAML"),
]


@pytest.mark.parametrize("text, message", ERRORS)
def test_malformed_topologies_name_file_entry_and_problem(tmp_path: Path, text: str,
                                                          message: str) -> None:
    with pytest.raises(TopologyError, match=message) as info:
        load_topology(write(tmp_path, text))
    assert "\n" not in str(info.value) and "topo.yaml" in str(info.value)


def test_csv_pair_list_loads_and_checks(tmp_path: Path) -> None:
    path = write(tmp_path, "src,dst,bandwidth_bps,latency_s\na,b,8e6,0.01\nb,a,16e6,0.02\n",
                 "pairs.csv")
    view = load_topology(path)
    assert view.sites == ("a", "b") and view.capacity[0, 1] == 1e6
    assert view.capacity[1, 0] == 2e6 and view.latency[1, 0] == 0.02
    dup = write(tmp_path, "src,dst,bandwidth_bps\na,b,8\nb,a,8\na,b,9\n", "dup.csv")
    with pytest.raises(TopologyError, match=r"dup.csv: line 4: duplicate link a->b"):
        load_topology(dup)
    bad = write(tmp_path, "src,dst,bandwidth_bps\na,b,0\nb,a,8\n", "zero.csv")
    with pytest.raises(TopologyError, match=r"zero\.csv: line 2: bandwidth_bps must be > 0"):
        load_topology(bad)
    cols = write(tmp_path, "from,to,speed\na,b,1\n", "cols.csv")
    with pytest.raises(TopologyError, match=r"cols\.csv: line 1: unknown columns"):
        load_topology(cols)


@pytest.mark.skipif(not SHARED.exists(), reason="shared data folder not next to the repo")
def test_shared_data_files_load_directly() -> None:
    cities = load_topology(SHARED / "city_delay_bandwidth.csv")
    assert cities.n == 10 and len(cities.links) == 90
    i, j = cities.index("Oregon"), cities.index("Virginia")
    assert cities.capacity[i, j] == pytest.approx(0.79e9 / 8)
    assert cities.latency[i, j] == pytest.approx(0.067 / 2)  # published RTT, halved
    grid = load_topology(SHARED / "cloud_throughput_2022-01.csv")
    assert grid.n == 63 and len(grid.links) == 63 * 62


def test_netstorm9_matches_the_paper() -> None:
    view = load_topology("netstorm9")
    assert view.n == 9 and len(view.links) == 26  # 13 undirected links
    assert view.capacity[3, 5] == view.capacity[5, 3] == 3.7e6
    assert {(u, v) for u, v in view.links if u < v} == set(NETSTORM9_LINKS)


def test_cloud_builtins() -> None:
    aws = load_topology("cloud:aws")
    assert aws.n == 21 and all(s.startswith("aws:") for s in aws.sites)
    assert np.allclose(aws.egress, 5e9 / 8) and np.allclose(aws.ingress, 5e9 / 8)
    sub = load_topology("cloud:aws:8")
    assert sub.n == 8 and load_topology("cloud:aws:8:0") == sub
    assert load_topology("cloud:aws:8:1").sites != sub.sites
    gcp = load_topology("cloud:gcp:5:2")
    assert np.isinf(gcp.egress).all() and len(gcp.links) == 20
    mixed = load_topology("cloud:mixed:12:3")
    capped = [s.startswith("aws:") for s in mixed.sites]
    assert list(np.isfinite(mixed.egress)) == capped


@pytest.mark.parametrize("name", ["random:16:3", "waxman:32:1", "waxman:5"])
def test_generators_are_seeded_and_connected(name: str) -> None:
    a, b = load_topology(name), load_topology(name)
    assert a == b and not a.unreachable_workers()


def test_waxman_is_sparse_and_random_is_full() -> None:
    assert len(load_topology("random:12:1").links) == 12 * 11
    assert len(load_topology("waxman:32:1").links) < 32 * 31 / 3


@pytest.mark.parametrize("name, message", [
    ("cloud:ibm", "unknown built-in topology"), ("cloud:aws:99", "must be in 2..21"),
    ("random:x:1", "whole numbers"), ("random:1", ">= 2"), ("nosuch.yaml", "cannot read"),
    ("nosuchfile", "no such file and not a built-in"),
])
def test_bad_builtin_names(name: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        load_topology(name)
