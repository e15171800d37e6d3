"""Sites as threads of the test process: the runtime's code without a process per site."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "in_threads"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_threads(n: int, one: Callable[[int], Any], *, timeout: float = 90) -> dict[int, Any]:
    """Run ``one(rank)`` for ranks ``0..n-1`` at once; return each rank's result.

    Fails if a rank is still running after ``timeout`` seconds (a hang), and re-raises the
    first error a rank raised.
    """
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def run(rank: int) -> None:
        try:
            results[rank] = one(rank)
        except BaseException as exc:
            errors[rank] = exc

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a site hung"
    if errors:
        raise errors[min(errors)]
    return results
