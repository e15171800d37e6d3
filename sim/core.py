"""The compiled timing core: executors' firing rule and the WAN's links, over arrays (numba).

This is the executor (:mod:`netstorm.executor`) and :class:`~netstorm.sim.network.Network`
re-implemented for timing mode only, over :class:`~netstorm.sim.flat.FlatPrograms`, so an
iteration of a 128-site plan runs without a Python call per transfer. It is the one
sanctioned second implementation of the firing rule; ``tests/sim/test_core.py`` proves it
equal to the executor path on every planner. :mod:`netstorm.sim.compiled` drives it.

Semantics, kept identical to the executor path so that both give the same times:

- **Events** are ordered by ``(time, eid)``, ``eid`` counting up as SimPy's does: an event
  scheduled earlier goes first at the same instant. A message delivered with no latency,
  and a local slice ready at once, are handled inline, as the executor driver does.
- **Links** send one transfer at a time and serve their queue smallest ``(priority, seq)``
  first (a pairing heap per link, over the transfer pool).
- **Route rules** pick a path when a message is sent and move a waiting message to an
  auxiliary first hop when that link drains (a pairing heap of candidates per link).
- **Rates**: without site caps a transfer runs at ``min(capacity, window / RTT)``. With
  caps, the instant at which transfers begin or end is flushed once (an event scheduled
  behind that instant's others) and max-min fair rates are re-solved only for the
  transfers coupled to what changed: those reachable from a touched egress or ingress cap
  through active transfers (SimGrid's partial invalidation). Every active transfer has at
  most one finish time, kept in an indexed heap over links.
- **Observations** (bytes, seconds, end time per transfer: what a sender measures) are
  buffered and handed to Python at the next return, in the order they happened.

State lives in tables with named columns (:mod:`netstorm.sim.tables`); max-min sharing
under site caps is :mod:`netstorm.sim.sharing`.
"""

from __future__ import annotations

import numba
import numpy as np

from . import flat, heaps, network, sharing, tables
from .cache import drop_stale
from .flat import (
    ALT_HI,
    ALT_LO,
    LINK,
    NBYTES,
    OPTIONAL,
    PRIORITY,
    RULE,
    SEND_HI,
    SEND_LO,
    SITE,
    SLOT,
    WAITS,
    FlatPrograms,
    Program,
)
from .heaps import ARG, CHILD, EID, FEID, HEAP, KEY, KIND, POS, SEQ, SIB
from .network import CAP_BOUND
from .sharing import coupled, maxmin
from .tables import (
    C_ACTIVE,
    C_AUX_QUEUE,
    C_BEGUN,
    C_DIRTY,
    C_EID,
    C_ENTRIES,
    C_ERROR_AT,
    C_EVENTS,
    C_FINISHES,
    C_FREE,
    C_LEFT,
    C_N,
    C_NDIRTY,
    C_NFRESH,
    C_OBS,
    C_OBSERVE,
    C_PRIMARY_BUSY,
    C_SEQ,
    C_SHARED,
    C_TRANSFERS,
    DELIVER,
    DONE,
    E_TID,
    ERROR,
    FINISHED,
    FLUSH,
    IDLE,
    L_ACTIVE,
    L_AT_OUT,
    L_BEGUN,
    L_BUSY,
    L_BYTES,
    L_FRESH,
    L_LATENCY,
    L_MROOT,
    L_QLEN,
    L_QROOT,
    L_RATE_CAP,
    LOCAL,
    O_BYTES,
    O_CAPPED,
    O_END,
    O_SECS,
    OBS_FULL,
    R_COUNT,
    R_DIRTY,
    R_QUEUE,
    T_CAPPED,
    T_LINK,
    T_NBYTES,
    T_QUEUED,
    T_RATE,
    T_RATED,
    T_REMAINING,
    T_SEND,
    T_SINCE,
    T_SLOT,
    T_START,
    UNTIL,
    Events,
    Iteration,
    Links,
    Pool,
)

__all__ = ["flush_all", "probe", "run", "start_iteration"]

drop_stale(__file__, flat, heaps, network, sharing, tables)  # numba checks this file only


# -- events and finish times -----------------------------------------------------------------
@numba.njit(cache=True)
def _push(q: Events, c: np.ndarray, at: float, kind: int, arg: int) -> None:
    heaps.ev_push(q.time, q.i, c[C_EVENTS], at, c[C_EID], kind, arg)
    c[C_EVENTS] += 1
    c[C_EID] += 1


@numba.njit(cache=True)
def _finish_at(k: Links, c: np.ndarray, link: int, at: float) -> None:
    """Set (or move) ``link``'s finish time; it goes after events already due then."""
    k.ftime[link] = at
    k.fi[link, FEID] = c[C_EID]
    c[C_EID] += 1
    j = k.fi[link, POS]
    if j < 0:
        j = c[C_FINISHES]
        c[C_FINISHES] = j + 1
        k.fi[j, HEAP] = link
        k.fi[link, POS] = j
    heaps.f_sift(k.fi, k.ftime, c[C_FINISHES], j)


@numba.njit(cache=True)
def _unfinish(k: Links, c: np.ndarray, link: int) -> None:
    j = k.fi[link, POS]
    if j < 0:
        return
    k.fi[link, POS] = -1
    last = c[C_FINISHES] - 1
    c[C_FINISHES] = last
    if j != last:
        moved = k.fi[last, HEAP]
        k.fi[j, HEAP] = moved
        k.fi[moved, POS] = j
        heaps.f_sift(k.fi, k.ftime, last, j)


# -- transfers -------------------------------------------------------------------------------
@numba.njit(cache=True)
def _alloc(t: Pool, c: np.ndarray, link: int, nbytes: float, slot: int, send: int,
           pri: float, seq: int) -> int:
    c[C_FREE] -= 1
    tid = t.free[c[C_FREE]]
    f, i = t.f, t.i
    f[tid, KEY], f[tid, T_NBYTES], f[tid, T_REMAINING] = pri, nbytes, nbytes
    f[tid, T_RATE], f[tid, T_SINCE], f[tid, T_START] = 0.0, 0.0, 0.0
    i[tid, SEQ], i[tid, CHILD], i[tid, SIB] = seq, -1, -1
    i[tid, T_LINK], i[tid, T_SLOT], i[tid, T_SEND] = link, slot, send
    i[tid, T_QUEUED], i[tid, T_RATED], i[tid, T_CAPPED] = 0, 0, 0
    return tid


@numba.njit(cache=True)
def _release(t: Pool, c: np.ndarray, tid: int) -> None:
    t.free[c[C_FREE]] = tid
    c[C_FREE] += 1


@numba.njit(cache=True)
def _set_rate(k: Links, t: Pool, c: np.ndarray, now: float, tid: int, rate: float) -> None:
    t.f[tid, T_RATE] = rate
    t.i[tid, T_RATED] = 1
    link = t.i[tid, T_LINK]
    if rate < k.f[link, L_RATE_CAP] * CAP_BOUND:  # a shared site cap holds it back
        t.i[tid, T_CAPPED] = 1
    if rate > 0:
        _finish_at(k, c, link, now + t.f[tid, T_REMAINING] / rate)
    else:
        _unfinish(k, c, link)  # stalled until a capacity changes


@numba.njit(cache=True)
def _mark(q: Events, c: np.ndarray, now: float) -> None:
    """Flush this instant's rate changes once, after the events already due now."""
    if not c[C_DIRTY]:
        c[C_DIRTY] = 1
        _push(q, c, now, FLUSH, 0)


@numba.njit(cache=True)
def _begin(k: Links, t: Pool, q: Events, c: np.ndarray, now: float, tid: int) -> None:
    link = t.i[tid, T_LINK]
    n = c[C_N]
    t.f[tid, T_START] = now
    t.f[tid, T_SINCE] = now
    k.i[link, L_ACTIVE] = tid
    k.i[link, L_BEGUN] = c[C_BEGUN]
    c[C_BEGUN] += 1
    c[C_ACTIVE] += 1
    for j in range(2):  # list it on its egress and ingress caps
        r = link // n if j == 0 else n + link % n
        k.i[link, L_AT_OUT + j] = k.res[r, R_COUNT]
        k.res_list[r, k.res[r, R_COUNT]] = link
        k.res[r, R_COUNT] += 1
    if c[C_SHARED]:
        k.i[c[C_NFRESH], L_FRESH] = link
        c[C_NFRESH] += 1
        _mark(q, c, now)
    else:
        _set_rate(k, t, c, now, tid, k.f[link, L_RATE_CAP])


@numba.njit(cache=True)
def _end(k: Links, c: np.ndarray, link: int) -> None:
    n = c[C_N]
    k.i[link, L_ACTIVE] = -1
    c[C_ACTIVE] -= 1
    for j in range(2):
        r = link // n if j == 0 else n + link % n
        at = k.i[link, L_AT_OUT + j]
        last = k.res_list[r, k.res[r, R_COUNT] - 1]
        k.res_list[r, at] = last
        k.i[last, L_AT_OUT + j] = at
        k.res[r, R_COUNT] -= 1
        if np.isfinite(k.res_cap[r]) and not k.res[r, R_DIRTY]:
            k.res[r, R_DIRTY] = 1  # the transfers left on this cap may speed up
            k.res[c[C_NDIRTY], R_QUEUE] = r
            c[C_NDIRTY] += 1


@numba.njit(cache=True)
def _depth(k: Links, link: int) -> int:
    return k.i[link, L_QLEN] + (k.i[link, L_ACTIVE] >= 0)


@numba.njit(cache=True)
def _net_send(p: Program, k: Links, t: Pool, q: Events, c: np.ndarray, now: float,
              link: int, nbytes: float, slot: int, pri: float, send: int) -> None:
    """Queue a transfer on ``link`` (or start it); ``send >= 0``: it may move to one of the
    send's auxiliary first hops while it waits."""
    seq = c[C_SEQ]
    c[C_SEQ] += 1
    tid = _alloc(t, c, link, nbytes, slot, send, pri, seq)
    if k.i[link, L_ACTIVE] < 0:
        _begin(k, t, q, c, now, tid)
        return
    k.i[link, L_QROOT] = heaps.meld(t.f, t.i, k.i[link, L_QROOT], tid)
    k.i[link, L_QLEN] += 1
    t.i[tid, T_QUEUED] = 1
    if send >= 0:
        for a in range(p.sends[send, ALT_LO] + 1, p.sends[send, ALT_HI]):
            e = c[C_ENTRIES]
            c[C_ENTRIES] += 1
            t.ef[e, KEY] = pri
            t.ei[e, SEQ], t.ei[e, CHILD], t.ei[e, SIB], t.ei[e, E_TID] = seq, -1, -1, tid
            aux = p.alts[a, LINK]
            k.i[aux, L_MROOT] = heaps.meld(t.ef, t.ei, k.i[aux, L_MROOT], e)


@numba.njit(cache=True)
def _move_to(p: Program, k: Links, t: Pool, q: Events, c: np.ndarray, now: float,
             link: int) -> bool:
    """Idle ``link``: start the first waiting transfer whose route rule moves it here."""
    root = k.i[link, L_MROOT]
    if root < 0:
        return False
    kept = -1
    moved = False
    while root >= 0:
        e = root
        root = heaps.pop(t.ef, t.ei, root)
        tid = t.ei[e, E_TID]
        if not t.i[tid, T_QUEUED] or t.i[tid, SEQ] != t.ei[e, SEQ]:
            continue  # started on its primary, or moved elsewhere, meanwhile
        primary = t.i[tid, T_LINK]
        if not (_depth(k, primary) > c[C_PRIMARY_BUSY] and 0 < c[C_AUX_QUEUE]):
            t.ei[e, SIB] = kept
            kept = e
            continue
        k.i[primary, L_QLEN] -= 1
        t.i[tid, T_QUEUED] = 0  # its row stays in the primary's queue until popped there
        send = t.i[tid, T_SEND]
        slot = -1
        for a in range(p.sends[send, ALT_LO] + 1, p.sends[send, ALT_HI]):
            if p.alts[a, LINK] == link:
                slot = p.alts[a, SLOT]
                break
        new = _alloc(t, c, link, t.f[tid, T_NBYTES], slot, -1, t.f[tid, KEY], t.i[tid, SEQ])
        _begin(k, t, q, c, now, new)
        moved = True
        break
    while kept >= 0:
        nxt = t.ei[kept, SIB]
        t.ei[kept, SIB] = -1
        root = heaps.meld(t.ef, t.ei, root, kept)
        kept = nxt
    k.i[link, L_MROOT] = root
    return moved


# -- executors -------------------------------------------------------------------------------
@numba.njit(cache=True)
def _fire(p: Program, it: Iteration, k: Links, t: Pool, q: Events, c: np.ndarray,
          now: float, g: int) -> bool:
    """Fire step ``g``: send what it sends, picking paths under the route rule. True if
    that finished its site."""
    done = False
    if not p.steps[g, OPTIONAL]:
        site = p.steps[g, SITE]
        it.remaining[site] -= 1
        done = it.remaining[site] == 0
    nbytes, pri = p.values[g, NBYTES], p.values[g, PRIORITY]
    for s in range(p.steps[g, SEND_LO], p.steps[g, SEND_HI]):
        lo, hi = p.sends[s, ALT_LO], p.sends[s, ALT_HI]
        choice = lo
        live = p.sends[s, RULE] != 0
        if live and _depth(k, p.alts[lo, LINK]) > c[C_PRIMARY_BUSY]:
            for a in range(lo + 1, hi):
                if _depth(k, p.alts[a, LINK]) < c[C_AUX_QUEUE]:
                    choice = a
                    break
        _net_send(p, k, t, q, c, now, p.alts[choice, LINK], nbytes, p.alts[choice, SLOT], pri,
                  s if live and choice == lo else -1)
    return done


@numba.njit(cache=True)
def _finished(q: Events, c: np.ndarray, now: float) -> None:
    c[C_LEFT] -= 1
    if c[C_LEFT] == 0:
        _push(q, c, now, FINISHED, 0)


@numba.njit(cache=True)
def _deliver(p: Program, it: Iteration, k: Links, t: Pool, q: Events, c: np.ndarray,
             now: float, slot: int) -> bool:
    if it.got[slot]:
        c[C_ERROR_AT] = slot
        return False
    it.got[slot] = True
    g = p.slot_step[slot]
    it.pending[g] -= 1
    if it.pending[g] == 0 and _fire(p, it, k, t, q, c, now, g):
        _finished(q, c, now)
    return True


@numba.njit(cache=True)
def _finish(p: Program, it: Iteration, k: Links, t: Pool, q: Events, c: np.ndarray,
            now: float, link: int) -> bool:
    """``link``'s transfer sent its last byte: start the next, deliver this one."""
    tid = k.i[link, L_ACTIVE]
    _end(k, c, link)
    seconds = now - t.f[tid, T_START]
    c[C_TRANSFERS] += 1
    k.f[link, L_BYTES] += t.f[tid, T_NBYTES]
    k.f[link, L_BUSY] += seconds
    if c[C_OBSERVE]:
        o = c[C_OBS]
        q.obs_link[o] = link
        q.obs[o, O_BYTES], q.obs[o, O_SECS], q.obs[o, O_END] = t.f[tid, T_NBYTES], seconds, now
        q.obs[o, O_CAPPED] = t.i[tid, T_CAPPED]
        c[C_OBS] = o + 1
    root = k.i[link, L_QROOT]
    while root >= 0 and not t.i[root, T_QUEUED]:  # moved to an auxiliary path meanwhile
        stale = root
        root = heaps.pop(t.f, t.i, root)
        _release(t, c, stale)
    if root >= 0:
        k.i[link, L_QROOT] = heaps.pop(t.f, t.i, root)
        t.i[root, T_QUEUED] = 0
        k.i[link, L_QLEN] -= 1
        _begin(k, t, q, c, now, root)
    else:
        k.i[link, L_QROOT] = -1
        if not _move_to(p, k, t, q, c, now, link) and c[C_SHARED]:
            _mark(q, c, now)
    slot = t.i[tid, T_SLOT]
    _release(t, c, tid)
    if slot < 0:
        return True
    lat = k.f[link, L_LATENCY]
    if lat > 0:
        _push(q, c, now + lat, DELIVER, slot)
        return True
    return _deliver(p, it, k, t, q, c, now, slot)


# -- max-min fair rates over the transfers coupled to a change -------------------------------
@numba.njit(cache=True)
def _resolve(k: Links, t: Pool, c: np.ndarray, now: float, everything: bool) -> None:
    """Re-rate the transfers a change may affect (all of them after a capacity change)."""
    flows = coupled(k, c, everything)
    for link in flows:
        tid = k.i[link, L_ACTIVE]
        t.f[tid, T_REMAINING] -= t.f[tid, T_RATE] * (now - t.f[tid, T_SINCE])
        t.f[tid, T_SINCE] = now
    if not c[C_SHARED]:
        for link in flows:
            _set_rate(k, t, c, now, k.i[link, L_ACTIVE], k.f[link, L_RATE_CAP])
        return
    rates = maxmin(k, c, flows)
    for f in range(len(flows)):
        tid = k.i[flows[f], L_ACTIVE]
        if rates[f] != t.f[tid, T_RATE] or not t.i[tid, T_RATED]:
            _set_rate(k, t, c, now, tid, rates[f])


# -- entry points ------------------------------------------------------------------------------
@numba.njit(cache=True)
def run(f: FlatPrograms, it: Iteration, k: Links, t: Pool, q: Events, c: np.ndarray,
        clock: np.ndarray, until: float) -> int:
    """Process events in ``(time, eid)`` order until the iteration is done or the next
    event is at or after ``until``; returns :data:`DONE`, :data:`UNTIL`, ... ``clock[0]``
    is the time of the last event processed."""
    p = f.program
    obs_cap = len(q.obs_link)
    while True:
        if c[C_OBSERVE] and c[C_OBS] >= obs_cap:
            return OBS_FULL
        nf, ne = c[C_FINISHES], c[C_EVENTS]
        if nf == 0 and ne == 0:
            return IDLE
        first = k.fi[0, HEAP]
        use_finish = nf > 0 and (ne == 0 or k.ftime[first] < q.time[0] or (
            k.ftime[first] == q.time[0] and k.fi[first, FEID] < q.i[0, EID]))
        when = k.ftime[first] if use_finish else q.time[0]
        if when >= until:
            return UNTIL
        clock[0] = when
        if use_finish:
            _unfinish(k, c, first)
            if not _finish(p, it, k, t, q, c, when, first):
                return ERROR
            continue
        kind, arg = q.i[0, KIND], q.i[0, ARG]
        heaps.ev_pop(q.time, q.i, c[C_EVENTS])
        c[C_EVENTS] -= 1
        if kind == DELIVER:
            if not _deliver(p, it, k, t, q, c, when, arg):
                return ERROR
        elif kind == LOCAL:
            if _ready(p, it, k, t, q, c, when,
                      f.group_list[f.group_steps[arg]:f.group_steps[arg + 1]]):
                _finished(q, c, when)
        elif kind == FLUSH:
            c[C_DIRTY] = 0
            _resolve(k, t, c, when, False)
        else:
            return DONE


@numba.njit(cache=True)
def _ready(p: Program, it: Iteration, k: Links, t: Pool, q: Events, c: np.ndarray,
           now: float, group: np.ndarray) -> bool:
    """The local slices of the steps in ``group`` are ready; true if a site finished."""
    done = False
    for g in group:
        it.pending[g] -= 1
        if it.pending[g] == 0 and _fire(p, it, k, t, q, c, now, g):
            done = True
    return done


@numba.njit(cache=True)
def start_iteration(f: FlatPrograms, it: Iteration, k: Links, t: Pool, q: Events,
                    c: np.ndarray, clock: np.ndarray) -> None:
    """Start an iteration at ``clock[0]``, as the executor driver does: fire the steps
    that wait for nothing, and make the local slices ready (now, or as events)."""
    p = f.program
    now = clock[0]
    it.pending[:] = p.steps[:, WAITS]
    it.got[:] = False
    it.remaining[:] = f.mandatory
    c[C_LEFT] = np.sum(f.mandatory > 0)
    nothing = c[C_LEFT] == 0
    c[C_ENTRIES] = 0
    c[C_AUX_QUEUE], c[C_PRIMARY_BUSY] = f.rule[0], f.rule[1]
    k.i[:, L_MROOT] = -1  # no route-rule transfer outlives its iteration
    for g in f.initial:
        if _fire(p, it, k, t, q, c, now, g):
            _finished(q, c, now)
    for group in range(len(f.group_site)):
        delay = f.group_delay[group]
        if delay > 0:
            _push(q, c, now + delay, LOCAL, group)
        elif _ready(p, it, k, t, q, c, now,
                    f.group_list[f.group_steps[group]:f.group_steps[group + 1]]):
            _finished(q, c, now)
    if nothing:
        _push(q, c, now, FINISHED, 0)


@numba.njit(cache=True)
def probe(p: Program, k: Links, t: Pool, q: Events, c: np.ndarray, clock: np.ndarray,
          link: int, nbytes: float) -> None:
    """Send ``nbytes`` on ``link`` now, delivered nowhere (a bandwidth probe)."""
    _net_send(p, k, t, q, c, clock[0], link, nbytes, -1, 0.0, -1)


@numba.njit(cache=True)
def flush_all(k: Links, t: Pool, c: np.ndarray, clock: np.ndarray) -> None:
    """The capacities changed at ``clock[0]``: re-rate every active transfer now."""
    if c[C_ACTIVE] > 0:
        _resolve(k, t, c, clock[0], True)
