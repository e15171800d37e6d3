"""One rank of test_torch's backend test: every collective DDP needs, checked in place."""

from __future__ import annotations

import os

import netstorm.runtime.torch  # noqa: F401  (registers the backend)
import torch
import torch.distributed as dist
from netstorm.runtime.exits import exit_now


def main() -> int:
    dist.init_process_group("netstorm")
    me, n = dist.get_rank(), dist.get_world_size()
    want_sum = float(sum(range(1, n + 1)))
    t = torch.arange(1000, dtype=torch.float32) + (me + 1)
    dist.all_reduce(t)
    assert torch.allclose(t, torch.arange(1000) * n + want_sum), t[:4]
    t = torch.full((7,), float(me + 1))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    assert torch.allclose(t, torch.full((7,), want_sum / n)), t
    t = torch.tensor([me, 10 * me], dtype=torch.int64)  # not float32: through the store
    dist.all_reduce(t)
    assert t.tolist() == [n * (n - 1) // 2, 10 * n * (n - 1) // 2], t
    t = torch.full((3, 2), float(me))
    dist.broadcast(t, src=n - 1)
    assert (t == n - 1).all(), t
    big = torch.full((3_000_000,), float(me + 1))  # 12 MB: over the store's 8 MiB a value
    dist.broadcast(big, src=0)
    assert (big == 1).all()
    out = [torch.zeros(2, dtype=torch.float64) for _ in range(n)]
    dist.all_gather(out, torch.full((2,), me / 3, dtype=torch.float64))
    assert [o.tolist() for o in out] == [[r / 3, r / 3] for r in range(n)], out
    work = dist.all_reduce(torch.ones(5), async_op=True)
    work.wait()
    dist.barrier()
    for name, call in [("reduce_scatter", lambda: dist.reduce_scatter(
            torch.zeros(1), [torch.zeros(1)] * n)),
                       ("alltoall", lambda: dist.all_to_all([torch.zeros(1)] * n,
                                                            [torch.zeros(1)] * n))]:
        try:
            call()
        except NotImplementedError as exc:
            assert name in str(exc), exc
            print(f"rank {me}: {name} not implemented: ok", flush=True)
        else:
            raise AssertionError(f"{name} did not raise")
    try:
        dist.all_reduce(torch.ones(2), op=dist.ReduceOp.MAX)
    except NotImplementedError as exc:
        assert "MAX" in str(exc), exc
    else:
        raise AssertionError("MAX did not raise")
    if not os.environ.get("NETSTORM_SECRET"):  # a secret made for this run, on one host:
        group = dist.distributed_c10d._get_default_group()
        store = group._store  # our ProcessGroup is the group; its store holds only the path
        path = store.get("netstorm/secret_file").decode()
        assert not os.path.exists(path), f"{path} left behind"
        assert not store.check(["netstorm/secret"])
        print(f"rank {me}: no secret in the store: ok", flush=True)
    print(f"rank {me}: collectives ok", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_now(main())
