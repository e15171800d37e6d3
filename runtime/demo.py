"""The built-in demo of ``netstorm run``: an all-reduce loop that checks every result.

Every worker fills its buffer from a generator seeded by its rank and the iteration, so each
can compute the exact mean of all workers itself and check the runtime's answer; the plan
re-plans live as the emulated network changes (the runtime logs every collective and switch
to ``NETSTORM_LOG``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .exits import main_of
from .start import init

__all__ = ["main"]


def _grad(rank: int, it: int, numel: int) -> np.ndarray:
    return np.random.default_rng((rank, it)).standard_normal(numel, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netstorm.runtime.demo")
    parser.add_argument("--topology", default=os.environ.get("NETSTORM_TOPOLOGY", "netstorm9"))
    parser.add_argument("--planner", default=os.environ.get("NETSTORM_PLANNER", "treepack"))
    parser.add_argument("--policy", default=os.environ.get("NETSTORM_POLICY") or None)
    parser.add_argument("--iterations", type=int,
                        default=int(os.environ.get("NETSTORM_ITERATIONS", "5")))
    parser.add_argument("--mbytes", type=float,
                        default=float(os.environ.get("NETSTORM_MBYTES", "16")))
    args = parser.parse_args(argv)
    site = init(args.topology, args.planner, policy=args.policy)
    numel = int(args.mbytes * 1e6) // 4
    seed = {name: i for i, name in enumerate(site.view.sites)}  # by name: an elastic run
    worst = 0.0  # renumbers the ranks when a site leaves
    admit = getattr(site, "admit", None)  # an elastic run: sites may join between iterations
    it = 0
    while it < args.iterations:
        if admit is not None:  # a newcomer learns the iteration (the state is nothing more)
            it = admit(np.array([it], dtype=np.float32), it)
        buf = _grad(seed[site.name], it, numel)
        started = time.perf_counter()
        site.allreduce(buf)
        elapsed = time.perf_counter() - started
        view = site.view  # the workers the mean was taken over (fewer, once one left)
        want = np.mean([_grad(seed[view.sites[w]], it, numel) for w in view.workers], axis=0,
                       dtype=np.float64)
        err = float(np.max(np.abs(buf - want)))
        worst = max(worst, err)
        row = site.stats()["collectives"][-1]
        if site.rank == view.workers[0]:
            print(f"iteration {it}: {elapsed:.3f} s, plan v{row['plan_version']}, "
                  f"{len(view.workers)} workers, max |error| {err:.2e}", flush=True)
        it += 1
    site.close()
    if worst > 1e-4:
        print(f"{site.name}: result differs from the mean by {worst:.2e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_of(main))
