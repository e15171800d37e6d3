"""Network awareness: estimate link bandwidth from transfers and decide when to re-plan.

- :class:`BandwidthEstimator` turns transfer observations ``(src, dst, bytes, seconds,
  when)`` into a :class:`~netstorm.view.NetworkView`; its clock is injected.
- :class:`ReplanPolicy` (ours): re-plan when the current plan's predicted time on the new
  view exceeds the best plan's by more than a threshold, at most once per interval.
- :class:`AnyChangePolicy` (the ``netstorm`` planner's faithful policy: re-plan whenever an
  estimate changes) and :class:`EveryIterationPolicy` (``tsengine``'s: re-plan every
  iteration); :class:`StaticPolicy` never re-plans. :func:`policy_named` makes one by name;
  a planner's default is registered with it (:func:`netstorm.register_planner`).

Policies are frozen values and pure: the caller keeps the time of the last switch and the
*reference* view (the estimate at the last time a candidate plan was computed), and passes
them in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .cost import predict
from .errors import InputError
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = [
    "POLICY_NAMES",
    "AnyChangePolicy",
    "BandwidthEstimator",
    "Decision",
    "EveryIterationPolicy",
    "Policy",
    "ReplanPolicy",
    "StaticPolicy",
    "policy_named",
    "view_change",
]


class BandwidthEstimator:
    """Per-link EWMA of achieved transfer rates, with a confidence per link.

    Parameters
    ----------
    prior
        The view to start from (topology file or last known state); links never observed
        keep its capacity.
    alpha
        EWMA weight of a new sample (the first sample replaces the prior).
    samples_for_confidence
        Confidence from samples is ``1 - exp(-n / samples_for_confidence)``.
    half_life_s
        Confidence halves every ``half_life_s`` seconds without a sample.
    jump
        A sample that differs from the estimate by more than this fraction is taken as a
        level shift (a capacity change) and replaces the estimate.
    clock
        Returns the current time in seconds; used when an observation or query gives no
        time. Tests pass times explicitly instead.

    Notes
    -----
    An observation of ``b`` bytes in ``s`` seconds on ``u -> v`` is a sample ``b / s`` of
    the rate the link delivers to one transfer; with one transfer per link at a time (one
    connection per overlay link, as in the simulator and the runtime) and no shared site
    cap, that is the link's capacity. The estimate is ``e <- (1 - alpha) e + alpha b / s``,
    or ``e <- b / s`` when ``|b / s - e| > jump * e`` (WAN capacity changes in steps, and a
    step should not take several samples to be believed);
    ``confidence = (1 - exp(-n / k)) * 2 ** (-age / half_life_s)``. Links that carry no
    traffic go stale (:meth:`stale_links`) and should be probed with small transfers.
    """

    def __init__(self, prior: NetworkView, *, alpha: float = 0.5,
                 samples_for_confidence: float = 3.0, half_life_s: float = 600.0,
                 jump: float = 0.3, clock: Callable[[], float] | None = None) -> None:
        if not 0 < alpha <= 1:
            raise InputError(f"alpha must be in (0, 1], got {alpha}")
        if samples_for_confidence <= 0 or half_life_s <= 0:
            raise InputError("samples_for_confidence and half_life_s must be > 0")
        self.prior = prior
        self.alpha = float(alpha)
        self.jump = float(jump)
        self.samples_for_confidence = float(samples_for_confidence)
        self.half_life_s = float(half_life_s)
        self.clock = clock
        n = prior.n
        self._rate = np.array(prior.capacity, dtype=float)
        self._samples = np.zeros((n, n))
        self._last = np.full((n, n), -np.inf)

    def _now(self, when: float | None) -> float:
        if when is not None:
            return float(when)
        if self.clock is None:
            raise InputError("no time given and the estimator has no clock")
        return float(self.clock())

    def observe(self, src: int, dst: int, nbytes: float, seconds: float,
                when: float | None = None, capped: bool = False) -> None:
        """Record that ``nbytes`` went from ``src`` to ``dst`` in ``seconds`` (ending at
        ``when``). Zero-byte or zero-time observations are ignored.

        ``capped``: a shared egress or ingress cap slowed the transfer (other transfers
        took part of its site's cap), so its rate bounds the link's from below. Such a
        sample raises the estimate if it is above it, and never lowers it: it still counts
        as a sample and refreshes the link's age.
        """
        if nbytes < 0 or seconds < 0 or not math.isfinite(seconds):
            raise InputError(f"observation {src}->{dst}: bytes and seconds must be >= 0 and "
                             f"finite, got {nbytes}, {seconds}")
        if nbytes == 0 or seconds == 0:
            return
        sample, now = nbytes / seconds, self._now(when)
        if capped and sample < self._rate[src, dst]:
            self._samples[src, dst] += 1
            self._last[src, dst] = now
            return
        self._update(src, dst, sample, now)

    def observe_many(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray,
                     seconds: np.ndarray, when: np.ndarray,
                     capped: np.ndarray | None = None) -> None:
        """:meth:`observe` for arrays of observations, folded in in the order given.

        The simulator's compiled core reports a batch of transfers at once; the result is
        that of calling :meth:`observe` on each in turn (a subclass that overrides
        :meth:`observe` or its update gets exactly those calls).
        """
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        nbytes, seconds = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
        when = np.asarray(when, dtype=float)
        capped = (np.zeros(len(src), dtype=np.bool_) if capped is None
                  else np.asarray(capped, dtype=np.bool_))
        cls = type(self)
        if (cls.observe is not BandwidthEstimator.observe
                or cls._update is not BandwidthEstimator._update):
            for args in zip(src.tolist(), dst.tolist(), nbytes.tolist(), seconds.tolist(),
                            when.tolist(), capped.tolist(), strict=True):
                self.observe(*args)
            return
        bad = (nbytes < 0) | (seconds < 0) | ~np.isfinite(seconds)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"observation {src[i]}->{dst[i]}: bytes and seconds must be >= 0 "
                             f"and finite, got {nbytes[i]}, {seconds[i]}")
        from ._awareness_nb import fold

        fold(self._rate, self._samples, self._last, src, dst, nbytes, seconds, when, capped,
             self.alpha, self.jump)

    def _update(self, src: int, dst: int, sample: float, now: float) -> None:
        """Fold one rate ``sample`` (B/s) of ``src -> dst`` into the estimate."""
        old = self._rate[src, dst]
        if self._samples[src, dst] == 0 or abs(sample - old) > self.jump * old:
            self._rate[src, dst] = sample  # first sample, or a level shift: start over
        else:
            self._rate[src, dst] += self.alpha * (sample - self._rate[src, dst])
        self._samples[src, dst] += 1
        self._last[src, dst] = now

    def estimate(self) -> np.ndarray:
        """Estimated capacity ``[N, N]`` in B/s (a copy)."""
        return np.where(self.prior.capacity > 0, self._rate, 0.0)

    def samples(self) -> np.ndarray:
        """Number of observations per link (a copy)."""
        return self._samples.copy()

    def confidence(self, when: float | None = None) -> np.ndarray:
        """Confidence in [0, 1] per link: grows with samples, decays with age."""
        now = self._now(when)
        age = np.where(np.isfinite(self._last), now - self._last, np.inf)
        with np.errstate(over="ignore"):
            decay = np.where(np.isfinite(age), 0.5 ** (np.maximum(age, 0) / self.half_life_s),
                             0.0)
        return (1 - np.exp(-self._samples / self.samples_for_confidence)) * decay

    def view(self, when: float | None = None) -> NetworkView:
        """The prior view with estimated capacities and the current confidence."""
        from dataclasses import replace

        return replace(self.prior, capacity=self.estimate(),
                       confidence=self.confidence(when), _graph_cache={})

    def stale_links(self, max_age_s: float, when: float | None = None) -> list[tuple[int, int]]:
        """Links not observed within ``max_age_s`` (never-observed links included), in index
        order: the candidates for an active probe."""
        now = self._now(when)
        us, vs = np.nonzero((self.prior.capacity > 0) & (now - self._last > max_age_s))
        return list(zip(us.tolist(), vs.tolist(), strict=True))


def view_change(old: NetworkView, new: NetworkView) -> float:
    """Largest relative capacity change over the links of either view (0 when equal)."""
    a, b = old.capacity, new.capacity
    mask = (a > 0) | (b > 0)
    if not mask.any():
        return 0.0
    return float((np.abs(a - b)[mask] / np.maximum(a, b)[mask]).max())


@dataclass(frozen=True)
class Decision:
    """What a policy decided at an iteration boundary.

    ``plan`` is the plan to switch to (``None``: keep the current one); ``considered`` says
    a candidate was computed, so the caller should take the estimate as its new reference.
    """

    plan: Plan | None
    considered: bool
    reason: str


class Policy(Protocol):
    """The interface every re-plan policy implements."""

    @property
    def name(self) -> str:
        """The policy's name (CLI and results)."""

    def decide(self, *, now: float, last_switch_s: float, current: Plan,
               reference: NetworkView, estimate: NetworkView, job: Job,
               candidate: Callable[[], Plan]) -> Decision: ...


@dataclass(frozen=True)
class ReplanPolicy:
    """Ours: re-plan only when it pays, and not too often.

    Parameters
    ----------
    threshold
        Switch when ``predict(current, estimate) > (1 + threshold) * candidate``.
    min_interval_s
        No switch sooner than this after the previous one.
    change_tol
        Do not even compute a candidate unless the estimate moved by more than this
        (relative, any link) since the reference view: saves planner calls.

    Notes
    -----
    Hysteresis keeps plans stable under estimate noise: a candidate that is only
    marginally better is not worth the switch (and, in the runtime, the version barrier).
    """

    threshold: float = 0.05
    min_interval_s: float = 0.0
    change_tol: float = 0.02
    name: str = "hysteresis"

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.min_interval_s < 0 or self.change_tol < 0:
            raise InputError("threshold, min_interval_s and change_tol must be >= 0")

    def decide(self, *, now: float, last_switch_s: float, current: Plan,
               reference: NetworkView, estimate: NetworkView, job: Job,
               candidate: Callable[[], Plan]) -> Decision:
        """Return the candidate when it beats the current plan by the threshold."""
        if now - last_switch_s < self.min_interval_s:
            return Decision(None, False, "min interval")
        if view_change(reference, estimate) <= self.change_tol:
            return Decision(None, False, "no change")
        best = candidate()
        ours = predict(current, estimate, job).time_s
        theirs = best.predicted_time_s
        if theirs is None:
            theirs = predict(best, estimate, job).time_s
        if ours > (1 + self.threshold) * theirs:
            return Decision(best, True, f"predicted {ours:.3g} s > {theirs:.3g} s")
        return Decision(None, True, "within threshold")


@dataclass(frozen=True)
class AnyChangePolicy:
    """NetStorm's published behaviour: re-plan whenever any link estimate changes.

    ``tolerance`` is the relative change that counts as a change (estimates of a static
    link do not move at all, so a small tolerance only filters float noise).
    """

    tolerance: float = 0.01
    name: str = "any-change"

    def decide(self, *, now: float, last_switch_s: float, current: Plan,
               reference: NetworkView, estimate: NetworkView, job: Job,
               candidate: Callable[[], Plan]) -> Decision:
        if view_change(reference, estimate) <= self.tolerance:
            return Decision(None, False, "no change")
        return Decision(candidate(), True, "estimate changed")


@dataclass(frozen=True)
class EveryIterationPolicy:
    """TSEngine's behaviour: a new plan every iteration."""

    name: str = "every-iteration"

    def decide(self, *, now: float, last_switch_s: float, current: Plan,
               reference: NetworkView, estimate: NetworkView, job: Job,
               candidate: Callable[[], Plan]) -> Decision:
        return Decision(candidate(), True, "every iteration")


@dataclass(frozen=True)
class StaticPolicy:
    """Never re-plan (network-oblivious baselines, static studies)."""

    name: str = "static"

    def decide(self, *, now: float, last_switch_s: float, current: Plan,
               reference: NetworkView, estimate: NetworkView, job: Job,
               candidate: Callable[[], Plan]) -> Decision:
        return Decision(None, False, "static")


_POLICIES: dict[str, Callable[[], Policy]] = {
    "hysteresis": ReplanPolicy, "any-change": AnyChangePolicy,
    "every-iteration": EveryIterationPolicy, "static": StaticPolicy,
}

#: Names :func:`policy_named` knows.
POLICY_NAMES = tuple(_POLICIES)


def policy_named(name: str) -> Policy:
    """A re-plan policy with its default settings, by name (one of :data:`POLICY_NAMES`).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    try:
        return _POLICIES[name]()
    except KeyError:
        raise InputError(f"unknown re-plan policy {name!r} "
                         f"(known: {', '.join(_POLICIES)})") from None
