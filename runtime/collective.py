"""One all-reduce at one site: its executor, its arena, its bookkeeping."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from netstorm.errors import ProtocolError
from netstorm.executor import Executor, SiteProgram
from netstorm.program import Message, StepKind

__all__ = ["Collective", "flat_float32"]

log = logging.getLogger("netstorm.runtime")


class Collective:
    """One all-reduce at this site: its executor, arena and bookkeeping."""

    def __init__(self, seq: int, numel: int, version: int, prog: SiteProgram,
                 offsets: dict[Message, tuple[int, int]], arena: np.ndarray) -> None:
        self.seq = seq
        self.numel = numel
        self.version = version
        self.prog = prog
        self.offsets = offsets
        self.arena = arena
        self.executor = Executor(prog, iteration=seq, data=True,
                                 scratch=arena[arena.size - prog.scratch_elems:])
        self.pending = 0  # sends queued on links, not yet written
        self.started = False  # the local call has arrived (workers)
        self.kicked = False  # the executor's start() has run (engine thread)
        self.reported = False  # done here and reported (an elastic run finishes it later)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[BaseException | None], None]] = []
        self._finish_lock = threading.Lock()
        self.t_start = time.perf_counter()
        self.t_end = 0.0

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the collective done (with ``error`` if it failed) and run its callbacks, once:
        a later call changes nothing."""
        with self._finish_lock:
            if self.done.is_set():
                return
            self.error = self.error or error
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._call(fn)

    def on_done(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` when the collective is done (now, if it is): ``error`` is
        ``None`` on success. ``fn`` runs on the runtime's engine thread and must not block."""
        with self._finish_lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _call(self, fn: Callable[[BaseException | None], None]) -> None:
        try:
            fn(self.error)
        except Exception:  # a caller's bug must not stop the engine
            log.exception("collective %d: a done callback raised", self.seq)

    def slot(self, message: Message) -> np.ndarray:
        """Where ``message``'s payload lands: the result array itself for a mean this
        worker keeps (no copy afterwards), else the message's arena region."""
        found = self.offsets.get(message)
        if found is None:
            raise ProtocolError(f"collective {self.seq}: unexpected message {message} "
                                f"(plan version {self.version})")
        start, elems = found
        result = self.executor.result
        if result is not None:
            step = self.prog.steps[self.prog.slot_step[self.prog.slot[message]]]
            if step.kind is StepKind.BROADCAST and step.store:
                return result[step.ref.offset:step.ref.offset + elems]
        return self.arena[start:start + elems]


def flat_float32(array: Any) -> np.ndarray:
    """A flat float32 numpy view of ``array`` sharing its memory (torch CPU tensors too)."""
    if not isinstance(array, np.ndarray):
        try:
            import torch
        except ImportError:
            torch = None  # type: ignore[assignment]
        if torch is not None and isinstance(array, torch.Tensor):
            if array.device.type != "cpu":
                raise TypeError(f"allreduce: a {array.device} tensor; netstorm.runtime "
                                f"all-reduces CPU tensors (copy it to the CPU first)")
            if not array.is_contiguous():
                raise TypeError("allreduce: the tensor is not contiguous")
            array = array.detach().numpy()
        else:
            raise TypeError(f"allreduce: expected a numpy array or CPU torch tensor, got "
                            f"{type(array).__name__}")
    if array.dtype != np.float32:
        raise TypeError(f"allreduce: expected float32, got {array.dtype} (convert with "
                        f"astype(np.float32) and copy back)")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError("allreduce: the array must be C-contiguous and writeable")
    return array.reshape(-1)
