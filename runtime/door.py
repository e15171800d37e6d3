"""Joining an elastic run under way: the newcomer's knock, rank 0's door, and the workers'
state handed over to the newcomer (see :mod:`netstorm.runtime.elastic`).

- A site of the run's topology that is not in the run knocks at rank 0 (:func:`knock`) with
  an :class:`~.messages.Enter` hello on the authenticated port; rank 0's :class:`Entrance`
  keeps it waiting and the coordinator announces it on every horizon.
- When every worker is at a boundary, the entrance admits the waiting sites
  (:meth:`Entrance.grow`): each gets :class:`~.messages.Admitted` with the next membership.
- One old worker then sends its state to the newcomers through the coordinator
  (:func:`send_state`, checked with a CRC); a newcomer's first boundary receives it
  (:func:`receive_state`).
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np

from netstorm.errors import NetstormError, PeerError
from netstorm.view import NetworkView

from .config import RuntimeConfig
from .deadlines import KNOCK_RETRY_S, member_gone_limit, recovery_limit
from .links import Connection, connect, tell
from .messages import MAX_HELLO, Abort, Admitted, Enter, Message, State

__all__ = ["STATE_PART", "Entrance", "knock", "receive_state", "send_state"]

log = logging.getLogger("netstorm.runtime")

#: A newcomer's state travels in control frames of at most this many bytes (before base64).
STATE_PART = 16 << 20


def knock(config: RuntimeConfig, topology: NetworkView, fingerprint: str) -> tuple[int, ...]:
    """A newcomer (rank ``config.rank`` of ``topology``): knock at rank 0 and wait for the
    workers' next boundary. Returns the membership it joins.

    Knocks again (for ``timeout_s``) while rank 0 is between memberships; waits for the
    boundary as long as rank 0 keeps the connection.

    Raises
    ------
    PeerError
        Rank 0 refused it (with its reason), or closed every knock for the timeout.
    """
    me = f"site {topology.sites[config.rank]} (rank {config.rank})"
    deadline = time.monotonic() + config.timeout_s
    while True:
        conn = connect((config.master_addr, config.master_port), rank=config.rank,
                       secret=config.secret, timeout=config.timeout_s,
                       name=f"the coordinator (site {topology.sites[0]}, rank 0)",
                       retry_until=deadline, tls=config.tls)
        answer: Message | None = None
        try:
            conn.send(Enter(fingerprint, topology.name))
            header = conn.read_header(max_length=MAX_HELLO)
            answer = None if header is None else conn.read_message(header)
        except NetstormError as exc:
            log.info("%s: a knock went unanswered (%s); knocking again", me, exc)
        finally:
            conn.close()
        match answer:
            case Abort(reason=reason):
                raise PeerError(f"{me}: refused by rank 0: {reason}")
            case Admitted(members=members):
                log.info("%s: admitted", me)
                return members
        if time.monotonic() > deadline:
            raise PeerError(f"{me}: could not join: rank 0 closed every knock for "
                            f"{config.timeout_s:g} s (the run over, or not elastic?)")
        time.sleep(KNOCK_RETRY_S)


class Entrance:
    """Rank 0's door (:class:`~netstorm.runtime.site.Door`): sites knock and wait to join.

    Parameters
    ----------
    topology, fingerprint, timeout_s
        The run's first topology, what every site must have loaded, the run's timeout.
    changed
        The elastic run's condition, notified when a membership begins; its lock guards
        ``members``.
    members
        The current membership (indices into ``topology``).
    announce
        ``announce(waiting)``: the current coordinator announces the waiting sites.
    """

    def __init__(self, topology: NetworkView, fingerprint: str, timeout_s: float, *,
                 changed: threading.Condition, members: Callable[[], tuple[int, ...]],
                 announce: Callable[[tuple[int, ...]], None]) -> None:
        self.topology = topology
        self.fingerprint = fingerprint
        self.timeout_s = timeout_s
        self.changed = changed
        self.members = members
        self.announce = announce
        self.waiting: dict[int, Connection] = {}  # sites knocking, by index

    def _refusal(self, who: int, hello: Enter) -> str | None:
        """Why site ``who`` may not wait to join (the lock held); ``None``: it may."""
        topo = self.topology
        if hello.fingerprint != self.fingerprint:
            return (f"it loaded another topology or wire encoding ({hello.name!r}, rank 0 "
                    f"{topo.name!r})")
        if not 0 < who < topo.n:
            return f"rank {who} is not a site of {topo.name!r} other than rank 0"
        if not self.changed.wait_for(lambda: who not in self.members(),
                                     member_gone_limit(self.timeout_s)):
            # a restarted site may knock before its old self is found gone: as long as
            # that takes; a site still in the run after it is a second copy
            return f"site {topo.sites[who]} is in the run"
        if who in self.waiting:
            return f"site {topo.sites[who]} is waiting to join already"
        return None

    def knock(self, conn: Connection, hello: Enter) -> None:
        """A site asks to join; it waits, on this thread, until admitted or gone."""
        who, name = conn.peer, self.topology.sites[0]
        with self.changed:
            problem = self._refusal(who, hello)
            if problem is None:
                self.waiting[who] = conn
                self.announce(tuple(sorted(self.waiting)))
        if problem is not None:
            log.warning("site %s: refused %s: %s", name, conn.name, problem)
            tell(conn, Abort(problem), "refusing a knock")
            conn.close()
            return
        log.warning("site %s: site %s waits to join", name, self.topology.sites[who])
        try:  # a newcomer says nothing more: this returns when it goes (or is admitted)
            conn.read_header(max_length=MAX_HELLO)
        except NetstormError as exc:
            log.info("site %s: the knocking site %s went: %s", name, self.topology.sites[who],
                     exc)
        if self.waiting.get(who) is conn:  # not admitted (the test again under the lock):
            with self.changed:  # an admitted site's thread must not wait for the lock,
                if self.waiting.get(who) is conn:  # which the recovery holds while it
                    del self.waiting[who]  # stops the old site's threads, this one too
                    self.announce(tuple(sorted(self.waiting)))
                    log.warning("site %s: site %s stopped waiting to join", name,
                                self.topology.sites[who])
        conn.close()

    def grow(self) -> tuple[list[int], list[int]]:
        """Every worker is at the boundary: tell the waiting sites the next membership.
        Returns it, and the sites that join (those still there)."""
        with self.changed:
            joined = sorted(self.waiting)
            members = sorted(set(self.members()) | set(joined))
            for who in list(joined):
                conn = self.waiting.pop(who)
                try:
                    conn.send(Admitted(tuple(members)))
                except NetstormError as exc:  # gone since it knocked: not admitted
                    log.warning("site %s: site %s left before it was admitted: %s",
                                self.topology.sites[0], self.topology.sites[who], exc)
                    members.remove(who)
                    joined.remove(who)
        return members, joined


def send_state(send: Callable[[Message], None], flat: np.ndarray, *, to: tuple[int, ...],
               step: int, log_base: int) -> None:
    """Send the workers' state ``flat`` to the newcomers ``to`` (ranks of the new
    membership), in parts of :data:`STATE_PART` bytes."""
    data = flat.view(np.uint8)
    parts = max(1, -(-data.size // STATE_PART))
    crc = zlib.crc32(data.data)
    for i in range(parts):
        chunk = data[i * STATE_PART:(i + 1) * STATE_PART]
        send(State(to, step, flat.size, crc, i, parts, log_base,
                   base64.b64encode(chunk.tobytes()).decode()))


def receive_state(inbox: queue.Queue[State], flat: np.ndarray, *, name: str, timeout_s: float,
                  failed: Callable[[], BaseException | None]) -> State:
    """A newcomer's first boundary: the workers' state into ``flat``; returns the last part
    (its ``step`` and ``log_base``).

    Raises
    ------
    NetstormError
        The state has another size (another model or optimizer).
    PeerError
        No worker sent it within :func:`~.deadlines.recovery_limit`, or it arrived damaged.
    """
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + recovery_limit(timeout_s)
    while True:
        error = failed()
        if error is not None:
            raise error
        try:
            msg = inbox.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise PeerError(f"site {name}: joined, but no worker sent its state") from None
            continue
        if msg.numel != flat.size:
            raise NetstormError(f"site {name}: the workers' state has {msg.numel} elements, "
                                f"this site's {flat.size} (a different model or optimizer?)")
        got[msg.part] = base64.b64decode(msg.data)
        if len(got) == msg.parts:
            break
    data = b"".join(got[i] for i in range(len(got)))
    if zlib.crc32(data) != msg.crc or len(data) != flat.nbytes:
        raise PeerError(f"site {name}: the workers' state arrived damaged")
    flat[:] = np.frombuffer(data, dtype=np.float32)
    return msg
