"""The built-in training of ``netstorm run``: an MLP on sklearn's digits, DDP over the WAN.

Run with no script, ``netstorm run`` starts this on every site::

    netstorm run -t netstorm9 -p treepack                       # DDP + the netstorm hook
    netstorm run -t netstorm9 -- python -m netstorm.runtime.train --comm backend --steps 200

``--comm`` picks how gradients travel: ``hook`` (DDP over gloo, buckets through the netstorm
comm hook), ``backend`` (``dist.init_process_group("netstorm")``, no hook) or ``gloo`` (plain
DDP: what a PyTorch user runs today). The first worker prints one line per evaluation and
every site logs one record per step (``NETSTORM_LOG``), which ``netstorm run`` summarises:
time per step, plan version, loss, test accuracy.

The data are offline (sklearn's 1,797 8x8 digits); every worker takes its own slice of each
step's global batch, so the global batch, and the result, do not depend on the number of
workers' order of arrival.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .elastic import ElasticSite
from .exits import exit_now, main_of

__all__ = ["Digits", "digits", "main", "make_model", "measure_compute", "train"]

#: The first worker prints a progress line at most every this many steps (and at the end).
PRINT_EVERY = 10


@dataclass(frozen=True)
class Digits:
    """sklearn's digits, standardised, split 80/20 with a fixed seed."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits(seed: int = 0, device: torch.device | str = "cpu") -> Digits:
    """Load the digits (offline: they ship with sklearn) onto ``device``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    xt = torch.tensor(x, dtype=torch.float32)[order]
    yt = torch.tensor(y, dtype=torch.int64)[order]
    cut = int(0.8 * len(yt))
    mean, std = xt[:cut].mean(0), xt[:cut].std(0) + 1e-3
    xt = (xt - mean) / std
    return Digits(*(t.to(device) for t in (xt[:cut], yt[:cut], xt[cut:], yt[cut:])))


def make_model(width: int = 1024, seed: int = 0) -> nn.Module:
    """A two-hidden-layer MLP, 64 -> width -> width -> 10 (``width`` 1024: 4.5 MB of
    float32 gradients, enough for the network, not per-message latency, to set the pace)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def _batch(data: Digits, step: int, batch: int, me: int, workers: int,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Worker ``me``'s slice of step ``step``'s global batch (epochs reshuffled by seed)."""
    n = len(data.y_train)
    per_epoch = max(1, n // (batch * workers))
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    at = (k * workers + me) * batch
    idx = order[at:at + batch].to(data.y_train.device)
    return data.x_train[idx], data.y_train[idx]


def accuracy(model: nn.Module, data: Digits) -> float:
    """Test accuracy, 0..1."""
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


def measure_compute(model: nn.Module, data: Digits, batch: int, steps: int = 7) -> float:
    """Median seconds of one forward and backward pass of ``model`` alone (no all-reduce):
    the compute time per step a simulation of the run charges."""
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for step in range(steps):
        x, y = _batch(data, step, batch, 0, 1, 0)
        t0 = time.perf_counter()
        loss_fn(model(x), y).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def warm_up(ddp: nn.Module, data: Digits, passes: int, batch: int) -> None:
    """``passes`` backward passes whose gradients are all-reduced and dropped: plans and
    DDP's buckets (rebuilt after its first pass, in the order gradients became ready)
    settle before anything is timed or applied."""
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(passes):
        x, y = _batch(data, 0, batch, 0, 1, 0)
        loss_fn(ddp(x), y).backward()
        ddp.zero_grad(set_to_none=False)


def train(ddp: nn.Module, data: Digits, *, steps: int, batch: int, lr: float = 0.05,
          me: int, workers: int, seed: int = 0, eval_every: int = 0, warmup: int = 0,
          on_step: Any = None, elastic: ElasticSite | None = None) -> list[dict[str, Any]]:
    """SGD with momentum on ``data`` for ``steps`` steps; one record per step.

    ``warmup`` untimed backward passes come first, their gradients all-reduced and dropped:
    the runtime plans each new bucket size when it first sees it (seconds for treepack on
    nine sites), and DDP rebuilds its buckets after its first pass, so without them the
    first steps would time one-off set-up rather than training.

    ``on_step(record)`` is called after every step (the record holds ``iteration``,
    ``time_s``, ``loss``, ``elapsed_s`` and, every ``eval_every`` steps and at the end,
    ``accuracy``).

    ``elastic``: this site's elastic runtime. Every step starts at its boundary
    (:meth:`~netstorm.runtime.elastic.ElasticSite.admit`), where sites may join; the state
    a newcomer receives is the parameters and the momentum buffers, and a newcomer starts
    at the workers' step.
    """
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    state = _State(list(ddp.parameters()), opt)
    warm_up(ddp, data, warmup, batch)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    step = 0
    while step < steps:
        if elastic is not None:
            step = state.admit(elastic, step)
        x, y = _batch(data, step, batch, me, workers, seed)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(ddp(x), y)
        loss.backward()  # DDP's all-reduces end inside backward
        opt.step()
        row: dict[str, Any] = {"iteration": step, "at": time.time(),
                               "time_s": time.perf_counter() - t0,
                               "loss": loss.item(), "elapsed_s": time.perf_counter() - start}
        last = step == steps - 1
        if last or (eval_every and (step + 1) % eval_every == 0):
            row["accuracy"] = accuracy(ddp, data)
        rows.append(row)
        if on_step is not None:
            on_step(row)
        step += 1
    return rows


class _State:
    """What a site joining mid-run needs: the parameters and SGD's momentum buffers, as one
    float32 vector (built only when a site joins)."""

    def __init__(self, params: list[torch.Tensor], opt: torch.optim.SGD) -> None:
        self.params = params
        self.opt = opt
        self.flat: torch.Tensor | None = None

    def _buffers(self) -> list[torch.Tensor]:
        # a zero buffer before the first step acts as none: momentum * 0 + gradient
        return [self.opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                for p in self.params]

    def pack(self) -> Any:
        tensors = [t.detach().reshape(-1) for t in self.params + self._buffers()]
        self.flat = torch.cat(tensors).cpu()
        return self.flat

    def admit(self, site: ElasticSite, step: int) -> int:
        """The boundary before ``step``: the step to run (a newcomer's: the workers')."""
        newcomer = site.newcomer
        step = site.admit(self.pack, step)
        if newcomer:  # the workers' state, unpacked in place
            assert self.flat is not None
            at = 0
            with torch.no_grad():
                for t in self.params + self._buffers():
                    t.copy_(self.flat[at:at + t.numel()].view_as(t))
                    at += t.numel()
        return step


def _setup(comm: str) -> tuple[Any, dist.ProcessGroup | None]:
    """Join the run for ``comm``: ``(the hook's state or None, the workers' group DDP runs
    on)``; several processes per site (``LOCAL_WORLD_SIZE``) make a :class:`SiteGroup`.
    Relay-only sites relay (or, under plain gloo, have nothing to do) and exit. A site that
    joins an elastic run under way (``NETSTORM_JOIN``) cannot join torch's group of the
    others: DDP runs on a group of its own (the hook does the all-reduces)."""
    if os.environ.get("NETSTORM_JOIN", "") not in ("", "0"):
        if comm != "hook":
            raise SystemExit("netstorm.runtime.train: a joining site needs --comm hook")
        from .start import init

        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return init(), None
    if comm == "backend":
        import netstorm.runtime.torch as nt

        dist.init_process_group(nt.BACKEND)  # its ranks count the workers only
        return dist.distributed_c10d._get_default_group().site, None  # type: ignore[attr-defined]
    from netstorm.topology import load_topology

    from .start import init

    dist.init_process_group("gloo")  # torch's store on MASTER_PORT
    if int(os.environ.get("LOCAL_WORLD_SIZE") or 1) > 1:  # several processes per site
        if comm == "gloo":
            return None, None
        from .site_group import join

        return join(), None
    from .torch import workers_group

    workers = load_topology(os.environ["NETSTORM_TOPOLOGY"]).workers
    group = workers_group()
    if comm == "gloo":
        if dist.get_rank() not in workers:
            raise SystemExit(0)
        return None, group
    return init(), group  # the runtime's coordinator on NETSTORM_COORD_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netstorm.runtime.train")
    parser.add_argument("--comm", choices=["hook", "backend", "gloo"], default="hook")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("NETSTORM_ITERATIONS",
                                                                       "60")))
    parser.add_argument("--batch", type=int, default=32, help="per worker")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed backward passes first (all-reduced, not applied)")
    parser.add_argument("--eval-every", type=int,
                        default=int(os.environ.get("NETSTORM_EVAL_EVERY", "10")))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (gradients staged "
                        "through pinned host memory by the hook)")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    parser.add_argument("--save", type=Path, default=None,
                        help="write the final parameters to DIR/RANK.pt")
    args = parser.parse_args(argv)
    # the model, the data and the compute time first: a site that joins a run under way
    # then starts its first step as soon as it has the workers' state (they are waiting)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))
                              % torch.cuda.device_count())
    model = make_model(args.width, args.seed).to(device)
    data = digits(args.seed, device)
    compute_s = measure_compute(make_model(args.width, args.seed).to(device), data,
                                args.batch)
    site, group = _setup(args.comm)
    workers = dist.get_world_size(group)
    me = dist.get_rank(group)
    elastic = site if isinstance(site, ElasticSite) else None
    if elastic is not None and elastic.newcomer:  # its batches: as the worker it always was
        from netstorm.topology import load_topology

        topology = load_topology(os.environ["NETSTORM_TOPOLOGY"])
        workers = len(topology.workers)
        me = topology.workers.index(int(os.environ["RANK"]))
    ddp = DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, process_group=group)
    if elastic is not None and elastic.newcomer:
        # the workers' buckets are rebuilt ones: warm up alone, before the hook (on its group
        # of one), so that its first all-reduce has their layout, not DDP's first guess
        warm_up(ddp, data, args.warmup, args.batch)
        args.warmup = 0
    if args.comm == "hook":
        from .torch import comm_hook

        ddp.register_comm_hook(site, comm_hook)
    log = open(os.environ["NETSTORM_LOG"], "a") if os.environ.get("NETSTORM_LOG") else None

    runtime = getattr(site, "site", site)  # a SiteGroup's leader holds the site
    leader = (int(os.environ.get("LOCAL_WORLD_SIZE") or 1) == 1
              or int(os.environ.get("LOCAL_RANK") or 0) == 0)

    def on_step(row: dict[str, Any]) -> None:
        if runtime is not None and runtime.plan is not None:
            row["plan_version"] = runtime.plan.version
        row.setdefault("plan_version", 0)
        if log is not None and leader:  # one record per site
            log.write(json.dumps({"site": os.environ.get("RANK"), **row}) + "\n")
            log.flush()
        every = max(PRINT_EVERY, args.eval_every)
        last = row["iteration"] + 1 == args.steps
        if me == 0 and "accuracy" in row and (last or (row["iteration"] + 1) % every == 0):
            print(f"step {row['iteration'] + 1}/{args.steps}: loss {row['loss']:.3f}, test "
                  f"accuracy {row['accuracy']:.3f}, {row['time_s'] * 1e3:.0f} ms/step, plan "
                  f"v{row['plan_version']}", flush=True)

    if log is not None and leader:  # what a simulation of this run needs: compute per step
        log.write(json.dumps({"site": os.environ.get("RANK"), "compute_s": compute_s,
                              "warmup": args.warmup}) + "\n")
    train(ddp, data, steps=args.steps, batch=args.batch, lr=args.lr, me=me, workers=workers,
          seed=args.seed, eval_every=args.eval_every, warmup=args.warmup, on_step=on_step,
          elastic=elastic)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                   args.save / f"{os.environ.get('RANK', me)}.pt")
    if args.comm == "hook" and site is not None:
        site.close()  # a Site or a SiteGroup
    dist.destroy_process_group()
    if log is not None:
        log.close()
    return 0


if __name__ == "__main__":
    exit_now(main_of(main))
