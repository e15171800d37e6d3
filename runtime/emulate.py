"""The emulated WAN in the site processes: paced links, site egress and ingress caps, delays,
dynamics.

Each site shapes what it sends: every outgoing link is a virtual clock that a payload
advances by ``bytes / rate``, sliced so that bytes leave at the link's rate (a receiver sees
them trickle in, as from a real link, and can time the link); the site's egress cap is a
second clock shared by all its links. A site's ingress cap is a clock on the receiving side,
shared by its inbound links: a reader takes each slice off the socket no sooner than the cap
allows (:meth:`Shaper.receive`), and TCP's flow control holds the senders back. The one-way
delay of a link is applied by the receiver (:meth:`Shaper.delay`), which holds each message
that long before its executor sees it.
A time scale ``K`` multiplies every rate and divides every delay and dynamics time, so a
20-155 Mbit/s WAN runs an iteration in about a second on one machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from netstorm.dynamics import Dynamics
from netstorm.view import NetworkView

__all__ = ["Shaper"]

#: Longest stretch a sender sleeps before writing the next slice (pacing granularity).
SLICE_S = 0.005
MIN_SLICE = 64 * 1024


class Shaper:
    """Paces one site's outgoing links and knows its incoming links' delays.

    Parameters
    ----------
    view
        The true network (capacities in B/s, latencies in s).
    site
        This site's index.
    scale
        Time scale ``K``: rates times K, delays divided by K.
    pace, delay
        Pace the links at their rates; hold arrivals for the links' delays. ``--emulate
        none`` does neither; ``netns`` only delays (the kernel's ``tc htb`` paces).

    Notes
    -----
    A frame's first slice of ``b`` bytes to ``dst`` starts when the link's and the egress
    clocks are both free, and not before now; later slices of the frame follow on the
    link's clock. A slice ends ``b / rate`` after it starts (``b / egress`` on the egress
    clock); the sender sleeps until the later end, then writes. A frame therefore never
    leaves faster than the link's rate, overshooting sleeps are made up within the frame,
    and concurrent links share the egress cap first come, first served (not max-min fair:
    a simplification).
    """

    def __init__(self, view: NetworkView, site: int, *, scale: float = 1.0,
                 pace: bool = True, delay: bool = True) -> None:
        self.site = site
        self.scale = float(scale)
        self.pace = pace
        self.delays = delay
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._latency = np.asarray(view.latency, dtype=float) / self.scale
        self._free = np.zeros(view.n)
        self._egress_free = 0.0
        self._ingress_free = 0.0
        self.set_rates(view.capacity, view.egress, view.ingress)

    def set_rates(self, capacity: np.ndarray, egress: np.ndarray | None = None,
                  ingress: np.ndarray | None = None) -> None:
        """Take new true capacities (B/s, unscaled) for this site's links and caps from now
        on (a cap not given is unlimited)."""
        with self._lock:
            self._rate = np.asarray(capacity, dtype=float)[self.site] * self.scale
            cap = np.inf if egress is None else float(np.asarray(egress)[self.site])
            self._egress = cap * self.scale
            cap = np.inf if ingress is None else float(np.asarray(ingress)[self.site])
            self._ingress = cap * self.scale
            self._changed.notify_all()

    def rate(self, dst: int) -> float:
        """The emulated rate of link ``site -> dst`` now, B/s (scaled)."""
        return float(self._rate[dst])

    def delay(self, src: int) -> float:
        """One-way delay of link ``src -> site``, seconds (scaled); 0 when not emulating."""
        return float(self._latency[src, self.site]) if self.delays else 0.0

    def transmit(self, dst: int, data: memoryview, write: Callable[[memoryview], None],
                 stop: threading.Event) -> float | None:
        """Write ``data`` toward ``dst`` with ``write``, paced at the link's rate.

        Returns the seconds the emulated link was busy with it (on the link's own clock,
        so a host too slow to keep up does not look like a slow link), or ``None`` when not
        emulating (the caller times the write itself).
        """
        if not self.pace:
            write(data)
            return None
        total = len(data)
        offset = 0
        busy = 0.0
        while offset < total:
            with self._lock:
                while self._rate[dst] <= 0 and not stop.is_set():
                    self._changed.wait(0.1)  # link down until dynamics bring it back
                rate = float(self._rate[dst])
                size = min(total - offset, max(MIN_SLICE, int(rate * SLICE_S)))
                busy += size / rate
                # A frame's first slice starts when the link (and the egress cap) is free,
                # or now; its later slices continue the frame's own clock, so a sleep that
                # overshot is made up by the next slice of the same frame, never by a burst
                # after the link sat idle.
                start = max(self._free[dst], self._egress_free)
                if offset == 0:
                    start = max(start, time.monotonic())
                self._free[dst] = start + size / rate
                if np.isfinite(self._egress):
                    self._egress_free = start + size / self._egress
                end = max(self._free[dst], self._egress_free)
            if stop.is_set():
                return busy
            wait = end - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            write(data[offset:offset + size])
            offset += size
        return busy

    def receive(self, data: memoryview, read: Callable[[memoryview], None]) -> None:
        """Fill ``data`` with ``read``, no faster than this site's ingress cap allows.

        Every inbound link shares the cap's clock, first come, first served: a slice of
        ``b`` bytes is read once the clock has advanced ``b / ingress`` past the later of its
        previous value and, for a frame's first slice, now.
        """
        if not self.pace or not np.isfinite(self._ingress):
            read(data)
            return
        total, offset = len(data), 0
        while offset < total:
            with self._lock:
                size = min(total - offset, max(MIN_SLICE, int(self._ingress * SLICE_S)))
                start = self._ingress_free
                if offset == 0:
                    start = max(start, time.monotonic())
                self._ingress_free = end = start + size / self._ingress
            wait = end - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            read(data[offset:offset + size])
            offset += size

    def follow(self, dynamics: Dynamics, view: NetworkView, start: float,
               stop: threading.Event) -> threading.Thread:
        """Apply ``dynamics`` live: snapshot at time t takes effect at wall-clock
        ``start + t / scale`` (``start`` from :func:`time.time`, shared by every site)."""
        def run() -> None:
            for snap in dynamics.timeline(view):
                wait = start + snap.time_s / self.scale - time.time()
                if wait > 0 and stop.wait(wait):
                    return
                if stop.is_set():
                    return
                self.set_rates(snap.capacity, snap.egress, snap.ingress)

        thread = threading.Thread(target=run, name=f"dynamics-{self.site}", daemon=True)
        thread.start()
        return thread
