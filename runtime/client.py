"""A site's end of the control plane: its connection to the coordinator.

The site joins (:class:`~.messages.Join`), then a reader thread hands every message the
coordinator sends to the site; the site's watchdog calls :meth:`ControlClient.watch` every
heartbeat, which sends a :class:`~.messages.Beat` and says when the coordinator itself went
silent for :func:`~.deadlines.silence_limit` of the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from netstorm.errors import PeerError

from .config import RuntimeConfig
from .deadlines import silence_limit
from .links import Connection, connect, tell
from .messages import MAX_CONTROL, Beat, Join, Message

__all__ = ["ControlClient"]


class ControlClient:
    """Site ``config.rank``'s control connection.

    Parameters
    ----------
    config
        The site's settings (the coordinator's address, the secret, the timeout).
    coordinator_name
        How errors name the coordinator (``site a``).
    on_message
        Called with every message, on the reader's thread, in the coordinator's order.
    on_lost
        Called once with the error that ended the connection while the site still needed
        it (``ending()`` false).
    ending
        True once the site expects the connection to end (shut down, or stopping).
    spawn
        ``spawn(target, name)`` starts the reader thread (the site joins it when it stops).
    """

    def __init__(self, config: RuntimeConfig, coordinator_name: str, *,
                 on_message: Callable[[Message], None],
                 on_lost: Callable[[BaseException], None],
                 ending: Callable[[], bool], spawn: Callable[..., None]) -> None:
        self.config = config
        self.who = (f"the coordinator (site {coordinator_name}, rank 0, "
                    f"{config.master_addr}:{config.master_port})")
        self.short = f"the coordinator (site {coordinator_name}, rank 0)"
        self.on_message = on_message
        self.on_lost = on_lost
        self.ending = ending
        self.spawn = spawn
        self.conn: Connection | None = None
        self.heard = time.monotonic()

    def join(self, msg: Join) -> None:
        """Connect (retrying within the timeout: rank 0 may still be starting), send
        ``msg``, and start reading."""
        cfg = self.config
        self.conn = connect((cfg.master_addr, cfg.master_port), rank=cfg.rank,
                            secret=cfg.secret, timeout=cfg.timeout_s, name=self.who,
                            retry_until=time.monotonic() + cfg.timeout_s, tls=cfg.tls)
        self.conn.send(msg)
        self.heard = time.monotonic()
        self.spawn(self._read, "control")

    def send(self, msg: Message) -> None:
        """Send ``msg`` to the coordinator (raises :class:`~netstorm.PeerError`)."""
        assert self.conn is not None, "send before join"
        self.conn.send(msg)

    def tell(self, msg: Message, why: str) -> bool:
        """Send ``msg`` where a failure needs no action here (:func:`~.links.tell`)."""
        return self.conn is not None and tell(self.conn, msg, why)

    def watch(self) -> PeerError | None:
        """A heartbeat to the coordinator; the error to fail with if it went silent."""
        silent = time.monotonic() - self.heard
        if silent > silence_limit(self.config.timeout_s):
            return PeerError(f"{self.short} sent nothing for {silent:.1f} s: stopped, "
                             "overloaded or cut off")
        self.tell(Beat(), "heartbeat")
        return None

    def _read(self) -> None:
        assert self.conn is not None
        try:
            while True:
                header = self.conn.read_header(max_length=MAX_CONTROL)
                if header is None:
                    if not self.ending():
                        self.on_lost(PeerError(f"{self.short} closed its connection mid-run"))
                    return
                self.heard = time.monotonic()
                self.on_message(self.conn.read_message(header))
        except Exception as exc:  # a broken connection, a bad message, a handler's failure
            if not self.ending():
                self.on_lost(exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
