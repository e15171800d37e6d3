"""The re-plan controller: awareness in the loop, the same in the simulator and the runtime.

Transfers report ``(src, dst, bytes, seconds, when)`` to a
:class:`~netstorm.awareness.BandwidthEstimator`; at every iteration boundary the re-plan
policy looks at the estimate and may switch to a new plan, which gets the next version
number and is compiled for every site at once. The clock and the planner call are
injected: SimPy time drives it in :func:`netstorm.sim.simulate`, wall time in the runtime's
coordinator.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .awareness import BandwidthEstimator, Policy, StaticPolicy
from .compiler import compile
from .cost import predict
from .job import Job
from .plan import Plan
from .program import NodeProgram
from .view import NetworkView

__all__ = ["Controller", "MakePlan", "Switch"]

#: ``make_plan(view, job) -> Plan``: the planner with its seed, state and options bound
#: (:meth:`netstorm.registry.PlannerInfo.planner_call` makes one).
MakePlan = Callable[[NetworkView, Job], Plan]


@dataclass(frozen=True)
class Switch:
    """One plan switch: before ``iteration`` started, at ``time_s`` on the controller's
    clock, the planner took ``planning_s`` of wall time and the plan went to ``version``."""

    iteration: int
    time_s: float
    version: int
    planning_s: float
    reason: str


class Controller:
    """Owns the current plan, its version and programs, the estimator and the policy.

    Parameters
    ----------
    view
        The network the first plan is made from (a topology file, or the last estimate).
    job
        The job every plan is made and compiled for.
    make_plan
        ``make_plan(view, job) -> Plan``; called for the first plan and for every
        candidate, with ``job``.
    policy
        When to switch (:mod:`netstorm.awareness`); ``None`` with an estimator: never.
    estimator
        The driver reports every transfer to it (``estimator.observe``); ``None`` turns
        awareness off.
    clock
        The time now, in seconds (policies' minimum intervals, switch times).
    workers, by_bucket
        Passed to :func:`netstorm.compile` for every plan.
    timer
        Wall-clock seconds, to report how long planning took.

    Notes
    -----
    Versions start at 1 and increase by one per switch; a switch happens only in
    :meth:`boundary`, between iterations, so no iteration mixes two versions. The
    *reference* view is the estimate at the last time a candidate was computed: the policy
    compares the new estimate against it, so a plan is not recomputed while nothing moved.
    Programs are compiled against the reference (a ``"slack"`` plan's priorities).

    An estimator with a ``split(now) -> (fit, judge)`` method (such as
    :class:`~netstorm.level_shift.LevelShiftEstimator`) gives two views from disjoint samples:
    candidates are planned on ``fit`` and the policy judges them, and the current plan, on
    ``judge``, so a plan is not preferred for fitting the noise it is judged on. The
    reference is then ``fit`` (what the plan was made from) and the policy's change test
    compares ``judge`` views.
    """

    def __init__(self, view: NetworkView, job: Job, make_plan: MakePlan, *,
                 policy: Policy | None = None, estimator: BandwidthEstimator | None = None,
                 clock: Callable[[], float], workers: tuple[int, ...] | None = None,
                 by_bucket: bool = False,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.job = job
        self.make_plan = make_plan
        self.policy: Policy = policy if policy is not None else StaticPolicy()
        self.estimator = estimator
        self.clock = clock
        self.timer = timer
        self.workers = workers
        self.by_bucket = by_bucket
        self.reference = view
        self._judged = view
        self.switches: list[Switch] = []
        self._last_switch = -math.inf
        self.plan = dataclasses.replace(make_plan(view, job), version=1)
        self.programs = self._compile()

    @property
    def version(self) -> int:
        """The current plan's version."""
        return self.plan.version

    def _compile(self) -> dict[int, NodeProgram]:
        return compile(self.plan, self.job, self.workers, by_bucket=self.by_bucket,
                       view=self.reference)

    def boundary(self, iteration: int) -> Switch | None:
        """Before ``iteration`` starts: let the policy decide on the current estimate.

        Returns the switch made (the new plan and programs are then :attr:`plan` and
        :attr:`programs`), or ``None``.
        """
        if self.estimator is None or iteration == 0:
            return None
        now = self.clock()
        split = getattr(self.estimator, "split", None)
        if split is not None:
            fit, judge = split(now)
        else:
            fit = judge = self.estimator.view(now)
        spent: list[float] = []

        def candidate() -> Plan:
            started = self.timer()
            made = self.make_plan(fit, self.job)
            spent.append(self.timer() - started)
            if fit is not judge:  # the policy reads a plan's prediction: make it on judge
                made = made.with_prediction(predict(made, judge, self.job).time_s)
            return made

        started = self.timer()
        decision = self.policy.decide(now=now, last_switch_s=self._last_switch,
                                      current=self.plan, reference=self._judged,
                                      estimate=judge, job=self.job, candidate=candidate)
        if decision.considered:
            self.reference, self._judged = fit, judge
        if decision.plan is None:
            return None
        self.plan = dataclasses.replace(decision.plan, version=self.plan.version + 1)
        self.programs = self._compile()
        self._last_switch = now
        switch = Switch(iteration, now, self.plan.version,
                        sum(spent) or self.timer() - started, decision.reason)
        self.switches.append(switch)
        return switch
