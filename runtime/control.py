"""The control plane: rendezvous, the site table, plan versions and measurement reports.

Rank 0 runs a :class:`Coordinator` beside its site. Every site (rank 0's too) opens one
authenticated control connection to it (the same HMAC handshake as data connections): the
rendezvous needs no unauthenticated store, so nobody who merely reaches a port can join, inject
a plan or a measurement. (torch's ``TCPStore`` has no authentication; we do not use it.)

Messages (JSON control frames):

- both ways: ``beat`` every :data:`HEARTBEAT_S`; a side that hears nothing from the other
  for :func:`silence_limit` of the timeout stops the run naming it (a stopped process, a
  cut link: TCP alone would not tell for minutes);
- site -> coordinator: ``join`` (rank, data address, topology fingerprint), ``report`` (a
  collective is done here: seq, bytes and busy seconds per link it sent on, and per link it
  received on when the links are not emulated in-process), ``bye``, ``error``;
- coordinator -> site (elastic runs): ``lost`` (ranks that left; the coordinator's part in
  this membership ends, see :mod:`netstorm.runtime.elastic`), ``grow`` (sites join: the
  next membership), ``entering`` on every ``horizon`` (sites waiting to join at the
  workers' next iteration boundary);
- worker -> coordinator (elastic runs): ``admit`` (at an iteration boundary, ready for the
  entering sites), ``state`` (the workers' state for a newcomer: forwarded to it);
- coordinator -> site: ``table`` (every site's data address, the start time), ``horizon``
  (collectives below it may start, with any plan switch that takes effect from a given
  seq), ``shutdown``, ``abort``.

Versions: every site makes plan version 1 itself from the topology (planners are
deterministic). A switch is decided by the core's :class:`~netstorm.Controller` when a
collective is done on every site; it takes effect from the first collective not yet released,
so no collective ever mixes two versions, and the sites plan the new version themselves from
the view the decision carries (the estimated capacities and their confidence).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from netstorm.awareness import BandwidthEstimator, Policy
from netstorm.controller import Controller
from netstorm.job import Job
from netstorm.level_shift import LevelShiftEstimator
from netstorm.plan import Plan
from netstorm.view import NetworkView

from .links import Connection

__all__ = ["ELASTIC_GRACE_S", "HEARTBEAT_S", "Coordinator", "silence_limit"]

#: Sites and the coordinator send each other a heartbeat this often, seconds.
HEARTBEAT_S = 1.0
#: Elastic runs: how long a site's error report waits for a loss that explains it, seconds.
ELASTIC_GRACE_S = 2.0


def silence_limit(timeout_s: float) -> float:
    """Seconds without a heartbeat after which a peer on the control plane is taken for
    stopped: half the run's timeout (at least 2 s), so that a silent site is named before
    the collectives it holds up reach their own timeout."""
    return max(2.0, timeout_s / 2)


class Coordinator:
    """Rank 0's control plane (one per run).

    Parameters
    ----------
    view
        The topology every site loaded.
    fingerprint
        The topology's fingerprint; a joining site with another one is refused.
    make_plan
        ``make_plan(view, job) -> Plan``: the run's planner.
    policy
        The re-plan policy.
    window
        Collectives released ahead of the last one done everywhere.
    workers
        Ranks that call ``allreduce`` (the others relay).
    elastic
        A site that closes its control connection or goes silent *leaves* the run (a
        ``lost`` message to the others, who go on without it) instead of aborting it; a
        site's own error report aborts only if no loss explains it within
        :data:`ELASTIC_GRACE_S`.
    reporters
        ``reporters(seq, numel)``: the ranks that report collective ``seq`` done (every
        site when not given); a relay that a plan leaves out never hears of a collective.
    on_lost
        Called when a site is found lost, before the others are told (rank 0 closes its
        listener, so that their next join waits for its next coordinator).
    on_grow
        Elastic runs: every worker is at an iteration boundary, ready for the sites
        announced in :attr:`entering`. Called before the others are told (rank 0 closes its
        listener and admits the entering sites); returns the next membership and the sites
        that join it (indices into the run's first topology).
    noisy
        The links are timed on a real (or kernel-shaped) network, whose timings scatter:
        estimate them with :class:`~netstorm.level_shift.LevelShiftEstimator` (believe a
        level shift, average the noise) instead of the EWMA that suits exact timings.
    """

    def __init__(self, view: NetworkView, fingerprint: str,
                 make_plan: Callable[[NetworkView, Job], Plan], policy: Policy, *,
                 window: int, workers: tuple[int, ...], aware: bool = True,
                 noisy: bool = False, timeout_s: float = 60.0, elastic: bool = False,
                 on_lost: Callable[[], None] | None = None,
                 on_grow: Callable[[], tuple[list[int], list[int]]] | None = None,
                 reporters: Callable[[int, int], frozenset[int]] | None = None) -> None:
        self.view = view
        self.fingerprint = fingerprint
        self.make_plan = make_plan
        self.policy = policy
        self.window = window
        self.workers = workers
        self.n = view.n
        self.conns: dict[int, Connection] = {}
        self.addresses: dict[int, list[Any]] = {}
        self.reports: dict[int, set[int]] = {}  # seq -> the ranks that reported it
        #: per link, the lowest rate its sender / its receiver timed since the last boundary
        self._rates: dict[tuple[int, int], list[float]] = {}
        self.horizon = window
        self.byes: set[int] = set()
        kind = LevelShiftEstimator if noisy else BandwidthEstimator
        self.estimator = kind(view, clock=time.monotonic) if aware else None
        self.controller: Controller | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.closed = threading.Event()
        self.timeout_s = timeout_s
        self._heard: dict[int, float] = {}  # rank -> when its last message came
        self.elastic = elastic
        self.on_lost = on_lost
        self.reporters = reporters
        self._finished: deque[int] = deque(maxlen=256)  # collectives done everywhere lately
        self.lost: tuple[int, ...] = ()  # ranks that left (elastic): this coordinator is done
        self.on_grow = on_grow
        #: sites waiting to join (indices into the first topology), announced on every
        #: ``horizon``: the workers stop for them at their next iteration boundary
        self.entering: tuple[int, ...] = ()
        self._admitting: set[int] = set()  # workers at the boundary, ready for them
        self.grown = False  # the workers admitted the entering sites: this one is done
        self._say = threading.Lock()  # one broadcast at a time: every site hears one order

    def add(self, conn: Connection, join: dict[str, Any]) -> None:
        """A site's control connection, with its ``join`` message; serves it on a thread."""
        self._spawn(self._serve, f"control<-{conn.peer}", conn, join)

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _who(self, rank: int) -> str:
        return f"site {self.view.sites[rank]} (rank {rank})"

    def _pulse(self) -> None:
        """Once every site joined: a heartbeat to each every :data:`HEARTBEAT_S`, and the
        run aborts naming a site that sent nothing (no beat, no report) for too long."""
        limit = silence_limit(self.timeout_s)
        while not self.closed.wait(HEARTBEAT_S):
            now = time.monotonic()
            with self._lock:
                silent = [(now - self._heard[r], r) for r in range(self.n)
                          if r not in self.byes and now - self._heard[r] > limit]
            if silent:
                quiet, rank = max(silent)
                self._end(rank, f"sent nothing for {quiet:.1f} s: stopped, overloaded or "
                                "cut off")
                return
            self._broadcast({"type": "beat"})

    def _broadcast(self, msg: dict[str, Any]) -> None:
        with self._say:  # rank 0 (this process's own site) last: an abort ends this process
            for rank, conn in sorted(self.conns.items(), key=lambda rc: rc[0] == 0):
                if rank in self.lost:
                    continue
                try:
                    conn.send_control(msg)
                except Exception:
                    pass

    def _end(self, rank: int, why: str) -> None:
        """Site ``rank`` is gone: abort the run, or (elastic) tell the others it left."""
        if not self.elastic:
            self._abort(f"{self._who(rank)} {why}")
            return
        with self._lock:
            if self.lost or self.grown or rank in self.byes:
                return
            self.lost = (rank,)
        if self.on_lost is not None:  # the survivors' next join must not reach this one
            self.on_lost()
        self._broadcast({"type": "lost", "ranks": [rank], "reason": f"{self._who(rank)} {why}"})
        self.closed.set()

    def _abort_unless_lost(self, reason: str) -> None:
        if not self.lost and not self.closed.is_set():
            self._abort(reason)

    def _serve(self, conn: Connection, join: dict[str, Any]) -> None:
        try:
            self._join(conn, join)
            while not self.closed.is_set():
                header = conn.read_header(max_length=1 << 26)
                if header is None:
                    if conn.peer not in self.byes:
                        self._end(conn.peer, "closed its control connection")
                    return
                self._heard[conn.peer] = time.monotonic()
                self._handle(conn.peer, conn.read_control(header))
        except Exception as exc:
            if not self.closed.is_set():
                if conn.peer in self.conns:
                    self._end(conn.peer, f"lost its control connection ({exc})")
                else:
                    self._abort(f"control connection to site {conn.peer}: {exc}")

    def _join(self, conn: Connection, join: dict[str, Any]) -> None:
        rank = conn.peer
        problem = None
        if join.get("fingerprint") != self.fingerprint:
            problem = (f"site {rank} loaded a different topology or wire encoding than "
                       f"rank 0 ({join.get('name')!r} vs {self.view.name!r}, wire "
                       f"{join.get('wire')} vs {self.fingerprint.rpartition('/')[2]})")
        elif join.get("world_size") != self.n:
            problem = f"site {rank} has WORLD_SIZE {join.get('world_size')}, rank 0 {self.n}"
        elif rank in self.conns:
            problem = f"rank {rank} joined twice"
        if problem:
            conn.send_control({"type": "abort", "reason": problem})
            raise ValueError(problem)
        with self._lock:
            self.conns[rank] = conn
            self.addresses[rank] = join["address"]
            ready = len(self.conns) == self.n
        if ready:
            now = time.monotonic()
            self._heard = {r: now for r in range(self.n)}
            self._spawn(self._pulse, "pulse")
            self._broadcast({"type": "table",
                             "addresses": [self.addresses[r] for r in range(self.n)],
                             "start": time.time() + 0.2, "horizon": self.horizon})

    def _handle(self, rank: int, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "report":
            self._report(rank, msg)
        elif kind == "bye":
            with self._lock:
                self.byes.add(rank)
                done = set(self.workers) <= self.byes
            if done:
                self._broadcast({"type": "shutdown"})
        elif kind == "admit":
            self._admit(rank)
        elif kind == "state":  # a worker's state for the newcomers: theirs only
            for to in msg.get("to", ()):
                conn = self.conns.get(int(to))
                if conn is not None:
                    conn.send_control(msg)
        elif kind == "error":
            reason = f"{self._who(rank)}: {msg.get('reason')}"
            if not self.elastic:
                self._abort(reason)
            else:  # a peer's death shows here first; its connection's end, a moment later
                timer = threading.Timer(ELASTIC_GRACE_S, self._abort_unless_lost, (reason,))
                timer.daemon = True
                timer.start()

    def _report(self, rank: int, msg: dict[str, Any]) -> None:
        seq = int(msg["seq"])
        needed = frozenset(range(self.n)) if self.reporters is None else \
            self.reporters(seq, int(msg["numel"]))
        with self._lock:
            if self.lost or self.grown or seq in self._finished:
                return  # (a relay on a path the plan might not take may report late)
            for side, key in ((0, "links"), (1, "received")):
                for src, dst, nbytes, seconds in msg.get(key, ()):
                    if nbytes > 0 and seconds > 0:
                        seen = self._rates.setdefault((int(src), int(dst)), [np.inf, np.inf])
                        seen[side] = min(seen[side], float(nbytes) / float(seconds))
            heard = self.reports.setdefault(seq, set())
            if rank in needed:
                heard.add(rank)
            if heard < needed:
                return
            del self.reports[seq]
            self._finished.append(seq)
            self._observe()
            out: dict[str, Any] = {"type": "horizon", "done": seq}
            if self.elastic:  # (also once it empties: a site that knocked may leave)
                out["entering"] = list(self.entering)
            switch = self._boundary(seq, int(msg["numel"]))
            if switch is not None:
                out["switch"] = switch
            self.horizon = max(self.horizon, seq + 1 + self.window)
            out["horizon"] = self.horizon
        self._broadcast(out)

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
        now = time.monotonic()
        for link, both in rates.items():
            rate = min(both)
            if not np.isfinite(rate):
                continue
            self.estimator.observe(link[0], link[1], rate, 1.0, now)

    def _boundary(self, seq: int, numel: int) -> dict[str, Any] | None:
        """Collective ``seq`` is done everywhere: let the controller decide."""
        if self.estimator is None:
            return None
        if self.controller is None:
            job = Job(buckets=numel * 4)

            def make(view: NetworkView, job: Job = job) -> Plan:
                return self.make_plan(view, job)

            self.controller = Controller(self.view, job, make,
                                         policy=self.policy, estimator=self.estimator,
                                         clock=time.monotonic)
        made = self.controller.boundary(seq + 1)
        if made is None:
            return None
        estimate = self.controller.reference
        switch = {"version": made.version, "from_seq": self.horizon, "reason": made.reason,
                  "after_seq": seq, "planning_s": made.planning_s,
                  "capacity": estimate.capacity.tolist(),
                  "confidence": (None if estimate.confidence is None
                                 else estimate.confidence.tolist())}
        return switch

    def _admit(self, rank: int) -> None:
        """Worker ``rank`` is at an iteration boundary, ready for the entering sites; once
        every worker is, the membership grows: rank 0 admits them, the others start over."""
        with self._lock:
            if self.lost or self.grown or rank not in self.workers:
                return
            self._admitting.add(rank)
            if not set(self.workers) <= self._admitting:
                return
            self.grown = True  # this membership is over: a loss or report no longer counts
        assert self.on_grow is not None, "an admit reached a coordinator that cannot grow"
        members, joined = self.on_grow()
        self._broadcast({"type": "grow", "members": members, "joined": joined})
        self.closed.set()

    def _abort(self, reason: str) -> None:
        self._broadcast({"type": "abort", "reason": reason})

    def close(self) -> None:
        self.closed.set()
