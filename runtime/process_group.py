"""The ``"netstorm"`` torch.distributed backend: a Python process group over the runtime.

``import netstorm.runtime.torch`` registers it; then ``dist.init_process_group("netstorm")``
joins the run (topology from ``NETSTORM_TOPOLOGY``, planner from ``NETSTORM_PLANNER``, as
``netstorm run`` sets them) and DDP runs on it without a hook.

What goes where:

- ``all_reduce`` of float32 tensors, SUM or AVG: the runtime, on the run's plan (the only
  traffic that is large and frequent: DDP's gradient buckets).
- ``broadcast``, ``all_gather``, ``barrier`` and all-reduces of other dtypes: through the
  process group's store (torch's TCPStore on ``MASTER_ADDR``). DDP uses them at start-up and
  when it rebuilds its buckets: small or one-off, where a round trip to the store is
  cheaper than a plan.
- Every other collective raises :class:`NotImplementedError` naming it.

The pattern is torch's own Python process groups (``ProcessLocalGroup``; torchft's): a
``dist.ProcessGroup`` subclass whose collectives return ``Work`` made from futures.
Relay-only sites relay inside ``init_process_group`` and exit; the group's ranks and size
count the workers only, so DDP's averages are over the workers.
"""

from __future__ import annotations

import datetime
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import (  # type: ignore[attr-defined]
    AllgatherOptions,
    AllreduceOptions,
    BarrierOptions,
    BroadcastOptions,
    ReduceOp,
    _create_work_from_future,
)

from netstorm.errors import NetstormError
from netstorm.topology import load_topology

from .config import RuntimeConfig, _loopback
from .ports import free_ports
from .site import Site
from .site_group import SiteGroup, check_all_workers, layout
from .tensors import allreduce_tensor

__all__ = ["BACKEND", "ProcessGroupNetstorm", "register"]

BACKEND = "netstorm"
#: Bytes per value in torch's store (its libuv server refuses values over 8 MiB).
STORE_PIECE = 4 << 20
SUPPORTED = "all_reduce (SUM, AVG), broadcast, all_gather, barrier"


def _done(value: Any) -> dist.Work:
    fut: torch.futures.Future[Any] = torch.futures.Future()
    fut.set_result(value)
    return _create_work_from_future(fut)


def _unsupported(name: str) -> Callable[..., Any]:
    def method(self: ProcessGroupNetstorm, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"the netstorm backend does not implement {name} "
                                  f"(it has {SUPPORTED}); use a gloo group for it")
    method.__name__ = name
    return method


def _to_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()


def _from_bytes(data: bytes, like: torch.Tensor) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(like.dtype).view(like.shape)


class ProcessGroupNetstorm(dist.ProcessGroup):
    """A process group whose all-reduces run on netstorm's plans (see the module docstring).

    Parameters
    ----------
    store
        The group's store (from ``init_process_group``).
    site
        This process's site (a worker).
    """

    def __init__(self, store: dist.Store, site: Site | None,
                 group: SiteGroup | None = None) -> None:
        if group is not None:  # several processes per site: every process is a rank
            me, world = group.layout.rank, group.layout.world_size
        else:
            assert site is not None
            me, world = site.view.workers.index(site.rank), len(site.view.workers)
        super().__init__(me, world)  # type: ignore[call-arg]
        self.site = site
        self.group = group
        self._me, self._world = me, world
        self._store = store
        self._ops = 0  # collectives through the store, counted alike on every rank

    def getBackendName(self) -> str:
        return BACKEND

    # -- the runtime ------------------------------------------------------------------------
    def allreduce(self, tensors: Sequence[torch.Tensor],  # type: ignore[override]
                  opts: AllreduceOptions | ReduceOp | None = None) -> dist.Work:
        given = opts if opts is not None else AllreduceOptions()
        op = (given if isinstance(given, ReduceOp) else given.reduceOp).op  # type: ignore[attr-defined]
        if op not in (ReduceOp.SUM, ReduceOp.AVG):
            raise NotImplementedError(f"the netstorm backend all-reduces with SUM or AVG, "
                                      f"not {op.name}")
        if len(tensors) != 1:
            raise NotImplementedError("the netstorm backend all-reduces one tensor per call")
        tensor = tensors[0]
        if tensor.dtype != torch.float32 or not tensor.is_contiguous():
            self._allreduce_by_store(tensor, op)
            return _done(list(tensors))
        scale = float(self._world) if op == ReduceOp.SUM else None
        if self.group is not None:  # several processes per site
            started = self.group.allreduce_async(tensor, scale)
        else:
            assert self.site is not None
            started = allreduce_tensor(self.site, tensor, scale=scale)
        return _create_work_from_future(started.then(lambda f: [f.value()]))

    # -- the store --------------------------------------------------------------------------
    def _key(self, kind: str) -> str:
        self._ops += 1
        return f"netstorm/{kind}/{self._ops}"

    def _put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` in pieces (torch's store takes 8 MiB a value)."""
        pieces = [data[i:i + STORE_PIECE] for i in range(0, len(data), STORE_PIECE)] or [b""]
        for i, piece in enumerate(pieces):
            self._store.set(f"{name}/{i}", piece)  # type: ignore[arg-type]
        self._store.set(name, str(len(pieces)))

    def _read_and_release(self, key: str, names: list[str],
                          also: tuple[str, ...] = ()) -> list[bytes]:
        """Read what :meth:`_put` stored under ``names``; the last rank to have read them
        deletes them (and ``also``)."""
        values, keys = [], [*also, f"{key}/read"]
        for n in names:
            count = int(self._store.get(n))  # waits until it is there
            parts = [f"{n}/{i}" for i in range(count)]
            values.append(b"".join(self._store.get(p) for p in parts))
            keys += [n, *parts]
        if self._store.add(f"{key}/read", 1) == self._world:
            for k in keys:
                self._store.delete_key(k)
        return values

    def _gather(self, tensor: torch.Tensor) -> list[bytes]:
        key = self._key("gather")
        self._put(f"{key}/{self._me}", _to_bytes(tensor))
        return self._read_and_release(key, [f"{key}/{r}" for r in range(self._world)])

    def _allreduce_by_store(self, tensor: torch.Tensor, op: ReduceOp.RedOpType) -> None:
        parts = [_from_bytes(b, tensor) for b in self._gather(tensor)]
        total = parts[0].clone()
        for p in parts[1:]:  # rank order: the same bytes on every rank
            total += p
        if op == ReduceOp.AVG:
            if not total.is_floating_point():
                raise NotImplementedError(f"the netstorm backend averages floating tensors, "
                                          f"not {tensor.dtype}")
            total /= self._world
        tensor.copy_(total)

    def broadcast(self, tensors: Sequence[torch.Tensor],  # type: ignore[override]
                  opts: BroadcastOptions | None = None) -> dist.Work:
        root = opts.rootRank if opts is not None else 0
        key = self._key("broadcast")
        for i, tensor in enumerate(tensors):
            if self._me == root:
                self._put(f"{key}/{i}", _to_bytes(tensor))
        names = [f"{key}/{i}" for i in range(len(tensors))]
        for tensor, data in zip(tensors, self._read_and_release(key, names), strict=True):
            if self._me != root:
                tensor.copy_(_from_bytes(data, tensor))
        return _done(list(tensors))

    def allgather(self, output_tensors: Sequence[Sequence[torch.Tensor]],  # type: ignore[override]
                  input_tensors: Sequence[torch.Tensor],
                  opts: AllgatherOptions | None = None) -> dist.Work:
        if len(input_tensors) != 1:
            raise NotImplementedError("the netstorm backend all-gathers one tensor per call")
        outputs = output_tensors[0]
        for out, data in zip(outputs, self._gather(input_tensors[0]), strict=True):
            out.copy_(_from_bytes(data, out))
        return _done([list(outputs)])

    def barrier(self, opts: BarrierOptions | None = None) -> dist.Work:  # type: ignore[override]
        key = self._key("barrier")
        if self._store.add(f"{key}/in", 1) == self._world:
            self._put(f"{key}/all", b"")
        self._read_and_release(key, [f"{key}/all"], also=(f"{key}/in",))
        return _done([])

    def shutdown(self) -> None:
        """Leave the run (``dist.destroy_process_group`` calls this)."""
        if self.group is not None:
            self.group.close()
        elif self.site is not None:
            self.site.close()

    def __repr__(self) -> str:
        return f"ProcessGroupNetstorm(rank={self._me}/{self._world})"


#: The process group's other collectives: each raises NotImplementedError naming itself.
UNSUPPORTED = ("allreduce_coalesced", "reduce", "allgather_coalesced",
               "allgather_into_tensor_coalesced", "_allgather_base", "all_gather_single",
               "gather", "scatter", "reduce_scatter", "reduce_scatter_single",
               "_reduce_scatter_base", "reduce_scatter_tensor_coalesced", "alltoall",
               "alltoall_base", "all_to_all_single", "send", "recv", "recv_anysource",
               "monitored_barrier")
for _name in UNSUPPORTED:
    setattr(ProcessGroupNetstorm, _name, _unsupported(_name))
del _name


def _create(store: dist.Store, rank: int, world_size: int,
            timeout: datetime.timedelta) -> ProcessGroupNetstorm:
    """The backend's constructor (``Backend.register_backend``'s contract)."""
    topology = os.environ.get("NETSTORM_TOPOLOGY")
    if not topology:
        raise NetstormError("the netstorm backend needs NETSTORM_TOPOLOGY (a topology file "
                            "or built-in name; netstorm run sets it)")
    view = load_topology(topology)
    where = layout(rank=rank, world_size=world_size)
    if where.sites != view.n:
        raise NetstormError(f"init_process_group: world_size is {world_size} but topology "
                            f"{view.name!r} has {view.n} sites ({where.local_size} "
                            f"process(es) per site, LOCAL_WORLD_SIZE)")
    if where.local_size > 1:
        check_all_workers(view)
    # rank 0 serves the runtime's coordinator on a free port, published through torch's
    # store; the store has no authentication, so no secret goes into it (see _secret)
    given: dict[str, Any] = {"rank": where.site, "world_size": where.sites}
    if rank == 0:
        store.set("netstorm/coordinator",
                  str(free_ports(1, os.environ.get("MASTER_ADDR") or "127.0.0.1")[0]))
    given["master_port"] = int(store.get("netstorm/coordinator").decode())
    shared = _secret(store, rank)
    site = None
    if where.local_rank == 0:  # the site's leader takes part in the plan
        if shared is not None:
            given["secret"] = shared.read_bytes()
        site = Site(RuntimeConfig.from_env(**given), view,
                    os.environ.get("NETSTORM_PLANNER") or "treepack",
                    policy=os.environ.get("NETSTORM_POLICY") or None)
        if shared is not None and rank == 0:  # every site joined: each read the file
            shared.unlink(missing_ok=True)
        if not site.is_worker:
            site.serve()
            raise SystemExit(0)
    if where.local_size == 1:
        return ProcessGroupNetstorm(store, site)
    # no group can be registered while init_process_group runs: bare gloo backends
    local = [dist.ProcessGroupGloo(dist.PrefixStore(f"netstorm/site{where.site}/{k}", store),
                                   where.local_rank, where.local_size, timeout)
             for k in ("reduce", "broadcast")]
    return ProcessGroupNetstorm(store, site, SiteGroup(where, local[0], local[1], site))


def _secret(store: dist.Store, rank: int) -> Path | None:
    """Where this run's shared secret is, when the environment holds none.

    With ``NETSTORM_SECRET`` or ``NETSTORM_SECRET_FILE`` set, every rank reads its own
    (``None``). Without, ranks on one host (a loopback ``MASTER_ADDR``) share a fresh one:
    rank 0 writes it to a file only its user can read and puts the file's *path* in the
    store, and removes the file once every site has joined (each read it first). Across
    hosts a secret must be given: a stranger who reaches the store must not learn one.
    """
    if os.environ.get("NETSTORM_SECRET") or os.environ.get("NETSTORM_SECRET_FILE"):
        return None
    master = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    if not _loopback(master):
        raise NetstormError(f"the netstorm backend across hosts (MASTER_ADDR={master}) needs "
                            "NETSTORM_SECRET or NETSTORM_SECRET_FILE, the same on every host")
    if rank == 0:
        fd, name = tempfile.mkstemp(prefix="netstorm-secret-")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        store.set("netstorm/secret_file", name)
    path = Path(store.get("netstorm/secret_file").decode())
    try:  # the store is writable by anyone who reaches it: trust only our own private file
        st = path.stat()
    except OSError as exc:
        raise NetstormError(f"the run's secret file {path} (from torch's store): "
                            f"{exc.strerror or exc}") from exc
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise NetstormError(f"the run's secret file {path} (from torch's store) is not a "
                            "private file of this user: refused (a forged store entry?)")
    return path


def register() -> None:
    """Register the ``"netstorm"`` backend with torch.distributed (idempotent)."""
    if BACKEND not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND, _create, devices=["cpu", "cuda"])

