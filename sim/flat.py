"""Every site's program of one plan version, flattened into arrays for the compiled core.

:class:`FlatPrograms` holds what :mod:`netstorm.sim.core` needs to fire steps and send
messages without a Python object per step: steps, their sends and each send's candidate
hops as CSR arrays, and every awaited message as a global slot. It also holds the
iteration's local-gradient schedule (when each worker's slices are ready), which depends on
the job and on overlap, so one value serves every iteration of a plan version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from netstorm.executor import SiteProgram
from netstorm.job import Job
from netstorm.layout import bucket_bounds

from .interpreter import local_schedule

__all__ = ["ALT_HI", "ALT_LO", "LINK", "NBYTES", "OPTIONAL", "PRIORITY", "RULE", "SEND_HI",
           "SEND_LO", "SITE", "SLOT", "WAITS", "FlatPrograms", "Program", "flatten"]


#: int columns of :attr:`Program.steps`
SITE, WAITS, OPTIONAL, SEND_LO, SEND_HI = range(5)
#: float columns of :attr:`Program.values`
NBYTES, PRIORITY = range(2)
#: int columns of :attr:`Program.sends`
ALT_LO, ALT_HI, RULE = range(3)
#: int columns of :attr:`Program.alts`
LINK, SLOT = range(2)


class Program(NamedTuple):
    """The tables the core reads on every event (indices are global across sites).

    Attributes
    ----------
    steps
        ``int64[G, 5]``, per step: its site, how many events it waits for (messages, plus
        one for the local slice), whether it is an optional relay step, and the range
        ``[SEND_LO, SEND_HI)`` of its sends, in the order the executor returns them.
    values
        ``float64[G, 2]``, per step: the bytes it sends and its send-queue priority.
    sends
        ``int64[S, 3]``, per send: the range ``[ALT_LO, ALT_HI)`` of its candidate hops
        (primary first) and whether the plan's route rule picks among them.
    alts
        ``int64[A, 2]``, per candidate: its first link ``src * n + next_hop`` and the slot
        the message fills at ``next_hop``.
    slot_step
        ``int64[K]``, per slot (an awaited message at one site): the step awaiting it.
    """

    steps: np.ndarray
    values: np.ndarray
    sends: np.ndarray
    alts: np.ndarray
    slot_step: np.ndarray


class FlatPrograms(NamedTuple):
    """One plan version's programs as arrays: the :class:`Program` tables and what starts
    an iteration.

    Attributes
    ----------
    program
        The tables of steps, sends and slots.
    mandatory
        Per site: steps that must fire before the site is done (optional ones aside).
    initial
        Steps that wait for nothing, site by site (the executor's ``start``).
    group_site, group_delay, group_steps, group_list
        The local-slice schedule in the order the executor driver sets it up: group ``i``
        makes the slices of steps ``group_list[group_steps[i]:group_steps[i+1]]`` of site
        ``group_site[i]`` ready ``group_delay[i]`` seconds after the iteration starts.
    rule
        ``(aux_queue, primary_busy)`` of the plan's :class:`~netstorm.QueueRule`
        (``(0, 0)`` without one).
    """

    program: Program
    mandatory: np.ndarray
    initial: np.ndarray
    group_site: np.ndarray
    group_delay: np.ndarray
    group_steps: np.ndarray
    group_list: np.ndarray
    rule: np.ndarray

    @property
    def transfers(self) -> int:
        """Hop transfers one iteration starts at most (every send once)."""
        return len(self.program.sends)


def flatten(progs: Mapping[int, SiteProgram], n: int, job: Job, workers: Sequence[int], *,
            overlap: bool = False, backward_fraction: float = 2 / 3) -> FlatPrograms:
    """Flatten indexed programs (:func:`netstorm.executor.index_programs`) of ``n`` sites.

    ``workers``, ``overlap`` and ``backward_fraction`` give the local-slice schedule exactly
    as :func:`netstorm.sim.interpreter.run_iteration` sets it up.

    Notes
    -----
    Cost: one pass over every step, send and path in Python (about 1 µs per step).
    """
    step_base, slot_base = [0] * (n + 1), [0] * (n + 1)
    for s in range(n):
        p = progs.get(s)
        step_base[s + 1] = step_base[s] + (len(p.steps) if p else 0)
        slot_base[s + 1] = slot_base[s] + (len(p.slot_step) if p else 0)
    step_site: list[int] = []
    step_waits: list[int] = []
    step_optional: list[bool] = []
    step_nbytes: list[int] = []
    step_priority: list[float] = []
    step_sends = [0]
    send_alts = [0]
    send_rule: list[bool] = []
    alt_link: list[int] = []
    alt_slot: list[int] = []
    slot_step: list[int] = []
    mandatory = np.zeros(n, dtype=np.int64)
    initial: list[int] = []
    rule = (0, 0)
    for s in range(n):
        p = progs.get(s)
        if p is None:
            continue
        base = step_base[s]
        slot_step.extend(base + g for g in p.slot_step)
        step_waits.extend(p.waits)
        step_optional.extend(p.optional)
        mandatory[s] = p.mandatory
        initial.extend(base + g for g in p.initial)
        for step in p.steps:
            step_site.append(s)
            step_nbytes.append(step.ref.nbytes)
            step_priority.append(step.priority)
            for send in step.sends:
                for path in send.paths:
                    hop = path[1]
                    alt_link.append(s * n + hop)
                    alt_slot.append(slot_base[hop] + progs[hop].slot[send.message])
                send_alts.append(len(alt_link))
                live = send.rule is not None and len(send.paths) > 1
                send_rule.append(live)
                if live:
                    rule = (send.rule.aux_queue, send.rule.primary_busy)  # type: ignore[union-attr]
            step_sends.append(len(send_rule))
    group_site, group_delay, group_steps, group_list = _local_schedule(
        progs, step_base, job, workers, overlap, backward_fraction)

    steps = np.zeros((len(step_site), 5), dtype=np.int64)
    steps[:, SITE], steps[:, WAITS], steps[:, OPTIONAL] = step_site, step_waits, step_optional
    steps[:, SEND_LO], steps[:, SEND_HI] = step_sends[:-1], step_sends[1:]
    values = np.zeros((len(step_site), 2))
    values[:, NBYTES], values[:, PRIORITY] = step_nbytes, step_priority
    sends = np.zeros((len(send_rule), 3), dtype=np.int64)
    sends[:, ALT_LO], sends[:, ALT_HI], sends[:, RULE] = send_alts[:-1], send_alts[1:], send_rule
    alts = np.zeros((len(alt_link), 2), dtype=np.int64)
    alts[:, LINK], alts[:, SLOT] = alt_link, alt_slot
    program = Program(steps=steps, values=values, sends=sends, alts=alts,
                      slot_step=np.asarray(slot_step, dtype=np.int64))

    def ints(values: Sequence[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    return FlatPrograms(
        program=program, mandatory=mandatory, initial=ints(initial),
        group_site=ints(group_site), group_delay=np.asarray(group_delay, dtype=np.float64),
        group_steps=ints(group_steps), group_list=ints(group_list), rule=ints(rule))


def _local_schedule(progs: Mapping[int, SiteProgram], step_base: list[int], job: Job,
                    workers: Sequence[int], overlap: bool, backward_fraction: float
                    ) -> tuple[list[int], list[float], list[int], list[int]]:
    """When each worker's local slices are ready, in the executor driver's order."""
    sites: list[int] = []
    delays: list[float] = []
    ptr: list[int] = [0]
    steps: list[int] = []
    bounds = bucket_bounds(job) if overlap else [0]
    for site in workers:
        prog = progs.get(site)
        if prog is None:
            continue
        base = step_base[site]
        for delay, local in local_schedule(prog, job, job.compute_time(site), bounds,
                                           backward_fraction):
            sites.append(site)
            delays.append(delay)
            steps.extend(base + g for g in local)
            ptr.append(len(steps))
    return sites, delays, ptr, steps
