"""How the built-in site scripts end on a failed run: one line naming the cause, status 1.

A site that loses a peer raises :class:`~netstorm.errors.PeerError` naming it; torch's DDP
re-raises that from its C++ reducer as a ``RuntimeError`` whose text holds
``"PeerError: ..."``. Either way the site prints ``stopped: PeerError: <cause>`` (``netstorm
run`` prefixes the site's name) instead of a traceback through the runtime's threads; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import netstorm.errors
from netstorm.errors import NetstormError

__all__ = ["main_of"]

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
    one line on stderr."""
    try:
        return body()
    except (NetstormError, RuntimeError) as exc:
        cause = _cause(exc)
        if cause is None:
            raise
        print(f"stopped: {cause}", file=sys.stderr, flush=True)
        return 1
