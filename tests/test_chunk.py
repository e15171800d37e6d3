"""A plan's own pipelining chunk: JSON, validation, and every consumer honouring it."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import netstorm
from netstorm import Job, Plan, Shard, compile, plan, predict
from netstorm.builtin_topologies import builtin
from netstorm.cli import main
from netstorm.cli.bench.planner import redraw
from netstorm.layout import chunk_layout, shard_elements

RESNET50 = Job.from_model("resnet50")


def _hand_plan(**kw: object) -> Plan:
    shards = (Shard(0.75, 0, {1: 0, 2: 1}, {1: 0, 2: 1}), Shard(0.25, 2, {0: 2, 1: 2},
                                                                 {0: 2, 1: 2}))
    return Plan(version=2, planner="hand", sites=("a", "b", "c"), shards=shards,
                **kw)  # type: ignore[arg-type]


# --- Plan: field, validation, JSON -------------------------------------------------------


def test_json_round_trip_with_and_without_chunk() -> None:
    for chunk in (None, 500_000):
        p = _hand_plan(chunk_bytes=chunk, predicted_time_s=1.5)
        text = p.to_json()
        back = Plan.from_json(text)
        assert back == p and back.chunk_bytes == chunk and back.to_json() == text
        assert ("chunk_bytes" in json.loads(text)) is (chunk is not None)
    assert json.loads(_hand_plan(chunk_bytes=500_000).to_json())["chunk_bytes"] == 500_000


@pytest.mark.parametrize("bad", [0, -4, 1.5, "4MB", True, math.nan, math.inf])
def test_invalid_chunk_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="chunk_bytes") as err:
        _hand_plan(chunk_bytes=bad)
    assert "\n" not in str(err.value)


def test_whole_floats_and_numpy_ints_are_accepted() -> None:
    assert _hand_plan(chunk_bytes=2048.0).chunk_bytes == 2048
    assert type(_hand_plan(chunk_bytes=np.int64(2048)).chunk_bytes) is int


def test_job_for() -> None:
    job = Job(buckets=4000, element_size=4, chunk_bytes=400)
    assert _hand_plan().job_for(job) is job
    assert _hand_plan(chunk_bytes=400).job_for(job) is job
    assert _hand_plan(chunk_bytes=1001).job_for(job) == Job(4000, 4, 1000)  # rounded down
    assert _hand_plan(chunk_bytes=3).job_for(job).chunk_bytes == 4  # at least one element
    fp16 = Job(buckets=4000, element_size=2, chunk_bytes=400)
    assert _hand_plan(chunk_bytes=1001).job_for(fp16).chunk_bytes == 1000


# --- consumers: cost model, compiler, simulator ------------------------------------------


@pytest.mark.parametrize("planner", ["netstorm", "ring", "treepack"])
def test_predict_uses_the_plans_chunk(planner: str) -> None:
    view = builtin("netstorm9")
    job = Job(buckets=40_000_000, chunk_bytes=4_000_000)
    base = replace(plan(view, job, planner, chunk_bytes=None) if planner == "treepack"
                   else plan(view, job, planner), predicted_time_s=None)
    assert base.chunk_bytes is None
    oracle = Job(buckets=40_000_000, chunk_bytes=500_000)  # built by hand, not by job_for
    got = predict(replace(base, chunk_bytes=500_000), view, job)
    want = predict(base, view, oracle)
    assert got.time_s == want.time_s and got.fill_s == want.fill_s
    np.testing.assert_array_equal(got.link_bytes, want.link_bytes)
    assert got.time_s < predict(base, view, job).time_s  # the chunk made a difference
    loads = netstorm.link_loads(replace(base, chunk_bytes=500_000), view, job, chunked=True)
    np.testing.assert_array_equal(loads[0], netstorm.link_loads(base, view, oracle,
                                                                chunked=True)[0])


@pytest.mark.parametrize("by_bucket", [False, True])
def test_compile_and_chunk_layout_cut_the_plans_chunk(by_bucket: bool) -> None:
    job = Job(buckets=(4 * 1000, 4 * 2000), element_size=4, chunk_bytes=4 * 1000)
    p = _hand_plan(chunk_bytes=4 * 300)
    layout = chunk_layout(p, job, by_bucket=by_bucket)
    if by_bucket:  # each shard's piece of each bucket is cut separately
        want = [sum(math.ceil(round(f * b) / 300) for b in (1000, 2000)) for f in (0.75, 0.25)]
    else:
        want = [math.ceil(elems / 300) for _, elems in shard_elements(p, job)]
    assert [len(chunks) for chunks in layout] == want
    assert max(elems for chunks in layout for _, elems in chunks) == 300
    programs = compile(p, job, (0, 1, 2), by_bucket=by_bucket)
    for s_idx, shard in enumerate(p.shards):
        roots = [st for st in programs[shard.root].steps
                 if st.kind == "root" and st.ref.shard == s_idx]
        assert len(roots) == want[s_idx]
        assert max(st.ref.nbytes for st in roots) == 4 * 300
    without = compile(replace(p, chunk_bytes=None), job, (0, 1, 2), by_bucket=by_bucket)
    assert sum(len(pr.steps) for pr in without.values()) < \
        sum(len(pr.steps) for pr in programs.values())


def test_simulator_runs_the_plans_chunk_and_keeps_the_exact_mean() -> None:
    from netstorm.sim import allreduce

    view = builtin("netstorm9")
    job = Job(buckets=4 * 3000, chunk_bytes=4096)
    p = replace(plan(view, job, "ring"), chunk_bytes=1024)
    rng = np.random.default_rng(3)
    grads = {w: rng.integers(-1000, 1000, 3000).astype(np.float32) for w in view.workers}
    _, out = allreduce(p, view, job, payload=grads)
    total = np.sum([grads[w].astype(np.float64) for w in view.workers], axis=0)
    want = total.astype(np.float32) * np.float32(1 / len(view.workers))
    for w in view.workers:
        np.testing.assert_array_equal(out[w], want)


def test_simulated_time_drops_with_the_chosen_chunk_on_netstorm9() -> None:
    from netstorm.sim import allreduce

    view = builtin("netstorm9")
    p = plan(view, RESNET50, "treepack")
    assert p.chunk_bytes is not None and p.chunk_bytes < RESNET50.chunk_bytes
    small, _ = allreduce(p, view, RESNET50)
    large, _ = allreduce(replace(p, chunk_bytes=None), view, RESNET50)  # the job's 4 MB
    assert small < 0.95 * large
    assert small == pytest.approx(p.predicted_time_s, rel=0.05)


# --- treepack's option --------------------------------------------------------------------


def _hand_candidates(job: Job, floor: int = 131_072) -> list[int]:
    out = [job.chunk_bytes]
    for k in (1, 2, 3, 4):
        c = job.chunk_bytes // 2**k // job.element_size * job.element_size
        if c >= max(floor, job.element_size):
            out.append(c)
    return out


@pytest.mark.parametrize("view", [builtin("netstorm9"),
                                  redraw(builtin("netstorm9"), 2)])
def test_treepack_auto_picks_the_largest_chunk_within_one_percent(view: object) -> None:
    p = plan(view, RESNET50, "treepack")  # type: ignore[arg-type]
    candidates = _hand_candidates(RESNET50)
    assert candidates == [4_000_000, 2_000_000, 1_000_000, 500_000, 250_000]
    assert p.chunk_bytes in candidates
    times = {c: predict(replace(p, chunk_bytes=c), view, RESNET50).time_s  # type: ignore
             for c in candidates}
    best = min(times.values())
    assert p.predicted_time_s == times[p.chunk_bytes]
    assert p.predicted_time_s <= 1.01 * best
    assert all(times[c] > 1.01 * best for c in candidates if c > p.chunk_bytes)


def test_treepack_forced_and_kept_chunks() -> None:
    view = builtin("netstorm9")
    job = Job(buckets=40_000_000, chunk_bytes=4_000_000)
    assert plan(view, job, "treepack", chunk_bytes=1_000_000).chunk_bytes == 1_000_000
    assert plan(view, job, "treepack", chunk_bytes=1_000_003).chunk_bytes == 1_000_000
    kept = plan(view, job, "treepack", chunk_bytes=None)
    assert kept.chunk_bytes is None
    assert kept.predicted_time_s == predict(kept, view, job).time_s
    with pytest.raises(ValueError, match="chunk_bytes"):
        plan(view, job, "treepack", chunk_bytes="big")
    with pytest.raises(ValueError, match="chunk_bytes"):
        plan(view, job, "treepack", chunk_bytes=0)
    with pytest.raises(ValueError, match="min_chunk_bytes"):
        plan(view, job, "treepack", min_chunk_bytes=-1)


def test_chunk_candidates_floor() -> None:
    from netstorm.chunking import chunk_candidates

    assert chunk_candidates(RESNET50) == _hand_candidates(RESNET50)
    assert chunk_candidates(RESNET50, 1) == [4_000_000, 2_000_000, 1_000_000, 500_000,
                                             250_000]
    small = Job(buckets=4000, chunk_bytes=100_000)
    assert chunk_candidates(small) == [100_000]  # the job's own chunk, though below the floor
    odd = Job(buckets=4000, chunk_bytes=4_000_002)
    assert chunk_candidates(odd, 1) == [4_000_000, 2_000_000, 1_000_000, 500_000, 250_000]
    tiny = Job(buckets=8, element_size=8, chunk_bytes=8)
    assert chunk_candidates(tiny, 1) == [8]


# --- the CLI shows it ---------------------------------------------------------------------


def test_cli_plan_prints_the_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-t", "netstorm9", "-m", "resnet50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["chunk_bytes"] in _hand_candidates(RESNET50)
    assert Plan.from_dict(doc).chunk_bytes == doc["chunk_bytes"]
    assert main(["plan", "-t", "netstorm9", "-m", "resnet50"]) == 0
    assert f"chunk {doc['chunk_bytes'] / 1e6:.3g} MB" in capsys.readouterr().out
    assert main(["plan", "-t", "netstorm9", "-m", "resnet50", "-p", "ring", "--json"]) == 0
    assert "chunk_bytes" not in json.loads(capsys.readouterr().out)


def test_cli_sim_reports_the_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "-t", "netstorm9", "-m", "resnet18", "-p", "ring,treepack", "-n", "1",
                 "--json", "--no-progress"]) == 0
    ring, tree = json.loads(capsys.readouterr().out)["results"]
    assert ring["chunk_bytes"] == 4_000_000
    assert tree["chunk_bytes"] in _hand_candidates(Job.from_model("resnet18"))
