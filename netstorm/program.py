"""Per-site programs: what every site does with every chunk in one iteration of a plan.

:func:`netstorm.compile` produces one :class:`NodeProgram` per site; the executor
(:mod:`netstorm.executor`) runs it, driven by the simulator or by the TCP runtime. The types
are plain frozen values of ints, floats and tuples: no SimPy, socket or torch types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from .plan import QueueRule

__all__ = ["BROADCAST", "REDUCE", "ChunkRef", "Message", "NodeProgram", "Phase", "Send",
           "Step", "StepKind"]


class Phase(enum.IntEnum):
    """Which way a message travels: a partial sum up the reduce tree, or the mean down."""

    REDUCE = 0
    BROADCAST = 1


REDUCE = Phase.REDUCE
BROADCAST = Phase.BROADCAST


class StepKind(enum.StrEnum):
    """What a step does with its inputs (see :class:`Step`)."""

    REDUCE = "reduce"
    ROOT = "root"
    BROADCAST = "broadcast"
    FORWARD = "forward"


@dataclass(frozen=True)
class ChunkRef:
    """A contiguous slice of the flat gradient: chunk ``chunk`` of shard ``shard``.

    ``offset`` and ``elems`` are in gradient elements, ``nbytes`` in bytes on the wire.
    """

    shard: int
    chunk: int
    offset: int
    elems: int
    nbytes: int


class Message(NamedTuple):
    """The identity of one logical tree-edge transfer: ``(shard, chunk, phase, src, dst)``.

    ``src -> dst`` is the *tree* edge; a relayed message keeps its identity on every hop. A
    relay may forward several messages with the same shard, chunk and phase (for different
    tree edges), so the edge is part of the identity. With the plan version and the
    iteration it is what a wire frame names (DESIGN 9). A named tuple: every arrival is
    looked up by it, and tuples hash in C.
    """

    shard: int
    chunk: int
    phase: int
    src: int
    dst: int


Path = tuple[int, ...]


@dataclass(frozen=True)
class Send:
    """Send ``message`` over one of ``paths`` (each starts at the sending site).

    For an originating send the paths are whole routes from the tree edge's ``src``; for a
    relay's forward they are the remainders of the routes through the relay. With
    ``rule`` set the path is picked when the message is sent (:class:`~netstorm.QueueRule`,
    primary first); without, there is exactly one path.
    """

    message: Message
    paths: tuple[Path, ...]
    rule: QueueRule | None = None

    def __post_init__(self) -> None:
        if len(self.paths) != 1 and (not self.paths or self.rule is None):
            raise ValueError(f"send of {self.message}: one path, or several with a route "
                             f"rule, got {len(self.paths)}")
        for p in self.paths:
            if len(p) < 2:
                raise ValueError(f"send of {self.message}: path {p} has fewer than two sites")

    @property
    def path(self) -> Path:
        """The primary (or only) path."""
        return self.paths[0]

    @property
    def next_hop(self) -> int:
        """The site the primary path's first physical hop goes to."""
        return self.paths[0][1]


@dataclass(frozen=True, kw_only=True)
class Step:
    """One dataflow step at a site; it fires once every message in ``waits`` has arrived.

    Attributes
    ----------
    kind
        :class:`StepKind`: ``reduce`` (sum inputs, send the partial sum up), ``root`` (sum,
        scale, keep, broadcast), ``broadcast`` (keep the mean if a worker, forward to
        children) or ``forward`` (a relay passes a message on, untouched).
    ref
        The chunk this step works on.
    waits
        Messages that must arrive first (children's partial sums, the parent's mean, or the
        relayed message).
    add_local
        Add this site's own slice of the gradient (a worker, in the reduce phase); the step
        then also waits for the site's local gradient to be ready.
    scale
        Multiply the sum by this factor (``1 / workers`` at the root, else 1).
    store
        Keep the result as this site's final averaged chunk.
    sends
        Messages to send once the step has fired, in order.
    priority
        Send-queue order of this step's messages on every link they cross (smaller first):
        the chunk's progress through its shard, ``(chunk + 0.5) / chunks`` for partial sums
        and ``(chunk + 1) / chunks`` for means (a chunk's mean goes after its partial sums,
        before the next chunk's). Serving a link's queue in this order keeps every shard
        moving at its share of the link, as the fluid cost model assumes; first-come-first-
        served would let one tree edge's whole shard go ahead of another edge's first chunk
        and stall the aggregation above it. Under a plan's ``"slack"`` send order the
        progress is in seconds and the step's tail is subtracted (:mod:`netstorm.send_order`).
    optional
        A relay step on a path that a :class:`~netstorm.QueueRule` may or may not pick: its
        message *may* arrive, and the site is done without it.
    """

    kind: StepKind
    ref: ChunkRef
    waits: tuple[Message, ...] = ()
    add_local: bool = False
    scale: float = 1.0
    store: bool = False
    sends: tuple[Send, ...] = ()
    priority: float = 0.0
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind.__class__ is not StepKind:
            object.__setattr__(self, "kind", StepKind(self.kind))
        if self.kind is StepKind.FORWARD:
            if len(self.waits) != 1 or self.add_local or self.store or not self.sends:
                raise ValueError("a forward step waits for one message and sends it on")
        elif self.optional:
            raise ValueError("only forward steps may be optional")


@dataclass(frozen=True)
class NodeProgram:
    """Everything one site does in one iteration of a plan.

    Attributes
    ----------
    site
        The site's index.
    plan_version
        The version of the plan compiled; an interpreter must never mix two versions in one
        iteration.
    steps
        Dataflow steps in a deterministic order (shard, chunk, phase): an interpreter fires
        each step as soon as its ``waits`` (and local gradient, if ``add_local``) are there.
    expects
        Every message that will arrive at this site (its own inputs and those it relays).
    may_arrive
        Messages that arrive only if a send-time route rule picks a path through this site
        (the inputs of its ``optional`` steps).
    stores
        Number of chunks this site keeps (its share of the final mean).

    Notes
    -----
    Invariants: every message in ``expects`` is awaited by exactly one step, and sent by
    exactly one step of the neighbour before this site on its path; each chunk is added
    exactly once per worker on its way to the root; every worker stores every chunk once.
    """

    site: int
    plan_version: int
    steps: tuple[Step, ...]
    expects: frozenset[Message]
    stores: int
    may_arrive: frozenset[Message] = frozenset()
