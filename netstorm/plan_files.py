"""Plans as input: a plan JSON file (``netstorm plan --json`` writes one), loaded and checked
against the topology it is to run on.

Every entry point that executes a plan from a file goes through :func:`load_plan`, so a
hand-edited plan that misses a worker or names another topology's sites fails with one line
that names the file, instead of giving a silently wrong time or result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .check import check_plan
from .errors import PlanError
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = ["fixed_planner", "load_plan"]


def load_plan(path: str | Path, view: NetworkView, job: Job | None = None) -> Plan:
    """The plan in the JSON file ``path``, checked against ``view`` (and ``job``).

    Raises
    ------
    PlanError
        The file cannot be read, is not UTF-8 JSON, is not a plan, or breaks an invariant on
        ``view`` (:func:`~netstorm.check.check_plan`); the message names the file.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise PlanError(f"{where}: line {line}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{where}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, Mapping):
        raise PlanError(f"{where}: a plan is a JSON object, got {type(doc).__name__}")
    try:
        plan = Plan.from_dict(doc)
        check_plan(plan, view, job)
    except (PlanError, ValueError) as exc:  # (ValueError: a field's own validation)
        raise PlanError(f"{where}: {exc}") from None
    return plan


def fixed_planner(plan: Plan, name: str | None = None) -> Any:
    """A planner (DESIGN 4) that always returns ``plan``: a plan file run where a planner
    is expected. Its default re-plan policy is ``static``: a file is one decision, and
    nothing re-plans it when the network changes."""

    def planner(view: NetworkView, job: Job, *, seed: Any = None, state: Any = None) -> Plan:
        del job, seed, state
        if tuple(view.sites) != tuple(plan.sites):
            raise PlanError(f"plan {name or plan.planner!r} is for sites {list(plan.sites)}, "
                            f"not {list(view.sites)}")
        return plan

    planner.__name__ = name or f"{plan.planner} (file)"
    planner.default_policy = "static"  # type: ignore[attr-defined]
    return planner
