"""Simulator benchmarks: ``python benchmarks/sim.py [--quick]`` prints JSON figures.

The same figures come from ``netstorm bench sim --json``; the logic lives in
``netstorm.cli.bench.sim`` so the installed CLI can run it.
"""

from __future__ import annotations

import json
import sys

from netstorm.cli.bench.sim import run

if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
