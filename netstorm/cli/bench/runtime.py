"""``netstorm bench runtime``: the TCP runtime's figures on this machine (never pass/fail).

Every figure is a ratio of two things measured (or simulated) in the same run, so it says
something on a noisy machine:

``loopback``  unshaped loopback (``NETSTORM_EMULATE=none``), P site processes planned on
              a uniform P-site full mesh (every pair 40 Gbit/s: what loopback is; every site
              a worker): ``site.allreduce`` (planners
              treepack and ring, policy static) and torch's gloo ``dist.all_reduce`` in the
              same processes; ``gloo_over_this`` = gloo time / this time (> 1: faster than
              gloo). ``cpu_cores_per_process``: CPU seconds (all threads) per wall second
              of the timed loop, mean over the sites.
``shaped``    two sites joined by an emulated 400 Mbit/s link (``inprocess``, time scale 1):
              ``rate_fidelity`` = the plan's predicted time / the measured time;
              ``link_rate_over_configured`` = the busiest link's bytes (from the plan) per
              measured second over the link's configured rate.
``fidelity``  emulated ``netstorm9`` with each planner's time scale K chosen so that its
              plan moves about 200 MB/s in total on average; runtime time vs the
              simulator's time (``netstorm.sim.allreduce``) of the same plan on the view
              scaled by K: ``runtime_over_sim``.
``memory``    each site's peak RSS growth during an all-reduce over its RSS just before it
              (gradient resident), as a multiple of the gradient size:
              ``first_call_growth_x`` for the first call after ``nr.init()`` (it also plans
              and imports numba and the reduction kernels: a fixed ~150 MB or so),
              ``later_call_growth_x`` the most of two later calls; ``peak_since_init_x``:
              the highest peak over the RSS right after ``nr.init()`` (gradient included).

Times are the median over the timed repetitions of the slowest site's time of each call
(every call after a barrier: a one-element all-reduce, or gloo's barrier).
Site processes run ``python -m netstorm.cli.bench.runtime_worker`` with the environment
``netstorm run`` sets, one thread for numba and OpenMP each; each launch has a deadline and
its process groups are killed when it ends, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from netstorm.cost import link_loads
from netstorm.errors import NetstormError
from netstorm.job import Job
from netstorm.plan import Plan
from netstorm.registry import plan as make_plan
from netstorm.runtime.ports import free_ports
from netstorm.runtime.procs import clean_env, kill_groups
from netstorm.topology import load_topology
from netstorm.view import NetworkView

__all__ = ["BenchError", "launch", "loopback_topology", "run"]

#: Aggregate emulated rate the fidelity runs aim at, bytes/s (all links together).
TARGET_RATE = 200e6
#: Chunk size the runtime plans with (``init``'s default).
CHUNK_BYTES = 4_000_000
SHAPED_MBIT = 400.0

TWO_SITES = """\
name: bench-two-sites
units: {bandwidth: Mbit/s, latency: ms}
sites:
  - {name: a}
  - {name: b}
links:
  - {src: a, dst: b, bandwidth: %g, latency: 1, symmetric: true}
"""


class BenchError(NetstormError, RuntimeError):
    """A launch of site processes failed or ran past its deadline."""


def _log(msg: str) -> None:
    print(f"bench runtime: {msg}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch(n: int, phases: list[dict[str, Any]], *, timeout_s: float,
           env: dict[str, str] | None = None, label: str = "") -> list[dict[str, Any]]:
    """Run ``phases`` (see :mod:`netstorm.cli.bench.runtime_worker`) in ``n`` site processes.

    Every phase without a ``port`` gets a free one. Returns each rank's figures (rank order).

    Raises
    ------
    BenchError
        A site exited non-zero (its output's tail in the message) or the launch ran past
        ``timeout_s``; every site process group is killed before this returns or raises.
    """
    ports = free_ports(len(phases))
    phases = [dict(ph, port=ph.get("port") or port) for ph, port in zip(phases, ports,
                                                                        strict=True)]
    workdir = Path(tempfile.mkdtemp(prefix="netstorm-bench-"))
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"phases": phases}))
    base = clean_env()
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(phases[0]["port"]),
                WORLD_SIZE=str(n), NETSTORM_SECRET=secrets.token_hex(32),
                NETSTORM_TIMEOUT=str(min(120.0, timeout_s)), NETSTORM_EMULATE="none",
                NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    base.update(env or {})
    procs: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"rank{r}.log" for r in range(n)]
    outs = [workdir / f"rank{r}.json" for r in range(n)]
    started = time.monotonic()
    try:
        for rank in range(n):
            with open(logs[rank], "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "netstorm.cli.bench.runtime_worker", str(spec),
                     str(outs[rank])],
                    env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        while True:
            codes = [p.poll() for p in procs]
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                time.sleep(0.5)  # let the others report the same failure, then pick rank 0's
                r = bad[0]
                raise BenchError(f"{label}: site {r} exited with status {codes[r]}:\n"
                                 f"{_tail(logs[r])}")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() - started > timeout_s:
                alive = [r for r, c in enumerate(codes) if c is None]
                raise BenchError(f"{label}: still running after {timeout_s:g} s "
                                 f"(sites {alive}); rank {alive[0]} said:\n"
                                 f"{_tail(logs[alive[0]])}")
            time.sleep(0.05)
        return [json.loads(o.read_text()) for o in outs]
    finally:
        kill_groups(procs)
        for path in (*logs, *outs, spec):
            path.unlink(missing_ok=True)
        workdir.rmdir()


# -- summaries -----------------------------------------------------------------------------
def _timing(ranks: list[dict[str, Any]], i: int) -> dict[str, float]:
    """Phase ``i`` over the ranks: median of each call's slowest site, CPU use."""
    per_call = np.max([r["phases"][i]["times_s"] for r in ranks], axis=0)
    cores = [r["phases"][i]["cpu_s"] / r["phases"][i]["wall_s"] for r in ranks]
    return {"time_s": float(statistics.median(per_call)), "min_s": float(per_call.min()),
            "cpu_cores_per_process": float(np.mean(cores)),
            "cpu_cores_total": float(np.sum(cores))}


def _plan_of(ranks: list[dict[str, Any]], i: int) -> Plan:
    return Plan.from_dict(ranks[0]["phases"][i]["plan"])


def _scaled(view: NetworkView, k: float) -> NetworkView:
    """``view`` as the emulator runs it at time scale ``k``: rates times k, delays over k."""
    def times(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=float) * k  # caps are arrays (inf where none)

    return dataclasses.replace(view, capacity=times(view.capacity),
                               latency=np.asarray(view.latency, dtype=float) / k,
                               egress=times(view.egress), ingress=times(view.ingress),
                               _graph_cache={})


# -- the four measurements -----------------------------------------------------------------
def loopback_topology(folder: Path, sites: int) -> str:
    """A topology file in ``folder`` of what loopback is: ``sites`` sites, every ordered pair
    alike (40 Gbit/s, no latency); returns its path."""
    topo = folder / f"loopback{sites}.yaml"
    topo.write_text(yaml.safe_dump({
        "name": f"loopback{sites}", "units": {"bandwidth": "Gbit/s", "latency": "ms"},
        "sites": [{"name": f"p{i}"} for i in range(sites)],
        "links": [{"src": f"p{i}", "dst": f"p{j}", "bandwidth": 40, "latency": 0}
                  for i in range(sites) for j in range(sites) if i != j]}))
    return str(topo)


def loopback(sites: int, mbytes: float, *, planners: Sequence[str] = ("treepack", "ring"),
             gloo: bool = True, warmup: int = 2, reps: int = 5,
             timeout_s: float = 600.0) -> list[dict[str, Any]]:
    """Unshaped loopback all-reduce of ``mbytes`` MB over ``sites`` processes."""
    numel = int(mbytes * 1e6) // 4
    folder = tempfile.TemporaryDirectory(prefix="netstorm-bench-")
    topo = loopback_topology(Path(folder.name), sites)
    phases: list[dict[str, Any]] = [
        {"kind": "netstorm", "topology": topo, "planner": p, "policy": "static",
         "numel": numel, "warmup": warmup, "reps": reps} for p in planners]
    if gloo:
        phases.append({"kind": "gloo", "numel": numel, "warmup": warmup, "reps": reps,
                       "timeout_s": timeout_s})
    _log(f"loopback: {sites} sites, {mbytes:g} MB ({', '.join(planners)}"
         f"{', gloo' if gloo else ''})")
    with folder:
        ranks = launch(sites, phases, timeout_s=timeout_s, label=f"loopback {sites} sites")
    rows = []
    gloo_s = _timing(ranks, len(phases) - 1)["time_s"] if gloo else None
    for i, ph in enumerate(phases):
        t = _timing(ranks, i)
        name = "gloo" if ph["kind"] == "gloo" else f"netstorm {ph['planner']}"
        first = max(r["phases"][i]["warmup_s"][0] for r in ranks) if warmup else None
        rows.append({"benchmark": "loopback", "sites": sites, "mbytes": mbytes, "impl": name,
                     "time_s": t["time_s"], "min_s": t["min_s"], "first_call_s": first,
                     "algbw_MB_s": mbytes / t["time_s"],
                     "gloo_over_this": None if gloo_s is None else gloo_s / t["time_s"],
                     "cpu_cores_per_process": t["cpu_cores_per_process"],
                     "cpu_cores_total": t["cpu_cores_total"],
                     "max_error": ranks[0]["phases"][i]["max_error"],
                     "finite": all(r["phases"][i]["finite"] for r in ranks)})
    return rows


def shaped(mbytes: float, *, mbit: float = SHAPED_MBIT, planners: Sequence[str] = ("ps", "ring"),
           warmup: int = 1, reps: int = 3, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Two sites over one emulated ``mbit`` Mbit/s link (each way), time scale 1."""
    numel = int(mbytes * 1e6) // 4
    with tempfile.TemporaryDirectory(prefix="netstorm-bench-") as tmp:
        topo = str(Path(tmp) / "two.yaml")
        Path(topo).write_text(TWO_SITES % mbit)
        view = load_topology(topo)
        phases = [{"kind": "netstorm", "topology": topo, "planner": p, "policy": "static",
                   "numel": numel, "warmup": warmup, "reps": reps, "emulate": "inprocess",
                   "time_scale": 1.0} for p in planners]
        _log(f"shaped: 2 sites, {mbit:g} Mbit/s, {mbytes:g} MB ({', '.join(planners)})")
        ranks = launch(2, phases, timeout_s=timeout_s, label="shaped 2 sites")
    job = Job(buckets=numel * 4, chunk_bytes=CHUNK_BYTES)
    rate = mbit * 1e6 / 8
    rows = []
    for i, p in enumerate(planners):
        t = _timing(ranks, i)
        plan = _plan_of(ranks, i)
        busiest = float(link_loads(plan, view, job)[0].max())
        predicted = float(plan.predicted_time_s or 0.0)
        rows.append({"benchmark": "shaped", "sites": 2, "mbytes": mbytes, "planner": p,
                     "link_mbit_s": mbit, "time_s": t["time_s"], "predicted_s": predicted,
                     "rate_fidelity": predicted / t["time_s"],
                     "link_bytes": busiest,
                     "link_rate_over_configured": busiest / t["time_s"] / rate,
                     "cpu_cores_per_process": t["cpu_cores_per_process"]})
    return rows


def time_scale(view: NetworkView, job: Job, planner: str, target: float = TARGET_RATE) -> float:
    """K at which ``planner``'s plan moves ``target`` bytes/s in total on average (its bytes
    over all links / its predicted time at K), two significant digits."""
    p = make_plan(view, job, planner, seed=0)
    total = float(link_loads(p, view, job)[0].sum())
    k = target / (total / float(p.predicted_time_s or 1.0))
    return float(f"{k:.2g}")


def fidelity(mbytes: float, *, topology: str = "netstorm9",
             planners: Sequence[str] = ("ps", "netstorm", "treepack"), warmup: int = 1,
             reps: int = 3, timeout_s: float = 900.0) -> list[dict[str, Any]]:
    """Emulated ``topology``: runtime all-reduce time vs the simulator's for the same plan."""
    from netstorm.sim import allreduce as sim_allreduce

    view = load_topology(topology)
    numel = int(mbytes * 1e6) // 4
    job = Job(buckets=numel * 4, chunk_bytes=CHUNK_BYTES)
    scales = {p: time_scale(view, job, p) for p in planners}
    phases = [{"kind": "netstorm", "topology": topology, "planner": p, "policy": "static",
               "numel": numel, "warmup": warmup, "reps": reps, "emulate": "inprocess",
               "time_scale": scales[p]} for p in planners]
    _log(f"fidelity: {topology}, {mbytes:g} MB, time scales "
         f"{', '.join(f'{p} {k:g}' for p, k in scales.items())}")
    ranks = launch(view.n, phases, timeout_s=timeout_s, label=f"fidelity {topology}")
    rows = []
    for i, p in enumerate(planners):
        t = _timing(ranks, i)
        plan = _plan_of(ranks, i)
        k = scales[p]
        sim_s, _ = sim_allreduce(plan, _scaled(view, k), job)
        total = float(link_loads(plan, view, job)[0].sum())
        rows.append({"benchmark": "fidelity", "topology": topology, "mbytes": mbytes,
                     "planner": p, "time_scale": k, "runtime_s": t["time_s"],
                     "sim_s": float(sim_s), "runtime_over_sim": t["time_s"] / float(sim_s),
                     "predicted_s": float(plan.predicted_time_s or 0.0) / k,
                     "moved_MB_s": total / t["time_s"] / 1e6,
                     "cpu_cores_per_process": t["cpu_cores_per_process"],
                     "cpu_cores_total": t["cpu_cores_total"]})
    return rows


def memory(mbytes: float, *, sites: int = 2, planner: str = "treepack",
           timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Peak RSS growth of each site during an unshaped loopback all-reduce of ``mbytes``."""
    numel = int(mbytes * 1e6) // 4
    phases = [{"kind": "memory", "topology": f"random:{sites}:1", "planner": planner,
               "policy": "static", "numel": numel, "calls": 3}]
    _log(f"memory: {sites} sites, {mbytes:g} MB ({planner})")
    ranks = launch(sites, phases, timeout_s=timeout_s, label=f"memory {sites} sites")
    rows = []
    for r in ranks:
        m = r["phases"][0]
        grad = float(m["gradient_bytes"])
        growth = [p - b for p, b in zip(m["peak_rss_bytes"], m["rss_before_bytes"],
                                        strict=True)]
        rows.append({"benchmark": "memory", "sites": sites, "mbytes": mbytes,
                     "planner": planner, "rank": r["rank"],
                     "rss_after_init_MB": m["rss_after_init_bytes"] / 1e6,
                     "first_call_growth_x": growth[0] / grad,
                     "later_call_growth_x": max(growth[1:]) / grad,
                     "peak_since_init_x": (max(m["peak_rss_bytes"])
                                           - m["rss_after_init_bytes"]) / grad,
                     "peak_resettable": m["peak_resettable"],
                     "first_call_s": m["times_s"][0], "time_s": min(m["times_s"][1:])})
    return rows


def run(quick: bool = False, *, sites: Sequence[int] | None = None,
        loopback_mb: float | None = None, shaped_mb: float | None = None,
        fidelity_mb: float | None = None, memory_mb: float | None = None,
        parts: Sequence[str] = ("loopback", "shaped", "fidelity", "memory"),
        reps: int | None = None, fidelity_topology: str = "netstorm9") -> dict[str, Any]:
    """All four measurements (``parts`` picks some); sizes in MB (decimal); ``sites``: the
    loopback process counts. A part that fails becomes a row with its ``error`` and the
    others still run."""
    sites = tuple(sites or ((2, 4) if quick else (2, 4, 9)))
    sizes = {"loopback": loopback_mb or (16.0 if quick else 64.0),
             "shaped": shaped_mb or (8.0 if quick else 32.0),
             "fidelity": fidelity_mb or (16.0 if quick else 64.0),
             "memory": memory_mb or (25.0 if quick else 100.0)}
    n_reps = reps or (3 if quick else 5)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def attempt(part: str, fn: Any, *args: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        try:
            rows.extend(fn(*args, **kw))
        except (BenchError, NetstormError, OSError, ValueError, KeyError) as exc:
            _log(f"{part} failed: {exc}")
            rows.append({"benchmark": part, "error": str(exc)})
        _log(f"{part}: {time.perf_counter() - t0:.1f} s")

    if "loopback" in parts:
        for n in sites:
            attempt("loopback", loopback, n, sizes["loopback"], reps=n_reps,
                    warmup=1 if quick else 2)
    if "shaped" in parts:
        attempt("shaped", shaped, sizes["shaped"], reps=min(n_reps, 3))
    if "fidelity" in parts:
        attempt("fidelity", fidelity, sizes["fidelity"], topology=fidelity_topology,
                reps=min(n_reps, 2 if quick else 3), warmup=1)
    if "memory" in parts:
        attempt("memory", memory, sizes["memory"])
    return {"benchmark": "runtime", "quick": quick, "cpus": os.cpu_count(),
            "sizes_mb": sizes, "reps": n_reps, "target_rate_MB_s": TARGET_RATE / 1e6,
            "results": rows, "wall_s": time.perf_counter() - started}
