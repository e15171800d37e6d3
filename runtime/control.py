"""The coordinator's decisions: a state machine with no sockets, threads or sleeps.

Rank 0 runs one coordinator per membership (see :mod:`netstorm.runtime.coordinator` for the
thin I/O around this module: connections, threads, timers). :class:`Coordination` takes what
happened — a site joined, a message came, a connection closed, time passed — and returns the
:data:`Action` s to carry out, in order, the way torch elastic's rendezvous operations
return actions for one executor to perform. Its clocks are injected, so a test drives it
message by message.

What it decides:

- **rendezvous**: every site joins with what it loaded (a site that disagrees is refused
  and the run aborted); once all have, the table of data addresses goes out;
- **horizon and plan versions**: when every site that takes part reported collective
  ``seq`` done, collectives below ``seq + 1 + window`` may start; the core's
  :class:`~netstorm.Controller` may switch plans then (awareness: each link's rate is the
  lower of what its sender and its receiver timed); a switch takes effect from the first
  collective not yet released, so no collective ever mixes two versions;
- **liveness**: a site that sent nothing for :func:`~.deadlines.silence_limit` of the
  timeout, or whose control connection closed, ends the run (or, elastic, leaves it: the
  others are told :class:`~.messages.Lost` and this membership is over). A site's own error
  report aborts the run at once, or in an elastic run after :data:`~.deadlines.ELASTIC_GRACE_S`
  unless a loss explains it first;
- **elastic growth**: when every worker said :class:`~.messages.Ready` at a boundary, the
  waiting sites are admitted (:class:`AdmitWaiting`) and everyone starts over on the grown
  membership (:meth:`Coordination.admitted`);
- the end: :class:`~.messages.Shutdown` once every worker said :class:`~.messages.Bye`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from netstorm.awareness import BandwidthEstimator, Policy
from netstorm.controller import Controller, MakePlan
from netstorm.errors import ProtocolError
from netstorm.job import Job
from netstorm.level_shift import LevelShiftEstimator
from netstorm.view import NetworkView

from .deadlines import ELASTIC_GRACE_S, HEARTBEAT_S, silence_limit
from .messages import (
    Abort,
    Beat,
    Bye,
    Error,
    Grow,
    Horizon,
    Join,
    Lost,
    Message,
    Ready,
    Report,
    Shutdown,
    State,
    SwitchNote,
    Table,
)

__all__ = [
    "TABLE_LEAD_S",
    "Action",
    "AdmitWaiting",
    "Broadcast",
    "CloseListener",
    "Coordination",
    "Finish",
    "Refuse",
    "Send",
]

#: Seconds between the table going out and the run's start on the wall clock (every site
#: starts its dynamics from it).
TABLE_LEAD_S = 0.2


def fingerprint(view: NetworkView, wire: str) -> str:
    """A digest of what every site of a run must agree on: the topology (names, workers,
    capacities, latencies, caps) and how payloads are encoded."""
    h = hashlib.sha256()
    h.update(repr((view.sites, view.workers)).encode())
    for a in (view.capacity, view.latency, view.egress, view.ingress):
        h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=float).tobytes())
    return f"{h.hexdigest()[:16]}/{wire}"


@dataclass(frozen=True)
class Send:
    """Send ``msg`` to site ``rank``."""

    rank: int
    msg: Message


@dataclass(frozen=True)
class Broadcast:
    """Send ``msg`` to ``ranks``, in that order (rank 0, this process's own site, last: an
    abort ends this process). One broadcast at a time: every site hears one order."""

    msg: Message
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Refuse:
    """Answer the connection that just joined with :class:`~.messages.Abort` and close it."""

    reason: str


@dataclass(frozen=True)
class CloseListener:
    """Close rank 0's listener: the survivors' next join must reach the next coordinator."""


@dataclass(frozen=True)
class AdmitWaiting:
    """Admit the sites waiting to join (rank 0's door), then report the membership they
    make to :meth:`Coordination.admitted`."""


@dataclass(frozen=True)
class Finish:
    """This coordinator's part is over (a loss or growth ended the membership)."""


Action = Send | Broadcast | Refuse | CloseListener | AdmitWaiting | Finish


class Coordination:
    """Rank 0's decisions for one membership of a run.

    Parameters
    ----------
    view
        The topology every site loaded.
    fingerprint
        What every site must have loaded alike (topology and wire encoding).
    make_plan
        The run's planner call (:meth:`netstorm.registry.PlannerInfo.planner_call`).
    policy
        The re-plan policy.
    window
        Collectives released ahead of the last one done everywhere.
    timeout_s
        The run's timeout (silence and grace follow from it, :mod:`~.deadlines`).
    clock, wall
        Monotonic seconds (silence, the estimator, the policy) and the wall clock (the
        run's start in the table).
    elastic
        A lost site leaves the run instead of ending it.
    reporters
        ``reporters(seq, numel)``: the ranks that report collective ``seq`` done (every
        site when not given): a relay a plan leaves out never hears of a collective.
    noisy
        Links are timed on a real or kernel-shaped network: estimate them with
        :class:`~netstorm.level_shift.LevelShiftEstimator` instead of the EWMA that suits
        exact, emulated timings.
    aware
        Estimate the links and let the policy re-plan (``False``: never).

    Notes
    -----
    Every input returns the actions to carry out, in order. Decisions are final: after a
    loss or growth (:attr:`over`) nothing but the action already returned happens.
    """

    def __init__(self, view: NetworkView, fingerprint: str, make_plan: MakePlan,
                 policy: Policy, *, window: int, timeout_s: float,
                 clock: Callable[[], float], wall: Callable[[], float], elastic: bool = False,
                 reporters: Callable[[int, int], frozenset[int]] | None = None,
                 noisy: bool = False, aware: bool = True) -> None:
        self.view = view
        self.n = view.n
        self.workers = view.workers
        self.fingerprint = fingerprint
        self.make_plan = make_plan
        self.policy = policy
        self.window = window
        self.timeout_s = timeout_s
        self.clock = clock
        self.wall = wall
        self.elastic = elastic
        self.reporters = reporters
        kind = LevelShiftEstimator if noisy else BandwidthEstimator
        self.estimator = kind(view, clock=clock) if aware else None
        self.controller: Controller | None = None
        self.addresses: dict[int, tuple[str, int]] = {}
        self.horizon = window
        self.byes: set[int] = set()
        self.reports: dict[int, set[int]] = {}  # seq -> the ranks that reported it
        #: per link, the lowest rate its sender / its receiver timed since the last boundary
        self._rates: dict[tuple[int, int], list[float]] = {}
        self._finished: deque[int] = deque(maxlen=256)  # collectives done everywhere lately
        self._heard: dict[int, float] = {}  # rank -> when its last message came
        self._next_beat = 0.0
        self._aborts: list[tuple[float, str]] = []  # elastic: (when, reason) held reports
        self._admitting: set[int] = set()  # workers at the boundary, ready for newcomers
        #: sites waiting to join (indices into the first topology), announced on every
        #: horizon: the workers stop for them at their next iteration boundary
        self.entering: tuple[int, ...] = ()
        self.lost: tuple[int, ...] = ()  # elastic: ranks that left; this membership is over
        self.grown = False  # elastic: the waiting sites were admitted; this one is over
        self.shut = False  # every worker said bye: the run is over

    # -- state --------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Every site joined (the table went out)."""
        return len(self.addresses) == self.n

    @property
    def over(self) -> bool:
        """A loss or growth ended this membership."""
        return bool(self.lost) or self.grown

    def _everyone(self) -> tuple[int, ...]:
        """The joined sites still in, rank 0 last."""
        ranks = sorted(r for r in self.addresses if r not in self.lost)
        return tuple(sorted(ranks, key=lambda r: r == 0))

    def _who(self, rank: int) -> str:
        return f"site {self.view.sites[rank]} (rank {rank})"

    def _abort(self, reason: str) -> list[Action]:
        return [Broadcast(Abort(reason), self._everyone())]

    # -- inputs -------------------------------------------------------------------------
    def join(self, rank: int, msg: Join) -> list[Action]:
        """Site ``rank`` opened its control connection with ``msg``."""
        problem = None
        if msg.fingerprint != self.fingerprint:
            problem = (f"site {rank} loaded a different topology or wire encoding than "
                       f"rank 0 ({msg.name!r} vs {self.view.name!r}, wire "
                       f"{msg.wire} vs {self.fingerprint.rpartition('/')[2]})")
        elif msg.world_size != self.n:
            problem = f"site {rank} has WORLD_SIZE {msg.world_size}, rank 0 {self.n}"
        elif rank in self.addresses:
            problem = f"rank {rank} joined twice"
        elif not 0 <= rank < self.n:
            problem = f"rank {rank} is not a site of {self.view.name!r}"
        if problem is not None:
            return [Refuse(problem), *self._abort(f"control connection to site {rank}: "
                                                  f"{problem}")]
        self.addresses[rank] = msg.address
        if not self.started:
            return []
        now = self.clock()
        self._heard = dict.fromkeys(range(self.n), now)
        self._next_beat = now + HEARTBEAT_S
        table = Table(tuple(self.addresses[r] for r in range(self.n)),
                      self.wall() + TABLE_LEAD_S, self.horizon)
        return [Broadcast(table, self._everyone())]

    def receive(self, rank: int, msg: Message) -> list[Action]:
        """A message from site ``rank`` (after its join).

        Raises
        ------
        ProtocolError
            A message no site sends the coordinator (a hello, a table, ...).
        """
        self._heard[rank] = self.clock()
        match msg:
            case Beat():
                return []
            case Report():
                return self._report(rank, msg)
            case Bye():
                self.byes.add(rank)
                if set(self.workers) <= self.byes and not self.shut:
                    self.shut = True
                    return [Broadcast(Shutdown(), self._everyone())]
                return []
            case Ready():
                return self._ready(rank)
            case State():  # a worker's state for the newcomers: theirs only
                return [Send(to, msg) for to in msg.to if to in self.addresses]
            case Error(reason=reason):
                why = f"{self._who(rank)}: {reason}"
                if not self.elastic:
                    return self._abort(why)
                # a peer's death shows here first; its connection's end, a moment later
                self._aborts.append((self.clock() + ELASTIC_GRACE_S, why))
                return []
            case _:
                raise ProtocolError(f"{self._who(rank)} sent the coordinator a "
                                    f"{type(msg).__name__} message")

    def closed(self, rank: int, why: str) -> list[Action]:
        """Site ``rank``'s control connection closed or broke (``why``)."""
        if rank in self.byes or rank not in self.addresses or self.shut:
            return []  # (after the shutdown every site closes its connection)
        return self._end(rank, why)

    def tick(self) -> list[Action]:
        """Time passed (call by :meth:`deadline`): heartbeats out, silent sites named,
        held error reports whose grace ran out."""
        if not self.started or self.over:
            return []
        now = self.clock()
        for due, reason in list(self._aborts):
            if due <= now:
                self._aborts.remove((due, reason))
                return self._abort(reason)
        if now < self._next_beat:
            return []
        self._next_beat = now + HEARTBEAT_S
        limit = silence_limit(self.timeout_s)
        silent = [(now - self._heard[r], r) for r in range(self.n)
                  if r not in self.byes and now - self._heard[r] > limit]
        if silent:
            quiet, rank = max(silent)
            return self._end(rank, f"sent nothing for {quiet:.1f} s: stopped, overloaded or "
                                   "cut off")
        return [Broadcast(Beat(), self._everyone())]

    def deadline(self) -> float:
        """When :meth:`tick` has something to do next (on :attr:`clock`)."""
        return min([self._next_beat, *(due for due, _ in self._aborts)])

    def admitted(self, members: list[int], joined: list[int]) -> list[Action]:
        """The waiting sites were admitted (after :class:`AdmitWaiting`): ``members`` is the
        next membership, ``joined`` the sites new in it."""
        return [Broadcast(Grow(tuple(members), tuple(joined)), self._everyone()), Finish()]

    # -- decisions ----------------------------------------------------------------------
    def _end(self, rank: int, why: str) -> list[Action]:
        """Site ``rank`` is gone: abort the run, or (elastic) tell the others it left."""
        if not self.elastic:
            return self._abort(f"{self._who(rank)} {why}")
        if self.over or rank in self.byes:
            return []
        self.lost = (rank,)
        return [CloseListener(), Broadcast(Lost((rank,), f"{self._who(rank)} {why}"),
                                           self._everyone()), Finish()]

    def _ready(self, rank: int) -> list[Action]:
        """Worker ``rank`` is at an iteration boundary, ready for the entering sites; once
        every worker is, the membership grows."""
        if self.over or rank not in self.workers:
            return []
        self._admitting.add(rank)
        if not set(self.workers) <= self._admitting:
            return []
        self.grown = True  # this membership is over: a loss or report no longer counts
        return [CloseListener(), AdmitWaiting()]

    def _report(self, rank: int, msg: Report) -> list[Action]:
        seq = msg.seq
        if self.over or seq in self._finished:
            return []  # (a relay on a path the plan might not take may report late)
        needed = frozenset(range(self.n)) if self.reporters is None else \
            self.reporters(seq, msg.numel)
        for side, rows in ((0, msg.links), (1, msg.received)):
            for src, dst, nbytes, seconds in rows:
                if nbytes > 0 and seconds > 0:
                    seen = self._rates.setdefault((src, dst), [np.inf, np.inf])
                    seen[side] = min(seen[side], nbytes / seconds)
        heard = self.reports.setdefault(seq, set())
        if rank in needed:
            heard.add(rank)
        if heard < needed:
            return []
        del self.reports[seq]
        self._finished.append(seq)
        self._observe()
        switch = self._boundary(seq, msg.numel)
        self.horizon = max(self.horizon, seq + 1 + self.window)
        out = Horizon(seq, self.horizon, switch,
                      self.entering if self.elastic else None)
        return [Broadcast(out, self._everyone())]

    def _observe(self) -> None:
        """Feed the estimator one rate per link: the lower of what its sender and its
        receiver timed since the last collective finished everywhere.

        Both overstate a link: a sender's write returns once the bytes are in the socket
        buffer (or a qdisc), a receiver that reads a header late times the rest too short.
        An emulated link is timed by its sender on the link's own clock, exactly, and its
        receiver does not report."""
        rates, self._rates = self._rates, {}
        if self.estimator is None:
            return
        now = self.clock()
        for (src, dst), both in rates.items():
            rate = min(both)
            if np.isfinite(rate):
                self.estimator.observe(src, dst, rate, 1.0, now)

    def _boundary(self, seq: int, numel: int) -> SwitchNote | None:
        """Collective ``seq`` is done everywhere: let the controller decide."""
        if self.estimator is None:
            return None
        if self.controller is None:
            self.controller = Controller(self.view, Job(buckets=numel * 4), self.make_plan,
                                         policy=self.policy, estimator=self.estimator,
                                         clock=self.clock)
        made = self.controller.boundary(seq + 1)
        if made is None:
            return None
        estimate = self.controller.reference
        return SwitchNote(
            version=made.version, from_seq=self.horizon, after_seq=seq, reason=made.reason,
            planning_s=made.planning_s, capacity=_matrix(estimate.capacity),
            confidence=None if estimate.confidence is None else _matrix(estimate.confidence))


def _matrix(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in a)
