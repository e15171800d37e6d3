"""`compile`: turn a :class:`~netstorm.plan.Plan` into one chunk-level program per site.

The simulator (``netstorm.sim``) and the TCP runtime (``netstorm.runtime``) are two
interpreters of the same :class:`NodeProgram` values, which is what makes them agree. The
programs are plain frozen dataclasses of ints, floats and tuples: no SimPy, socket or torch
types.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .job import Job
from .plan import Plan, Route, Shard, children
from .send_order import Tails, slack_terms
from .view import NetworkView

__all__ = ["BROADCAST", "REDUCE", "ChunkRef", "Message", "NodeProgram", "Send", "Step",
           "assign_paths", "bucket_bounds", "chunk_layout", "compile", "shard_elements"]

#: Phase of a message: a partial sum travelling up the reduce tree.
REDUCE = 0
#: Phase of a message: the final mean travelling down the broadcast tree.
BROADCAST = 1


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


@dataclass(frozen=True)
class Message:
    """The identity of one logical tree-edge transfer: ``(shard, chunk, phase, src, dst)``.

    ``src -> dst`` is the *tree* edge; a relayed message keeps its identity on every hop.
    """

    shard: int
    chunk: int
    phase: int
    src: int
    dst: int


@dataclass(frozen=True)
class Send:
    """Send ``message`` along ``path`` (``path[0]`` is the sending site).

    For an originating send the path is the whole route from the tree edge's ``src``; for a
    relay's forward it is the remainder of that route from the relay.
    """

    message: Message
    path: tuple[int, ...]

    @property
    def next_hop(self) -> int:
        """The site this send's first physical hop goes to."""
        return self.path[1]


@dataclass(frozen=True)
class Step:
    """One dataflow step at a site; it fires once every message in ``waits`` has arrived.

    Attributes
    ----------
    kind
        ``"reduce"`` (sum inputs, send the partial sum up), ``"root"`` (sum, scale, keep,
        broadcast), ``"broadcast"`` (keep the mean if a worker, forward to children) or
        ``"forward"`` (a relay passes a message on, untouched).
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
        before the next chunk's). Serving a link's
        queue in this order keeps every shard moving at its share of the link, as the fluid
        cost model assumes; first-come-first-served would let one tree edge's whole shard
        go ahead of another edge's first chunk and stall the aggregation above it. Under a
        plan's ``"slack"`` send order the progress is in seconds and the step's tail is
        subtracted (:mod:`netstorm.send_order`).
    """

    kind: str
    ref: ChunkRef
    waits: tuple[Message, ...]
    add_local: bool
    scale: float
    store: bool
    sends: tuple[Send, ...]
    priority: float = 0.0


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
    stores
        Number of chunks this site keeps (its share of the final mean).

    Notes
    -----
    Invariants: every message in a step's ``waits`` is sent by exactly one step of the
    neighbour that precedes this site on the message's path; each chunk is added exactly once
    per worker on its way to the root; every worker stores every chunk exactly once.
    """

    site: int
    plan_version: int
    steps: tuple[Step, ...]
    expects: frozenset[Message]
    stores: int


def _split(total: int, fractions: list[float]) -> list[tuple[int, int]]:
    bounds, cum = [0], 0.0
    for fraction in fractions:
        cum += fraction
        bounds.append(min(total, round(cum * total)))
    bounds[-1] = total
    return [(a, max(0, b - a)) for a, b in itertools.pairwise(bounds)]


def bucket_bounds(job: Job) -> list[int]:
    """Element offsets where each gradient bucket starts, plus the total: ``B + 1`` values.

    Buckets are laid out in model order (``job.buckets[0]`` first).
    """
    bounds = [0]
    for nbytes in job.buckets:  # type: ignore[union-attr]
        bounds.append(bounds[-1] + nbytes // job.element_size)
    return bounds


def chunk_layout(plan: Plan, job: Job, *, by_bucket: bool = False) -> list[list[tuple[int, int]]]:
    """``(offset, elems)`` of every chunk of every shard, in the shard's chunk order.

    Parameters
    ----------
    by_bucket
        Lay shards out inside every bucket (what overlapping the backward pass needs) instead
        of over the whole flat gradient.

    Notes
    -----
    Flat layout (default): shard i is the contiguous range of :func:`shard_elements`, cut
    into chunks of ``chunk_bytes // element_size`` elements (the last may be shorter);
    ``chunk_bytes`` is the plan's when it has one, else the job's (:meth:`Plan.job_for`).

    Bucket layout: every bucket is all-reduced with the plan, as DDP all-reduces each
    bucket: bucket b's element range is split among the shards by their fractions (same
    rounding as :func:`shard_elements`) and each piece is cut into chunks. A shard's chunks
    are ordered by the time the backward pass produces them -- the *last* bucket first --
    so chunk order, and the send priorities derived from it, follow readiness. With one
    bucket the two layouts are identical.
    """
    job = plan.job_for(job)
    chunk_elems = max(1, job.chunk_bytes // job.element_size)
    fractions = [s.fraction for s in plan.shards]
    if by_bucket:
        bounds = bucket_bounds(job)
        pieces: list[list[tuple[int, int]]] = [[] for _ in fractions]
        for b in reversed(range(len(bounds) - 1)):
            for i, (off, elems) in enumerate(_split(bounds[b + 1] - bounds[b], fractions)):
                if elems:
                    pieces[i].append((bounds[b] + off, elems))
    else:
        pieces = [[piece] if piece[1] else [] for piece in shard_elements(plan, job)]
    return [[(off + k, min(chunk_elems, elems - k)) for off, elems in shard
             for k in range(0, elems, chunk_elems)] for shard in pieces]


def shard_elements(plan: Plan, job: Job) -> list[tuple[int, int]]:
    """``(offset, elems)`` of every shard in the flat gradient of ``job``.

    Notes
    -----
    The gradient has ``E = gradient_bytes / element_size`` elements; shard i spans
    ``[round(F_{i-1} E), round(F_i E))`` where ``F_i`` is the cumulative fraction, so the
    shards tile the gradient exactly (a very small shard may get no elements).
    """
    return _split(job.gradient_bytes // job.element_size, [s.fraction for s in plan.shards])


def assign_paths(weights: tuple[float, ...], count: int) -> list[int]:
    """Deterministic path index for each of ``count`` chunks, in proportion to ``weights``.

    Notes
    -----
    Chunk k goes on the path with the largest deficit ``w_i (k + 1) - n_i`` (``n_i`` chunks
    already assigned), ties to the lowest index (smooth weighted round robin): after any
    prefix of k chunks each path has carried ``w_i k`` chunks to within about one (the
    tests check < 1.5).
    """
    counts = [0] * len(weights)
    out = []
    for k in range(count):
        best = max(range(len(weights)), key=lambda i: (weights[i] * (k + 1) - counts[i], -i))
        counts[best] += 1
        out.append(best)
    return out


class _Builder:
    def __init__(self, n: int) -> None:
        self.steps: list[list[Step]] = [[] for _ in range(n)]
        self.expects: list[set[Message]] = [set() for _ in range(n)]

    def send(self, route: Route, choice: int, message: Message, ref: ChunkRef,
             priority: float) -> Send:
        """The originating send of ``message``; adds forward steps at its relays."""
        path = route.paths[choice]
        for i in range(1, len(path)):
            self.expects[path[i]].add(message)
        for i in range(1, len(path) - 1):
            relay = path[i]
            self.steps[relay].append(Step("forward", ref, (message,), False, 1.0, False,
                                          (Send(message, path[i:]),), priority))
        return Send(message, path)


def _paths(shard: Shard, edges: list[tuple[int, int]], chunks: int) -> dict:
    return {e: assign_paths(shard.route(*e).weights, chunks) for e in edges}


def _priority(progress: float, tails: Tails | None, key: tuple[int, int, str]) -> float:
    """A step's send priority: its progress, less its tail under the slack order."""
    return progress if tails is None else progress - tails[key]


def compile(plan: Plan, job: Job, workers: tuple[int, ...] | None = None, *,
            by_bucket: bool = False, view: NetworkView | None = None) -> dict[int, NodeProgram]:
    """Compile ``plan`` for ``job`` into one :class:`NodeProgram` per site.

    Parameters
    ----------
    plan
        A plan that passed :func:`netstorm.check_plan`.
    job
        Gives the gradient size, element size and chunk size (the plan's ``chunk_bytes``
        replaces the job's when set: :meth:`Plan.job_for`).
    workers
        Indices of the worker sites (``view.workers``). Default: every site that appears in
        a tree, which is right unless the view has relay-only sites; the simulator always
        passes ``view.workers``.
    by_bucket
        Lay the shards out inside every gradient bucket (:func:`chunk_layout`), so that a
        bucket's chunks can start as soon as the backward pass has produced that bucket.
    view
        The network the plan runs on; needed only by a plan whose ``send_order`` is
        ``"slack"`` (:mod:`netstorm.send_order`), whose priorities are then
        ``progress * span - tail`` in seconds.

    Returns
    -------
    dict
        ``{site: NodeProgram}`` for every site of the plan (sites with nothing to do get an
        empty program).

    Notes
    -----
    Shard i covers the element range of :func:`shard_elements` (or, with ``by_bucket``,
    its share of every bucket), cut into chunks of ``chunk_bytes // element_size``
    elements (:func:`chunk_layout`). For every chunk:
    each site in the reduce tree waits for the chunk's partial sums from all its reduce
    children, adds its own slice if it is a worker, and sends one partial sum to its parent
    over the tree edge's route; the root also scales by ``1 / len(workers)``, keeps the mean
    and sends it to its broadcast children; every other site in the broadcast tree waits for
    the mean from its parent, keeps it if it is a worker and forwards it to its children.
    Relays on a route get ``forward`` steps. A multipath route's chunks go whole over one
    path each, chosen by :func:`assign_paths` per tree edge. The result is a pure,
    deterministic function of ``(plan, job, workers)``.
    """
    job = plan.job_for(job)
    n = len(plan.sites)
    span, tails = 1.0, None
    if plan.send_order == "slack":
        if view is None:
            raise ValueError("a plan with send_order 'slack' compiles only with its view")
        span, tails = slack_terms(plan, view, job)
    if workers is None:
        seen: set[int] = set()
        for s in plan.shards:
            seen |= set(s.reduce_tree) | set(s.broadcast_tree) | {s.root}
        workers = tuple(sorted(seen))
    worker_set = set(workers)
    scale = 1.0 / len(workers)
    b = _Builder(n)
    for s_idx, (shard, chunks) in enumerate(zip(plan.shards,
                                                chunk_layout(plan, job, by_bucket=by_bucket),
                                                strict=True)):
        count = len(chunks)
        if not count:
            continue
        up_kids, down_kids = children(shard.reduce_tree), children(shard.broadcast_tree)
        up_paths = _paths(shard, list(shard.reduce_edges()), count)
        down_paths = _paths(shard, list(shard.broadcast_edges()), count)
        members = sorted(set(shard.reduce_tree) | {shard.root})
        down_members = sorted(set(shard.broadcast_tree))
        for k, (start, size) in enumerate(chunks):
            ref = ChunkRef(s_idx, k, start, size, size * job.element_size)
            up = (k + 0.5) / count * span
            down = up + 0.5 / count * span

            for site in members:
                waits = tuple(Message(s_idx, k, REDUCE, c, site)
                              for c in sorted(up_kids.get(site, ())))
                local = site in worker_set
                if site == shard.root:
                    prio = _priority(down, tails, (s_idx, site, "root"))
                    sends = tuple(
                        b.send(shard.route(site, c), down_paths[(site, c)][k],
                               Message(s_idx, k, BROADCAST, site, c), ref, prio)
                        for c in sorted(down_kids.get(site, ())))
                    b.steps[site].append(Step("root", ref, waits, local, scale, local,
                                              sends, prio))
                else:
                    prio = _priority(up, tails, (s_idx, site, "reduce"))
                    parent = shard.reduce_tree[site]
                    send = b.send(shard.route(site, parent), up_paths[(site, parent)][k],
                                  Message(s_idx, k, REDUCE, site, parent), ref, prio)
                    b.steps[site].append(Step("reduce", ref, waits, local, 1.0, False,
                                              (send,), prio))
            for site in down_members:
                prio = _priority(down, tails, (s_idx, site, "broadcast"))
                parent = shard.broadcast_tree[site]
                sends = tuple(
                    b.send(shard.route(site, c), down_paths[(site, c)][k],
                           Message(s_idx, k, BROADCAST, site, c), ref, prio)
                    for c in sorted(down_kids.get(site, ())))
                b.steps[site].append(Step("broadcast", ref,
                                          (Message(s_idx, k, BROADCAST, parent, site),),
                                          False, 1.0, site in worker_set, sends, prio))
    programs = {}
    for site in range(n):
        steps = tuple(b.steps[site])
        programs[site] = NodeProgram(site=site, plan_version=plan.version, steps=steps,
                                     expects=frozenset(b.expects[site]),
                                     stores=sum(st.store for st in steps))
    return programs
