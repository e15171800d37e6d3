"""How fast can tree plans get on latency-bound meshes? A search far wider than treepack's.

``python benchmarks/latency_front.py [VIEW ...] [--json]`` (default views: the three where
treepack's quality is above 1.25: ``cities``, ``random:16:1``, ``random:16:2``).

Figures, not pass/fail. treepack picks its plan among a few packings (issue 3). This script
spends about ten times its effort per view on two wider families and reports the best
predicted time each finds, over the bound (``quality``), beside treepack's own:

- ``budgets``: one packing per delay budget (:func:`netstorm.planners.treepack.delay_budget`)
  at scales 1.0-2.0 of the unavoidable depth, shared and per root;
- ``capped``: the pooled trees of all those packings (thousands), re-packed by the master LP
  under 40 caps on each tree's fill (quantiles of the pool's fills).

Each candidate is judged by :func:`netstorm.predict` with treepack's finest chunk. If
neither family gets far below treepack, the remaining gap to the bound is not a matter of
searching harder among tree packings with this cost model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from netstorm import Job, bound, load_topology, plan, predict
from netstorm.chunking import chunk_candidates
from netstorm.packing import TreePair, pack_trees, solve_master
from netstorm.planners.treepack import column_fills, columns_plan, default_rounds, delay_budget

VIEWS = ("cities", "random:16:1", "random:16:2")
SCALES = (1.0, 1.25, 1.5, 1.75, 2.0)
CAPS = 40


def _quality(columns: tuple[TreePair, ...], view: Any, job: Job, limit: float) -> float:
    return predict(columns_plan(view, columns), view, job).time_s / limit


def front(name: str) -> dict[str, Any]:
    """Best quality of each family on the view ``name`` (see the module docstring)."""
    view = load_topology(name)
    model = Job.from_model("resnet50")
    job = model.with_chunk(min(chunk_candidates(model)))
    limit = bound(view, job).time_s
    start = time.perf_counter()
    pool: list[TreePair] = []
    budgets = []
    for shared in (True, False):
        for scale in SCALES:
            packing = pack_trees(view, tol=1e-3, max_rounds=default_rounds(view.n),
                                 time_limit_s=np.inf, solver="simplex",
                                 variants=[delay_budget(view, job, scale, shared)])
            pool.extend(packing.pool)
            budgets.append({"scale": scale, "shared": shared,
                            "quality": _quality(packing.columns, view, job, limit)})
    fills = column_fills(view, job, pool)
    order = np.argsort(fills, kind="stable")
    caps = np.unique(np.quantile(fills, np.linspace(0.05, 1.0, CAPS)))
    batches, first = [], 0
    for cap in caps:  # each batch adds the trees whose fill fits under the next cap
        stop = int(np.searchsorted(fills[order], cap, side="right"))
        batches.append([pool[i] for i in order[first:stop]])
        first = stop
    capped = [_quality(columns, view, job, limit)
              for _, columns in solve_master(view, batches) if columns]
    own = predict(plan(view, model, "treepack"), view, model).time_s / limit
    return {"view": name, "bound_s": limit, "treepack": own,
            "budgets": min(b["quality"] for b in budgets),
            "capped": min(capped), "pool_trees": len(pool),
            "search_s": time.perf_counter() - start, "per_budget": budgets}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("views", nargs="*", default=list(VIEWS),
                        help=f"topologies (default: {' '.join(VIEWS)})")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    rows = []
    for name in args.views:
        rows.append(front(name))
        if not args.json:
            r = rows[-1]
            print(f"{r['view']:<12} bound {r['bound_s']:.3f} s  treepack {r['treepack']:.3f}  "
                  f"budgets {r['budgets']:.3f}  capped {r['capped']:.3f}  "
                  f"({r['pool_trees']} trees, {r['search_s']:.1f} s)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
