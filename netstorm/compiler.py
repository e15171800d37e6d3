"""`compile`: turn a :class:`~netstorm.plan.Plan` into one chunk-level program per site.

The executor (:mod:`netstorm.executor`), driven by the simulator or by the TCP runtime, runs
the same :class:`~netstorm.program.NodeProgram` values, which is what makes them agree.
"""

from __future__ import annotations

from .errors import PlanError
from .job import Job
from .layout import assign_paths, chunk_layout
from .plan import Plan, QueueRule, Route, Shard, children
from .program import BROADCAST, REDUCE, ChunkRef, Message, NodeProgram, Send, Step, StepKind
from .send_order import Tails, slack_terms
from .view import NetworkView

__all__ = ["compile"]


class _Builder:
    def __init__(self, n: int, rule: QueueRule | None) -> None:
        self.steps: list[list[Step]] = [[] for _ in range(n)]
        self.expects: list[set[Message]] = [set() for _ in range(n)]
        self.may_arrive: list[set[Message]] = [set() for _ in range(n)]
        self.rule = rule

    def send(self, route: Route, choice: int, message: Message, ref: ChunkRef,
             priority: float) -> Send:
        """The originating send of ``message``; adds forward steps at its relays.

        Under a route rule a multipath edge's send lists every path and its relays get
        optional steps (the message may come their way); otherwise the send takes path
        ``choice`` and its relays must forward it.
        """
        live = self.rule is not None and len(route.paths) > 1
        paths = route.paths if live else (route.paths[choice],)
        self.expects[message.dst].add(message)
        for path in paths:
            for i in range(1, len(path) - 1):
                relay = path[i]
                bag = self.may_arrive[relay] if live else self.expects[relay]
                if message in bag:
                    raise PlanError(f"route {route.edge}: site {relay} relays on two of its "
                                    f"paths; a send-time route rule needs them apart")
                bag.add(message)
                self.steps[relay].append(Step(
                    kind=StepKind.FORWARD, ref=ref, waits=(message,),
                    sends=(Send(message, (path[i:],)),), priority=priority, optional=live))
        return Send(message, paths, self.rule if live else None)


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
        Lay the shards out inside every gradient bucket
        (:func:`~netstorm.layout.chunk_layout`), so that a bucket's chunks can start as soon
        as the backward pass has produced that bucket.
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
    Shard i covers the element range of :func:`~netstorm.layout.shard_elements` (or, with
    ``by_bucket``, its share of every bucket), cut into chunks of ``chunk_bytes // element_size``
    elements (:func:`~netstorm.layout.chunk_layout`). For every chunk:
    each site in the reduce tree waits for the chunk's partial sums from all its reduce
    children, adds its own slice if it is a worker, and sends one partial sum to its parent
    over the tree edge's route; the root also scales by ``1 / len(workers)``, keeps the mean
    and sends it to its broadcast children; every other site in the broadcast tree waits for
    the mean from its parent, keeps it if it is a worker and forwards it to its children.
    Relays on a route get ``forward`` steps. A multipath route's chunks go whole over one
    path each: chosen by :func:`~netstorm.layout.assign_paths` per tree edge, or, under the
    plan's ``route_rule``, when the chunk is sent (every path's relays then get optional
    forward steps, and its messages are in their ``may_arrive``). The result is a pure,
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
    b = _Builder(n, plan.route_rule)
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
                    b.steps[site].append(Step(kind=StepKind.ROOT, ref=ref, waits=waits,
                                              add_local=local, scale=scale, store=local,
                                              sends=sends, priority=prio))
                else:
                    prio = _priority(up, tails, (s_idx, site, "reduce"))
                    parent = shard.reduce_tree[site]
                    send = b.send(shard.route(site, parent), up_paths[(site, parent)][k],
                                  Message(s_idx, k, REDUCE, site, parent), ref, prio)
                    b.steps[site].append(Step(kind=StepKind.REDUCE, ref=ref, waits=waits,
                                              add_local=local, sends=(send,), priority=prio))
            for site in down_members:
                prio = _priority(down, tails, (s_idx, site, "broadcast"))
                parent = shard.broadcast_tree[site]
                sends = tuple(
                    b.send(shard.route(site, c), down_paths[(site, c)][k],
                           Message(s_idx, k, BROADCAST, site, c), ref, prio)
                    for c in sorted(down_kids.get(site, ())))
                b.steps[site].append(Step(
                    kind=StepKind.BROADCAST, ref=ref,
                    waits=(Message(s_idx, k, BROADCAST, parent, site),),
                    store=site in worker_set, sends=sends, priority=prio))
    programs = {}
    for site in range(n):
        steps = tuple(b.steps[site])
        programs[site] = NodeProgram(site=site, plan_version=plan.version, steps=steps,
                                     expects=frozenset(b.expects[site]),
                                     may_arrive=frozenset(b.may_arrive[site]),
                                     stores=sum(st.store for st in steps))
    return programs
