"""Rank 0's coordinator: the thin I/O around :class:`~netstorm.runtime.control.Coordination`.

Every site (rank 0's too) opens one authenticated control connection to it (the same HMAC
handshake as data connections): the rendezvous needs no unauthenticated store, so nobody who
merely reaches a port can join, inject a plan or a measurement. (torch's ``TCPStore`` has no
authentication; we do not use it.) This module owns those connections, a reader thread per
connection and one timer thread; it feeds what happens to the state machine and carries out
the actions it returns, under one lock, so every site hears one order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from netstorm.errors import NetstormError

from .control import (
    Action,
    AdmitWaiting,
    Broadcast,
    CloseListener,
    Coordination,
    Finish,
    Refuse,
    Send,
)
from .links import Connection, tell
from .messages import MAX_CONTROL, Abort, Join

__all__ = ["Coordinator"]

log = logging.getLogger("netstorm.runtime")


class Coordinator:
    """Serves the control connections of one membership's sites.

    Parameters
    ----------
    decide
        The state machine.
    close_listener
        Closes rank 0's listener (:class:`~.control.CloseListener`).
    admit
        Elastic rank 0: admits the waiting sites, returns the next membership and the sites
        that join it (:class:`~.control.AdmitWaiting`).
    """

    def __init__(self, decide: Coordination, *, close_listener: Callable[[], None],
                 admit: Callable[[], tuple[list[int], list[int]]] | None = None) -> None:
        self.decide = decide
        self._close_listener = close_listener
        self._admit = admit
        self._conns: dict[int, Connection] = {}
        self._lock = threading.Lock()  # one decision, and its sends, at a time
        self._wake = threading.Condition(self._lock)
        self.closed = threading.Event()
        self._timer: threading.Thread | None = None

    def add(self, conn: Connection, join: Join) -> None:
        """A site's control connection with its :class:`~.messages.Join`: served on a
        thread of its own from now on."""
        threading.Thread(target=self._serve, args=(conn, join), daemon=True,
                         name=f"control<-{conn.peer}").start()

    def announce(self, entering: tuple[int, ...]) -> None:
        """Elastic rank 0: the sites waiting to join, announced on every horizon. (No lock:
        the door calls this holding the elastic run's lock, which :class:`~.control.
        AdmitWaiting` takes under this one; swapping a tuple is atomic.)"""
        self.decide.entering = entering

    def close(self) -> None:
        with self._lock:
            self.closed.set()
            self._wake.notify_all()

    # -- the threads --------------------------------------------------------------------
    def _serve(self, conn: Connection, join: Join) -> None:
        rank = conn.peer
        with self._lock:
            actions = self.decide.join(rank, join)
            if not any(isinstance(a, Refuse) for a in actions):
                self._conns[rank] = conn
            self._carry_out(actions, conn)
            if self.decide.started and self._timer is None:
                self._timer = threading.Thread(target=self._tick, daemon=True, name="pulse")
                self._timer.start()
        if self._conns.get(rank) is not conn:
            return
        try:
            while not self.closed.is_set():
                header = conn.read_header(max_length=MAX_CONTROL)
                if header is None:
                    self._closed(rank, "closed its control connection")
                    return
                msg = conn.read_message(header)
                with self._lock:
                    if not self.closed.is_set():
                        self._carry_out(self.decide.receive(rank, msg))
        except NetstormError as exc:  # a broken connection, a malformed message
            if not self.closed.is_set():
                self._closed(rank, f"lost its control connection ({exc})")
        except Exception as exc:  # a bug: say it loudly, and let the run end, not hang
            log.exception("coordinator: serving site %d failed", rank)
            self._closed(rank, f"could not be served ({type(exc).__name__}: {exc})")

    def _closed(self, rank: int, why: str) -> None:
        with self._lock:
            if not self.closed.is_set():
                self._carry_out(self.decide.closed(rank, why))

    def _tick(self) -> None:
        """Calls the state machine's :meth:`~.control.Coordination.tick` when it asks."""
        with self._lock:
            while not self.closed.is_set():
                self._wake.wait(max(0.0, self.decide.deadline() - self.decide.clock()))
                if not self.closed.is_set():
                    self._carry_out(self.decide.tick())

    # -- actions ------------------------------------------------------------------------
    def _carry_out(self, actions: list[Action], joining: Connection | None = None) -> None:
        """Perform ``actions`` in order (the lock held); ``joining``: the connection whose
        join they answer."""
        for action in actions:
            match action:
                case Send(rank=rank, msg=msg):
                    conn = self._conns.get(rank)
                    if conn is not None:
                        tell(conn, msg, f"for site {rank}")
                case Broadcast(msg=msg, ranks=ranks):
                    for rank in ranks:
                        if rank in self._conns:
                            tell(self._conns[rank], msg, "to every site")
                case Refuse(reason=reason):
                    assert joining is not None
                    log.warning("coordinator: refused %s: %s", joining.name, reason)
                    tell(joining, Abort(reason), "refusing its join")
                    joining.close()
                case CloseListener():
                    self._close_listener()
                case AdmitWaiting():
                    assert self._admit is not None, "a ready reached a run that cannot grow"
                    members, joined = self._admit()
                    self._carry_out(self.decide.admitted(members, joined))
                case Finish():
                    self.closed.set()
                    self._wake.notify_all()

