"""How the built-in site scripts end on a failed run: one line naming the cause, status 1.

A site that loses a peer raises :class:`~netstorm.errors.PeerError` naming it; torch's DDP
re-raises that from its C++ reducer as a ``RuntimeError`` whose text holds
``"PeerError: ..."``. Either way the site prints ``stopped: PeerError: <cause>`` (``netstorm
run`` prefixes the site's name) instead of a traceback through the runtime's threads; any
other exception is a bug and keeps its traceback.

:func:`exit_now` ends such a script without the interpreter's finalization: see its notes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

import netstorm.errors
from netstorm.errors import NetstormError

__all__ = ["exit_now", "main_of"]

_OURS = re.compile(r"\b(" + "|".join(
    name for name, value in vars(netstorm.errors).items()
    if isinstance(value, type) and issubclass(value, NetstormError)) + r"): ([^\n]*)")


def _cause(exc: BaseException) -> str | None:
    if isinstance(exc, NetstormError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RuntimeError):
        found = _OURS.search(str(exc))
        return f"{found.group(1)}: {found.group(2)}" if found else None
    return None


def main_of(body: Callable[[], int]) -> int:
    """Run a site script's ``body``; a run that stopped on a runtime error returns 1 after
    one line on stderr. A ``SystemExit`` (a relay-only rank leaving once the workers are
    done) returns its status."""
    try:
        return body()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr, flush=True)
        return 1
    except (NetstormError, RuntimeError) as exc:
        cause = _cause(exc)
        if cause is None:
            raise
        print(f"stopped: {cause}", file=sys.stderr, flush=True)
        return 1


def exit_now(status: int) -> None:
    """End the process with ``status`` once stdio and logging are flushed, skipping the
    interpreter's finalization.

    Notes
    -----
    A torch process group's C++ threads (gloo's workers, DDP's reducer callbacks) may drop
    the last reference to a tensor with a Python object after ``destroy_process_group``
    returned. If that happens while Python 3.11 finalizes, taking the GIL ends the C++
    thread with ``pthread_exit``, whose forced unwind through a ``noexcept`` frame calls
    ``std::terminate``: the process dies of SIGABRT ("terminate called without an active
    exception") after it finished its work, and ``netstorm run`` rightly reports a site
    killed by a signal (pytorch/pytorch#179291 tried an ``atexit`` fix and withdrew it). A
    site script has closed its site, its files and its process groups by now: there is
    nothing left for finalization to do but that race.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(status)
