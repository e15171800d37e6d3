"""The per-site executor (`netstorm.executor`) against independent oracles.

Payload mode: every worker ends with numpy's float64 mean of the gradients to within fp32
rounding, bit-identical on every worker, in every delivery order and in the simulator; the
exact bits equal a float32 evaluation of the plan's reduce trees done here by hand
(children in index order, then the site's own slice, then the root's ``1 / workers``).
Protocol errors are fed to one site's executor by hand; timing mode reports a deadlock.
"""

from __future__ import annotations

import dataclasses
import functools

import netstorm.sim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netstorm
from netstorm import (
    Executor,
    Job,
    NetworkView,
    Plan,
    PlanError,
    ProtocolError,
    QueueRule,
    Route,
    Shard,
)
from netstorm.builtin_topologies import builtin
from netstorm.compiler import compile
from netstorm.executor import SiteProgram, index_programs
from netstorm.plan import children
from netstorm.program import BROADCAST, REDUCE, Message, StepKind
from netstorm.testing import conformance_views, run_programs

JOB = Job(buckets=4 * 3000, chunk_bytes=1024)
EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------
# oracles


def gradients(workers: tuple[int, ...], elems: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    # mixed magnitudes so that the summation order shows in the last bits
    return {w: (rng.standard_normal(elems) * 10.0 ** rng.integers(-2, 3, elems))
            .astype(np.float32) for w in workers}


def tree_reference(plan: Plan, grads: dict[int, np.ndarray], elems: int) -> np.ndarray:
    """The plan's reduce trees evaluated in float32, elementwise, shard by shard.

    A site's value is the fp32 sum, left to right, of its reduce children's values (in
    site-index order) followed by its own gradient slice if it is a worker; the root's is
    then multiplied by ``float32(1 / workers)``. Shard i covers elements
    ``[round(F_{i-1} E), round(F_i E))`` with F the cumulative fractions.
    """
    workers = sorted(grads)
    scale = np.float32(1.0 / len(workers))
    out = np.full(elems, np.nan, dtype=np.float32)
    cum, lo = 0.0, 0
    for i, shard in enumerate(plan.shards):
        cum += shard.fraction
        hi = elems if i == len(plan.shards) - 1 else min(elems, round(cum * elems))
        if hi <= lo:
            continue
        kids = children(shard.reduce_tree)

        def value(site: int, lo: int = lo, hi: int = hi, kids: dict = kids) -> np.ndarray:
            parts = [value(c) for c in sorted(kids.get(site, ()))]
            if site in grads:
                parts.append(grads[site][lo:hi])
            acc = parts[0].astype(np.float32, copy=True)
            for p in parts[1:]:
                acc = acc + p
            return acc

        out[lo:hi] = value(shard.root) * scale
        lo = hi
    return out


def check_mean(results: dict[int, np.ndarray], grads: dict[int, np.ndarray],
               plan: Plan | None = None) -> np.ndarray:
    """numpy's float64 mean within fp32 rounding on every worker, all bit-identical (and,
    given the plan, equal to :func:`tree_reference` bit for bit). Returns the result."""
    workers = sorted(grads)
    assert sorted(results) == workers
    stack = np.stack([grads[w] for w in workers]).astype(np.float64)
    want = stack.mean(axis=0)
    # n - 1 fp32 additions of terms bounded by sum |g|, one scale rounding, one product
    # rounding: |error| <= n * eps * mean|g| + eps * |mean| (first order, generous)
    tol = len(workers) * EPS32 * np.abs(stack).mean(axis=0) + EPS32 * np.abs(want)
    first = results[workers[0]]
    assert first.dtype == np.float32
    assert np.isfinite(first).all(), "an element was never stored"
    err = np.abs(first.astype(np.float64) - want)
    assert (err <= tol).all(), f"max error {err.max()} over the fp32 bound"
    for w in workers:
        assert np.array_equal(results[w], first), f"worker {w} differs from worker {workers[0]}"
    if plan is not None:
        ref = tree_reference(plan, grads, len(first))
        assert np.array_equal(first, ref), "result is not the plan's fixed-order fp32 sum"
    return first


def relay_line() -> NetworkView:
    return next(v for v in conformance_views() if v.name == "relay-line")


VIEWS = {"netstorm9": lambda: builtin("netstorm9"), "cloud:aws:8": lambda: builtin("cloud:aws:8"),
         "random:12:1": lambda: builtin("random:12:1"), "relay-line": relay_line}


@functools.cache
def view_named(name: str) -> NetworkView:
    return VIEWS[name]()


@functools.cache
def planned(view_name: str, planner: str) -> Plan:
    """Each view is planned once per planner (treepack on random:12 takes about 1 s)."""
    return netstorm.plan(view_named(view_name), JOB, planner, seed=0)


# ---------------------------------------------------------------------------------------
# payload acceptance: every planner, simulator and in-memory driver


@pytest.mark.parametrize("planner", netstorm.planner_names())
@pytest.mark.parametrize("view_name", list(VIEWS))
def test_every_planner_yields_the_mean_bit_identically(view_name: str, planner: str) -> None:
    view = view_named(view_name)
    plan = planned(view_name, planner)
    elems = JOB.gradient_bytes // JOB.element_size
    grads = gradients(view.workers, elems, seed=7)
    programs = compile(plan, JOB, view.workers, view=view)
    memory = {seed: run_programs(programs, grads, seed=seed) for seed in (None, 1, 2)}
    first = check_mean(memory[None], grads, plan)
    for seed, results in memory.items():  # the sums do not depend on arrival order
        assert np.array_equal(check_mean(results, grads), first), f"delivery seed {seed}"
    _, simulated = netstorm.sim.allreduce(plan, view, JOB, payload=grads)
    assert np.array_equal(check_mean(simulated, grads), first), "simulator differs"
    for relay in view.relays:
        assert relay not in simulated


def test_the_oracle_catches_a_reordered_sum() -> None:
    """The bit-exact assertions can fail: on this data, summing the workers in reverse
    order gives other last bits than the executor's fixed order, and so does the oracle
    evaluated on another tree."""
    view = builtin("netstorm9")
    plan = planned("netstorm9", "ps")
    elems = JOB.gradient_bytes // JOB.element_size
    grads = gradients(view.workers, elems, seed=7)
    got = run_programs(compile(plan, JOB, view.workers, view=view), grads)[0]
    assert np.array_equal(got, tree_reference(plan, grads, elems))
    backwards = np.zeros(elems, np.float32)
    for w in sorted(grads, reverse=True):
        backwards = backwards + grads[w]
    assert not np.array_equal(backwards * np.float32(1 / len(grads)), got)
    chain = {s: s + 1 for s in range(8)}  # 0 -> 1 -> ... -> 8, root 8
    other = Plan(1, "chain", view.sites, (Shard(1.0, 8, chain, chain),))
    assert not np.array_equal(tree_reference(other, grads, elems), got)


# ---------------------------------------------------------------------------------------
# random plans, random delivery orders


def mesh(n: int, rng: np.random.Generator) -> NetworkView:
    cap = rng.uniform(1, 100, (n, n)) * 1e6
    np.fill_diagonal(cap, 0)
    return NetworkView(sites=tuple(f"s{i}" for i in range(n)), capacity=cap)


def random_tree(draw: st.DrawFn, root: int, workers: list[int], relays: list[int]) -> dict:
    """A random in-tree on the root, the workers and some relays; relay leaves pruned."""
    extra = draw(st.lists(st.sampled_from(relays), unique=True)) if relays else []
    members = [m for m in draw(st.permutations(sorted(set(workers) | set(extra))))
               if m != root]
    tree, placed = {}, [root]
    for m in members:
        tree[m] = placed[draw(st.integers(0, len(placed) - 1))]
        placed.append(m)
    while True:  # a relay-only site must carry something
        parents = set(tree.values())
        leaves = [s for s in tree if s not in workers and s not in parents]
        if not leaves:
            return tree
        for s in leaves:
            del tree[s]


def random_route(draw: st.DrawFn, n: int, u: int, v: int) -> Route:
    """Paths from u to v with pairwise disjoint relays (the direct link first or not)."""
    others = draw(st.permutations([s for s in range(n) if s not in (u, v)]))
    paths, at = [], 0
    if draw(st.booleans()):
        paths.append((u, v))
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 2))
        if at + k > len(others):
            break
        paths.append((u, *others[at:at + k], v))
        at += k
    if not paths:
        paths.append((u, v))
    paths = draw(st.permutations(paths))
    raw = draw(st.lists(st.floats(0.05, 1.0), min_size=len(paths), max_size=len(paths)))
    return Route((u, v), tuple(paths), tuple(w / sum(raw) for w in raw))


@st.composite
def random_plans(draw: st.DrawFn) -> tuple[NetworkView, Plan, Job]:
    n = draw(st.integers(2, 7))
    full = mesh(n, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    workers = sorted(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n,
                                   unique=True)))
    view = dataclasses.replace(full, workers=tuple(workers), _graph_cache={})
    relays = [s for s in range(n) if s not in workers]
    raw = draw(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4))
    shards = []
    for r in raw:
        root = draw(st.sampled_from(range(n)))
        up = random_tree(draw, root, workers, relays)
        down = random_tree(draw, root, workers, relays)
        edges = set(up.items()) | {(p, c) for c, p in down.items()}
        routes = tuple(random_route(draw, n, u, v) for u, v in sorted(edges)
                       if n > 2 and draw(st.booleans()))
        shards.append(Shard(r / sum(raw), root, up, down, routes))
    rule = draw(st.one_of(st.none(), st.builds(QueueRule, st.integers(0, 3),
                                               st.integers(0, 3))))
    plan = Plan(draw(st.integers(0, 5)), "random", view.sites, tuple(shards),
                route_rule=rule)
    elems = draw(st.integers(1, 300))
    job = Job(buckets=4 * elems, chunk_bytes=4 * draw(st.integers(1, 64)))
    netstorm.check_plan(plan, view)
    return view, plan, job


@settings(max_examples=80)
@given(case=random_plans(), seeds=st.lists(st.integers(0, 2**32 - 1), min_size=2,
                                           max_size=4), data_seed=st.integers(0, 100))
def test_random_plans_in_random_orders(case: tuple[NetworkView, Plan, Job],
                                       seeds: list[int], data_seed: int) -> None:
    view, plan, job = case
    elems = job.gradient_bytes // job.element_size
    grads = gradients(view.workers, elems, data_seed)
    programs = compile(plan, job, view.workers, view=view)
    assert {p.plan_version for p in programs.values()} == {plan.version}
    first = check_mean(run_programs(programs, grads), grads, plan)
    for seed in seeds:
        assert np.array_equal(check_mean(run_programs(programs, grads, seed=seed), grads),
                              first), f"delivery seed {seed}"
    assert run_programs(programs, seed=seeds[0]) == {}  # timing mode completes too


def test_a_route_rule_takes_the_auxiliary_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a queue rule some chunks really go over the auxiliary paths (their relays'
    optional steps fire), and the result is still the same bits. Site 1 sits inside the
    reduce tree (0 -> 1 -> 2), so it sends one chunk per arrival and sees its queue grow."""
    cap = np.full((5, 5), 10e6)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcde"), capacity=cap, workers=(0, 1, 2))
    routes = (Route((1, 2), ((1, 2), (1, 3, 2), (1, 4, 0, 2)), (0.5, 0.3, 0.2)),
              Route((2, 1), ((2, 1), (2, 4, 1)), (0.6, 0.4)))
    plan = Plan(1, "hand", view.sites, (Shard(1.0, 2, {0: 1, 1: 2}, {1: 2, 0: 1}, routes),),
                route_rule=QueueRule(aux_queue=2, primary_busy=0))
    netstorm.check_plan(plan, view)
    job = Job(buckets=4 * 640, chunk_bytes=4 * 16)
    programs = compile(plan, job, view.workers, view=view)
    assert programs[3].may_arrive and all(s.optional for s in programs[3].steps)
    arrivals: list[tuple[int, ...]] = []
    real = Executor.arrive

    def recording(self: Executor, message: Message, payload: np.ndarray | None = None,
                  **kw: object) -> tuple:
        arrivals.append(kw["path"])  # type: ignore[arg-type]
        return real(self, message, payload, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Executor, "arrive", recording)
    grads = gradients(view.workers, 640, seed=3)
    first = check_mean(run_programs(programs, grads), grads, plan)
    assert {(1, 3, 2), (1, 4, 0, 2), (2, 4, 1)} <= set(arrivals)
    for seed in range(4):
        arrivals.clear()
        assert np.array_equal(run_programs(programs, grads, seed=seed)[0], first)
        assert any(len(p) > 2 for p in arrivals)


def test_a_route_rule_needs_disjoint_relays() -> None:
    cap = np.full((4, 4), 10e6)
    np.fill_diagonal(cap, 0)
    view = NetworkView(sites=tuple("abcd"), capacity=cap, workers=(0, 1))
    route = Route((0, 1), ((0, 2, 1), (0, 3, 2, 1)), (0.5, 0.5))
    plan = Plan(1, "hand", view.sites, (Shard(1.0, 1, {0: 1}, {0: 1}, (route,)),))
    netstorm.check_plan(plan, view)
    run_programs(compile(plan, JOB, view.workers), seed=0)  # fine when dealt at compile time
    with pytest.raises(PlanError, match="relays on two of its paths"):
        compile(dataclasses.replace(plan, route_rule=QueueRule()), JOB, view.workers)


# ---------------------------------------------------------------------------------------
# one site's executor, fed by hand


def relay_plan() -> tuple[NetworkView, Plan, Job]:
    """Sites a (0, root), b (1) and relay r (2): b's partial sums reach a over b->r->a, the
    mean goes a->b directly. Two chunks of 4 elements."""
    cap = np.zeros((3, 3))
    cap[1, 2] = cap[2, 0] = cap[0, 1] = 1e6
    view = NetworkView(sites=("a", "b", "r"), capacity=cap, workers=(0, 1))
    shard = Shard(1.0, 0, {1: 0}, {1: 0}, (Route((1, 0), ((1, 2, 0),), (1.0,)),))
    plan = Plan(4, "hand", view.sites, (shard,))
    netstorm.check_plan(plan, view)
    return view, plan, Job(buckets=4 * 8, chunk_bytes=16)


def root_executor() -> tuple[Executor, np.ndarray, np.ndarray]:
    """Site 0 of :func:`relay_plan` (the root) in iteration 3: its executor, gradient, result."""
    _, plan, job = relay_plan()
    g = np.arange(8, dtype=np.float32)
    res = np.full(8, np.nan, np.float32)
    return Executor(compile(plan, job, (0, 1))[0], gradient=g, result=res, iteration=3), g, res


def up(chunk: int) -> Message:
    return Message(0, chunk, REDUCE, 1, 0)


def test_executor_fires_and_is_done_only_after_the_last_step() -> None:
    ex, g, res = root_executor()
    assert ex.start() == () and not ex.done
    assert ex.local_ready() == () and not ex.done  # both chunks still wait for b
    part0 = np.array([1, 2, 3, 4], np.float32)
    out = ex.arrive(up(0), part0, path=(1, 2, 0), version=4, iteration=3)
    assert not ex.done and ex.remaining == 1
    want0 = (part0 + g[:4]) * np.float32(0.5)  # the child first, then the local slice
    assert [o.message for o in out] == [Message(0, 0, BROADCAST, 0, 1)]
    assert out[0].path == (0, 1) and out[0].nbytes == 16
    assert np.array_equal(out[0].payload, want0) and np.array_equal(res[:4], want0)
    assert np.isnan(res[4:]).all()
    part1 = np.array([-1, 0.5, 7, 8], np.float32)
    ex.arrive(up(1), part1)
    assert ex.done
    assert np.array_equal(res[4:], (part1 + g[4:]) * np.float32(0.5))


def test_protocol_errors_change_nothing() -> None:
    ex, g, res = root_executor()
    first = np.array([1, 2, 3, 4], np.float32)
    assert ex.arrive(up(0), first) == ()  # waits for the local slice too
    with pytest.raises(ProtocolError, match="twice"):
        ex.arrive(up(0), np.full(4, 99, np.float32))
    with pytest.raises(ProtocolError, match="unexpected"):
        ex.arrive(Message(0, 2, REDUCE, 1, 0), first)  # no chunk 2
    with pytest.raises(ProtocolError, match="unexpected"):
        ex.arrive(Message(0, 1, REDUCE, 2, 0), first)  # not a tree edge
    with pytest.raises(ProtocolError, match="unexpected"):
        ex.arrive(Message(0, 0, BROADCAST, 0, 1), first)  # b's message
    with pytest.raises(ProtocolError, match="plan version 5"):
        ex.arrive(up(1), first, version=5)
    with pytest.raises(ProtocolError, match="iteration 2"):
        ex.arrive(up(1), first, iteration=2)
    with pytest.raises(ProtocolError, match=r"expected float32\[4\]"):
        ex.arrive(up(1), np.zeros(5, np.float32))
    with pytest.raises(ProtocolError, match=r"expected float32\[4\]"):
        ex.arrive(up(1), np.zeros((2, 2), np.float32))
    with pytest.raises(ProtocolError, match=r"carries float64\[4\]"):
        ex.arrive(up(1), np.zeros(4, np.float64))
    with pytest.raises(ProtocolError, match="carries None"):
        ex.arrive(up(1))
    assert ex.remaining == 2 and np.isnan(res).all()  # nothing fired or was stored
    # still usable: the rejected chunk-1 message is accepted once well formed, and chunk 0
    # sums the first payload, not the duplicate's
    second = np.array([5, 6, 7, 8], np.float32)
    assert ex.arrive(up(1), second, version=4, iteration=3) == ()
    out = ex.local_ready()
    assert ex.done and len(out) == 2
    assert np.array_equal(res, (np.concatenate([first, second]) + g) * np.float32(0.5))
    with pytest.raises(ProtocolError, match="twice"):
        ex.arrive(up(1), second)


def test_a_relay_checks_the_path_it_is_fed() -> None:
    _, plan, job = relay_plan()
    relay = compile(plan, job, (0, 1))[2]
    assert [s.kind for s in relay.steps] == [StepKind.FORWARD] * 2 and relay.stores == 0
    ex = Executor(relay, data=True)
    assert ex.done is False
    payload = np.ones(4, np.float32)
    for bad in [(1, 2, 1), (0, 2, 1), (2,), (1, 0)]:
        with pytest.raises(ProtocolError, match="does not continue along"):
            ex.arrive(up(0), payload, path=bad)
    out = ex.arrive(up(0), payload, path=(1, 2, 0))
    assert len(out) == 1 and out[0].path == (2, 0) and out[0].message == up(0)
    assert out[0].payload is payload  # forwarded untouched
    assert not ex.done
    ex.arrive(up(1), payload)  # no path given: not checked
    assert ex.done


def test_executor_construction_errors() -> None:
    view, plan, job = relay_plan()
    programs = compile(plan, job, view.workers)
    with pytest.raises(ValueError, match="timing mode"):
        Executor(programs[0], data=False, gradient=np.zeros(8, np.float32))
    other = compile(dataclasses.replace(plan, version=5), job, view.workers)
    with pytest.raises(ValueError, match=r"plan versions \[4, 5\] mixed"):
        index_programs({0: programs[0], 1: other[1], 2: programs[2]})
    assert set(index_programs(programs)) == {0, 1, 2}
    broken = dataclasses.replace(programs[0], expects=frozenset())
    with pytest.raises(ValueError, match="awaited messages differ"):
        SiteProgram(broken)
    # timing mode: no data, no payloads needed
    ex = Executor(programs[0])
    assert not ex.data
    ex.local_ready()
    ex.arrive(up(0))
    ex.arrive(up(1))
    assert ex.done


def test_local_slice_given_twice_is_rejected() -> None:
    _, plan, job = relay_plan()
    prog = compile(plan, job, (0, 1))[0]
    res = np.full(8, np.nan, np.float32)
    ex = Executor(prog, gradient=np.ones(8, np.float32), result=res)
    ex.local_ready()
    with pytest.raises(ProtocolError):
        ex.local_ready()


# ---------------------------------------------------------------------------------------
# timing mode: complete, or a deadlock reported


@pytest.mark.parametrize("planner", netstorm.planner_names())
def test_timing_mode_completes_and_a_missing_send_deadlocks(planner: str) -> None:
    view = view_named("netstorm9")
    plan = planned("netstorm9", planner)
    programs = compile(plan, JOB, view.workers, view=view)
    assert run_programs(programs) == {}
    assert run_programs(programs, seed=5) == {}
    site, g = next((s, g) for s, p in sorted(programs.items()) for g, st in enumerate(p.steps)
                   if st.kind is StepKind.REDUCE and st.sends)
    prog = programs[site]
    steps = list(prog.steps)
    lost = steps[g].sends[0].message
    steps[g] = dataclasses.replace(steps[g], sends=())
    broken = {**programs, site: dataclasses.replace(prog, steps=tuple(steps))}
    with pytest.raises(PlanError, match="never finished") as err:
        run_programs(broken, seed=1)
    stuck = str(err.value).split("[", 1)[1].split("]", 1)[0]
    assert str(lost.dst) in [s.strip() for s in stuck.split(",")]
