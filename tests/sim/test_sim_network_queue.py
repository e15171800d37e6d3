"""The simulated link's queue discipline, by hand: one transfer at a time per link, the
queue served smallest priority first, ties first come first served, and each delivery at
(serial) bytes / capacity + latency.

Capacities, sizes and latencies are binary fractions, so the expected times are exact.
"""

from __future__ import annotations

import numpy as np
import simpy
from netstorm.sim.network import Network

from netstorm import NetworkView

CAP = 1024.0  # B/s on a -> b
LAT = 0.25  # s one way


def two_sites() -> NetworkView:
    return NetworkView(sites=("a", "b"), capacity=np.array([[0, CAP], [CAP / 2, 0]]),
                       latency=np.array([[0, LAT], [LAT, 0]]))


def run(sends: list[tuple[float, str, float, float]]) -> tuple[list[tuple[str, float]],
                                                               Network]:
    """Send ``(at, tag, nbytes, priority)`` on a -> b; return ``(tag, delivered at)`` in
    delivery order."""
    env = simpy.Environment()
    net = Network(env, two_sites(), record=True)
    delivered: list[tuple[str, float]] = []

    def send(tag: str, nbytes: float, priority: float) -> None:
        net.send(0, 1, nbytes, lambda: delivered.append((tag, env.now)), tag=tag,
                 priority=priority)

    for at, tag, nbytes, priority in sends:
        if at == 0:
            send(tag, nbytes, priority)
        else:
            event = env.timeout(at)
            event.callbacks.append(lambda _e, t=tag, b=nbytes, p=priority: send(t, b, p))
    env.run()
    return delivered, net


def expected(order: list[tuple[str, float]], start: float = 0.0) -> list[tuple[str, float]]:
    """Serial service from ``start``: each ends after its bytes / CAP, arrives LAT later."""
    out, t = [], start
    for tag, nbytes in order:
        t += nbytes / CAP
        out.append((tag, t + LAT))
    return out


def test_queue_is_served_by_priority_then_first_come() -> None:
    # A takes the link at t = 0; the rest queue behind it, all sent at t = 0
    sends = [(0, "A", 512, 5.0), (0, "B", 256, 2.0), (0, "C", 128, 1.0),
             (0, "D", 1024, 1.0), (0, "E", 64, 0.0), (0, "F", 256, 2.0), (0, "G", 32, 1.0)]
    delivered, net = run(sends)
    size = {tag: b for _, tag, b, _ in sends}
    # A first (it was idle when A came: no preemption by the lower priorities), then
    # priority 0 (E), priority 1 in arrival order (C, D, G), priority 2 (B, F)
    order = ["A", "E", "C", "D", "G", "B", "F"]
    assert delivered == expected([(t, size[t]) for t in order])
    # serial on the link: each starts when the previous one's last byte left
    starts = [(tag, start) for _, _, start, _, tag in net.log]
    ends = [t - LAT for _, t in delivered]
    assert starts == list(zip(order, [0.0, *ends[:-1]], strict=True))


def test_later_arrivals_queue_by_priority_and_ties_by_arrival_time() -> None:
    # A busy until 1.0; X and Y (priority 3) arrive at 0.25 and 0.5, Z (priority 3) at
    # 0.75 but W (priority 1) last, at 0.875: W overtakes them; X, Y, Z keep their order
    sends = [(0, "A", 1024, 0.0), (0.25, "X", 256, 3.0), (0.5, "Y", 512, 3.0),
             (0.75, "Z", 128, 3.0), (0.875, "W", 64, 1.0)]
    delivered, _ = run(sends)
    size = {tag: b for _, tag, b, _ in sends}
    assert delivered == expected([(t, size[t]) for t in ["A", "W", "X", "Y", "Z"]])


def test_an_idle_link_starts_at_once_whatever_the_priority() -> None:
    # A done (last byte out at 0.5) before B arrives at 1.0: B starts at 1.0, not queued
    delivered, _ = run([(0, "A", 512, 9.0), (1.0, "B", 256, 9.0), (1.0, "C", 256, 0.0)])
    assert delivered == [("A", 0.5 + LAT), ("B", 1.25 + LAT), ("C", 1.5 + LAT)]


def test_the_reverse_link_has_its_own_queue() -> None:
    env = simpy.Environment()
    net = Network(env, two_sites())
    delivered: list[tuple[str, float]] = []
    net.send(0, 1, 1024, lambda: delivered.append(("ab", env.now)))
    net.send(1, 0, 256, lambda: delivered.append(("ba", env.now)), priority=5.0)
    assert net.busy(0, 1) and net.busy(1, 0)
    env.run()
    # b -> a runs at CAP / 2 in parallel with a -> b: 256 / 512 + LAT
    assert sorted(delivered, key=lambda d: d[1]) == [("ba", 0.5 + LAT), ("ab", 1.0 + LAT)]
    assert not net.busy(0, 1) and not net.busy(1, 0)
