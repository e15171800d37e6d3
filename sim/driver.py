"""`simulate`: synchronous training iterations on the simulated WAN, with awareness in the loop.

The simulator's driver (SimPy stays the outer loop). Each iteration: every worker computes,
then the current plan's programs run on the network, by one of two engines — the compiled
core (:class:`~netstorm.sim.compiled.CompiledNetwork`, the default) or every site's
:class:`~netstorm.executor.Executor` on :class:`~netstorm.sim.network.Network` (the oracle,
and the one that records transfers). Every transfer is reported to a
:class:`~netstorm.awareness.BandwidthEstimator`; at each iteration boundary the re-plan
policy may switch to a new plan (new version, every site at once). Dynamics change the true
capacities mid-run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

import numpy as np
import simpy

from netstorm.awareness import BandwidthEstimator, Policy
from netstorm.check import check_plan
from netstorm.compiler import compile
from netstorm.controller import Controller
from netstorm.cost import link_loads, predict
from netstorm.dynamics import Dynamics
from netstorm.errors import InputError
from netstorm.executor import index_programs
from netstorm.job import Job
from netstorm.plan import Plan
from netstorm.registry import Planner, planner_info
from netstorm.view import NetworkView

from .compiled import CompiledNetwork
from .flat import flatten
from .interpreter import BACKWARD_FRACTION, run_iteration
from .network import Network
from .result import SimResult

__all__ = ["ENGINES", "allreduce", "simulate"]

#: What runs an iteration's programs: ``auto`` is the compiled core unless transfers are
#: recorded, which only the executors do.
ENGINES = ("auto", "compiled", "executor")


def allreduce(plan_: Plan, view: NetworkView, job: Job, *,
              payload: Mapping[int, np.ndarray] | None = None,
              window_bytes: float | None = None) -> tuple[float, dict[int, np.ndarray]]:
    """Simulate one all-reduce of ``plan_`` on a static ``view`` (no compute time).

    Returns the simulated time and, in payload mode (``payload[w]``: worker w's flat
    float32 gradient of ``gradient_bytes / element_size`` elements), every worker's result.
    Timing mode runs on the compiled core; payload mode on the sites' executors, which
    do the arithmetic.
    """
    check_plan(plan_, view, job)  # a hand-made plan that misses a worker: not a wrong time
    env = simpy.Environment()
    progs = index_programs(compile(plan_, job, view.workers, view=view))
    job0 = dataclasses.replace(job, compute_s=0.0)
    if payload is None:
        core = CompiledNetwork(env, view, window_bytes=window_bytes)
        flat = flatten(progs, view.n, job0, view.workers)
        finished = env.process(core.iterate(flat, plan_.version))
        env.run(until=finished)
        return float(finished.value or 0.0), {}
    net = Network(env, view, window_bytes=window_bytes)
    elems = job.gradient_bytes // job.element_size
    result = {w: np.full(elems, np.nan, dtype=np.float32) for w in view.workers}
    done = run_iteration(env, net, progs, job0, list(view.workers), payload=payload,
                         result=result)
    env.run(until=done)
    return float(env.now), result


def simulate(view: NetworkView, job: Job, planner: str | Planner = "treepack", *,
             iterations: int = 10, duration_s: float | None = None,
             dynamics: Dynamics | None = None, policy: Policy | str | None = None,
             seed: int | None = 0,
             window_bytes: float | None = None, aware: bool = True,
             probe_bytes: float = 65_536, probe_age_s: float = 10.0, record: bool = False,
             progress: Callable[[int, float], None] | None = None,
             planner_options: Mapping[str, Any] | None = None,
             planner_view: NetworkView | None = None, overlap: bool = False,
             backward_fraction: float = BACKWARD_FRACTION,
             engine: str = "auto") -> SimResult:
    """Simulate ``iterations`` synchronous iterations of ``job`` on ``view``, or as many
    as it takes to cover ``duration_s`` of simulated time.

    Parameters
    ----------
    view
        The true network at time 0 (and the planner's first view).
    planner
        Registered planner name, or a planner callable (DESIGN 4).
    iterations
        How many iterations to run; ignored when ``duration_s`` is given.
    duration_s
        Run until the simulated clock reaches this many seconds instead: an iteration
        starts while the clock is short of it, so the last one ends at or after it. Runs of
        different planners given the same span see the same capacity changes, which a
        common number of iterations does not give them (a fast planner's iterations may
        all end before the first change).
    dynamics
        How capacities change (``None``: static).
    policy
        A re-plan policy or its name; default the planner's own
        (:func:`netstorm.register_planner`'s ``default_policy``).
    seed, planner_options
        The planner's seed and options. A stateful planner's state lives for the run
        (:meth:`netstorm.registry.PlannerInfo.planner_call`).
    aware
        Feed transfers to a :class:`~netstorm.awareness.BandwidthEstimator` and let the
        policy re-plan from its view. With ``False`` the first plan is kept.
    probe_bytes, probe_age_s
        With dynamics, links not observed for ``probe_age_s`` get a probe of
        ``probe_bytes`` at the start of an iteration (if idle).
    record
        Keep every transfer and compute span (for Chrome traces).
    progress
        Called ``(iteration, simulated time)`` after each iteration.
    planner_view
        The view the first plan is made from (default ``view``).
    overlap, backward_fraction
        Overlap communication with the backward pass bucket by bucket, as DDP does: every
        bucket of ``job.buckets`` (model order) is all-reduced with the plan and may start
        once the backward pass has produced it; the backward pass is the last
        ``backward_fraction`` of each site's compute time and produces the buckets in
        reverse model order, in time proportional to their bytes
        (:func:`~netstorm.sim.interpreter.bucket_ready_s`). A one-bucket job gains nothing.
    engine
        ``"compiled"``: the compiled core (:mod:`netstorm.sim.core`) runs each iteration's
        programs and network; ``"executor"``: every site's
        :class:`~netstorm.executor.Executor` does, one Python call per message. Both give
        the same times; ``"auto"`` (the default) takes the compiled core unless ``record``
        asks for every transfer.

    Notes
    -----
    Iterations are synchronous: iteration i+1 starts when every worker holds the mean of
    iteration i. Without ``overlap`` an iteration is compute, then the all-reduce; with it,
    the all-reduce of bucket b may run during the backward pass of buckets < b.
    Re-planning happens only between iterations, so one iteration never mixes
    two plan versions. Planning takes wall time, not simulated time.
    """
    if duration_s is not None:
        if not 0 < duration_s < math.inf:
            raise InputError(f"simulate: duration_s must be > 0 and finite, got {duration_s}")
    elif iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    if engine not in ENGINES:
        raise InputError(f"simulate: engine must be 'auto', 'compiled' or 'executor', "
                         f"got {engine!r}")
    if engine == "compiled" and record:
        raise InputError("simulate: record=True needs engine 'executor' (or 'auto')")
    started = time.perf_counter()
    info = planner_info(planner)
    env = simpy.Environment()
    estimator = BandwidthEstimator(view, clock=lambda: env.now) if aware else None
    control = Controller(planner_view or view, job,
                         info.planner_call(seed=seed, options=planner_options),
                         policy=info.run_policy(policy, aware=aware), estimator=estimator,
                         clock=lambda: env.now, workers=view.workers, by_bucket=overlap)
    run = _Run(view, job, env, control, estimator, started=started, record=record,
               compiled=engine == "compiled" or (engine == "auto" and not record),
               window_bytes=window_bytes, overlap=overlap,
               backward_fraction=backward_fraction)
    probing = dynamics is not None and aware and probe_bytes > 0
    proc = run.env.process(run.iterations(
        iterations, duration_s, probe=(probe_bytes, probe_age_s) if probing else None,
        progress=progress))
    if dynamics is not None:
        dynamics.validate(view)
        run.env.process(run.changes(dynamics.timeline(view)))
    run.env.run(until=proc)
    return run.result(info.name, duration_s)


class _Run:
    """One simulated run: the network, the estimator, the controller and what they saw."""

    def __init__(self, view: NetworkView, job: Job, env: simpy.Environment,
                 control: Controller, estimator: BandwidthEstimator | None, *,
                 started: float, record: bool, compiled: bool, window_bytes: float | None,
                 overlap: bool, backward_fraction: float) -> None:
        self.started = started
        self.view, self.job, self.env = view, job, env
        self.control, self.estimator = control, estimator
        self.record, self.compiled, self.overlap = record, compiled, overlap
        self.backward_fraction = backward_fraction
        self.net: Network | CompiledNetwork
        if compiled:
            self.net = CompiledNetwork(env, view, window_bytes=window_bytes,
                                       observe=estimator.observe_many if estimator else None)
        else:
            self.net = Network(env, view, window_bytes=window_bytes, record=record,
                               observe=estimator.observe if estimator else None)
        self.workers = list(view.workers)
        self.max_compute = max((job.compute_time(w) for w in self.workers), default=0.0)
        self.out: dict[str, list[Any]] = {"it": [], "comm": [], "start": [], "ver": [],
                                          "err": []}
        self.changes_s: list[float] = []
        self.computes: list[tuple[int, float, float]] = []
        self.setup_s = 0.0
        self._in_use: tuple[int, np.ndarray] = (0, np.zeros(0, dtype=bool))
        #: the cost model's time of the first plan on the starting view, and its chunk
        self.predicted_s = predict(control.plan, view, job).time_s
        self.chunk_bytes = control.plan.job_for(job).chunk_bytes

    def programs(self) -> Any:
        """The current plan's programs, as the engine takes them."""
        progs = index_programs(self.control.programs)
        if not self.compiled:
            return progs
        return flatten(progs, self.view.n, self.job, self.workers, overlap=self.overlap,
                       backward_fraction=self.backward_fraction)

    def iterations(self, count: int, duration_s: float | None,
                   probe: tuple[float, float] | None,
                   progress: Callable[[int, float], None] | None) -> Generator[Any, Any, None]:
        """The driver process: iterations until ``count`` or ``duration_s``."""
        progs = self.programs()
        self.setup_s = time.perf_counter() - self.started
        it = 0
        while (self.env.now < duration_s) if duration_s is not None else (it < count):
            if self.control.boundary(it) is not None:
                progs = self.programs()
            if probe is not None:
                for u, v in self.estimator.stale_links(probe[1]):  # type: ignore[union-attr]
                    if not self.net.busy(u, v):
                        self.net.probe(u, v, probe[0], progs)
            t_start, done = self._iterate(progs, it)
            end = yield done
            self._measure(t_start, end - t_start)
            if progress is not None:
                progress(it, self.env.now)
            it += 1

    def _iterate(self, progs: Any, it: int) -> tuple[float, simpy.Event]:
        if isinstance(self.net, CompiledNetwork):
            return self.net.now, self.env.process(self.net.iterate(progs, self.control.version))
        on_compute = ((lambda s, a, b: self.computes.append((s, a, b)))
                      if self.record else None)
        return self.env.now, run_iteration(
            self.env, self.net, progs, self.job, self.workers, on_compute=on_compute,
            tag=it, iteration=it, overlap=self.overlap,
            backward_fraction=self.backward_fraction)

    def _measure(self, t_start: float, elapsed: float) -> None:
        out, control = self.out, self.control
        out["it"].append(elapsed)
        out["comm"].append(max(0.0, elapsed - self.max_compute))
        out["start"].append(t_start)
        out["ver"].append(control.version)
        if self.estimator is None:
            out["err"].append((np.nan, np.nan))
            return
        if self._in_use[0] != control.version:  # one plan's links, once
            loads = link_loads(control.plan, self.view, self.job)[0]
            self._in_use = (control.version, loads > 0)
        use = self._in_use[1]
        truth = self.net.capacity[use]
        err = np.abs(self.estimator.estimate()[use] - truth) / truth
        out["err"].append((float(err.mean()), float(err.max())) if err.size else (0.0, 0.0))

    def changes(self, stream: Any) -> Generator[Any, Any, None]:
        """The dynamics process: capacity snapshots applied at their times."""
        for snap in stream:
            if snap.time_s > self.env.now:
                yield self.env.timeout(snap.time_s - self.env.now)
            self.net.set_capacity(snap.capacity, snap.egress, snap.ingress)
            self.changes_s.append(self.env.now)

    def result(self, planner: str, duration_s: float | None) -> SimResult:
        out, view = self.out, self.view
        return SimResult(
            planner=planner, topology=view.name, model=self.job.label(), sites=view.sites,
            iteration_s=np.array(out["it"]), comm_s=np.array(out["comm"]),
            start_s=np.array(out["start"]), versions=tuple(out["ver"]),
            switches=tuple(self.control.switches), link_bytes=self.net.link_bytes.copy(),
            link_busy_s=self.net.link_busy.copy(), transfers=self.net.transfers,
            estimate_error=np.array(out["err"], dtype=float).reshape(-1, 2),
            changes_s=tuple(self.changes_s), predicted_s=self.predicted_s,
            wall_s=time.perf_counter() - self.started, log=tuple(self.net.log),
            computes=tuple(self.computes), workers=tuple(self.workers),
            overlap=self.overlap, chunk_bytes=self.chunk_bytes, duration_s=duration_s,
            setup_s=self.setup_s)
