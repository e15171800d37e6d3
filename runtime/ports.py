"""Free TCP ports to hand to processes that will listen on them later.

A port found free by binding port 0 comes from the kernel's ephemeral range, the range
every outgoing connection on the machine also draws its local port from. Between the pick
and the child's ``bind``, any connection (a test running beside it, a site dialling its
peers) can take it: "Address already in use", seen in the test suite. Ports picked at
random *below* the ephemeral range are only ever taken by another explicit ``bind``.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

__all__ = ["free_ports"]

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: well-known and registered services


def _candidates() -> range:
    """Ports outside the ephemeral range (Linux's default, 32768-60999, when unknown)."""
    try:
        low, high = (int(x) for x in _RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - _LOWEST >= 1000:
        return range(_LOWEST, low)
    return range(high + 1, 65536)


def free_ports(k: int, host: str = "127.0.0.1") -> list[int]:
    """``k`` distinct ports free on ``host`` now, held together while picked and chosen at
    random outside the ephemeral range (falling back to the kernel's pick if none is)."""
    pool, pick = _candidates(), random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(64 * k):
            if len(ports) == k:
                break
            s = stack.enter_context(socket.socket())
            port = pick.choice(pool) if len(pool) else 0
            try:
                s.bind((host, port))
            except OSError:
                continue  # taken, or no such range here: try another
            ports.append(int(s.getsockname()[1]))
        while len(ports) < k:  # nothing free out there: the kernel's ephemeral pick
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports
