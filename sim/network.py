"""The simulated WAN: directed links with FIFO send queues, shared site caps, latency.

Transfers are hop transfers of whole chunks over one directed link. Each link sends one
transfer at a time (one connection per overlay link, as the runtime has), serving its
queue in the senders' priority order (:attr:`netstorm.program.Step.priority`); the
links active at the same moment share their sites' egress and ingress caps
max-min fairly (:mod:`netstorm.sim.rates`), recomputed whenever a transfer starts or ends
or a capacity changes. A transfer may be capped by a TCP window over the round-trip time.
After its last byte leaves, a chunk arrives one link latency later.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from netstorm.view import NetworkView

from .rates import maxmin_rates

__all__ = ["Network", "true_capacities", "window_caps"]

Observer = Callable[[int, int, float, float, float, bool], None]

#: A rate this far below a transfer's own cap was set by a shared site cap.
CAP_BOUND = 1 - 1e-9


#: ``(rule, [(auxiliary first hop, deliver over that path), ...])``: see :meth:`Network.send`.
Divert = tuple[Any, list[tuple[int, Callable[[], None]]]]  # (QueueRule, ...)


def true_capacities(n: int, capacity: np.ndarray, egress: np.ndarray | None,
                    ingress: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Private float copies of a change's capacities; a missing site cap is no cap."""
    def caps(values: np.ndarray | None) -> np.ndarray:
        return np.full(n, np.inf) if values is None else np.array(values, dtype=float)

    return np.array(capacity, dtype=float), caps(egress), caps(ingress)


def window_caps(latency: np.ndarray, window_bytes: float | None) -> np.ndarray:
    """Each link's rate cap from a TCP window: ``window / (l(u, v) + l(v, u))``; ``inf``
    without a window or a round trip."""
    rtt = latency + latency.T
    if not window_bytes:
        return np.full(rtt.shape, np.inf)
    with np.errstate(divide="ignore"):
        return np.where(rtt > 0, window_bytes / np.where(rtt > 0, rtt, 1), np.inf)


class _Transfer:
    __slots__ = ("capped", "deliver", "divert", "link", "nbytes", "queued", "rate",
                 "remaining", "since", "start", "tag", "token")

    def __init__(self, link: int, nbytes: float, deliver: Callable[[], None] | None,
                 tag: Any, divert: Divert | None = None) -> None:
        self.link = link
        self.divert = divert
        self.queued = False
        self.capped = False
        self.nbytes = nbytes
        self.remaining = nbytes
        self.deliver = deliver
        self.tag = tag
        self.rate = 0.0
        self.since = 0.0
        self.start = 0.0
        self.token = 0


class Network:
    """Links, site caps and the transfers crossing them, inside a SimPy environment.

    Parameters
    ----------
    env
        The SimPy environment (its clock is the simulated time).
    view
        Gives sites, link capacities, latencies and site caps (the *true* network).
    window_bytes
        Optional TCP window: a transfer on ``u -> v`` runs at most at
        ``window_bytes / (latency[u, v] + latency[v, u])``.
    observe
        Called ``observe(src, dst, nbytes, seconds, end_time, capped)`` after every
        transfer's last byte leaves (what a sender measures); e.g. a bandwidth estimator.
        ``capped``: a shared site cap held the transfer below its link's rate at some
        point, so its rate is only a lower bound on the link's.
    record
        If true, keep ``(src, dst, start, end, tag)`` of every transfer in :attr:`log`.

    Notes
    -----
    Without finite site caps the links are independent, so a transfer's rate is simply
    ``min(capacity, window / RTT)`` and is set when it starts (and when a capacity
    changes). With caps, every start, end or capacity change re-solves the max-min
    allocation over the active transfers (batched per instant); solutions are cached by the
    set of active links until a capacity changes.
    """

    def __init__(self, env: simpy.Environment, view: NetworkView, *,
                 window_bytes: float | None = None, observe: Observer | None = None,
                 record: bool = False) -> None:
        self.env = env
        self.n = n = view.n
        self.latency = np.array(view.latency, dtype=float)
        self.window_bytes = window_bytes
        self.observe = observe
        self.record = record
        self.log: list[tuple[int, int, float, float, Any]] = []
        self._queues: list[list[tuple[float, int, _Transfer]]] = [[] for _ in range(n * n)]
        self._qlen = [0] * (n * n)  # live entries of each queue (moved ones excluded)
        #: auxiliary first-hop link -> transfers waiting for their primary it may take
        self._movable: dict[int, list[tuple[float, int, _Transfer]]] = {}
        self._seq = itertools.count()
        self._active: dict[int, _Transfer] = {}
        self.link_bytes = np.zeros((n, n))
        self.link_busy = np.zeros((n, n))
        self.transfers = 0
        self._dirty = False
        self._cache: dict[bytes, np.ndarray] = {}
        self._wcap = window_caps(self.latency, window_bytes)
        self.set_capacity(view.capacity, view.egress, view.ingress)

    # -- capacities -------------------------------------------------------------------------
    def set_capacity(self, capacity: np.ndarray, egress: np.ndarray | None = None,
                     ingress: np.ndarray | None = None) -> None:
        """Change the true capacities now; transfers in flight continue at the new rates."""
        self.capacity, self.egress, self.ingress = true_capacities(self.n, capacity, egress,
                                                                   ingress)
        self._shared = bool(np.isfinite(self.egress).any() or np.isfinite(self.ingress).any())
        self._link_rate = np.minimum(self.capacity, self._wcap).ravel()
        self._res_cap = np.concatenate([self.capacity.ravel(), self.egress, self.ingress])
        self._cache.clear()
        if self._active:
            self._resolve()

    # -- sending ----------------------------------------------------------------------------
    def send(self, src: int, dst: int, nbytes: float, deliver: Callable[[], None] | None,
             tag: Any = None, priority: float = 0.0, divert: Divert | None = None) -> None:
        """Queue ``nbytes`` on link ``src -> dst``; ``deliver()`` runs when it has arrived.

        A busy link serves its queue smallest ``priority`` first, ties first come first
        served. ``divert = (rule, [(hop, deliver_via_hop), ...])`` lets the transfer move,
        while it waits, to an auxiliary path's first hop ``src -> hop`` once that link
        drains, if ``rule.divert(depth(src, dst), depth(src, hop))`` (a
        :class:`netstorm.QueueRule`); it is then delivered by ``deliver_via_hop``.
        """
        link = src * self.n + dst
        transfer = _Transfer(link, float(nbytes), deliver, tag, divert)
        if link in self._active:
            entry = (priority, next(self._seq), transfer)
            heapq.heappush(self._queues[link], entry)
            self._qlen[link] += 1
            transfer.queued = True
            if divert is not None:
                for hop, _ in divert[1]:
                    heapq.heappush(self._movable.setdefault(src * self.n + hop, []), entry)
        else:
            self._begin(transfer)

    def probe(self, src: int, dst: int, nbytes: float, programs: object = None) -> None:
        """Send ``nbytes`` on ``src -> dst`` now, delivered nowhere (a bandwidth probe);
        ``programs`` is for :class:`~netstorm.sim.compiled.CompiledNetwork`'s signature."""
        self.send(src, dst, nbytes, None, ("probe",))

    def depth(self, src: int, dst: int) -> int:
        """Transfers on link ``src -> dst``: the one sending, if any, plus those queued."""
        link = src * self.n + dst
        return self._qlen[link] + (link in self._active)

    def busy(self, src: int, dst: int) -> bool:
        """True while the link sends or has a queue."""
        link = src * self.n + dst
        return link in self._active or self._qlen[link] > 0

    def _move_to(self, link: int) -> bool:
        """Idle ``link``: start the first waiting transfer whose rule diverts it here."""
        movable = self._movable.get(link)
        keep = []
        moved = False
        while movable:
            entry = heapq.heappop(movable)
            t = entry[2]
            if not t.queued:
                continue  # started on its primary, or moved elsewhere, meanwhile
            rule, options = t.divert  # type: ignore[misc]
            if not rule.divert(self._qlen[t.link] + (t.link in self._active), 0):
                keep.append(entry)
                continue
            self._qlen[t.link] -= 1
            t.queued = False
            t.link = link
            t.deliver = next(d for hop, d in options if link % self.n == hop)
            self._begin(t)
            moved = True
            break
        for entry in keep:
            heapq.heappush(movable, entry)  # type: ignore[arg-type]
        return moved

    def _begin(self, t: _Transfer) -> None:
        now = self.env.now
        t.start = t.since = now
        self._active[t.link] = t
        if self._shared:
            self._mark()
        else:
            self._set_rate(t, float(self._link_rate[t.link]))

    def _set_rate(self, t: _Transfer, rate: float) -> None:
        t.rate = rate
        t.token += 1
        if rate < self._link_rate[t.link] * CAP_BOUND:
            t.capped = True
        if rate <= 0:
            return  # stalled until the capacity changes
        token = t.token
        event = self.env.timeout(t.remaining / rate)
        event.callbacks.append(lambda _e: self._finish(t, token))

    def _advance(self) -> None:
        now = self.env.now
        for t in self._active.values():
            t.remaining -= t.rate * (now - t.since)
            t.since = now

    def _resolve(self) -> None:
        """Recompute the rates of every active transfer (after a change)."""
        self._advance()
        if not self._shared:
            for t in list(self._active.values()):
                self._set_rate(t, float(self._link_rate[t.link]))
            return
        links = np.fromiter(self._active.keys(), dtype=np.int64, count=len(self._active))
        key = links.tobytes()
        rates = self._cache.get(key)
        if rates is None:
            n2 = self.n * self.n
            res = np.stack([links, n2 + links // self.n, n2 + self.n + links % self.n], axis=1)
            rates = maxmin_rates(res, self._res_cap, self._link_rate[links])
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = rates
        for t, rate in zip(list(self._active.values()), rates.tolist(), strict=True):
            if rate != t.rate or t.token == 0:
                self._set_rate(t, rate)

    def _mark(self) -> None:
        if not self._dirty:
            self._dirty = True
            event = self.env.event()
            event.callbacks.append(self._flush)
            event.succeed()

    def _flush(self, _event: Any) -> None:
        self._dirty = False
        if self._active:
            self._resolve()

    def _finish(self, t: _Transfer, token: int) -> None:
        if token != t.token:
            return  # superseded by a rate change
        now = self.env.now
        del self._active[t.link]
        src, dst = divmod(t.link, self.n)
        seconds = now - t.start
        self.transfers += 1
        self.link_bytes[src, dst] += t.nbytes
        self.link_busy[src, dst] += seconds
        if self.record:
            self.log.append((src, dst, t.start, now, t.tag))
        if self.observe is not None:
            self.observe(src, dst, t.nbytes, seconds, now, t.capped)
        queue = self._queues[t.link]
        while queue and not queue[0][2].queued:
            heapq.heappop(queue)  # moved to an auxiliary path while it waited
        if queue:
            nxt = heapq.heappop(queue)[2]
            nxt.queued = False
            self._qlen[t.link] -= 1
            self._begin(nxt)
        elif not (self._movable and self._move_to(t.link)) and self._shared:
            self._mark()
        if t.deliver is not None:
            lat = self.latency[src, dst]
            if lat > 0:
                event = self.env.timeout(lat)
                deliver = t.deliver
                event.callbacks.append(lambda _e: deliver())
            else:
                t.deliver()
