"""Numba kernel of :func:`netstorm.arborescence.min_arborescence` (private; imported lazily).

Every site takes its cheapest incoming edge; the cycles this creates are contracted (edge
costs into a cycle reduced by the cycle edge they would replace) and the smaller problem is
solved the same way, level by level; the levels are then expanded in reverse. Each level is
derived in place from the one before, so the work is about O(N^2) in all rather than per
level (pricing costs often contract one small cycle per level, for up to N levels).
Iterative rather than recursive so numba can cache the compiled code on disk.
"""

import numba
import numpy as np

__all__ = ["budget_prim", "edmonds"]


@numba.njit(cache=True)
def _cheapest_in(w: np.ndarray, v: int, order: np.ndarray, live: int, best: np.ndarray,
                 parent: np.ndarray, ties: np.ndarray) -> None:  # pragma: no cover - compiled
    """Site ``v``'s cheapest incoming edge among the level's ``live`` sites (``order``): the
    first of equals in that order, and how many tie with it."""
    for j in range(live):
        u = order[j]
        if w[u, v] < best[v]:
            best[v] = w[u, v]
            parent[v] = u
            ties[v] = 1
        elif w[u, v] == best[v]:
            ties[v] += 1
    if parent[v] < 0:
        raise ValueError("a site cannot be reached from the root")


@numba.njit(cache=True)
def edmonds(w: np.ndarray, root: int) -> np.ndarray:  # pragma: no cover - compiled
    """Parents of a minimum spanning arborescence; ``w`` has inf on its diagonal and in the
    root's column, and is overwritten. Returns ``-1`` for the root; raises ValueError if a
    site is unreachable.

    Notes
    -----
    The rule, level by level: every site takes its cheapest incoming edge (of equals, the
    one from the site first in the level's order); the cycles this makes are found by
    walking parents from each site in order; the next level lists the sites on no cycle in
    their order, then one site per cycle in the order the cycles were found. An edge into a
    cycle costs its own cost less the cycle edge into its head; between two sites of the
    next level, the cheapest edge wins, of equals the one first by (tail, head) in the
    level's order. The last level (no cycle) is expanded back: a cycle keeps all its edges
    but the one into the site its entering edge reaches.

    Each level is built in place from the last: only the contracted sites' rows and columns
    change, and only the sites whose cheapest edge came from a contracted site look for it
    again, so a level costs O(N x contracted sites) instead of O(N^2). Each contraction
    adds a node to a forest whose leaves are the sites; the expansion walks it top down
    (Camerini, Fratta and Maffioli's order), from each entering edge's head up to the
    cycle it enters.
    """
    n = w.shape[0]
    code = np.empty((n, n), np.int64)  # the original edge (u * n + v) behind w[a, b]
    for a in range(n):
        for b in range(n):
            code[a, b] = a * n + b
    order = np.arange(n)  # the level's sites (slots of w) in order
    live = n
    parent = np.full(n, -1, np.int64)  # cheapest incoming edge's tail (a slot)
    best = np.full(n, np.inf)
    ties = np.zeros(n, np.int64)  # how many live sites offer that cost
    for v in range(n):
        if v != root:
            _cheapest_in(w, v, order, live, best, parent, ties)
    best[root] = 0.0
    fid = np.arange(n)  # forest node of each slot; forest nodes < n are the sites
    fpar = np.full(2 * n, -1, np.int64)
    first_child = np.full(2 * n, -1, np.int64)
    next_sibling = np.full(2 * n, -1, np.int64)
    chosen = np.full(2 * n, -1, np.int64)  # edge code entering each forest node
    forest = n
    cycle = np.full(n, -1, np.int64)
    state = np.zeros(n, np.int8)
    walk = np.empty(n, np.int64)
    while True:
        for i in range(live):
            state[order[i]] = 0
            cycle[order[i]] = -1
        count = 0
        for i in range(live):
            k = 0
            v = order[i]
            while v != -1 and state[v] == 0:
                state[v] = 1
                walk[k] = v
                k += 1
                v = -1 if v == root else parent[v]
            if v != -1 and state[v] == 1:
                j = 0
                while walk[j] != v:
                    j += 1
                for t in range(j, k):
                    cycle[walk[t]] = count
                count += 1
            for t in range(k):
                state[walk[t]] = 2
        if count == 0:
            break
        # members of each cycle in level order; the sites on no cycle in level order
        start = np.zeros(count + 1, np.int64)
        for i in range(live):
            if cycle[order[i]] >= 0:
                start[cycle[order[i]] + 1] += 1
        for c in range(count):
            start[c + 1] += start[c]
        members = np.empty(start[count], np.int64)
        fill = start[:count].copy()
        rest = np.empty(live, np.int64)
        kept = 0
        for i in range(live):
            s = order[i]
            c = cycle[s]
            if c >= 0:
                members[fill[c]] = s
                fill[c] += 1
            else:
                rest[kept] = s
                kept += 1
        # the next level's costs from and to each cycle, from this level's costs only
        out_cost = np.full((count, kept), np.inf)
        out_code = np.full((count, kept), -1, np.int64)
        in_cost = np.full((count, kept), np.inf)
        in_code = np.full((count, kept), -1, np.int64)
        cross = np.full((count, count), np.inf)
        cross_code = np.full((count, count), -1, np.int64)
        for c in range(count):
            for r in range(kept):
                b = rest[r]
                offers = 0
                for t in range(start[c], start[c + 1]):  # tails in order
                    u = members[t]
                    if w[u, b] < out_cost[c, r]:
                        out_cost[c, r] = w[u, b]
                        out_code[c, r] = code[u, b]
                    if w[u, b] == best[b]:
                        offers += 1
                if offers > 1:  # the cycle offers b's cost once now
                    ties[b] -= offers - 1
                for t in range(start[c], start[c + 1]):  # heads in order
                    v = members[t]
                    x = w[b, v] - best[v]
                    if x < in_cost[c, r]:
                        in_cost[c, r] = x
                        in_code[c, r] = code[b, v]
            for d in range(count):
                if d == c:
                    continue
                for t in range(start[c], start[c + 1]):
                    u = members[t]
                    for q in range(start[d], start[d + 1]):
                        v = members[q]
                        x = w[u, v] - best[v]
                        if x < cross[c, d]:
                            cross[c, d] = x
                            cross_code[c, d] = code[u, v]
        # contract: each cycle's first member's slot becomes the cycle
        slot = members[start[:count]]
        for c in range(count):
            node = forest
            forest += 1
            for t in range(start[c], start[c + 1]):
                y = members[t]
                chosen[fid[y]] = code[parent[y], y]
                fpar[fid[y]] = node
                next_sibling[fid[y]] = first_child[node]
                first_child[node] = fid[y]
            fid[slot[c]] = node
        for c in range(count):
            x = slot[c]
            for r in range(kept):
                b = rest[r]
                w[x, b] = out_cost[c, r]
                code[x, b] = out_code[c, r]
                w[b, x] = in_cost[c, r]
                code[b, x] = in_code[c, r]
            for d in range(count):
                w[x, slot[d]] = cross[c, d] if d != c else np.inf
                code[x, slot[d]] = cross_code[c, d]
        live = kept + count
        order[:kept] = rest[:kept]
        order[kept:live] = slot
        # cheapest incoming edges that changed: the cycles', and those that came from one
        for i in range(live):
            v = order[i]
            if v == root or (i < kept and cycle[parent[v]] < 0):
                continue
            if i < kept:  # the same cost (the cycle's row is the least of its members'),
                if ties[v] == 1:  # offered by the cycle alone
                    parent[v] = slot[cycle[parent[v]]]
                    continue
                for j in range(live):  # or first by a site on no cycle
                    if w[order[j], v] == best[v]:
                        parent[v] = order[j]
                        break
                continue
            best[v] = np.inf
            parent[v] = -1
            _cheapest_in(w, v, order, live, best, parent, ties)
    stack = np.empty(2 * n, np.int64)
    top = 0
    for i in range(live):
        v = order[i]
        if v != root:
            chosen[fid[v]] = code[parent[v], v]
            stack[top] = fid[v]
            top += 1
    result = np.full(n, -1, np.int64)
    while top > 0:
        top -= 1
        node = stack[top]
        edge = chosen[node]
        z = edge % n
        result[z] = edge // n
        while z != node:  # up from the head: the other members keep their cycle edges
            up = fpar[z]
            y = first_child[up]
            while y != -1:
                if y != z:
                    stack[top] = y
                    top += 1
                y = next_sibling[y]
            z = up
    result[root] = -1
    return result


@numba.njit(cache=True)
def budget_prim(cost: np.ndarray, delay: np.ndarray, root: int, budget: float) -> np.ndarray:
    """Prim-style out-arborescence: repeatedly attach the site whose cheapest edge from the
    tree keeps its root path's delay within ``budget``; when no such edge is left, the site
    reachable with the least path delay. ``parent[root] == -1``; -2 marks unreachable."""
    n = cost.shape[0]
    parent = np.full(n, -2, np.int64)
    path = np.full(n, np.inf)
    intree = np.zeros(n, np.bool_)
    best = np.full(n, np.inf)  # cheapest in-budget attachment cost of each outside site
    via = np.full(n, -1, np.int64)
    near = np.full(n, np.inf)  # least path delay of any attachment (fallback)
    near_via = np.full(n, -1, np.int64)
    parent[root] = -1
    path[root] = 0.0
    intree[root] = True
    x = root
    for _ in range(n - 1):
        for u in range(n):
            if intree[u] or not np.isfinite(delay[x, u]):
                continue
            reach = path[x] + delay[x, u]
            if reach <= budget and cost[x, u] < best[u]:
                best[u] = cost[x, u]
                via[u] = x
            if reach < near[u]:
                near[u] = reach
                near_via[u] = x
        pick, pick_cost = -1, np.inf
        for u in range(n):
            if not intree[u] and via[u] >= 0 and best[u] < pick_cost:
                pick, pick_cost = u, best[u]
        if pick < 0:  # nothing fits the budget: attach the least-delay site
            pick_near = np.inf
            for u in range(n):
                if not intree[u] and near[u] < pick_near:
                    pick, pick_near = u, near[u]
            if pick < 0:
                break
            x = pick
            parent[x] = near_via[x]
        else:
            x = pick
            parent[x] = via[x]
        path[x] = path[parent[x]] + delay[parent[x], x]
        intree[x] = True
    return parent
