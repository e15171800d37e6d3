"""The per-site executor: one site's :class:`~netstorm.program.NodeProgram`, run on events.

Events in: "my local slice is ready" (:meth:`Executor.local_ready`) and "message M arrived
with this payload" (:meth:`Executor.arrive`). Sends out: :class:`Outgoing` values, in the
order to queue them, each with its path and, in payload mode, its data. Every sum, scale and
store of a step happens here, through :func:`netstorm.kernels.fused_reduce`; there is no
clock, socket or SimPy. The simulator and the TCP runtime are two drivers of this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import numpy as np

from .errors import ProtocolError
from .program import Message, NodeProgram, Path, Send, StepKind

__all__ = ["Executor", "Outgoing", "SiteProgram", "index_programs", "pick_path"]


class Outgoing(NamedTuple):
    """One message to put on the wire now.

    ``path`` runs from this site to the tree edge's end (``path[1]`` is the next hop; a
    relay forwards along the rest); ``payload`` is ``None`` in timing mode. The payload is
    shared, read-only: a driver copies or serialises it, never writes to it. ``send`` is set
    for a send under a route rule: the driver picks its path when it queues it
    (:func:`pick_path`) and, while it waits in the primary's queue, may move it to another of
    ``send.paths`` (:meth:`netstorm.QueueRule.divert`).
    """

    message: Message
    path: Path
    nbytes: int
    priority: float
    payload: np.ndarray | None = None
    send: Send | None = None


class SiteProgram:
    """A :class:`~netstorm.program.NodeProgram` indexed once for fast execution.

    Build it once per plan version and site; every iteration's :class:`Executor` shares it.

    Raises
    ------
    ValueError
        If the program's steps and its ``expects``/``may_arrive`` disagree (a message
        awaited twice, or awaited but not expected).
    """

    def __init__(self, program: NodeProgram) -> None:
        self.program = program
        self.site = program.site
        self.version = program.plan_version
        steps = program.steps
        self.steps = steps
        #: message -> its slot k; ``slot_step[k]``, ``slot_pos[k]``: the step awaiting it and
        #: the message's position among that step's waits
        self.slot: dict[Message, int] = {}
        self.slot_step: list[int] = []
        self.slot_pos: list[int] = []
        for g, step in enumerate(steps):
            for pos, m in enumerate(step.waits):
                if m in self.slot:
                    raise ValueError(f"site {self.site}: message {m} is awaited twice")
                self.slot[m] = len(self.slot_step)
                self.slot_step.append(g)
                self.slot_pos.append(pos)
        awaited = set(self.slot)
        if awaited != program.expects | program.may_arrive:
            raise ValueError(f"site {self.site}: the awaited messages differ from "
                             f"expects | may_arrive ({len(awaited)} awaited, "
                             f"{len(program.expects | program.may_arrive)} expected)")
        self.waits = [len(st.waits) + st.add_local for st in steps]
        self.local = [g for g, st in enumerate(steps) if st.add_local]
        self.initial = [g for g, count in enumerate(self.waits) if count == 0]
        #: where each partial sum this site sends on (a reduce or root step that keeps
        #: nothing) goes in a scratch buffer of ``scratch_elems`` elements, else -1
        self.scratch_at: list[int] = []
        self.scratch_elems = 0
        for st in steps:
            if st.kind in (StepKind.REDUCE, StepKind.ROOT) and not st.store:
                self.scratch_at.append(self.scratch_elems)
                self.scratch_elems += st.ref.elems
            else:
                self.scratch_at.append(-1)
        self.mandatory = sum(not st.optional for st in steps)
        #: the rest of the path from this site, for a relay's forward steps (else None)
        self.relay_path = [st.sends[0].paths[0] if st.kind is StepKind.FORWARD else None
                           for st in steps]
        #: per step, one Outgoing per send over its only (or primary) path, no payload
        self.first = [tuple(Outgoing(send.message, send.paths[0], st.ref.nbytes, st.priority,
                                     None, send if send.rule is not None else None)
                            for send in st.sends) for st in steps]
        self.optional = [st.optional for st in steps]


def index_programs(programs: Mapping[int, NodeProgram]) -> dict[int, SiteProgram]:
    """Index every site's program (:class:`SiteProgram`), checking they are one plan version.

    Raises
    ------
    ValueError
        If the programs come from different plan versions, or a program is inconsistent.
    """
    versions = sorted({p.plan_version for p in programs.values()})
    if len(versions) > 1:
        raise ValueError(f"programs of plan versions {versions} mixed in one iteration")
    return {site: SiteProgram(p) for site, p in sorted(programs.items())}


class Executor:
    """One site's program in one iteration.

    Parameters
    ----------
    program
        The site's program (indexed: :class:`SiteProgram`; a plain ``NodeProgram`` is
        indexed on the spot).
    iteration
        The iteration this executor serves; an arrival naming another raises.
    gradient, result
        The site's flat local gradient and the buffer its averaged chunks are written into
        (they may be the same array: an in-place all-reduce), when it has them.
    data
        Payload mode: messages carry data and steps compute. Default: whether ``gradient``
        or ``result`` is given; a relay-only site passes ``data=True`` without buffers.
        Timing mode (``False``) moves no data at all.
    scratch
        A float32 buffer of at least ``SiteProgram.scratch_elems`` elements for the partial
        sums this site sends on (each step has its own region, so no send's payload is
        overwritten while it waits on a link); without it each is a new array.

    Notes
    -----
    A step fires when all its ``waits`` have arrived and, if it adds the local slice, the
    slice is ready. Reduce and root steps compute ``scale * (inputs in ``waits`` order +
    local slice)``, so the result does not depend on the order messages arrive in; a root
    that is a worker reduces straight into its result buffer. Every worker ends with the
    root's bytes, bit-identical. An arrival that is not expected, comes twice, or names
    another plan version or iteration raises :class:`~netstorm.ProtocolError` and changes
    nothing.
    """

    __slots__ = ("_got", "_inbox", "_local", "_pending", "data", "gradient", "iteration",
                 "prog", "remaining", "result", "scratch", "site", "version")

    def __init__(self, program: SiteProgram | NodeProgram, *, iteration: int = 0,
                 gradient: np.ndarray | None = None, result: np.ndarray | None = None,
                 data: bool | None = None, scratch: np.ndarray | None = None) -> None:
        prog = program if isinstance(program, SiteProgram) else SiteProgram(program)
        self.data = (gradient is not None or result is not None) if data is None else data
        if not self.data and (gradient is not None or result is not None):
            raise ValueError("timing mode (data=False) takes no gradient or result")
        self.prog = prog
        self.site = prog.site
        self.version = prog.version
        self.iteration = iteration
        self.gradient = gradient
        self.result = result
        if scratch is not None and scratch.size < prog.scratch_elems:
            raise ValueError(f"scratch of {scratch.size} elements, the program needs "
                             f"{prog.scratch_elems}")
        self.scratch = scratch
        self._pending = list(prog.waits)
        #: steps that must still fire before the site is done (read-only)
        self.remaining = prog.mandatory
        self._got = bytearray(len(prog.slot_step))
        self._local = bytearray(len(prog.steps))
        self._inbox: dict[int, list[np.ndarray | None]] = {}

    @property
    def done(self) -> bool:
        """Every step that must fire has fired (optional relay steps aside)."""
        return self.remaining == 0

    def awaiting(self) -> list[Message]:
        """The messages this site's program expects that have not arrived."""
        prog = self.prog
        return [m for m, k in prog.slot.items() if not self._got[k] and m in prog.program.expects]

    def start(self) -> tuple[Outgoing, ...]:
        """Fire the steps that wait for nothing (e.g. a root with no children that is not a
        worker); call once, before or after other events."""
        out: list[Outgoing] = []
        for g in self.prog.initial:
            out.extend(self._fire(g))
        return tuple(out)

    def local_ready(self, steps: Iterable[int] | None = None) -> tuple[Outgoing, ...]:
        """The local gradient of ``steps`` (indices into the program's steps; default all
        that add it) is ready: fire what that completes."""
        out: list[Outgoing] = []
        prog, local, pending = self.prog, self._local, self._pending
        if steps is not None:
            steps = list(steps)
            for g in steps:
                if not prog.steps[g].add_local:
                    raise ValueError(f"site {self.site}: step {g} adds no local slice")
        for g in prog.local if steps is None else steps:
            if local[g]:
                raise ProtocolError(f"site {self.site}: local slice of step {g} given twice")
            local[g] = 1
            pending[g] -= 1
            if pending[g] == 0:
                out.extend(self._fire(g))
        return tuple(out)

    def arrive(self, message: Message, payload: np.ndarray | None = None, *,
               path: Path | None = None, version: int | None = None,
               iteration: int | None = None) -> tuple[Outgoing, ...]:
        """``message`` arrived (over ``path``, the route it was sent on, when known).

        Returns the sends this makes (the step it completes, if any).

        Raises
        ------
        ProtocolError
            Unknown or duplicate message, another plan version or iteration, a path this
            site does not lie on, or (payload mode) a payload of the wrong size.
        """
        if version is not None and version != self.version:
            raise ProtocolError(f"site {self.site}: message {message} of plan version "
                                f"{version}, running version {self.version}")
        if iteration is not None and iteration != self.iteration:
            raise ProtocolError(f"site {self.site}: message {message} of iteration "
                                f"{iteration}, running iteration {self.iteration}")
        return self.receive(message, payload, path)

    def receive(self, message: Message, payload: np.ndarray | None = None,
                path: Path | None = None) -> tuple[Outgoing, ...]:
        """:meth:`arrive` for in-process drivers (the simulator, tests), whose messages come
        from executors of this very plan version and iteration: no version checks."""
        prog = self.prog
        k = prog.slot.get(message)
        if k is None:
            raise ProtocolError(f"site {self.site}: unexpected message {message} "
                                f"(plan version {self.version})")
        if self._got[k]:
            raise ProtocolError(f"site {self.site}: message {message} arrived twice")
        g = prog.slot_step[k]
        rest = prog.relay_path[g]
        if rest is not None and path is not None:
            if tuple(path[len(path) - len(rest):]) != rest:
                raise ProtocolError(f"site {self.site}: message {message} came over {path}, "
                                    f"which does not continue along {rest}")
        if self.data:
            step = prog.steps[g]
            if (payload is None or payload.shape != (step.ref.elems,)
                    or payload.dtype != np.float32):
                got = None if payload is None else f"{payload.dtype}{list(payload.shape)}"
                raise ProtocolError(f"site {self.site}: message {message} carries {got}, "
                                    f"expected float32[{step.ref.elems}]")
            self._inbox.setdefault(g, [None] * len(step.waits))[prog.slot_pos[k]] = payload
        self._got[k] = 1
        pending = self._pending
        pending[g] -= 1
        if pending[g]:
            return ()
        if self.data:
            return self._fire(g)
        if not prog.optional[g]:  # timing mode, inline: the simulator's hot path
            self.remaining -= 1
        return prog.first[g]

    def _fire(self, g: int) -> tuple[Outgoing, ...]:
        prog = self.prog
        if not prog.optional[g]:
            self.remaining -= 1
        first = prog.first[g]
        if not self.data:
            return first
        value = self._compute(g)
        return tuple(o._replace(payload=value) for o in first)

    def _compute(self, g: int) -> np.ndarray:
        """The step's value: the one place where a step's arithmetic happens."""
        step = self.prog.steps[g]
        inputs = self._inbox.pop(g, [])
        ref = step.ref
        chunk = slice(ref.offset, ref.offset + ref.elems)
        if (step.add_local and self.gradient is None) or (step.store and self.result is None):
            raise ValueError(f"site {self.site}: step {g} needs the site's gradient and "
                             f"result buffers")
        if step.kind is StepKind.FORWARD or step.kind is StepKind.BROADCAST:
            value = inputs[0]
            assert value is not None  # every wait has arrived
            if step.store:
                keep = self.result[chunk]  # type: ignore[index]
                if keep.ctypes.data != value.ctypes.data:  # a driver may receive in place
                    keep[...] = value
            return value
        parts = [x for x in inputs if x is not None]
        if step.add_local:
            parts.append(self.gradient[chunk])  # type: ignore[index]
        if step.store:
            out = self.result[chunk]  # type: ignore[index]
        elif self.scratch is not None:
            at = self.prog.scratch_at[g]
            out = self.scratch[at:at + ref.elems]
        else:
            out = np.empty(ref.elems, parts[0].dtype)
        return _reduce()(out, parts, step.scale)


def pick_path(out: Outgoing, depth: Callable[[int], int]) -> Outgoing:
    """``out`` over the path its route rule picks now, from ``depth(next_hop)``: the chunks
    queued or in flight from this site toward each candidate's first hop.

    Drivers call it for every send with ``out.send`` set, right before queueing it (one at
    a time, so each sees the queues the previous ones made). Other sends pass unchanged.
    """
    send = out.send
    if send is None or send.rule is None:
        return out
    i = send.rule.choose(tuple(p[1] for p in send.paths), depth)
    return out if i == 0 else out._replace(path=send.paths[i])


def _reduce() -> Callable[..., np.ndarray]:
    """:func:`netstorm.kernels.fused_reduce`, imported on first use (it loads numba)."""
    global _fused_reduce
    if _fused_reduce is None:
        from netstorm.kernels import fused_reduce

        _fused_reduce = fused_reduce
    return _fused_reduce


_fused_reduce: Callable[..., np.ndarray] | None = None
