"""`simulate`: synchronous training iterations on the simulated WAN, with awareness in the loop.

Each iteration: every worker computes, then the current plan's programs run on the
:class:`~netstorm.sim.network.Network`; every transfer is reported to a
:class:`~netstorm.awareness.BandwidthEstimator`; at each iteration boundary the re-plan
policy may switch to a new plan (new version, every site at once). Dynamics change the
true capacities mid-run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from netstorm.awareness import BandwidthEstimator, Policy, StaticPolicy
from netstorm.check import check_plan
from netstorm.compiler import compile
from netstorm.controller import Controller, Switch
from netstorm.cost import link_loads, predict
from netstorm.dynamics import Dynamics
from netstorm.errors import InputError
from netstorm.executor import index_programs
from netstorm.job import Job
from netstorm.plan import Plan
from netstorm.registry import Planner, plan, planner_info
from netstorm.view import NetworkView

from .compiled import CompiledNetwork
from .flat import flatten
from .interpreter import BACKWARD_FRACTION, run_iteration
from .network import Network

__all__ = ["SimResult", "Switch", "allreduce", "simulate"]


@dataclass(frozen=True, eq=False)
class SimResult:
    """What one simulated run measured.

    Attributes
    ----------
    iteration_s, comm_s
        Per-iteration wall (simulated) time, and the part after the slowest compute.
    start_s
        Simulated start time of each iteration.
    versions
        Plan version used by each iteration.
    switches
        Every plan switch (the initial plan is not one).
    link_bytes, link_busy_s
        Bytes sent and seconds busy per directed link over the whole run.
    transfers
        Hop transfers simulated (chunks times hops, probes included).
    estimate_error
        ``(mean, max)`` relative error of the estimator on the links the plan uses, at the
        end of each iteration (NaN when the estimator is off).
    changes_s
        Times of dynamic capacity changes that happened during the run.
    predicted_s
        The cost model's prediction for the first plan on the starting view.
    chunk_bytes
        The pipelining chunk of the first plan: its own ``chunk_bytes`` when it sets one,
        else the job's (:meth:`netstorm.Plan.job_for`).
    wall_s
        Wall-clock seconds the simulation took.
    setup_s
        The part of ``wall_s`` before the first iteration: the first plan, its prediction
        and its compilation.
    log, computes
        Transfers ``(src, dst, start, end, tag)`` and compute spans ``(site, start, end)``
        when recorded (``record=True``), for traces.
    workers
        Indices of the sites that contributed gradients.
    overlap
        Whether communication overlapped the backward pass.
    duration_s
        The simulated span the run was asked to cover (``None``: a number of iterations
        was asked for instead); the last iteration ends at or after it.
    """

    planner: str
    topology: str
    model: str
    sites: tuple[str, ...]
    iteration_s: np.ndarray
    comm_s: np.ndarray
    start_s: np.ndarray
    versions: tuple[int, ...]
    switches: tuple[Switch, ...]
    link_bytes: np.ndarray
    link_busy_s: np.ndarray
    transfers: int
    estimate_error: np.ndarray
    changes_s: tuple[float, ...]
    predicted_s: float
    wall_s: float
    log: tuple = ()
    computes: tuple = ()
    workers: tuple[int, ...] = ()
    overlap: bool = False
    chunk_bytes: int = 0
    duration_s: float | None = None
    setup_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Simulated time of the whole run."""
        return float(self.start_s[-1] + self.iteration_s[-1]) if len(self.start_s) else 0.0

    @property
    def utilisation(self) -> np.ndarray:
        """Busy fraction of every directed link over the run."""
        return self.link_busy_s / self.total_s if self.total_s > 0 else self.link_busy_s * 0

    def error_after_changes(self, k: int = 3) -> np.ndarray:
        """Max estimator error on in-use links at the end of the 1st..k-th iteration that
        ends after each capacity change (and before the next): shape ``(changes, k)``, NaN
        where the run ended or the next change came first."""
        ends = self.start_s + self.iteration_s
        rows = []
        changes = [t for t in self.changes_s if t > 0]
        for i, t in enumerate(changes):
            until = changes[i + 1] if i + 1 < len(changes) else np.inf
            after = np.nonzero((ends > t) & (ends <= until))[0][:k]
            row = np.full(k, np.nan)
            row[:len(after)] = self.estimate_error[after, 1]
            rows.append(row)
        return np.array(rows).reshape(-1, k)

    def summary(self) -> dict[str, Any]:
        """The JSON row of ``netstorm sim`` (DESIGN 11) plus extra figures."""
        util = self.utilisation
        used = self.link_bytes > 0
        after = self.error_after_changes()
        return {
            "planner": self.planner, "topology": self.topology, "model": self.model,
            "iterations": len(self.iteration_s), "duration_s": self.duration_s,
            "capacity_changes": len(self.changes_s),
            "iteration_time_s": {"mean": float(np.mean(self.iteration_s)),
                                 "median": float(np.median(self.iteration_s))},
            "comm_time_s": {"mean": float(np.mean(self.comm_s)),
                            "median": float(np.median(self.comm_s))},
            "total_time_s": self.total_s,
            "replans": len(self.switches), "overlap": self.overlap,
            "replan_times_s": [s.time_s for s in self.switches],
            "planning_s": float(sum(s.planning_s for s in self.switches)),
            "predicted_time_s": self.predicted_s,
            "chunk_bytes": self.chunk_bytes,
            "transfers": self.transfers,
            "wall_s": self.wall_s, "setup_s": self.setup_s,
            "link_utilisation": {f"{self.sites[u]}->{self.sites[v]}": float(util[u, v])
                                 for u, v in zip(*np.nonzero(used), strict=True)},
            "estimate_error_after_change": (
                [None if np.isnan(x) else float(x) for x in _nanmax(after)]
                if len(after) else None),
        }


def _nanmax(rows: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = np.full(rows.shape[1], np.nan)
        for j in range(rows.shape[1]):
            col = rows[:, j][~np.isnan(rows[:, j])]
            if col.size:
                out[j] = col.max()
    return out


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


def _in_use(p: Plan, view: NetworkView, job: Job) -> np.ndarray:
    return link_loads(p, view, job)[0] > 0


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
    info = planner_info(planner)
    target = planner if callable(planner) else info.name
    options = dict(planner_options or {})
    rule: Policy
    if not aware:
        rule = StaticPolicy()
    elif isinstance(policy, str) or policy is None:
        rule = info.policy(policy)
    else:
        rule = policy
    if engine not in ("auto", "compiled", "executor"):
        raise InputError(f"simulate: engine must be 'auto', 'compiled' or 'executor', "
                         f"got {engine!r}")
    if engine == "compiled" and record:
        raise InputError("simulate: record=True needs engine 'executor' (or 'auto')")
    compiled = engine == "compiled" or (engine == "auto" and not record)
    started = time.perf_counter()
    env = simpy.Environment()
    estimator = BandwidthEstimator(view, clock=lambda: env.now) if aware else None
    state = info.new_state(seed)

    def make_plan(estimate: NetworkView) -> Plan:
        return plan(estimate, job, target, seed=seed, state=state, **options)

    control = Controller(planner_view or view, job, make_plan, policy=rule,
                         estimator=estimator, clock=lambda: env.now, workers=view.workers,
                         by_bucket=overlap)
    net: Network | CompiledNetwork
    if compiled:
        net = CompiledNetwork(env, view, window_bytes=window_bytes,
                              observe=estimator.observe_many if estimator else None)
    else:
        net = Network(env, view, window_bytes=window_bytes,
                      observe=estimator.observe if estimator else None, record=record)
    predicted = predict(control.plan, view, job).time_s
    chunk_bytes = control.plan.job_for(job).chunk_bytes
    workers = list(view.workers)
    out: dict[str, list] = {"it": [], "comm": [], "start": [], "ver": [], "err": []}
    changes: list[float] = []
    computes: list[tuple[int, float, float]] = []
    max_compute = max((job.compute_time(w) for w in workers), default=0.0)
    probing = dynamics is not None and aware and probe_bytes > 0

    def programs() -> Any:
        progs = index_programs(control.programs)
        if not compiled:
            return progs
        return flatten(progs, view.n, job, workers, overlap=overlap,
                       backward_fraction=backward_fraction)

    setup: list[float] = []

    def driver() -> Any:
        in_use: tuple[int, np.ndarray] = (0, np.zeros(0, dtype=bool))
        progs = programs()
        setup.append(time.perf_counter() - started)
        it = 0
        while (env.now < duration_s) if duration_s is not None else (it < iterations):
            if control.boundary(it) is not None:
                progs = programs()
            if probing:
                for u, v in estimator.stale_links(probe_age_s):  # type: ignore[union-attr]
                    if not net.busy(u, v):
                        net.probe(u, v, probe_bytes, progs)
            done: simpy.Event
            if isinstance(net, CompiledNetwork):
                t_start = net.now
                done = env.process(net.iterate(progs, control.version))
            else:
                t_start = env.now
                done = run_iteration(env, net, progs, job, workers,
                                     on_compute=(lambda s, a, b: computes.append((s, a, b)))
                                     if record else None, tag=it, iteration=it,
                                     overlap=overlap, backward_fraction=backward_fraction)
            end = yield done
            elapsed = end - t_start
            out["it"].append(elapsed)
            out["comm"].append(max(0.0, elapsed - max_compute))
            out["start"].append(t_start)
            out["ver"].append(control.version)
            if estimator is not None:
                if in_use[0] != control.version:  # one plan's links, once
                    in_use = (control.version, _in_use(control.plan, view, job))
                use = in_use[1]
                truth = net.capacity[use]
                err = np.abs(estimator.estimate()[use] - truth) / truth
                out["err"].append((float(err.mean()), float(err.max())) if err.size
                                  else (0.0, 0.0))
            else:
                out["err"].append((np.nan, np.nan))
            if progress is not None:
                progress(it, env.now)
            it += 1

    def changer(stream: Any) -> Any:
        for snap in stream:
            if snap.time_s > env.now:
                yield env.timeout(snap.time_s - env.now)
            net.set_capacity(snap.capacity, snap.egress, snap.ingress)
            changes.append(env.now)

    proc = env.process(driver())
    if dynamics is not None:
        dynamics.validate(view)
        env.process(changer(dynamics.timeline(view)))
    env.run(until=proc)
    return SimResult(
        planner=info.name, topology=view.name, model=job.label(), sites=view.sites,
        iteration_s=np.array(out["it"]), comm_s=np.array(out["comm"]),
        start_s=np.array(out["start"]), versions=tuple(out["ver"]),
        switches=tuple(control.switches), link_bytes=net.link_bytes.copy(),
        link_busy_s=net.link_busy.copy(), transfers=net.transfers,
        estimate_error=np.array(out["err"], dtype=float).reshape(-1, 2),
        changes_s=tuple(changes), predicted_s=predicted,
        wall_s=time.perf_counter() - started, log=tuple(net.log), computes=tuple(computes),
        workers=tuple(workers), overlap=overlap, chunk_bytes=chunk_bytes,
        duration_s=duration_s, setup_s=setup[0])


def simulate_many(view: NetworkView, job: Job, planners: Sequence[str],
                  **kwargs: Any) -> list[SimResult]:
    """:func:`simulate` for each planner in turn, same arguments."""
    return [simulate(view, job, p, **kwargs) for p in planners]
