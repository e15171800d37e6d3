"""A bandwidth estimator for noisy timings: a link's level is believed, noise is averaged.

Links timed on a real (or kernel-shaped) network scatter: on 9 network-namespace sites
sharing 2 cores, receiver-timed rates of a steady link ranged 0.5-2.5x of its capacity from
one collective to the next, independently per link. An EWMA follows that scatter, the re-plan
policy compares plans on it, and the winner's curse does the rest (a candidate planned on
this collective's noise always looks better than the current plan on it): 47 switches in 300
steps of a steady network. :class:`LevelShiftEstimator` holds a link's estimate still until
its rate *shifts*.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from .awareness import BandwidthEstimator
from .errors import InputError
from .view import NetworkView

__all__ = ["LevelShiftEstimator"]


class LevelShiftEstimator(BandwidthEstimator):
    """Per-link mean of log rates since the last detected level shift.

    Parameters
    ----------
    prior
        The view to start from; links never observed keep its capacity.
    z
        A shift is declared when the mean log rate of a window of the latest samples differs
        from the level before it by more than ``z`` standard errors, all on the same side.
    window, longest
        The windows tried, shortest first: ``window`` samples must agree before a shift is
        believed (2: a 10x drop is seen at the second collective after it, one outlier is
        not a shift); a smaller step needs a longer window, up to ``longest``.
    sigma_prior
        The spread (of log rates) assumed until a level has 3 samples of its own.
    prior_weight
        ``sigma_prior`` counts as this many samples in a level's spread (a spread measured
        on a handful of samples is often far too small, and every test would then fire).
    sigma_floor
        The least spread assumed (exact timings would otherwise make any change a shift).
    memory
        A level counts at most this many samples; older ones fade geometrically, so a
        change too small to be a shift still moves the estimate (about halfway in
        ``0.7 * memory`` samples).
    samples_for_confidence, half_life_s, clock
        As :class:`~netstorm.awareness.BandwidthEstimator`.

    Notes
    -----
    Per link, in log space (rates scatter multiplicatively): a *level* is the run of samples
    since the last shift, summarised by its count ``n``, mean ``m`` and spread ``s`` (sample
    standard deviation shrunk towards ``sigma_prior``, at least ``sigma_floor``). For each
    new sample, the windows of the last ``k`` samples (``window <= k <= longest``) are tested
    against the level's samples before them (``n0`` of them, mean ``m0``, spread ``s0``): the
    window's mean ``w`` (each sample clipped to ``m0 +- 4 s0``, so that one wild timing is not
    a window's mean) is a shift when ``|w - m0| > z * s0 * sqrt(1 / k + 1 / n0)`` and every
    sample of the window lies on the same side of ``m0``. A shift starts a new level from the
    window's samples; otherwise the sample joins the level, winsorised to ``m +- 3 s`` so that
    one wild timing moves the mean little. The estimate is ``exp(m)``: its error shrinks as
    ``s / sqrt(n)`` while the link holds, so a plan made on it stays the best plan, and a step
    change (what WAN capacity does) replaces it within a few samples (a 10x drop at
    ``s = 0.55`` in 2-3, a 5x drop in about 4).
    """

    def __init__(self, prior: NetworkView, *, z: float = 5.0, window: int = 2,
                 longest: int = 8, sigma_prior: float = 0.5, prior_weight: float = 4.0,
                 sigma_floor: float = 0.02, memory: int = 50,
                 samples_for_confidence: float = 3.0, half_life_s: float = 600.0,
                 clock: Callable[[], float] | None = None) -> None:
        if z <= 0 or not 1 <= window <= longest or sigma_prior <= 0 or sigma_floor <= 0 \
                or prior_weight < 0 or memory <= longest:
            raise InputError("z, sigma_prior and sigma_floor must be > 0, prior_weight >= 0, "
                             "and 1 <= window <= longest < memory")
        super().__init__(prior, samples_for_confidence=samples_for_confidence,
                         half_life_s=half_life_s, clock=clock)
        self.z = float(z)
        self.window = int(window)
        self.longest = int(longest)
        self.sigma_prior = float(sigma_prior)
        self.sigma_floor = float(sigma_floor)
        self.prior_weight = float(prior_weight)
        self.memory = int(memory)
        self._levels: dict[tuple[int, int], list[float]] = {}  # link -> [n, sum, sum of sq]
        #: link -> [count, sum] of the level's even-numbered samples, then its odd-numbered
        self._halves: dict[tuple[int, int], list[list[float]]] = {}
        self._parity: dict[tuple[int, int], int] = {}  # link -> the half its next sample joins
        #: link -> its last samples in the level, (as timed, as counted after winsorising)
        self._recent: dict[tuple[int, int], deque[tuple[float, float]]] = {}
        self.shifts: list[tuple[int, int, float]] = []  #: (src, dst, when) of each shift

    def _spread(self, n: float, total: float, squares: float) -> float:
        """The level's spread, shrunk towards ``sigma_prior`` by ``prior_weight`` samples."""
        ss = max(squares - total * total / n, 0.0) if n else 0.0
        w, dof = self.prior_weight, max(n - 1, 0)
        if w + dof == 0:
            return self.sigma_prior
        var = (w * self.sigma_prior ** 2 + ss) / (w + dof)
        return max(math.sqrt(var), self.sigma_floor)

    def _update(self, src: int, dst: int, sample: float, now: float) -> None:
        """Fold one rate ``sample`` (B/s) into the link's level, or start a new level."""
        x = math.log(sample)
        link = (src, dst)
        level = self._levels.setdefault(link, [0.0, 0.0, 0.0])
        self._parity.setdefault(link, 0)
        recent = self._recent.setdefault(link, deque(maxlen=self.longest))
        k = self._shift(level, recent, x)
        if k:
            timed = [r for r, _ in list(recent)[len(recent) - k + 1:]] + [x]
            recent.clear()
            recent.extend((r, r) for r in timed)
            level[:] = [k, sum(timed), sum(r * r for r in timed)]
            self._halves[link] = [[len(timed[0::2]), sum(timed[0::2])],
                                  [len(timed[1::2]), sum(timed[1::2])]]
            self._parity[link] = k % 2
            self.shifts.append((src, dst, now))
        else:
            if level[0] >= self.memory:  # forget, so that slow drift moves the mean (the
                # window's samples fade too; _shift subtracts them at full weight: close enough)
                keep = (self.memory - 1) / level[0]
                level[:] = [v * keep for v in level]
                for half in self._halves[link]:
                    half[:] = [v * keep for v in half]
            n, total, squares = level
            counted = x
            if n >= 3:
                m, s = total / n, self._spread(n, total, squares)
                counted = min(max(x, m - 3 * s), m + 3 * s)
            recent.append((x, counted))
            half = self._halves.setdefault(link, [[0.0, 0.0], [0.0, 0.0]])[self._parity[link]]
            self._parity[link] ^= 1
            half[0] += 1
            half[1] += counted
            level[:] = [n + 1, total + counted, squares + counted * counted]
        self._publish(link, level, now)

    def _shift(self, level: list[float], recent: deque[tuple[float, float]], x: float) -> int:
        """The length of the shortest window ending at ``x`` whose samples left the level
        (``0``: none did)."""
        samples = list(recent)
        for k in range(self.window, min(self.longest, len(samples) + 1) + 1):
            inside = samples[len(samples) - k + 1:]  # the window's samples in the level
            n0 = level[0] - len(inside)
            if n0 < 1:
                return 0
            total0 = level[1] - sum(c for _, c in inside)
            squares0 = level[2] - sum(c * c for _, c in inside)
            m0 = total0 / n0
            timed = [r for r, _ in inside] + [x]
            if not (all(r > m0 for r in timed) or all(r < m0 for r in timed)):
                continue
            s0 = self._spread(n0, total0, squares0)
            # each sample counts at most 4 spreads: one wild timing is not a window's mean
            mean = sum(min(max(r, m0 - 4 * s0), m0 + 4 * s0) for r in timed) / k
            if abs(mean - m0) > self.z * s0 * math.sqrt(1 / k + 1 / n0):
                return k
        return 0

    def _publish(self, link: tuple[int, int], level: list[float], now: float) -> None:
        self._rate[link] = math.exp(level[1] / level[0])
        self._samples[link] += 1
        self._last[link] = now

    def split(self, when: float | None = None) -> tuple[NetworkView, NetworkView]:
        """Two views from disjoint samples: each level's even-numbered samples, and its
        odd-numbered ones (a link with one sample has it in both).

        A plan chosen on the first and judged on the second is judged on noise it was not
        fitted to: the best plan for one collective's noise always looks better than the
        current one *on that noise* (the winner's curse), but not on independent samples.
        """
        view = self.view(when)
        fit, judge = view.capacity.copy(), view.capacity.copy()
        for link, ((n0, s0), (n1, s1)) in self._halves.items():
            if n0 and n1:
                fit[link], judge[link] = math.exp(s0 / n0), math.exp(s1 / n1)
        return (replace(view, capacity=fit, _graph_cache={}),
                replace(view, capacity=judge, _graph_cache={}))
