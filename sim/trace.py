"""Chrome trace JSON (open in Perfetto or chrome://tracing): one track per link and site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .result import SimResult

__all__ = ["chrome_trace", "write_trace"]

_LINKS_PID, _SITES_PID = 1, 2


def chrome_trace(result: SimResult) -> dict[str, Any]:
    """The trace-event document of a run recorded with ``record=True``.

    Notes
    -----
    Process 1 ("links") has one thread per directed link that carried traffic, with a
    complete event (``ph: X``) per hop transfer; process 2 ("sites") has one thread per site
    with its compute spans, and instant events for plan switches. Times are microseconds of
    simulated time.
    """
    names = result.sites
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": _LINKS_PID, "name": "process_name", "args": {"name": "links"}},
        {"ph": "M", "pid": _SITES_PID, "name": "process_name", "args": {"name": "sites"}},
    ]
    n = len(names)
    seen: set[int] = set()
    for src, dst, start, end, tag in result.log:
        tid = src * n + dst
        if tid not in seen:
            seen.add(tid)
            events.append({"ph": "M", "pid": _LINKS_PID, "tid": tid, "name": "thread_name",
                           "args": {"name": f"{names[src]}->{names[dst]}"}})
        label = "probe" if tag and tag[0] == "probe" else f"iter {tag[0]}" if tag else "xfer"
        events.append({"ph": "X", "pid": _LINKS_PID, "tid": tid, "name": label,
                       "ts": start * 1e6, "dur": max(0.0, (end - start) * 1e6)})
    for i, name in enumerate(names):
        events.append({"ph": "M", "pid": _SITES_PID, "tid": i, "name": "thread_name",
                       "args": {"name": name}})
    for site, start, end in result.computes:
        events.append({"ph": "X", "pid": _SITES_PID, "tid": site, "name": "compute",
                       "ts": start * 1e6, "dur": (end - start) * 1e6})
    for sw in result.switches:
        events.append({"ph": "i", "pid": _SITES_PID, "tid": 0, "s": "p",
                       "name": f"plan v{sw.version}", "ts": sw.time_s * 1e6,
                       "args": {"reason": sw.reason, "planning_s": sw.planning_s}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"planner": result.planner, "topology": result.topology,
                          "model": result.model}}


def write_trace(result: SimResult, path: str | Path) -> None:
    """Write :func:`chrome_trace` of ``result`` to ``path``."""
    Path(path).write_text(json.dumps(chrome_trace(result)))
