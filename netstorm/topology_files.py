"""Topology files: YAML/JSON documents and CSV pair lists, read into a `NetworkView`.

YAML/JSON shape (DESIGN 5.1)::

    name: three-sites
    units: {bandwidth: Mbit/s, latency: ms}   # units of bare numbers (these are the defaults)
    sites:
      - {name: oregon, egress: 5000, ingress: 5000}   # caps optional
      - {name: virginia}
      - {name: relay1, worker: false}                 # relay-only site
    links:                                            # directed
      - {src: oregon, dst: virginia, bandwidth: 790, latency: 33}
      - {src: virginia, dst: relay1, bandwidth: "1.2 Gbit/s", latency: 5, symmetric: true}

CSV pair lists: ``src,dst,bandwidth_bps[,latency_s]`` (directed), the cloud throughput grid's
``src_region,dst_region,throughput_sent_bps,throughput_received_bps`` (received goodput is
used, and repeated measurements of a pair are averaged), and the city list's
``site_a,site_b,delay_ms,bandwidth_gbps`` (undirected; the published delay is a round trip,
so one-way latency is half of it). Sites are numbered in
order of first appearance. A pair missing from a file is treated as "no direct link".

These readers know files only; :func:`netstorm.load_topology` (in :mod:`netstorm.topology`)
resolves a built-in name or a file name over them and :mod:`netstorm.builtin_topologies`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .errors import TopologyError
from .units import BANDWIDTH_UNITS, LATENCY_UNITS, parse_quantity
from .view import MAX_SITES, NetworkView

__all__ = ["read_csv", "read_document", "view_from_document"]

_TOP_KEYS = {"name", "description", "units", "sites", "links", "dynamics"}
_SITE_KEYS = {"name", "egress", "ingress", "worker"}
_LINK_KEYS = {"src", "dst", "bandwidth", "latency", "symmetric"}
_UNIT_KEYS = {"bandwidth", "latency"}


def _keys(entry: object, allowed: set[str], where: str, required: tuple[str, ...]) -> dict:
    if not isinstance(entry, Mapping):
        raise TopologyError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(map(str, entry)) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r} "
                            f"(allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in entry:
            raise TopologyError(f"{where}: missing key {key!r}")
    return dict(entry)


def _positive(value: object, table: dict[str, float], unit: str, where: str) -> float:
    try:
        number = parse_quantity(value, table, unit, where)
    except ValueError as exc:
        raise TopologyError(str(exc)) from None
    if number <= 0:
        raise TopologyError(f"{where}: must be > 0, got {value!r}")
    return number


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise TopologyError(f"{where}: must be true or false, got {value!r}")
    return value


#: Keys of :meth:`NetworkView.to_dict` (what ``netstorm topo show --json`` prints): such a
#: document loads back as it is.
_MATRIX_KEYS = {"name", "sites", "workers", "capacity_Bps", "latency_s", "egress_Bps",
                "ingress_Bps"}


def _matrix_document(doc: Mapping[str, object], source: str) -> NetworkView:
    unknown = set(doc) - _MATRIX_KEYS
    if unknown:
        raise TopologyError(f"{source}: unknown key {sorted(unknown)[0]!r} in a matrix "
                            f"document (allowed: {', '.join(sorted(_MATRIX_KEYS))})")
    try:
        view = NetworkView.from_dict(dict(doc))
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None
    except KeyError as exc:
        raise TopologyError(f"{source}: a matrix document lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{source}: malformed matrix document: {exc}") from None
    return checked(view, source)


def view_from_document(doc: object, source: str) -> NetworkView:
    """Build a view from a parsed YAML/JSON document; ``source`` names it in errors. A
    document with ``capacity_Bps`` is :meth:`NetworkView.to_dict`'s form (``netstorm topo
    show --json``)."""
    if isinstance(doc, Mapping) and "capacity_Bps" in doc:
        return _matrix_document(doc, source)
    top = _keys(doc, _TOP_KEYS, source, ("sites", "links"))
    units = _keys(top.get("units", {}), _UNIT_KEYS, f"{source}: units", ())
    bw_unit = str(units.get("bandwidth", "Mbit/s"))
    lat_unit = str(units.get("latency", "ms"))
    try:
        parse_quantity(1, BANDWIDTH_UNITS, bw_unit, f"{source}: units.bandwidth")
        parse_quantity(1, LATENCY_UNITS, lat_unit, f"{source}: units.latency")
    except ValueError as exc:
        raise TopologyError(str(exc)) from None
    sites_raw = top["sites"]
    if not isinstance(sites_raw, list) or not sites_raw:
        raise TopologyError(f"{source}: sites must be a non-empty list")
    _site_limit(len(sites_raw), f"{source}: sites")
    names: list[str] = []
    egress, ingress, workers = [], [], []
    for i, entry in enumerate(sites_raw):
        where = f"{source}: sites[{i}]"
        site = _keys(entry, _SITE_KEYS, where, ("name",))
        name = str(site["name"])
        if name in names:
            raise TopologyError(f"{where}: duplicate site name {name!r}")
        names.append(name)
        egress.append(_positive(site["egress"], BANDWIDTH_UNITS, bw_unit, f"{where}.egress")
                      if "egress" in site else np.inf)
        ingress.append(_positive(site["ingress"], BANDWIDTH_UNITS, bw_unit, f"{where}.ingress")
                       if "ingress" in site else np.inf)
        if _bool(site.get("worker", True), f"{where}.worker"):
            workers.append(i)
    n = len(names)
    cap, lat = np.zeros((n, n)), np.zeros((n, n))
    if not isinstance(top["links"], list):
        raise TopologyError(f"{source}: links must be a list")
    index = {name: i for i, name in enumerate(names)}
    defined: dict[tuple[int, int], int] = {}
    for j, entry in enumerate(top["links"]):
        where = f"{source}: links[{j}]"
        link = _keys(entry, _LINK_KEYS, where, ("src", "dst", "bandwidth"))
        ends = []
        for key in ("src", "dst"):
            if str(link[key]) not in index:
                raise TopologyError(f"{where}.{key}: unknown site {link[key]!r}")
            ends.append(index[str(link[key])])
        u, v = ends
        if u == v:
            raise TopologyError(f"{where}: a link from {names[u]!r} to itself")
        bw = _positive(link["bandwidth"], BANDWIDTH_UNITS, bw_unit, f"{where}.bandwidth")
        delay = 0.0
        if "latency" in link:
            try:
                delay = parse_quantity(link["latency"], LATENCY_UNITS, lat_unit,
                                       f"{where}.latency")
            except ValueError as exc:
                raise TopologyError(str(exc)) from None
            if delay < 0:
                raise TopologyError(f"{where}.latency: must be >= 0, got {link['latency']!r}")
        pairs = [(u, v), (v, u)] if _bool(link.get("symmetric", False),
                                          f"{where}.symmetric") else [(u, v)]
        for a, b in pairs:
            if (a, b) in defined:
                raise TopologyError(f"{where}: duplicate link {names[a]}->{names[b]} "
                                    f"(already in links[{defined[(a, b)]}])")
            defined[(a, b)] = j
            cap[a, b], lat[a, b] = bw, delay
    if not workers:
        raise TopologyError(f"{source}: no worker sites (every site has worker: false)")
    view = NetworkView(sites=tuple(names), capacity=cap, latency=lat, egress=np.array(egress),
                       ingress=np.array(ingress), workers=tuple(workers),
                       name=str(top.get("name", Path(source).stem)))
    return checked(view, source)


def checked(view: NetworkView, source: str) -> NetworkView:
    """Raise :class:`TopologyError` unless ``view`` has two workers or more and an
    all-reduce can be planned on it (:meth:`NetworkView.degenerate`: no relay-only site off
    every path between workers, no worker that cannot reach another)."""
    if len(view.workers) < 2:
        raise TopologyError(f"{source}: an all-reduce needs at least two worker sites, "
                            f"{view.name!r} has {len(view.workers)}")
    problem = view.degenerate()
    if problem is not None:
        raise TopologyError(f"{source}: {problem}")
    return view


def _site_limit(n: int, where: str) -> None:
    if n > MAX_SITES:
        raise TopologyError(f"{where}: {n} sites, at most {MAX_SITES} (MAX_SITES)")


def _text(path: Path) -> str:
    """``path``'s text (UTF-8), or a TopologyError naming the file and the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TopologyError(f"{path}: line {line}: not UTF-8 text (byte "
                            f"0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_document(path: Path) -> object:
    """Parse a YAML or JSON file (JSON is YAML, but JSON errors read better from json)."""
    text = _text(path)
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TopologyError(f"{path}: not valid {path.suffix[1:].upper()}: {first}") from None


@dataclass(frozen=True)
class _CsvFormat:
    src: str
    dst: str
    bandwidth: str
    latency: str | None
    bw_unit: float  # B/s per unit of the bandwidth column
    lat_unit: float  # seconds per unit of the latency column
    both_ways: bool = False  # undirected pair list
    repeats: bool = False  # repeated rows are measurements to average, not mistakes


_CSV_FORMATS = {
    ("src", "dst", "bandwidth_bps"): _CsvFormat("src", "dst", "bandwidth_bps", None, 1 / 8, 1),
    ("src", "dst", "bandwidth_bps", "latency_s"):
        _CsvFormat("src", "dst", "bandwidth_bps", "latency_s", 1 / 8, 1),
    ("src_region", "dst_region", "throughput_sent_bps", "throughput_received_bps"):
        _CsvFormat("src_region", "dst_region", "throughput_received_bps", None, 1 / 8, 1,
                   repeats=True),
    ("site_a", "site_b", "delay_ms", "bandwidth_gbps"):
        _CsvFormat("site_a", "site_b", "bandwidth_gbps", "delay_ms", 1e9 / 8, 0.5e-3,
                   both_ways=True),
}


def read_csv(path: Path, name: str | None = None) -> NetworkView:
    """Read a CSV pair list (see the module docstring for the accepted column sets)."""
    try:
        rows = list(csv.reader(io.StringIO(_text(path), newline="")))
    except csv.Error as exc:
        raise TopologyError(f"{path}: not valid CSV: {exc}") from None
    if not rows:
        raise TopologyError(f"{path}: empty CSV file")
    header = tuple(col.strip() for col in rows[0])
    if header not in _CSV_FORMATS:
        known = "; ".join(",".join(h) for h in _CSV_FORMATS)
        raise TopologyError(f"{path}: line 1: unknown columns {','.join(header)!r} "
                            f"(known: {known})")
    fmt = _CSV_FORMATS[header]
    col = {c: header.index(c) for c in header}
    names: dict[str, int] = {}
    entries: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        where = f"{path}: line {line}"
        if len(row) != len(header):
            raise TopologyError(f"{where}: {len(row)} fields, expected {len(header)}")
        src, dst = row[col[fmt.src]].strip(), row[col[fmt.dst]].strip()
        if src == dst:
            continue  # intra-region measurements are not links
        try:
            bw = float(row[col[fmt.bandwidth]]) * fmt.bw_unit
            lat = float(row[col[fmt.latency]]) * fmt.lat_unit if fmt.latency else 0.0
        except ValueError:
            raise TopologyError(f"{where}: bandwidth/latency must be numbers") from None
        if not bw > 0:
            raise TopologyError(f"{where}: {fmt.bandwidth} must be > 0, "
                                f"got {row[col[fmt.bandwidth]]!r}")
        if lat < 0:
            raise TopologyError(f"{where}: {fmt.latency} must be >= 0")
        u = names.setdefault(src, len(names))
        v = names.setdefault(dst, len(names))
        for a, b in ((u, v), (v, u)) if fmt.both_ways else ((u, v),):
            if (a, b) in entries and not fmt.repeats:
                raise TopologyError(f"{where}: duplicate link {src}->{dst} "
                                    f"(already on line {entries[(a, b)][0][2]})")
            entries.setdefault((a, b), []).append((bw, lat, line))
    n = len(names)
    if n == 0:
        raise TopologyError(f"{path}: no links")
    _site_limit(n, str(path))
    cap, lat_m = np.zeros((n, n)), np.zeros((n, n))
    for (a, b), samples in entries.items():
        cap[a, b] = np.mean([bw for bw, _, _ in samples])
        lat_m[a, b] = np.mean([lat for _, lat, _ in samples])
    view = NetworkView(sites=tuple(names), capacity=cap, latency=lat_m,
                       name=name or path.stem)
    return checked(view, str(path))
