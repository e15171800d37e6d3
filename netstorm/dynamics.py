"""Network dynamics (DESIGN 5.2): how link capacities change during a run.

Three kinds, each a frozen value with a :meth:`timeline` of capacity snapshots:

- ``redraw``: every ``period`` every directed link gets a new capacity, uniform in
  ``[low, high]`` (the NetStorm paper's emulation);
- ``trace``: a CSV ``time_s,src,dst,bandwidth_bps`` of link capacity changes;
- ``scale``: multiply one link (or every link of one site, and its caps) by a factor at a
  time, optionally for a duration (faults and congestion).

They are written as the topology YAML's ``dynamics:`` mapping, a YAML/JSON file holding it,
a trace CSV, or a short string: ``redraw:180s:20Mbit/s:155Mbit/s[:seed]``,
``scale:AT:SITE|SRC->DST:FACTOR[:DURATION]``, ``trace:FILE.csv``, or inline YAML
``{kind: redraw, period: 180 s, ...}``. Malformed input raises :class:`DynamicsError` with one
line that says what is wrong.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import TopologyError
from .units import BANDWIDTH_UNITS, LATENCY_UNITS, parse_quantity
from .view import NetworkView

__all__ = ["Dynamics", "DynamicsError", "Redraw", "Scale", "ScaleEvent", "Snapshot", "Trace",
           "parse_dynamics"]


class DynamicsError(TopologyError):
    """A dynamics specification is malformed or names unknown sites."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The network's true capacities from ``time_s`` on (arrays in B/s, read-only)."""

    time_s: float
    capacity: np.ndarray
    egress: np.ndarray
    ingress: np.ndarray


def _freeze(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        b = np.array(a, dtype=float, copy=True)
        b.setflags(write=False)
        out.append(b)
    return tuple(out)


@dataclass(frozen=True)
class Redraw:
    """Every ``period_s`` each directed link gets a capacity uniform in ``[low, high]`` B/s.

    ``at_start`` also redraws at time 0; ``seed`` fixes the draws. Only existing links
    (capacity > 0 in the base view) change; site caps do not.
    """

    period_s: float
    low_Bps: float
    high_Bps: float
    seed: int = 0
    at_start: bool = False
    kind: str = "redraw"

    def __post_init__(self) -> None:
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise DynamicsError(f"redraw: period must be > 0, got {self.period_s}")
        if not 0 < self.low_Bps <= self.high_Bps < math.inf:
            raise DynamicsError(f"redraw: need 0 < low <= high, got low={self.low_Bps} B/s, "
                                f"high={self.high_Bps} B/s")

    def validate(self, view: NetworkView) -> None:
        """Nothing to check against a view."""

    def timeline(self, view: NetworkView) -> Iterator[Snapshot]:
        """Snapshots at ``k * period`` for k = 1, 2, ... (and 0 with ``at_start``); endless."""
        rng = np.random.default_rng(self.seed)
        links = view.capacity > 0
        k = 0 if self.at_start else 1
        while True:
            cap = np.zeros_like(view.capacity)
            cap[links] = rng.uniform(self.low_Bps, self.high_Bps, int(links.sum()))
            yield Snapshot(k * self.period_s, *_freeze(cap, view.egress, view.ingress))
            k += 1


def _site(view: NetworkView, name: str | int, where: str) -> int:
    try:
        return view.index(int(name) if isinstance(name, str) and name.isdigit() else name)
    except KeyError:
        raise DynamicsError(f"{where}: unknown site {name!r} (sites: "
                            f"{', '.join(view.sites)})") from None


@dataclass(frozen=True)
class Trace:
    """Link capacity changes ``(time_s, src, dst, Bps)`` read from a CSV; ``source`` names
    the file in errors. Rows apply in time order; a link keeps its last value."""

    rows: tuple[tuple[float, str, str, float], ...]
    source: str = "trace"
    kind: str = "trace"

    def validate(self, view: NetworkView) -> None:
        for i, (_, src, dst, _) in enumerate(self.rows):
            where = f"{self.source}: row {i + 2}"
            u, v = _site(view, src, where), _site(view, dst, where)
            if u == v:
                raise DynamicsError(f"{where}: a link needs two different sites")

    def timeline(self, view: NetworkView) -> Iterator[Snapshot]:
        self.validate(view)
        cap = np.array(view.capacity, dtype=float)
        rows = sorted(enumerate(self.rows), key=lambda r: (r[1][0], r[0]))
        i = 0
        while i < len(rows):
            t = rows[i][1][0]
            while i < len(rows) and rows[i][1][0] == t:
                _, (_, src, dst, bps) = rows[i]
                cap[_site(view, src, self.source), _site(view, dst, self.source)] = bps
                i += 1
            yield Snapshot(t, *_freeze(cap, view.egress, view.ingress))

    @classmethod
    def from_csv(cls, path: str | Path) -> Trace:
        path = Path(path)
        try:
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                want = ["time_s", "src", "dst", "bandwidth_bps"]
                if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != want:
                    raise DynamicsError(f"{path}: expected the header "
                                        f"{','.join(want)}, got {reader.fieldnames}")
                rows = []
                for i, row in enumerate(reader):
                    try:
                        t, bps = float(row["time_s"]), float(row["bandwidth_bps"])
                    except (TypeError, ValueError):
                        raise DynamicsError(f"{path}: row {i + 2}: time_s and bandwidth_bps "
                                            f"must be numbers") from None
                    if not (t >= 0 and math.isfinite(t)) or not (bps >= 0 and
                                                                 math.isfinite(bps)):
                        raise DynamicsError(f"{path}: row {i + 2}: time_s and bandwidth_bps "
                                            f"must be finite and >= 0")
                    rows.append((t, row["src"].strip(), row["dst"].strip(), bps / 8))
        except OSError as exc:
            raise DynamicsError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if not rows:
            raise DynamicsError(f"{path}: the trace has no rows")
        return cls(tuple(rows), str(path))


@dataclass(frozen=True)
class ScaleEvent:
    """Multiply link ``link`` (a ``(src, dst)`` pair of names) or every link and cap of
    ``site`` by ``factor`` from ``at_s``, for ``duration_s`` (``None``: for good)."""

    at_s: float
    factor: float
    link: tuple[str, str] | None = None
    site: str | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if (self.link is None) == (self.site is None):
            raise DynamicsError("scale: give exactly one of link or site")
        if not (self.at_s >= 0 and math.isfinite(self.at_s)):
            raise DynamicsError(f"scale: at must be >= 0, got {self.at_s}")
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise DynamicsError(f"scale: factor must be > 0, got {self.factor}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise DynamicsError(f"scale: duration must be > 0, got {self.duration_s}")


@dataclass(frozen=True)
class Scale:
    """Scaling events (faults, congestion); overlapping factors multiply."""

    events: tuple[ScaleEvent, ...]
    kind: str = "scale"

    def validate(self, view: NetworkView) -> None:
        for e in self.events:
            if e.link is not None:
                u, v = (_site(view, s, "scale") for s in e.link)
                if view.capacity[u, v] <= 0:
                    raise DynamicsError(f"scale: {e.link[0]}->{e.link[1]} is not a link")
            else:
                _site(view, e.site, "scale")  # type: ignore[arg-type]

    def timeline(self, view: NetworkView) -> Iterator[Snapshot]:
        self.validate(view)
        edges: list[tuple[float, int, float]] = []  # (time, event index, factor to apply)
        for i, e in enumerate(self.events):
            edges.append((e.at_s, i, e.factor))
            if e.duration_s is not None:
                edges.append((e.at_s + e.duration_s, i, 1 / e.factor))
        heapq.heapify(edges)
        link_f = np.ones_like(view.capacity)
        site_f = np.ones(view.n)
        while edges:
            t = edges[0][0]
            while edges and edges[0][0] == t:
                _, i, f = heapq.heappop(edges)
                e = self.events[i]
                if e.link is not None:
                    u, v = (_site(view, s, "scale") for s in e.link)
                    link_f[u, v] *= f
                else:
                    s = _site(view, e.site, "scale")  # type: ignore[arg-type]
                    site_f[s] *= f
                    link_f[s, :] *= f
                    link_f[:, s] *= f
            yield Snapshot(t, *_freeze(view.capacity * link_f, view.egress * site_f,
                                       view.ingress * site_f))


Dynamics = Redraw | Trace | Scale

_REDRAW_KEYS = {"kind", "period", "low", "high", "seed", "at_start"}
_SCALE_KEYS = {"at", "link", "site", "factor", "duration"}


def _bw(value: Any, what: str) -> float:
    try:
        return parse_quantity(value, BANDWIDTH_UNITS, "Mbit/s", what)
    except ValueError as exc:
        raise DynamicsError(str(exc)) from None


def _sec(value: Any, what: str) -> float:
    try:
        return parse_quantity(value, LATENCY_UNITS, "s", what)
    except ValueError as exc:
        raise DynamicsError(str(exc)) from None


def _link(value: Any, where: str) -> tuple[str, str]:
    if isinstance(value, str) and "->" in value:
        a, b = value.split("->", 1)
        return a.strip(), b.strip()
    if isinstance(value, list | tuple) and len(value) == 2:
        return str(value[0]), str(value[1])
    raise DynamicsError(f"{where}: link must be 'SRC->DST' or [SRC, DST], got {value!r}")


def _scale_event(entry: Any, where: str) -> ScaleEvent:
    if not isinstance(entry, Mapping):
        raise DynamicsError(f"{where}: expected a mapping, got {entry!r}")
    unknown = set(entry) - _SCALE_KEYS
    if unknown:
        raise DynamicsError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} "
                            f"(allowed: {', '.join(sorted(_SCALE_KEYS))})")
    for key in ("at", "factor"):
        if key not in entry:
            raise DynamicsError(f"{where}: missing {key!r}")
    try:
        factor = float(entry["factor"])
    except (TypeError, ValueError):
        raise DynamicsError(f"{where}: factor must be a number, got "
                            f"{entry['factor']!r}") from None
    return ScaleEvent(
        at_s=_sec(entry["at"], f"{where}.at"), factor=factor,
        link=_link(entry["link"], where) if "link" in entry else None,
        site=str(entry["site"]) if "site" in entry else None,
        duration_s=_sec(entry["duration"], f"{where}.duration") if "duration" in entry
        else None)


def _from_mapping(doc: Any, source: str) -> Dynamics:
    if isinstance(doc, Mapping) and "dynamics" in doc and "kind" not in doc:
        doc = doc["dynamics"]
    if not isinstance(doc, Mapping):
        raise DynamicsError(f"{source}: dynamics must be a mapping with a 'kind', "
                            f"got {doc!r}")
    kind = doc.get("kind")
    if kind == "redraw":
        unknown = set(doc) - _REDRAW_KEYS
        if unknown:
            raise DynamicsError(f"{source}: unknown redraw keys "
                                f"{', '.join(sorted(map(str, unknown)))} "
                                f"(allowed: {', '.join(sorted(_REDRAW_KEYS))})")
        for key in ("period", "low", "high"):
            if key not in doc:
                raise DynamicsError(f"{source}: redraw needs {key!r}")
        seed = doc.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DynamicsError(f"{source}: redraw seed must be an integer, got {seed!r}")
        return Redraw(_sec(doc["period"], f"{source}: period"),
                      _bw(doc["low"], f"{source}: low"), _bw(doc["high"], f"{source}: high"),
                      seed, bool(doc.get("at_start", False)))
    if kind == "trace":
        unknown = set(doc) - {"kind", "file"}
        if unknown or "file" not in doc:
            raise DynamicsError(f"{source}: trace needs exactly 'file' (a CSV "
                                f"time_s,src,dst,bandwidth_bps)")
        return Trace.from_csv(doc["file"])
    if kind == "scale":
        if "events" in doc:
            if set(doc) - {"kind", "events"} or not isinstance(doc["events"], list):
                raise DynamicsError(f"{source}: scale takes 'events' (a list) or one event's "
                                    f"keys")
            events = [_scale_event(e, f"{source}: events[{i}]")
                      for i, e in enumerate(doc["events"])]
        else:
            events = [_scale_event({k: v for k, v in doc.items() if k != "kind"}, source)]
        if not events:
            raise DynamicsError(f"{source}: scale has no events")
        return Scale(tuple(events))
    raise DynamicsError(f"{source}: unknown dynamics kind {kind!r} "
                        f"(use redraw, trace or scale)")


def _from_short(text: str) -> Dynamics:
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "redraw":
        if len(parts) not in (3, 4):
            raise DynamicsError(f"dynamics {text!r}: expected redraw:PERIOD:LOW:HIGH[:SEED]")
        doc: dict[str, Any] = {"kind": "redraw", "period": parts[0], "low": parts[1],
                               "high": parts[2]}
        if len(parts) == 4:
            if not parts[3].lstrip("-").isdigit():
                raise DynamicsError(f"dynamics {text!r}: seed must be an integer")
            doc["seed"] = int(parts[3])
        return _from_mapping(doc, f"dynamics {text!r}")
    if kind == "scale":
        if len(parts) not in (3, 4):
            raise DynamicsError(f"dynamics {text!r}: expected "
                                f"scale:AT:SITE|SRC->DST:FACTOR[:DURATION]")
        target = parts[1]
        event: dict[str, Any] = {"at": parts[0], "factor": parts[2]}
        event["link" if "->" in target else "site"] = target
        if len(parts) == 4:
            event["duration"] = parts[3]
        return _from_mapping({"kind": "scale", **event}, f"dynamics {text!r}")
    if kind == "trace":
        return Trace.from_csv(rest)
    raise DynamicsError(f"dynamics {text!r}: unknown kind {kind!r} (use redraw:..., "
                        f"scale:..., trace:FILE.csv, a YAML/JSON/CSV file or a mapping)")


def parse_dynamics(spec: Mapping[str, Any] | str | Path | None) -> Dynamics | None:
    """Parse a dynamics mapping, file name or short string (see the module docstring).

    Returns ``None`` for ``None``, ``""`` or ``"static"``.

    Raises
    ------
    DynamicsError
        One line naming the input and the problem.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return _from_mapping(spec, "dynamics")
    text = str(spec).strip()
    if text in ("", "static", "none"):
        return None
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return Trace.from_csv(path)
    if suffix in (".yaml", ".yml", ".json"):
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise DynamicsError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise DynamicsError(f"{path}: not valid YAML/JSON: "
                                f"{str(exc).splitlines()[0]}") from None
        return _from_mapping(doc, str(path))
    if text.startswith("{"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DynamicsError(f"dynamics {text!r}: not valid YAML: "
                                f"{str(exc).splitlines()[0]}") from None
        return _from_mapping(doc, "dynamics")
    return _from_short(text)
