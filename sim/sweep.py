"""Sweeps: a grid of simulator scenarios, run in parallel on local processes or a Dask cluster.

A :class:`Scenario` is everything one simulation needs (topology, model, planner, dynamics,
seed, ...), all plain values, so it travels to a worker process or a Dask worker as it is
and names its result by a stable :meth:`Scenario.key`. :func:`grid` expands a mapping whose
list-valued fields are the axes; :func:`sweep` runs the scenarios and returns one flat
record (a dict) per scenario, in the grid's order:

- a scenario that raises becomes a record whose ``error`` says what went wrong; the others
  are not lost;
- with a cache folder, each finished record is written there (``<key>.json``) as it
  arrives, and a sweep run again skips the scenarios it finds (a crashed or interrupted
  sweep resumes);
- local and Dask execution give identical records except the wall-clock field ``wall_s``
  (the simulator is deterministic for a given scenario).

:func:`load_grid` reads the YAML grid file of ``netstorm sweep`` (see the README);
:func:`write_records` writes CSV, JSON or Parquet; :func:`to_frame` gives a pandas
DataFrame (the optional ``notebooks`` extra).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from netstorm.errors import InputError, NetstormError

__all__ = ["RECORD_FIELDS", "Scenario", "grid", "load_grid", "run_scenario", "sweep",
           "to_frame", "write_records"]

#: The result fields of every record, after the scenario's own fields.
RECORD_FIELDS = ("key", "iterations_run", "iteration_mean_s", "iteration_median_s",
                 "comm_mean_s", "total_s", "replans", "planning_s", "predicted_s", "bound_s",
                 "chunk_bytes", "transfers", "wall_s", "error")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One simulation of a sweep (every field a plain value; see :func:`run_scenario`).

    Attributes
    ----------
    topology, model, planner
        As ``netstorm sim --topology/--model/--planner`` take them (one planner).
    dynamics
        A dynamics spec (``"redraw:180s:20Mbit/s:155Mbit/s:1"``), or ``None``: static.
    seed
        The planner's seed.
    iterations
        Iterations to simulate (ignored with ``duration_s``).
    duration_s
        Simulate until this much simulated time has passed instead.
    policy
        Re-plan policy name; ``None``: the planner's own.
    chunk, window
        The job's chunk size and the TCP window cap per transfer (``"4MB"``), or ``None``.
    options
        Planner options, ``(name, value)`` pairs sorted by name (values JSON-encodable).
    bound
        Also compute the LP lower bound of the all-reduce (``bound_s``), with a 10 s limit.
    """

    topology: str
    planner: str = "treepack"
    model: str = "resnet50"
    dynamics: str | None = None
    seed: int = 0
    iterations: int = 10
    duration_s: float | None = None
    policy: str | None = None
    chunk: str | None = None
    window: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The scenario's fields, ``options`` as a mapping."""
        out = dataclasses.asdict(self)
        out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "scenario") -> Scenario:
        """The scenario ``data`` describes; unknown fields are an error naming ``where``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where}: unknown field {unknown[0]!r} (known: "
                             f"{', '.join(sorted(known))})")
        if "topology" not in data:
            raise InputError(f"{where}: no topology")
        values = dict(data)
        options = values.get("options") or {}
        if not isinstance(options, Mapping):
            raise InputError(f"{where}: options must be a mapping, got {options!r}")
        values["options"] = tuple(sorted(options.items()))
        try:
            scenario = cls(**values)
            json.dumps(scenario.to_dict())
        except TypeError as exc:
            raise InputError(f"{where}: {exc}") from None
        if not isinstance(scenario.iterations, int) or scenario.iterations < 1:
            raise InputError(f"{where}: iterations must be a whole number >= 1, got "
                             f"{scenario.iterations!r}")
        if scenario.duration_s is not None and not (
                isinstance(scenario.duration_s, int | float) and scenario.duration_s > 0
                and math.isfinite(scenario.duration_s)):
            raise InputError(f"{where}: duration_s must be a number of seconds > 0, got "
                             f"{scenario.duration_s!r}")
        return scenario

    def key(self) -> str:
        """A stable name of this scenario (16 hex digits of the SHA-256 of its JSON)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def grid(spec: Mapping[str, Any], where: str = "grid") -> list[Scenario]:
    """Every combination of ``spec``'s list-valued fields (the axes), in order: the first
    axis varies slowest. Other fields are the same in every scenario; ``options`` is one
    mapping, or a list of mappings (an axis)."""
    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: a grid is a mapping of fields, got {type(spec).__name__}")
    axes = {k: v for k, v in spec.items() if isinstance(v, list)}
    for name, values in axes.items():
        if not values:
            raise InputError(f"{where}: {name} is an empty list (an axis needs a value)")
    fixed = {k: v for k, v in spec.items() if k not in axes}
    out = []
    for combo in itertools.product(*axes.values()):
        fields = {**fixed, **dict(zip(axes, combo, strict=True))}
        out.append(Scenario.from_dict(fields, f"{where} ({_label(fields)})"))
    return out


def _label(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k != "options")


def run_scenario(scenario: Scenario) -> dict[str, Any]:
    """Simulate ``scenario``; its record (see :data:`RECORD_FIELDS`). Raises on bad input."""
    from netstorm.bound import bound
    from netstorm.dynamics import parse_dynamics
    from netstorm.job import Job
    from netstorm.topology import load_topology
    from netstorm.units import SIZE_UNITS, parse_quantity

    from .driver import simulate

    started = time.perf_counter()
    view = load_topology(scenario.topology)
    job = Job.from_model(scenario.model)
    if scenario.chunk is not None:
        job = job.with_chunk(int(parse_quantity(scenario.chunk, SIZE_UNITS, "b", "chunk")))
    dynamics = parse_dynamics(scenario.dynamics) if scenario.dynamics else None
    if dynamics is not None:
        dynamics.validate(view)
    window = (None if scenario.window is None
              else parse_quantity(scenario.window, SIZE_UNITS, "b", "window"))
    span: dict[str, Any] = ({} if scenario.duration_s is None
                            else {"duration_s": float(scenario.duration_s)})
    result = simulate(view, job, scenario.planner, iterations=scenario.iterations,
                      dynamics=dynamics, policy=scenario.policy, seed=scenario.seed,
                      window_bytes=window, planner_options=dict(scenario.options), **span)
    row = result.summary()
    low = bound(view, job, time_limit_s=10.0).time_s if scenario.bound else None
    return {**_flat(scenario), "key": scenario.key(), "iterations_run": row["iterations"],
            "iteration_mean_s": row["iteration_time_s"]["mean"],
            "iteration_median_s": row["iteration_time_s"]["median"],
            "comm_mean_s": row["comm_time_s"]["mean"], "total_s": row["total_time_s"],
            "replans": row["replans"], "planning_s": row["planning_s"],
            "predicted_s": row["predicted_time_s"],
            "bound_s": low, "chunk_bytes": row["chunk_bytes"],
            "transfers": row["transfers"], "wall_s": time.perf_counter() - started,
            "error": None}


def _flat(scenario: Scenario) -> dict[str, Any]:
    """The scenario's fields as record columns (``options`` as its JSON text)."""
    out = scenario.to_dict()
    out["options"] = json.dumps(out["options"], sort_keys=True)
    return out


def _safe(scenario: Scenario) -> dict[str, Any]:
    """:func:`run_scenario`, with any exception turned into the record's ``error``."""
    started = time.perf_counter()
    try:
        return run_scenario(scenario)
    except Exception as exc:  # a sweep reports a failed scenario and goes on
        record: dict[str, Any] = {**_flat(scenario), **dict.fromkeys(RECORD_FIELDS)}
        record.update(key=scenario.key(), wall_s=time.perf_counter() - started,
                      error=f"{type(exc).__name__}: {exc}")
        return record


def sweep(scenarios: Sequence[Scenario], *, workers: int | None = None,
          dask: Any = None, cache: str | os.PathLike[str] | None = None,
          progress: bool = True,
          on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every scenario; one record per scenario, in ``scenarios``' order.

    Parameters
    ----------
    workers
        Local worker processes (default: the CPU count, at most the number of scenarios);
        1 runs in this process.
    dask
        A ``distributed.Client``, or a scheduler address (``"tcp://host:8786"``): run there
        instead of on local processes.
    cache
        A folder: records found there are reused, new ones written as they arrive.
    progress
        A progress bar on stderr.
    on_record
        Called with each new record as it arrives (in completion order).

    Notes
    -----
    A failed scenario's record has ``error`` set and ``None`` results; a cached failure is
    run again (it may have been the machine's fault). Results do not depend on where a
    scenario ran; only ``wall_s`` does.
    """
    folder = Path(cache) if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    todo: list[Scenario] = []
    for s in scenarios:
        key = s.key()
        if key in records or any(t.key() == key for t in todo):
            continue
        found = _cached(folder, key)
        if found is not None:
            records[key] = found
        else:
            todo.append(s)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=not progress or not todo, unit="scenario",
               desc="sweep", dynamic_ncols=True)

    def arrived(record: dict[str, Any]) -> None:
        records[record["key"]] = record
        if folder is not None and record["error"] is None:
            _store(folder, record)
        if on_record is not None:
            on_record(record)
        bar.update(1)

    try:
        for record in _execute(todo, workers, dask):
            arrived(record)
    finally:
        bar.close()
    return [records[s.key()] for s in scenarios]


def _execute(todo: list[Scenario], workers: int | None,
             dask: Any) -> Iterable[dict[str, Any]]:
    """Each scenario's record, in completion order."""
    if not todo:
        return
    if dask is not None:
        from distributed import Client, as_completed

        client = dask if isinstance(dask, Client) else Client(str(dask))
        try:
            futures = client.map(_safe, todo, pure=False)
            for future in as_completed(futures):
                yield future.result()
        finally:
            if client is not dask:
                client.close()
        return
    count = min(workers or os.cpu_count() or 1, len(todo))
    if count <= 1:
        for s in todo:
            yield _safe(s)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=count) as pool:
        for future in concurrent.futures.as_completed([pool.submit(_safe, s) for s in todo]):
            yield future.result()


def _cached(folder: Path | None, key: str) -> dict[str, Any] | None:
    if folder is None:
        return None
    path = folder / f"{key}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or half-written by a crash: run it again
    return record if isinstance(record, dict) and record.get("key") == key else None


def _store(folder: Path, record: dict[str, Any]) -> None:
    path = folder / f"{record['key']}.json"
    spare = path.with_suffix(".tmp")
    spare.write_text(json.dumps(record))
    spare.replace(path)  # atomic: a crash leaves the old file or the new one


def load_grid(path: str | os.PathLike[str]) -> tuple[list[Scenario], dict[str, Any]]:
    """The scenarios of a grid file, and its settings (``cache``, ``out``, ``workers``).

    The file is YAML: a ``grid`` mapping (see :func:`grid`), a ``scenarios`` list of
    mappings, or both (the grid's scenarios first); optional top-level ``cache`` (folder),
    ``out`` (records file) and ``workers`` are relative to the file's folder."""
    import yaml

    where = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, Mapping):
        raise InputError(f"{where}: a grid file is a mapping with 'grid' and/or 'scenarios'")
    unknown = sorted(set(doc) - {"grid", "scenarios", "cache", "out", "workers"})
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: cache, grid, out, "
                         "scenarios, workers)")
    scenarios = grid(doc["grid"], f"{where}: grid") if "grid" in doc else []
    listed = doc.get("scenarios") or []
    if not isinstance(listed, list):
        raise InputError(f"{where}: scenarios must be a list of mappings")
    for i, entry in enumerate(listed):
        if not isinstance(entry, Mapping):
            raise InputError(f"{where}: scenarios[{i}] must be a mapping")
        scenarios.append(Scenario.from_dict(entry, f"{where}: scenarios[{i}]"))
    if not scenarios:
        raise InputError(f"{where}: no scenarios (give 'grid' or 'scenarios')")
    base = Path(path).parent
    settings = {k: str(base / doc[k]) for k in ("cache", "out") if doc.get(k)}
    if "workers" in doc:
        settings["workers"] = doc["workers"]
    return scenarios, settings


def write_records(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write ``records`` to ``path``: ``.csv``, ``.json`` (a list) or ``.parquet``."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".json":
        target.write_text(json.dumps(list(records), indent=1))
    elif suffix == ".csv":
        import csv

        columns = list(dict.fromkeys(k for r in records for k in r))
        with target.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(records)
    elif suffix == ".parquet":
        to_frame(records).to_parquet(target)
    else:
        raise InputError(f"{path}: records are written as .csv, .json or .parquet")


def to_frame(records: Sequence[Mapping[str, Any]]) -> Any:
    """``records`` as a pandas DataFrame (the ``notebooks`` extra installs pandas)."""
    try:
        import pandas as pd
    except ImportError:
        raise NetstormError("to_frame needs pandas: pip install 'netstorm[notebooks]'") from None
    return pd.DataFrame(list(records))
