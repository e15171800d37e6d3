"""``netstorm bench ddp``: what the hook and the backend cost a DDP step against gloo.

Unshaped loopback (every link the same memory copy), the built-in training's MLP at a width
whose gradients pass 10 MB, one process per site: the median step time of plain DDP on gloo,
DDP with the netstorm hook, and DDP on the ``"netstorm"`` backend, measured one after the
other in the same run, and their ratios to gloo's.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from .runtime import loopback_topology

__all__ = ["run"]

COMMS = ("gloo", "hook", "backend")


def run(quick: bool = False, *, sites: int = 4, device: str = "cpu") -> dict[str, Any]:
    """Median DDP step time per comm and the ratio to gloo's (steps after the 10th)."""
    from netstorm.runtime import launch
    from netstorm.runtime.launch import LaunchConfig
    from netstorm.runtime.train import make_model

    width, steps = (512, 20) if quick else (1600, 40)
    grad_mb = 4 * sum(p.numel() for p in make_model(width).parameters()) / 1e6
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="netstorm-bench-ddp-") as tmp:
        topo = loopback_topology(Path(tmp), sites)
        for comm in COMMS:
            status, doc = launch.run(LaunchConfig(
                topology=topo, emulate="none", iterations=steps, sites_to_stderr=True,
                command=(sys.executable, "-m", "netstorm.runtime.train", "--comm", comm,
                         "--width", str(width), "--device", device, "--eval-every", "0")))
            if status:
                raise RuntimeError(f"bench ddp: the {comm} run failed with status {status}")
            times = [r["time_s"] for r in doc["iterations"]][steps // 4:]
            rows.append({"benchmark": "ddp", "sites": sites, "device": device,
                         "gradient_MB": round(grad_mb, 2), "comm": comm,
                         "step_ms": 1e3 * statistics.median(times)})
    gloo = rows[0]["step_ms"]
    for row in rows:
        row["vs_gloo"] = row["step_ms"] / gloo
    return {"benchmark": "ddp", "timing": "median step time after the first quarter; one "
            "run per comm, in turn, on an unshaped loopback", "results": rows}
