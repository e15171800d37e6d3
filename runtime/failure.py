"""How a site fails: once, with the first error, after holding a peer error for the
coordinator's verdict.

A peer error of a site's own (a peer's connection gone, a stalled collective) may be only
what another site's death looks like from here; the coordinator knows the cause. When rank 0
aborts on a silent site and exits, the others see rank 0's connections close a moment before
they read why. So such an error is first held for :func:`~.deadlines.verdict_hold`: in an
elastic run it is reported at once and the verdict decides (a loss, and the run goes on
without the site; or an abort); without a verdict in time, the site fails with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from netstorm.errors import PeerError, SiteLost

from .deadlines import verdict_hold
from .messages import Error, Message

__all__ = ["Failure"]

log = logging.getLogger("netstorm.runtime")


class Failure:
    """The failure of site ``name``.

    Parameters
    ----------
    name, elastic
        The site, and whether its run is elastic.
    running
        True while a held error could still be explained by a verdict (the site joined,
        and is not stopping).
    tell
        ``tell(msg, why)``: send a message to the coordinator if it can be sent.
    on_fail
        ``on_fail(exc, first)``: the site fails with ``exc``; ``first``: the first error it
        fails with (later errors still reach collectives made meanwhile).
    """

    def __init__(self, name: str, *, elastic: bool, running: Callable[[], bool],
                 tell: Callable[[Message, str], bool],
                 on_fail: Callable[[BaseException, bool], None]) -> None:
        self.name = name
        self.elastic = elastic
        self.running = running
        self.tell = tell
        self.on_fail = on_fail
        self.error: BaseException | None = None  #: what the site failed with
        self._held: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException, *, tell: bool = True, hold: bool = True) -> None:
        """Fail with ``exc`` (the first call's error wins).

        Parameters
        ----------
        tell
            Report it to the coordinator (not when the coordinator's message is the cause).
        hold
            A :class:`~netstorm.PeerError` may wait for the coordinator's verdict first.
        """
        if tell and hold and isinstance(exc, PeerError) and not isinstance(exc, SiteLost) \
                and self.running():
            self._hold(exc)
            return
        log.debug("site %s: %s", self.name, exc, exc_info=exc)
        with self._lock:
            first = self.error is None
            if first:
                self.error = exc
        if first and tell:
            self.tell(Error(str(exc)), "this site failed")
        self.on_fail(exc, first)

    def _hold(self, exc: PeerError) -> None:
        with self._lock:
            if self._held is not None or self.error is not None:
                return
            self._held = exc
        log.debug("site %s: held for the coordinator's verdict: %s", self.name, exc)
        if self.elastic:
            self.tell(Error(str(exc)), "a peer error, held for the verdict")
        timer = threading.Timer(verdict_hold(self.elastic), self,
                                (exc,), {"tell": not self.elastic, "hold": False})
        timer.daemon = True
        timer.start()
