"""One site process of ``netstorm bench runtime`` (:mod:`netstorm.cli.bench.runtime`).

``python -m netstorm.cli.bench.runtime_worker SPEC OUT`` reads the phases to run from the JSON
file ``SPEC`` and writes this rank's figures to the JSON file ``OUT``. Rank and world size
come from the torchrun-style environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``); every
phase brings its own coordinator port. Phases, in the order given:

``netstorm``  ``nr.init(topology, planner, policy=...)``, warm-ups, then timed
              ``site.allreduce(x)`` calls, each after a one-element all-reduce that serves as
              a barrier; the site is closed afterwards.
``gloo``      ``torch.distributed`` with the gloo backend on the same ranks: timed
              ``dist.all_reduce`` (a sum; the division to a mean is done but not timed),
              each after ``dist.barrier()``.
``memory``    RSS right after ``nr.init()``, then for each of ``calls`` all-reduces the RSS
              before it and the peak during it (``VmHWM``, reset before each call through
              ``/proc/self/clear_refs``), from ``/proc/self/status``.

Every timed phase reports per-call seconds and the process CPU time (user + system, all
threads, :func:`resource.getrusage`) over the timed loop.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from netstorm.runtime.exits import exit_now

__all__ = ["main"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``); 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); ``False`` if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _data(rank: int, numel: int) -> np.ndarray:
    x = np.random.default_rng(rank).standard_normal(numel, dtype=np.float32)
    return x


def _max_error(x: np.ndarray, workers: tuple[int, ...] | range, *, mean: bool = True,
               stride: int = 997) -> float:
    """Largest |x - mean (or sum) of every worker's data| on every ``stride``-th element."""
    want = np.zeros(x[::stride].shape, dtype=np.float64)
    for w in workers:
        want += _data(w, x.size)[::stride]
    if mean:
        want /= len(workers)
    return float(np.max(np.abs(x[::stride] - want), initial=0.0))


def _netstorm(spec: dict[str, Any], rank: int) -> dict[str, Any]:
    import netstorm.runtime as nr

    t0 = time.perf_counter()
    site = nr.init(spec["topology"], spec["planner"], policy=spec.get("policy"),
                   master_port=int(spec["port"]), emulate=spec.get("emulate"),
                   time_scale=spec.get("time_scale"))
    init_s = time.perf_counter() - t0
    try:
        numel = int(spec["numel"])
        src = _data(rank, numel)
        x = src.copy()
        tick = np.zeros(1, dtype=np.float32)

        def one() -> float:
            x[:] = src
            site.allreduce(tick)  # a barrier: every site starts the timed call together
            started = time.perf_counter()
            site.allreduce(x)
            return time.perf_counter() - started

        warm = [one() for _ in range(int(spec["warmup"]))]
        cpu0, wall0 = _cpu(), time.perf_counter()
        times = [one() for _ in range(int(spec["reps"]))]
        cpu_s, wall_s = _cpu() - cpu0, time.perf_counter() - wall0
        plan = site.plan
        stats = site.stats()
        error = _max_error(x, site.view.workers) if rank == 0 else None
    finally:
        site.close()
    return {"times_s": times, "warmup_s": warm, "cpu_s": cpu_s, "wall_s": wall_s,
            "init_s": init_s, "plan": None if plan is None else plan.to_dict(),
            "plan_versions": sorted({r["plan_version"] for r in stats["collectives"]}),
            "finite": bool(np.isfinite(x).all()), "max_error": error}


def _gloo(spec: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{int(spec['port'])}",
                            rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(
                                seconds=float(spec.get("timeout_s", 120))))
    try:
        numel = int(spec["numel"])
        src = torch.from_numpy(_data(rank, numel))
        x = src.clone()

        def one() -> float:
            x.copy_(src)
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(x)
            took = time.perf_counter() - started
            x.div_(world)  # gloo sums; the mean is not timed
            return took

        warm = [one() for _ in range(int(spec["warmup"]))]
        cpu0, wall0 = _cpu(), time.perf_counter()
        times = [one() for _ in range(int(spec["reps"]))]
        cpu_s, wall_s = _cpu() - cpu0, time.perf_counter() - wall0
        finite = bool(torch.isfinite(x).all())
        error = _max_error(x.numpy(), range(world)) if rank == 0 else None
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"times_s": times, "warmup_s": warm, "cpu_s": cpu_s, "wall_s": wall_s,
            "finite": finite, "max_error": error}


def _memory(spec: dict[str, Any], rank: int) -> dict[str, Any]:
    import netstorm.runtime as nr

    site = nr.init(spec["topology"], spec["planner"], policy=spec.get("policy"),
                   master_port=int(spec["port"]))
    try:
        after_init = _status("VmRSS")
        numel = int(spec["numel"])
        x = _data(rank, numel)  # touched: resident before the all-reduce
        peaks: list[int] = []
        bases: list[int] = []
        resettable = True
        times: list[float] = []
        for _ in range(int(spec.get("calls", 3))):
            resettable = _reset_peak() and resettable
            bases.append(_status("VmRSS"))
            started = time.perf_counter()
            site.allreduce(x)
            times.append(time.perf_counter() - started)
            peaks.append(_status("VmHWM"))
        after = _status("VmRSS")
    finally:
        site.close()
    return {"rss_after_init_bytes": after_init, "rss_before_bytes": bases,
            "peak_rss_bytes": peaks, "rss_after_bytes": after, "peak_resettable": resettable,
            "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "times_s": times, "gradient_bytes": numel * 4}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m netstorm.cli.bench.runtime_worker SPEC.json OUT.json",
              file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out: dict[str, Any] = {"rank": rank, "world_size": world, "phases": []}
    for phase in spec["phases"]:
        kind = phase["kind"]
        if rank == 0:
            print(f"  rank 0: {kind} {phase.get('planner') or ''}", file=sys.stderr,
                  flush=True)
        if kind == "netstorm":
            row = _netstorm(phase, rank)
        elif kind == "gloo":
            row = _gloo(phase, rank, world)
        elif kind == "memory":
            row = _memory(phase, rank)
        else:
            raise ValueError(f"unknown phase {kind!r}")
        out["phases"].append({"kind": kind, "planner": phase.get("planner"), **row})
        Path(args[1]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    exit_now(main())
