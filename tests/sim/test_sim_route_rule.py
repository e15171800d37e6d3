"""The simulator's send-time route rule (NetStorm's queue rule): a chunk waiting for a busy
primary moves to an auxiliary path's first hop when that link drains."""

from __future__ import annotations

import numpy as np
import simpy
from netstorm.sim.network import Network

from netstorm import NetworkView, QueueRule


def _run(rule: QueueRule) -> dict[str, tuple[str, float]]:
    """Five 1 KiB chunks A..E for link 0 -> 1 (1 KiB/s), each free to move to 0 -> 2;
    link 0 -> 2 is busy with a 2.5 KiB transfer until t = 2.5 s. Returns each chunk's
    link and arrival time."""
    cap = np.full((3, 3), 1024.0)
    np.fill_diagonal(cap, 0)
    env = simpy.Environment()
    net = Network(env, NetworkView(sites=("a", "b", "c"), capacity=cap))
    got: dict[str, tuple[str, float]] = {}

    def arrived(name: str, via: str) -> object:
        return lambda: got.__setitem__(name, (via, env.now))

    net.send(0, 2, 2560, None)
    for prio, name in enumerate("ABCDE"):
        net.send(0, 1, 1024, arrived(name, "primary"), name, float(prio),
                 (rule, [(2, arrived(name, "aux"))]))
    env.run()
    return got


def test_a_waiting_chunk_moves_to_a_drained_auxiliary_link() -> None:
    got = _run(QueueRule(aux_queue=1, primary_busy=1))
    # By hand: A, B, C leave over the primary at t = 0, 1, 2. At 2.5 the auxiliary link
    # drains while D and E wait (primary depth 3 > 1): D, the first in priority order,
    # moves and arrives at 3.5. At 3 the primary takes E; at 3.5 the auxiliary link drains
    # again but nothing waits.
    assert got == {"A": ("primary", 1.0), "B": ("primary", 2.0), "C": ("primary", 3.0),
                   "D": ("aux", 3.5), "E": ("primary", 4.0)}


def test_nothing_moves_while_the_primary_is_not_busy_enough() -> None:
    got = _run(QueueRule(aux_queue=1, primary_busy=4))
    assert {via for via, _ in got.values()} == {"primary"}
    assert [got[c][1] for c in "ABCDE"] == [1.0, 2.0, 3.0, 4.0, 5.0]
