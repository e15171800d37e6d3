"""Sites as threads of the test process: the runtime's code without a process per site."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from netstorm.runtime import RuntimeConfig, Site
from netstorm.runtime.ports import free_ports
from netstorm.runtime.wire import Header, Kind, checksum

from netstorm import NetworkView
from netstorm.program import Message

__all__ = ["SECRET", "config", "data_header", "free_port", "in_threads", "run_sites"]


def data_header(message: Message, payload: Any, *, plan_version: int, seq: int,
                numel: int) -> Header:
    """The header of a DATA frame carrying ``payload`` (C-contiguous, checksummed) for
    ``message``, as a site's link writes it."""
    view = memoryview(payload).cast("B")
    return Header(Kind.DATA, plan_version, seq, numel, message.shard, message.chunk,
                  message.phase, message.src, message.dst, view.nbytes, checksum(view))


def free_port() -> int:
    return free_ports(1)[0]


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


SECRET = b"runtime-test-secret"


def config(view: NetworkView, rank: int, port: int, **kw: Any) -> RuntimeConfig:
    values: dict[str, Any] = {"rank": rank, "world_size": view.n, "master_addr": "127.0.0.1",
                              "master_port": port, "secret": SECRET, "bind": "127.0.0.1",
                              "advertise": "127.0.0.1", "timeout_s": 30.0, "emulate": "none"}
    values.update(kw)
    return RuntimeConfig(**values)


def run_sites(view: NetworkView, planner: str, body: Callable[[Site], Any], *,
              site_kw: dict[str, Any] | None = None, **cfg: Any) -> dict[int, Any]:
    """Start every site of ``view`` in a thread; workers run ``body(site)`` then close,
    relays serve. Returns each worker's result; re-raises the first site's error."""
    port = free_port()

    def one(rank: int) -> Any:
        site = Site(config(view, rank, port, **cfg), view, planner, **(site_kw or {}))
        if not site.is_worker:
            site.serve()
            return None
        try:
            return body(site)
        finally:
            site.close()

    results = in_threads(view.n, one)
    return {r: v for r, v in results.items() if r in view.workers}
