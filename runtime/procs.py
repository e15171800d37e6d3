"""Child processes: start them with their output pumped, stop them, and read ``/proc``.

The launcher (:mod:`netstorm.runtime.launch`) and the benchmark harnesses
(:mod:`netstorm.cli.bench`) start site processes and must never leave one behind; this is
the one place that starts, stops, kills and inspects them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .deadlines import STOP_GRACE_S

__all__ = ["alive", "children", "clean_env", "describe_exit", "kill_groups", "pump",
           "rank_of", "sample", "shell_status", "start_time", "stop"]

def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) without a run's settings
    (``NETSTORM_*``, ``MASTER_*``, torchrun's), so a child starts a run of its own."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items()
            if not k.startswith(("NETSTORM_", "MASTER_", "TORCHELASTIC_"))
            and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}


def pump(stream: IO[bytes], prefix: str, out: IO[str]) -> threading.Thread:
    """Copy ``stream`` to ``out`` line by line, each line prefixed by ``[prefix] ``, on a
    daemon thread (returned, started)."""
    def run() -> None:
        for raw in iter(stream.readline, b""):
            out.write(f"[{prefix}] {raw.decode(errors='replace')}")
            out.flush()

    thread = threading.Thread(target=run, daemon=True, name=f"pump-{prefix}")
    thread.start()
    return thread


def stop(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process still running (and SIGCONT: a stopped process acts on SIGTERM
    only when resumed), wait up to ``grace_s`` for them all, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kill_groups(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGKILL the process group of each process (started with ``start_new_session``: the
    process and whatever it started), then reap them. A group whose leader exited may
    still hold its children; an empty group is skipped (the kernel keeps a pid that names
    a live group from being reused)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
            pass


def shell_status(code: int) -> int:
    """A child's exit status as a shell reports it (a signal ``k`` is ``128 + k``)."""
    return 128 - code if code < 0 else code


def describe_exit(code: int) -> str:
    """``"was killed by SIGKILL"`` or ``"exited with status 1"`` (``code`` as Popen's)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def children(pid: int) -> list[int]:
    """The child processes of ``pid``'s main thread (a launcher starts its sites there)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks)`` of ``pid``; ``None`` when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with :func:`alive`, tells a process
    from a later one that reuses its pid."""
    st = _stat(pid)
    return None if st is None else st[1]


def alive(pid: int, started: int | None) -> bool:
    """``pid`` is still the process that started at ``started`` and has not exited (a
    zombie has exited)."""
    st = _stat(pid)
    return st is not None and st[1] == started and st[0] not in ("Z", "X")


def rank_of(pid: int) -> int | None:
    """The ``RANK`` in process ``pid``'s environment (``None``: unreadable)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def sample(pid: int) -> tuple[float, int] | None:
    """``(RSS in MB, open file descriptors)`` of process ``pid``; ``None`` when it is gone
    (or a zombie: no memory left to count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    if found is None:
        return None
    return int(found.group(1)) / 1024, fds
