"""``netstorm measure``: time every ordered pair of sites and write a topology file.

Every rank runs :func:`measure` (torchrun-style environment, as for training). Sites
rendezvous as a run, then in ``N - 1`` rounds every site streams probes to one other site
(round r: site i to site ``(i + r) mod N``, so each site sends to one and receives from one at
a time). On a real network each link's rate is what its receiver timed: the probe bytes over
the span from the first probe's header to the last probe's end (a sender's write time
overstates it by what socket buffers and queues absorb: 1.5x-150x on kernel-shaped links);
when emulating, the emulated link's own clock at the sender. Round trips come from timing TCP
connects. All-reduces gather the matrices, so every rank returns the same view.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from netstorm.topology import load_topology
from netstorm.view import NetworkView

from . import wire
from .config import RuntimeConfig
from .sender import PROBE_BYTES
from .site import Site

__all__ = ["measure", "write_topology"]


def _placeholder(n: int) -> NetworkView:
    cap = np.ones((n, n)) - np.eye(n)  # any full mesh: ring plans only gather results here
    return NetworkView(sites=tuple(f"site{i}" for i in range(n)), capacity=cap,
                       name="measured")


def _rtt(address: tuple[str, int], tries: int = 3) -> float:
    best = np.inf
    for _ in range(tries):
        started = time.perf_counter()
        with socket.create_connection(address, timeout=10):
            best = min(best, time.perf_counter() - started)
    return float(best)


def measure(seconds: float = 3.0, *, emulate: NetworkView | None = None,
            **config: Any) -> NetworkView:
    """Measure every ordered pair of this run's sites; every rank returns the same view.

    Parameters
    ----------
    seconds
        Streaming time over all rounds (``seconds / (N - 1)`` per round).
    emulate
        Measure this topology as emulated in-process (a check of the method); default: the
        real network between the hosts (``NETSTORM_EMULATE`` should then be ``none``).
    config
        Environment overrides (see :class:`~netstorm.runtime.config.RuntimeConfig`).
    """
    if emulate is None:
        config.setdefault("emulate", "none")  # the real network, unshaped
    cfg = RuntimeConfig.from_env(**config)
    n = cfg.world_size
    base = _placeholder(n) if emulate is None else dataclasses.replace(
        emulate, workers=tuple(range(emulate.n)), _graph_cache={})
    site = Site(cfg, base, "ring", policy="static")
    try:
        me = site.rank
        rates = np.zeros((n, n), dtype=np.float32)
        sent = np.zeros((n, n), dtype=np.float32)
        rtts = np.zeros((n, n), dtype=np.float32)
        for peer in range(n):
            if peer != me and emulate is None:
                rtts[me, peer] = _rtt(site.sender.addresses[peer])
        per_round = seconds / max(1, n - 1)
        payload = memoryview(bytearray(PROBE_BYTES))
        for r in range(1, n):
            site.allreduce(np.zeros(1, dtype=np.float32))  # a barrier: rounds do not overlap
            peer = (me + r) % n
            if emulate is not None and emulate.capacity[me, peer] <= 0:
                continue
            link = site.sender.link(peer)
            link.take_measurement()
            header = wire.Header(kind=wire.Kind.PROBE, plan_version=0, seq=0, numel=0,
                                 shard=0, chunk=0, phase=0, src=me, dst=peer,
                                 length=PROBE_BYTES, checksum=0)
            deadline = time.monotonic() + per_round
            while time.monotonic() < deadline:
                if link.depth() < 4:
                    link.put(0.0, header, payload, None)
                else:
                    time.sleep(0.001)
            while link.depth():
                time.sleep(0.001)
            nbytes, busy = link.take_measurement()
            sent[me, peer] = nbytes
            rates[me, peer] = nbytes / (busy * cfg.time_scale) if busy > 0 else 0.0
        if emulate is None:  # a real network: the receivers time it (see the module notes)
            site.allreduce(sent)  # the mean; each entry came from one site
            sent *= n
            _receiver_rates(site, sent[:, me], rates, per_round)
        gathered = np.concatenate([rates.ravel(), rtts.ravel()])
        site.allreduce(gathered)  # the mean; each entry came from one site
        gathered *= n
    finally:
        site.close()
    capacity = gathered[:n * n].reshape(n, n).astype(float)
    rtt = gathered[n * n:].reshape(n, n).astype(float)
    latency = (rtt + rtt.T) / 4 if emulate is None else np.asarray(base.latency)
    return dataclasses.replace(base, capacity=capacity, latency=latency, confidence=None,
                               workers=base.workers if emulate is None else emulate.workers,
                               name="measured", _graph_cache={})


def _receiver_rates(site: Site, expected: np.ndarray, rates: np.ndarray,
                    per_round: float) -> None:
    """Replace the sender-timed rates of the links into this site by what it received: the
    probe bytes over the span from the first probe's header to the last probe's end, once
    every byte each sender wrote has been read (or what came within a round's time more)."""
    me = site.rank
    rates[me, :] = 0.0  # every entry comes from one site: the links' receivers own them now
    deadline = time.monotonic() + per_round + 5.0
    while time.monotonic() < deadline:
        got = site.probes_received()
        if all(got.get(src, (0.0, 0.0))[0] >= expected[src] for src in range(site.view.n)
               if src != me and expected[src] > 0):
            break
        time.sleep(0.01)
    for src, (nbytes, span) in site.probes_received().items():
        if span > 0 and expected[src] > 0:
            rates[src, me] = nbytes / span


def write_topology(view: NetworkView, path: str | Path) -> None:
    """Write ``view`` as a topology YAML file (DESIGN 5.1; Mbit/s and ms)."""
    sites = [{"name": name} | ({} if i in view.workers else {"worker": False})
             for i, name in enumerate(view.sites)]
    links = [{"src": view.sites[u], "dst": view.sites[v],
              "bandwidth": round(float(view.capacity[u, v]) * 8 / 1e6, 3),
              "latency": round(float(view.latency[u, v]) * 1e3, 3)} for u, v in view.links]
    doc = {"name": view.name, "units": {"bandwidth": "Mbit/s", "latency": "ms"},
           "sites": sites, "links": links}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    """``python -m netstorm.runtime.measure --out topo.yaml`` on every rank."""
    parser = argparse.ArgumentParser(prog="python -m netstorm.runtime.measure")
    parser.add_argument("--out", required=True, help="topology file to write (rank 0)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--emulate-topology", default=None,
                        help="measure this topology emulated in-process (a check)")
    args = parser.parse_args(argv)
    emulate = load_topology(args.emulate_topology) if args.emulate_topology else None
    view = measure(args.seconds, emulate=emulate)
    rank = RuntimeConfig.from_env().rank
    if rank == 0:
        write_topology(view, args.out)
        print(f"wrote {args.out}: {view.n} sites, {len(view.links)} links", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
