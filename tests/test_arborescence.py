"""Dense Chu-Liu/Edmonds against networkx's implementation."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstorm.arborescence import budget_arborescence, min_arborescence, prune_leaves, tree_cost


@st.composite
def cost_matrices(draw: st.DrawFn, max_n: int) -> tuple[np.ndarray, int]:
    n = draw(st.integers(2, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    integer = draw(st.booleans())  # integer costs force many ties
    cost = rng.integers(1, 5, (n, n)).astype(float) if integer else rng.random((n, n))
    cost[rng.random((n, n)) < draw(st.floats(0, 0.7))] = np.inf
    root = draw(st.integers(0, n - 1))
    order = rng.permutation(n)
    for a, b in itertools.pairwise([*order, order[0]]):  # a Hamiltonian cycle: all reachable
        cost[a, b] = min(cost[a, b], 10.0)
    return cost, root


def brute_force(cost: np.ndarray, root: int) -> float:
    """Cheapest spanning arborescence by trying every parent choice (tiny n only)."""
    n = len(cost)
    others = [v for v in range(n) if v != root]
    choices = [[u for u in range(n) if u != v and np.isfinite(cost[u, v])] for v in others]
    best = np.inf
    for parents in itertools.product(*choices):
        parent = dict(zip(others, parents, strict=True))
        if all(_reaches(parent, v, root) for v in others):
            best = min(best, sum(cost[parent[v], v] for v in others))
    return best


def _reaches(parent: dict[int, int], v: int, root: int) -> bool:
    seen = set()
    while v != root:
        if v in seen:
            return False
        seen.add(v)
        v = parent[v]
    return True


@settings(max_examples=150)
@given(cost_matrices(max_n=6))
def test_matches_brute_force(case: tuple[np.ndarray, int]) -> None:
    cost, root = case
    n = len(cost)
    parent = min_arborescence(cost, root)
    assert parent[root] == -1
    for v in range(n):  # a spanning arborescence: every site reaches the root
        seen, node = set(), v
        while node != root:
            assert node not in seen and np.isfinite(cost[parent[node], node])
            seen.add(node)
            node = parent[node]
    assert tree_cost(cost, parent) == pytest.approx(brute_force(cost, root))


@settings(max_examples=60)
@given(cost_matrices(max_n=14))
def test_matches_networkx_on_larger_cases(case: tuple[np.ndarray, int]) -> None:
    cost, root = case
    n = len(cost)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from((u, v, cost[u, v]) for u in range(n) for v in range(n)
                                  if u != v and v != root and np.isfinite(cost[u, v]))
    try:
        best = nx.minimum_spanning_arborescence(graph, preserve_attrs=True)
    except nx.NetworkXException:  # networkx 3.6 misses some existing arborescences
        return
    expected = sum(d["weight"] for *_, d in best.edges(data=True))
    assert tree_cost(cost, min_arborescence(cost, root)) == pytest.approx(expected)


def test_unreachable_site_is_an_error() -> None:
    cost = np.full((3, 3), np.inf)
    cost[0, 1] = 1.0
    with pytest.raises(ValueError, match="cannot be reached from root 0"):
        min_arborescence(cost, 0)


def test_prune_leaves_drops_only_unneeded_relays() -> None:
    parent = np.array([-1, 0, 1, 1, 3])  # 0 <- 1 <- {2, 3}, 3 <- 4
    keep = np.array([True, False, True, False, False])
    pruned = prune_leaves(parent, keep)
    assert pruned.tolist() == [-1, 0, 1, -2, -2]  # 4 then 3 go; relay 1 still leads to 2


@settings(max_examples=60)
@given(cost_matrices(max_n=8), st.integers(0, 2**32 - 1))
def test_budget_tree_spans_and_keeps_its_budget(case: tuple[np.ndarray, int], seed: int) -> None:
    cost, root = case
    delay = np.where(np.isfinite(cost), np.random.default_rng(seed).random(cost.shape), np.inf)
    us, vs = np.nonzero(np.isfinite(delay))
    graph = nx.DiGraph([(u, v, {"d": delay[u, v]}) for u, v in zip(us, vs, strict=True)
                        if u != v])
    shortest = nx.single_source_dijkstra_path_length(graph, root, weight="d")

    def path_delays(parent: np.ndarray) -> np.ndarray:
        out = np.zeros(len(parent))
        for v in range(len(parent)):
            u = v
            while parent[u] >= 0:
                out[v] += delay[parent[u], u]
                u = parent[u]
        return out

    # no budget: a spanning arborescence, never cheaper than Edmonds' optimum
    free = budget_arborescence(cost, delay, root, np.inf)
    assert (free >= 0).sum() == len(cost) - 1 and free[root] == -1
    assert tree_cost(cost, free) >= tree_cost(cost, min_arborescence(cost, root)) - 1e-9
    # zero budget: nothing fits, so sites join by least path delay (Dijkstra's tree)
    tight = path_delays(budget_arborescence(cost, delay, root, 0.0))
    assert np.allclose(tight, [shortest[v] for v in range(len(cost))])
    # a budget no path of the free tree exceeds never binds: the same tree comes back
    # (costs jittered so that no ties can be broken differently)
    jittered = cost + np.random.default_rng(seed).random(cost.shape) * 1e-6
    free = budget_arborescence(jittered, delay, root, np.inf)
    depth = path_delays(free).max() * (1 + 1e-9)  # the kernel may sum in another order
    assert np.array_equal(budget_arborescence(jittered, delay, root, depth), free)
    # a budget that binds part of the way: still a spanning arborescence over existing
    # links (the fallback attachments must keep it one)
    tight = budget_arborescence(jittered, delay, root, depth / 2)
    assert tight[root] == -1 and (np.delete(tight, root) >= 0).all()
    assert all(np.isfinite(delay[tight[v], v]) for v in range(len(cost)) if v != root)
    for v in range(len(cost)):  # every site reaches the root without a cycle
        u, steps = v, 0
        while tight[u] >= 0 and steps <= len(cost):
            u, steps = tight[u], steps + 1
        assert u == root


def level_rule(cost: np.ndarray, root: int) -> np.ndarray:
    """Chu-Liu/Edmonds level by level, as written in the kernel's Notes: the plain rule
    (rebuild each contracted level from scratch, expand the levels in reverse)."""
    w = cost.astype(float)
    np.fill_diagonal(w, np.inf)
    w[:, root] = np.inf
    levels = []
    while True:
        n = len(w)
        parent, best = np.full(n, -1), np.full(n, np.inf)
        for v in range(n):
            for u in range(n):
                if w[u, v] < best[v]:
                    best[v], parent[v] = w[u, v], u
        parent[root], best[root] = -1, 0.0
        if any(parent[v] < 0 for v in range(n) if v != root):
            raise ValueError("unreachable")
        cycle, state, count = np.full(n, -1), np.zeros(n), 0
        for start in range(n):
            walk, v = [], start
            while v != -1 and state[v] == 0:
                state[v] = 1
                walk.append(v)
                v = -1 if v == root else parent[v]
            if v != -1 and state[v] == 1:
                cycle[walk[walk.index(v):]] = count
                count += 1
            state[walk] = 2
        if count == 0:
            break
        flat = np.flatnonzero(cycle < 0)
        group = np.empty(n, dtype=int)
        group[flat] = np.arange(len(flat))
        group[cycle >= 0] = len(flat) + cycle[cycle >= 0]
        m = len(flat) + count
        small, tail, head = np.full((m, m), np.inf), np.full((m, m), -1), np.full((m, m), -1)
        for u in range(n):
            for v in range(n):
                c = w[u, v] - (best[v] if cycle[v] >= 0 else 0.0)
                if group[u] != group[v] and np.isfinite(w[u, v]) and c < small[group[u],
                                                                                group[v]]:
                    small[group[u], group[v]] = c
                    tail[group[u], group[v]], head[group[u], group[v]] = u, v
        levels.append((parent, tail, head, root))
        w, root = small, int(group[root])
    inner = parent
    for parent, tail, head, level_root in reversed(levels):
        result = parent.copy()
        for b, a in enumerate(inner):
            if a >= 0:
                result[head[a, b]] = tail[a, b]
        result[level_root] = -1
        inner = result
    return inner


@settings(max_examples=200)
@given(cost_matrices(max_n=12), st.floats(0, 0.9), st.integers(0, 2**32 - 1))
def test_is_the_level_by_level_rule_tie_for_tie(case: tuple[np.ndarray, int], zeros: float,
                                                 seed: int) -> None:
    # the kernel contracts in place; ties (zero prices, integer costs) must still go the
    # rule's way, so the trees (and with them the packings) do not depend on the kernel
    cost, root = case
    rng = np.random.default_rng(seed)
    cost = np.where(np.isfinite(cost) & (rng.random(cost.shape) < zeros), 0.0, cost)
    assert np.array_equal(min_arborescence(cost, root), level_rule(cost, root))
