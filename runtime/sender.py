"""A site's send side: one :class:`~netstorm.runtime.links.OutLink` per peer it sends to,
the route rule's moves between them, link measurements and probes."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from netstorm.errors import PeerError
from netstorm.plan import QueueRule

from . import wire
from .config import TlsContexts
from .emulate import Shaper
from .links import Frame, OutLink, connect
from .messages import Data

__all__ = ["PROBE_AGE_S", "PROBE_BYTES", "Sender"]

#: A probe's size, and how long (topology seconds) a link may go unmeasured before one.
PROBE_BYTES = 256 * 1024
PROBE_AGE_S = 10.0


class Sender:
    """The outgoing links of site ``rank``, connected on first use.

    Parameters
    ----------
    rank, names
        This site's rank and every site's name (for messages).
    secret, timeout
        For each connection's handshake.
    shaper
        Paces every link (emulation).
    on_sent, on_error
        Passed to every :class:`~netstorm.runtime.links.OutLink`.
    connections
        TCP connections per link.

    Notes
    -----
    A frame sent over the primary of a multipath route under a route rule may be taken
    over, while it waits, by an auxiliary first hop whose link drains, if the rule diverts
    it (:meth:`netstorm.QueueRule.divert`): the same rule, applied at the same moments, as
    the simulator's links (:class:`netstorm.sim.network.Network`).
    """

    def __init__(self, rank: int, names: tuple[str, ...], *, secret: bytes, timeout: float,
                 shaper: Shaper, on_sent: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], connections: int = 1,
                 tls: TlsContexts | None = None) -> None:
        self.rank = rank
        self.names = names
        self.secret = secret
        self.timeout = timeout
        self.shaper = shaper
        self.on_sent = on_sent
        self.on_error = on_error
        self.connections = connections
        self.tls = tls
        self.addresses: list[tuple[str, int]] = []
        self.links: dict[int, OutLink] = {}
        #: auxiliary first hop -> frames waiting on their primary that it may take over
        self._movable: dict[int, list[tuple[float, int, Frame, int, QueueRule]]] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.diverted = 0  # frames a drained auxiliary link took over from their primary
        self._probed: dict[int, float] = {}  # peer -> when the last probe went there
        self._probe_payload = memoryview(bytearray(PROBE_BYTES))

    def link(self, peer: int) -> OutLink:
        """The link to ``peer``, connected and authenticated on first use."""
        link = self.links.get(peer)
        if link is None:
            name = f"site {self.names[peer]} (rank {peer})"
            conns = []
            for _ in range(self.connections):
                conn = connect(self.addresses[peer], rank=self.rank, secret=self.secret,
                               timeout=self.timeout, name=name, tls=self.tls)
                conns.append(conn)
                if conn.peer != peer:
                    for c in conns:
                        c.close()
                    raise PeerError(f"{name}: rank {conn.peer} answered at its address")
                conn.send(Data())
            link = self.links[peer] = OutLink(conns, self.shaper, self.on_sent,
                                              self.on_error, self._drained)
        return link

    def depth(self, peer: int) -> int:
        """Frames queued or being written to ``peer`` (a route rule's input)."""
        link = self.links.get(peer)
        return 0 if link is None else link.depth()

    def put(self, peer: int, priority: float, header: wire.Header, payload: memoryview,
            token: Any, *, rule: QueueRule | None = None,
            auxiliary: tuple[int, ...] = ()) -> None:
        """Queue a frame to ``peer``; with ``rule``, links to the ``auxiliary`` first hops
        may take it over while it waits."""
        frame = self.link(peer).put(priority, header, payload, token)
        if rule is None:
            return
        for hop in auxiliary:
            self.link(hop)  # connect now: a drained link's thread must not block on it
        with self._lock:
            for hop in auxiliary:
                heapq.heappush(self._movable.setdefault(hop, []),
                               (priority, next(self._seq), frame, peer, rule))

    def _drained(self, peer: int) -> None:
        """Link to ``peer`` drained: take over the first waiting frame the rule diverts."""
        with self._lock:
            waiting = self._movable.get(peer)
            keep = []
            while waiting:
                entry = heapq.heappop(waiting)
                frame, primary, rule = entry[2], self.links[entry[3]], entry[4]
                if not frame.queued:
                    continue  # started on its primary, or moved already
                if not rule.divert(primary.depth(), self.links[peer].depth()):
                    keep.append(entry)
                    continue
                if primary.take(frame):
                    self.links[peer].put(frame.priority, frame.header, frame.payload,
                                         frame.token)
                    self.diverted += 1
                    break
            for entry in keep:
                heapq.heappush(waiting, entry)  # type: ignore[arg-type]

    def measurements(self, scale: float) -> list[tuple[int, int, float, float]]:
        """``(src, dst, bytes, busy seconds)`` per link since the last call, in the topology's
        time (wall seconds times the time ``scale``)."""
        return [(self.rank, peer, b, sec * scale) for peer, link in list(self.links.items())
                for b, sec in [link.take_measurement()] if b > 0]

    def probe(self, capacity_row: np.ndarray, age_s: float, plan_version: int,
              seq: int) -> None:
        """Queue a probe (last in its queue) on every link out of this site that no frame
        used for ``age_s`` wall seconds (DESIGN 7): a link the plan avoids is measured too,
        so the site sees it get better."""
        now = time.monotonic()
        for peer in np.nonzero(capacity_row > 0)[0].tolist():
            link = self.links.get(peer)
            last = -np.inf if link is None else link.last_sent
            if now - max(last, self._probed.get(peer, -np.inf)) > age_s:
                self._probed[peer] = now
                header = wire.Header(kind=wire.Kind.PROBE, plan_version=plan_version,
                                     seq=seq, numel=0, shard=0, chunk=0, phase=0,
                                     src=self.rank, dst=peer, length=PROBE_BYTES, checksum=0)
                self.link(peer).put(np.inf, header, self._probe_payload, None)

    def bytes_sent(self) -> dict[str, int]:
        """Payload bytes written per link, ``"a->b"``."""
        me = self.names[self.rank]
        return {f"{me}->{self.names[p]}": link.bytes_sent
                for p, link in sorted(self.links.items())}

    def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
