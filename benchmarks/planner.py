"""Planner benchmarks: ``python benchmarks/planner.py [--quick]`` prints JSON figures.

The same figures come from ``netstorm bench planner --json``; the logic lives in
``netstorm.cli.bench.planner`` so the installed CLI can run it. The full run shows a progress
bar on stderr.
"""

from __future__ import annotations

import json
import sys

from netstorm.cli.bench.planner import run

if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
