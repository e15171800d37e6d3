"""The coordinator's decisions (:class:`~netstorm.runtime.control.Coordination`) driven
message by message on an injected clock: no sockets, no threads, no sleeps. Each test says
what happened and checks the actions that come back."""

from __future__ import annotations

from typing import Any

import pytest
from netstorm.runtime.control import (
    TABLE_LEAD_S,
    AdmitWaiting,
    Broadcast,
    CloseListener,
    Coordination,
    Finish,
    Refuse,
    Send,
    fingerprint,
)
from netstorm.runtime.deadlines import ELASTIC_GRACE_S, HEARTBEAT_S, silence_limit
from netstorm.runtime.messages import (
    Abort,
    Beat,
    Bye,
    Data,
    Error,
    Grow,
    Horizon,
    Join,
    Lost,
    Ready,
    Report,
    Shutdown,
    State,
    Table,
)

from netstorm.awareness import policy_named
from netstorm.builtin_topologies import builtin
from netstorm.errors import ProtocolError
from netstorm.registry import planner_info
from netstorm.view import NetworkView

TIMEOUT = 10.0
NUMEL = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def machine(view: NetworkView | None = None, *, elastic: bool = False,
            policy: str = "static", reporters: Any = None
            ) -> tuple[Coordination, Clock, NetworkView]:
    view = view or builtin("random:3:1")
    clock = Clock()
    decide = Coordination(view, fingerprint(view, "fp32"),
                          planner_info("ring").planner_call(fresh_state=True),
                          policy_named(policy), window=2, timeout_s=TIMEOUT, clock=clock,
                          wall=lambda: 5000.0, elastic=elastic, reporters=reporters)
    return decide, clock, view


def join_msg(view: NetworkView, rank: int, **change: Any) -> Join:
    fields: dict[str, Any] = {"address": ("127.0.0.1", 7000 + rank),
                              "fingerprint": fingerprint(view, "fp32"), "wire": "fp32",
                              "world_size": view.n, "name": view.name}
    fields.update(change)
    return Join(**fields)


def started(**kw: Any) -> tuple[Coordination, Clock, NetworkView]:
    decide, clock, view = machine(**kw)
    for rank in range(view.n):
        decide.join(rank, join_msg(view, rank))
    return decide, clock, view


def broadcasts(actions: list[Any]) -> list[Any]:
    return [a.msg for a in actions if isinstance(a, Broadcast)]


def test_the_table_goes_out_once_every_site_joined_in_any_order() -> None:
    decide, _, view = machine()
    assert decide.join(2, join_msg(view, 2)) == []
    assert decide.join(0, join_msg(view, 0)) == []
    [out] = decide.join(1, join_msg(view, 1))
    assert isinstance(out, Broadcast) and out.ranks == (1, 2, 0)  # rank 0, this process, last
    assert out.msg == Table(tuple(("127.0.0.1", 7000 + r) for r in range(3)),
                            5000.0 + TABLE_LEAD_S, 2)
    assert decide.started


@pytest.mark.parametrize(("change", "rank", "words"), [
    ({"fingerprint": "other/fp32"}, 1, "different topology or wire encoding"),
    ({"world_size": 4}, 1, "has WORLD_SIZE 4, rank 0 3"),
    ({}, 0, "rank 0 joined twice"),
    ({}, 7, "rank 7 is not a site"),
])
def test_a_site_that_disagrees_is_refused_and_the_run_aborted(
        change: dict[str, Any], rank: int, words: str) -> None:
    decide, _, view = machine()
    decide.join(0, join_msg(view, 0))
    refused, abort = decide.join(rank, join_msg(view, rank, **change))
    assert isinstance(refused, Refuse) and words in refused.reason
    assert isinstance(abort, Broadcast) and abort.ranks == (0,)
    assert isinstance(abort.msg, Abort) and words in abort.msg.reason
    assert not decide.started


def test_the_horizon_moves_once_every_reporter_reported() -> None:
    decide, _, _ = started()
    assert decide.receive(0, Report(0, NUMEL)) == []
    assert decide.receive(0, Report(0, NUMEL)) == []  # a duplicate counts once
    assert decide.receive(2, Report(0, NUMEL)) == []
    [horizon] = broadcasts(decide.receive(1, Report(0, NUMEL)))
    assert horizon == Horizon(done=0, horizon=3)
    assert decide.receive(1, Report(0, NUMEL)) == []  # late: that collective is finished


def test_collectives_finishing_out_of_order_never_move_the_horizon_back() -> None:
    decide, _, _ = started()
    for rank in range(3):
        out = decide.receive(rank, Report(1, NUMEL))
    assert broadcasts(out) == [Horizon(done=1, horizon=4)]
    for rank in range(3):
        out = decide.receive(rank, Report(0, NUMEL))
    assert broadcasts(out) == [Horizon(done=0, horizon=4)]


def test_only_the_sites_that_take_part_must_report() -> None:
    decide, _, _ = started(reporters=lambda seq, numel: frozenset({0, 2}))
    assert decide.receive(0, Report(0, NUMEL)) == []
    assert broadcasts(decide.receive(2, Report(0, NUMEL))) == [Horizon(0, 3)]
    assert decide.receive(1, Report(0, NUMEL)) == []  # a relay on no path: ignored


def test_a_policy_that_switches_every_time_announces_the_switch() -> None:
    decide, clock, _ = started(policy="every-iteration")
    seen = []
    for seq in range(2):
        clock.now += 1.0
        for rank in range(3):
            out = decide.receive(rank, Report(seq, NUMEL, links=((0, 1, 1e6, 0.01),)))
        [horizon] = broadcasts(out)
        seen.append(horizon)
    first, second = (h.switch for h in seen)
    assert first is not None and second is not None
    assert (first.version, first.after_seq, first.from_seq) == (2, 0, 2)  # not yet released
    assert (second.version, second.after_seq, second.from_seq) == (3, 1, 3)
    assert [h.horizon for h in seen] == [3, 4] and len(first.capacity) == 3
    assert first.capacity[0][1] == pytest.approx(1e6 / 0.01)  # the link as timed


def test_heartbeats_go_out_and_a_silent_site_ends_the_run_naming_it() -> None:
    decide, clock, _ = started()
    assert decide.deadline() == clock.now + HEARTBEAT_S
    clock.now += HEARTBEAT_S
    assert broadcasts(decide.tick()) == [Beat()]
    assert decide.tick() == []  # not due yet
    clock.now += silence_limit(TIMEOUT) - HEARTBEAT_S / 2
    decide.receive(0, Beat())
    decide.receive(2, Beat())
    clock.now += HEARTBEAT_S
    [abort] = broadcasts(decide.tick())
    assert isinstance(abort, Abort)
    assert abort.reason.startswith("site r1 (rank 1) sent nothing for 6.5 s")


def test_a_silent_site_leaves_an_elastic_run_and_this_membership_ends() -> None:
    decide, clock, _ = started(elastic=True)
    clock.now += silence_limit(TIMEOUT) + HEARTBEAT_S
    decide.receive(0, Beat())
    decide.receive(1, Beat())
    close, lost, finish = decide.tick()
    assert isinstance(close, CloseListener) and isinstance(finish, Finish)
    assert isinstance(lost, Broadcast) and lost.ranks == (1, 0)  # the lost site is not told
    assert isinstance(lost.msg, Lost) and lost.msg.ranks == (2,)
    assert decide.over and decide.tick() == [] and decide.receive(0, Report(0, NUMEL)) == []


def test_a_closed_connection_aborts_or_loses_the_site() -> None:
    decide, _, _ = started()
    [abort] = broadcasts(decide.closed(1, "closed its control connection"))
    assert abort == Abort("site r1 (rank 1) closed its control connection")
    elastic, _, _ = started(elastic=True)
    out = elastic.closed(1, "closed its control connection")
    assert [type(a) for a in out] == [CloseListener, Broadcast, Finish]
    assert elastic.closed(2, "closed its control connection") == []  # one loss at a time


def test_an_error_report_aborts_at_once_or_after_the_grace_unless_a_loss_explains_it() -> None:
    decide, _, _ = started()
    [abort] = broadcasts(decide.receive(1, Error("peer gone")))
    assert abort == Abort("site r1 (rank 1): peer gone")
    elastic, clock, _ = started(elastic=True)
    assert elastic.receive(1, Error("peer gone")) == []
    assert elastic.deadline() == clock.now + min(HEARTBEAT_S, ELASTIC_GRACE_S)
    clock.now += ELASTIC_GRACE_S
    [abort] = broadcasts(elastic.tick())
    assert abort == Abort("site r1 (rank 1): peer gone")
    explained, clock, _ = started(elastic=True)
    explained.receive(1, Error("peer r2 gone"))
    explained.closed(2, "closed its control connection")  # the loss comes within the grace
    clock.now += ELASTIC_GRACE_S
    assert explained.tick() == []


def test_the_membership_grows_once_every_worker_is_ready() -> None:
    view = builtin("random:4:1")
    import dataclasses

    view = dataclasses.replace(view, workers=(0, 1, 2), _graph_cache={})  # 3 is a relay
    decide, _, _ = machine(view, elastic=True)
    for rank in range(4):
        decide.join(rank, join_msg(view, rank))
    decide.entering = (4,)
    for rank in range(4):
        out = decide.receive(rank, Report(0, NUMEL))
    assert broadcasts(out) == [Horizon(0, 3, entering=(4,))]
    assert decide.receive(0, Ready(5)) == []
    assert decide.receive(3, Ready(5)) == []  # a relay's word does not count
    assert decide.receive(1, Ready(5)) == []
    close, admit = decide.receive(2, Ready(5))
    assert isinstance(close, CloseListener) and isinstance(admit, AdmitWaiting)
    grow, finish = decide.admitted([0, 1, 2, 3, 4], [4])
    assert isinstance(grow, Broadcast) and grow.msg == Grow((0, 1, 2, 3, 4), (4,))
    assert isinstance(finish, Finish)
    assert decide.receive(0, Report(1, NUMEL)) == [] and decide.closed(1, "gone") == []


def test_the_run_shuts_down_once_every_worker_said_bye() -> None:
    decide, _, _ = started()
    assert decide.receive(0, Bye()) == [] and decide.receive(1, Bye()) == []
    assert broadcasts(decide.receive(2, Bye())) == [Shutdown()]
    assert decide.receive(2, Bye()) == []  # once
    assert decide.closed(0, "closed its control connection") == []  # expected now


def test_a_newcomers_state_goes_to_it_alone() -> None:
    decide, _, _ = started(elastic=True)
    part = State((2,), 5, 10, 0, 0, 1, 0, "")
    assert decide.receive(0, part) == [Send(2, part)]


def test_a_message_no_site_sends_the_coordinator_is_a_protocol_error() -> None:
    decide, _, view = started()
    for msg in (Data(), Table((), 0.0, 1), join_msg(view, 1)):
        with pytest.raises(ProtocolError, match=r"site r1 \(rank 1\) sent the coordinator"):
            decide.receive(1, msg)
