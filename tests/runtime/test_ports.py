"""Ports handed to sites that listen later: free, distinct, and not where the kernel picks
the local ports of outgoing connections."""

from __future__ import annotations

import socket

from netstorm.runtime.ports import _candidates, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    pool = _candidates()
    assert all(p in pool for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # the kernel's own pick: never one of ours
        assert s.getsockname()[1] not in pool
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_taken_port_is_not_handed_out(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr("netstorm.runtime.ports._candidates", lambda: range(taken, taken + 1))
        # the only candidate is taken: the kernel's pick stands in
        (port,) = free_ports(1)
        assert port != taken
