"""Planning time and predicted time of the paper's ``netstorm`` planner on full meshes.

``python benchmarks/netstorm_planner.py [--sizes 32,128,500] [--views V1,V2] [--reference REV]
[--limit SECONDS]`` prints one JSON object. For every ``random:N:1`` of ``--sizes`` and every
view of ``--views`` it times :func:`netstorm.plan` with ``planner="netstorm"`` (planning,
validation and prediction: the ``plan s`` column of ``netstorm compare``) and reports the
predicted all-reduce time of ResNet-50. With ``--reference REV`` the planner module as it was
at git revision REV runs the same cases in the same process, so a before/after comparison
shares the machine's state. Each case runs in its own process after a warm-up plan on
``random:5:1`` and is abandoned after ``--limit`` seconds (reported as ``null``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netstorm.builtin_topologies import builtin
from netstorm.job import Job
from netstorm.registry import plan

__all__ = ["main", "reference_planner", "time_plan"]

ROOT = Path(__file__).resolve().parents[1]


def reference_planner(rev: str) -> Any:
    """The ``netstorm`` planner function of ``netstorm/planners/netstorm.py`` at ``rev``,
    loaded as a sibling module of the package so its relative imports resolve."""
    source = subprocess.run(["git", "show", f"{rev}:netstorm/planners/netstorm.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_reference_netstorm.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("netstorm.planners._reference_netstorm",
                                                  path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.netstorm


def time_plan(view_name: str, reference: str | None) -> dict[str, Any]:
    """Plan ``view_name`` with the current planner (or the one at git rev ``reference``)."""
    planner: Any = "netstorm" if reference is None else reference_planner(reference)
    job = Job.from_model("resnet50")
    view = builtin(view_name)
    started = time.perf_counter()
    result = plan(view, job, planner)
    return {"planning_s": time.perf_counter() - started,
            "predicted_time_s": result.predicted_time_s}


def _worker(view_name: str, reference: str | None, out: Any) -> None:
    plan(builtin("random:5:1"), Job.from_model("resnet50"), "netstorm")  # warm-up
    out.put(time_plan(view_name, reference))


def _run(view_name: str, reference: str | None, limit: float) -> dict[str, Any] | None:
    """One case in a child process, abandoned after ``limit`` seconds."""
    queue: Any = multiprocessing.Queue()
    child = multiprocessing.Process(target=_worker, args=(view_name, reference, queue))
    child.start()
    child.join(limit)
    if child.is_alive():
        child.terminate()
        child.join()
        return None
    return queue.get()  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run every case, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128,500")
    parser.add_argument("--views", default="")
    parser.add_argument("--reference", default=None, metavar="REV")
    parser.add_argument("--limit", type=float, default=600.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    names = [f"random:{n}:1" for n in args.sizes.split(",") if n]
    names += [v for v in args.views.split(",") if v]
    rows = []
    for name in names:
        row: dict[str, Any] = {"view": name, "current": _run(name, None, args.limit)}
        if args.reference:
            row["reference"] = _run(name, args.reference, args.limit)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {"benchmark": "netstorm planner", "model": "resnet50", "reference": args.reference,
            "limit_s": args.limit, "results": rows}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
