"""Send order: the slack terms against hand figures, and what a plan's order changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netstorm import Job, NetworkView, Plan, Shard
from netstorm.compiler import compile
from netstorm.send_order import slack_terms

MB = 1e6


def chain() -> tuple[NetworkView, Plan, Job]:
    # a - b - c at 10 MB/s and 10 ms each way; one shard rooted at a, down the chain
    cap = np.zeros((3, 3))
    cap[0, 1] = cap[1, 0] = cap[1, 2] = cap[2, 1] = 10 * MB
    view = NetworkView(sites=("a", "b", "c"), capacity=cap, latency=np.where(cap > 0, 0.01, 0))
    tree = {1: 0, 2: 1}
    plan = Plan(1, "hand", view.sites, (Shard(1.0, 0, tree, tree),), send_order="slack")
    return view, plan, Job(buckets=20_000_000, chunk_bytes=1_000_000)


def test_slack_terms_on_a_chain() -> None:
    view, plan, job = chain()
    span, tails = slack_terms(plan, view, job)
    hop = 1 * MB / (10 * MB) + 0.01  # one chunk over one link
    assert span == pytest.approx(2.0)  # 20 MB each way over every used link
    assert tails[(0, 2, "reduce")] == pytest.approx(4 * hop)  # c -> b -> a, then a -> b -> c
    assert tails[(0, 1, "reduce")] == pytest.approx(3 * hop)
    assert tails[(0, 0, "root")] == pytest.approx(2 * hop)
    assert tails[(0, 1, "broadcast")] == pytest.approx(hop)
    assert tails[(0, 2, "broadcast")] == pytest.approx(0.0)


def test_slack_priorities_are_progress_seconds_less_the_tail() -> None:
    view, plan, job = chain()
    programs = compile(plan, job, view.workers, view=view)
    hop = 0.11
    chunks = 20  # 20 MB in 1 MB chunks, progress in seconds of the 2 s span
    for site, kind, tail, offset in ((2, "reduce", 4 * hop, 0.5), (1, "reduce", 3 * hop, 0.5),
                                     (0, "root", 2 * hop, 1.0), (1, "broadcast", hop, 1.0)):
        steps = [s for s in programs[site].steps if s.kind == kind]
        assert [s.priority for s in steps] == pytest.approx(
            [(k + offset) / chunks * 2.0 - tail for k in range(chunks)])
    # the default order is the chunk's progress alone, and needs no view
    plain = compile(dataclasses.replace(plan, send_order="progress"), job, view.workers)
    assert [s.priority for s in plain[2].steps if s.kind == "reduce"] == pytest.approx(
        [(k + 0.5) / chunks for k in range(chunks)])


def test_slack_order_needs_the_view() -> None:
    view, plan, job = chain()
    with pytest.raises(ValueError, match="view"):
        compile(plan, job, view.workers)


def test_send_order_in_json_and_validation() -> None:
    _, plan, _ = chain()
    assert Plan.from_json(plan.to_json()) == plan
    plain = dataclasses.replace(plan, send_order="progress")
    assert "send_order" not in plain.to_dict()  # the default is left out: old plans load
    assert Plan.from_dict(plain.to_dict()).send_order == "progress"
    with pytest.raises(ValueError, match="send_order"):
        dataclasses.replace(plan, send_order="fifo")
