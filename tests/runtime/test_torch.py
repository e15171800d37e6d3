"""PyTorch on the runtime: the DDP comm hook and the ``"netstorm"`` backend against plain DDP
on gloo (the oracle), in real processes started by ``netstorm run``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from netstorm.runtime.torch import allreduce_tensor
from netstorm.runtime.train import make_model

from netstorm.builtin_topologies import builtin
from netstorm.errors import NetstormError
from tests.runtime.harness import run_sites

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).parent


def netstorm_run(topology: str, *script: str, options: tuple[str, ...] = (),
                 timeout: float = 200) -> str:
    done = subprocess.run([sys.executable, "-m", "netstorm", "run", "-t", topology,
                           "--emulate", "none", "--timeout", "60", *options, "--",
                           sys.executable, *script], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def trained(tmp: Path, comm: str, device: str = "cpu", sites: int = 4,
            per_site: int = 1) -> list[dict]:
    """Every process's parameters after 20 DDP steps (``per_site`` processes per site)."""
    out = tmp / f"{comm}-{per_site}"
    netstorm_run(f"random:{sites}:1", "-m", "netstorm.runtime.train", "--comm", comm,
                 "--steps", "20", "--width", "96", "--batch", "16", "--bucket-mb", "0.02",
                 "--eval-every", "0", "--device", device, "--save", str(out),
                 options=("--procs-per-site", str(per_site)))
    return [torch.load(out / f"{r}.pt") for r in range(sites * per_site)]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_ddp_on_the_hook_and_on_the_backend_equals_ddp_on_gloo(tmp_path: Path) -> None:
    # 20 steps of SGD with momentum, 4 sites, several buckets per step (bucket_cap 0.02 MB)
    gloo = trained(tmp_path, "gloo")
    initial = make_model(96, 0).state_dict()
    assert max_diff(gloo[0], initial) > 1e-2  # training moved the weights far past the tolerance
    for comm in ("hook", "backend"):
        ours = trained(tmp_path, comm)
        for rank in range(1, 4):  # every worker holds the root's bytes
            assert max_diff(ours[rank], ours[0]) == 0.0, (comm, rank)
        diff = max_diff(ours[0], gloo[0])
        print(f"{comm}: max |parameter - gloo's| = {diff:.2e}")
        assert diff < 1e-5, (comm, diff)


def test_two_processes_per_site_reduce_inside_the_site_and_equal_ddp_on_gloo(
        tmp_path: Path) -> None:
    # 2 sites x 2 processes: gloo inside each site, the leaders on the plan
    gloo = trained(tmp_path, "gloo", sites=4)  # plain DDP over the same 4 processes
    for comm in ("hook", "backend"):
        ours = trained(tmp_path, comm, sites=2, per_site=2)
        assert all(max_diff(p, ours[0]) == 0.0 for p in ours[1:]), comm
        diff = max_diff(ours[0], gloo[0])
        print(f"{comm}, 2 processes per site: max |parameter - gloo's| = {diff:.2e}")
        assert diff < 1e-5, (comm, diff)


def test_an_fp16_wire_trains_to_the_same_accuracy_as_fp32() -> None:
    accuracy = {}
    for wire in ("fp32", "fp16"):
        out = netstorm_run("random:3:1", "-m", "netstorm.runtime.train", "--steps", "60",
                           "--width", "128", "--eval-every", "60", options=("--wire", wire))
        line = next(x for x in out.splitlines() if "step 60/60" in x)
        accuracy[wire] = float(line.split("test accuracy ")[1].split(",")[0])
    print(accuracy)
    assert accuracy["fp32"] > 0.9  # it learned (chance is 0.1)
    assert abs(accuracy["fp16"] - accuracy["fp32"]) <= 0.01


def test_the_backend_does_what_ddp_needs_and_refuses_the_rest() -> None:
    out = netstorm_run("random:3:1", str(HERE / "pg_worker.py"))
    for rank in range(3):
        assert f"rank {rank}: collectives ok" in out
        assert f"rank {rank}: reduce_scatter not implemented: ok" in out


def test_started_by_hand_without_a_secret_none_goes_into_the_store() -> None:
    # torchrun's variables set by hand, one process per site, no NETSTORM_SECRET: the run
    # shares a fresh secret through a private file, and the store only holds its path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSTORM_SECRET")}
    env.update(NETSTORM_TOPOLOGY="random:2:1", NETSTORM_EMULATE="none", WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, str(HERE / "pg_worker.py")],
                              env=dict(env, RANK=str(r), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, out[-2000:]
        assert f"rank {rank}: no secret in the store: ok" in out


def test_across_hosts_the_backend_needs_a_given_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from netstorm.runtime.process_group import _secret

    monkeypatch.delenv("NETSTORM_SECRET", raising=False)
    monkeypatch.delenv("NETSTORM_SECRET_FILE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "192.0.2.1")  # TEST-NET: never contacted
    with pytest.raises(NetstormError, match=r"across hosts .* needs NETSTORM_SECRET"):
        _secret(None, 0)  # type: ignore[arg-type]  (refused before the store is used)


def test_a_forged_secret_file_in_the_store_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a stranger who reaches the store points the ranks at a secret file of theirs: it is
    # not this user's private file, so no rank uses it
    from netstorm.runtime.process_group import _secret

    forged = tmp_path / "forged-secret"
    forged.write_text("the stranger's secret")
    forged.chmod(0o644)
    store = torch.distributed.HashStore()
    store.set("netstorm/secret_file", str(forged))
    monkeypatch.delenv("NETSTORM_SECRET", raising=False)
    monkeypatch.delenv("NETSTORM_SECRET_FILE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(NetstormError, match="not a private file of this user"):
        _secret(store, 1)
    forged.chmod(0o600)
    assert _secret(store, 1) == forged  # the same file, private: accepted


def test_a_silent_peer_fails_the_hooks_future_instead_of_hanging() -> None:
    view = builtin("random:2:1")

    def body(site):  # type: ignore[no-untyped-def]
        if site.rank == 1:
            time.sleep(4)  # never joins the collective
            return None
        fut = allreduce_tensor(site, torch.ones(100))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"PeerError: .*not done after 2 s"):
            fut.wait()  # what DDP's reducer sees too: a failed future, not a value
        return time.monotonic() - started

    waited = run_sites(view, "ring", body, timeout_s=2.0)
    assert waited[0] < 5


def test_sum_scales_the_mean_and_leaves_every_worker_the_same_bytes() -> None:
    view = builtin("random:3:2")
    rng = np.random.default_rng(7)
    inputs = {w: rng.standard_normal(5000).astype(np.float32) for w in view.workers}

    def body(site):  # type: ignore[no-untyped-def]
        t = torch.from_numpy(inputs[site.rank].copy())
        allreduce_tensor(site, t, scale=float(len(view.workers))).wait()
        return t.numpy()

    got = run_sites(view, "treepack", body)
    want = np.sum([inputs[w] for w in view.workers], axis=0, dtype=np.float64)
    first = got[view.workers[0]]
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(first, g) for g in got.values())


def test_wrong_dtypes_are_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="float32"):
        allreduce_tensor(None, torch.ones(3, dtype=torch.float64))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="contiguous"):
        allreduce_tensor(None, torch.ones(4, 4).t())  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ddp_on_cuda_through_the_hook_equals_ddp_on_gloo(tmp_path: Path) -> None:
    gloo = trained(tmp_path, "gloo", "cuda", sites=2)
    ours = trained(tmp_path, "hook", "cuda", sites=2)
    assert max_diff(ours[1], ours[0]) == 0.0
    assert max_diff(ours[0], gloo[0]) < 1e-5


def test_the_site_layout_follows_torchruns_variables() -> None:
    from netstorm.runtime.site_group import layout


    where = layout({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (where.site, where.sites, where.ranks_of(2)) == (2, 4, [4, 5])
    alone = layout({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"})  # one per site
    assert (alone.site, alone.local_rank, alone.local_size) == (3, 0, 1)
    for bad in ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
                {"RANK": "1", "WORLD_SIZE": "7", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}):
        with pytest.raises(NetstormError, match="LOCAL_WORLD_SIZE processes per site"):
            layout(bad)


def test_a_relay_in_torchs_default_group_is_warned_about(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # DDP on the default group would wait for the relay forever: say so, unless the script
    # asked for the workers' group (then the default group is not DDP's)
    import logging

    import torch.distributed as dist
    from netstorm.runtime import start as site_module
    from netstorm.runtime import torch as nt

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        monkeypatch.setattr(nt, "workers_group_made", False)
        with caplog.at_level(logging.WARNING, logger="netstorm.runtime"):
            site_module._warn_if_torch_waits("r")
        assert "relay-only but in torch's default process group" in caplog.text
        caplog.clear()
        monkeypatch.setenv("NETSTORM_TOPOLOGY", "random:3:1")  # every site a worker
        assert nt.workers_group() is None and nt.workers_group_made
        with caplog.at_level(logging.WARNING, logger="netstorm.runtime"):
            site_module._warn_if_torch_waits("r")
        assert caplog.text == ""
    finally:
        dist.destroy_process_group()
