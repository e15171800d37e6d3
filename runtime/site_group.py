"""Several processes per site (a machine with several GPUs): reduce inside the site, one
leader per site on the WAN plan, broadcast inside the site.

torchrun's layout: ``RANK = site * LOCAL_WORLD_SIZE + LOCAL_RANK`` over ``WORLD_SIZE =
sites * LOCAL_WORLD_SIZE`` processes; the topology names sites, not processes. The
processes of a site sum their tensors over a gloo group of their own, the site's leader
(``LOCAL_RANK`` 0) takes part in the plan with the site's mean, and the leader's result is
broadcast to the others, so every process of every site ends with the leaders' bytes.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import BroadcastOptions  # type: ignore[attr-defined]

from netstorm.errors import NetstormError

from .elastic import ElasticSite
from .site import Site
from .start import init
from .tensors import allreduce_tensor, settled

__all__ = ["Layout", "SiteGroup", "check_all_workers", "join", "layout"]


@dataclass(frozen=True)
class Layout:
    """Where this process is: its site, its rank inside the site, processes per site."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int

    @property
    def site(self) -> int:
        return self.rank // self.local_size

    @property
    def sites(self) -> int:
        return self.world_size // self.local_size

    def ranks_of(self, site: int) -> list[int]:
        return list(range(site * self.local_size, (site + 1) * self.local_size))


def layout(env: Mapping[str, str] | None = None, *, rank: int | None = None,
           world_size: int | None = None) -> Layout:
    """This process's :class:`Layout` from torchrun's variables (``LOCAL_WORLD_SIZE``
    absent: one process per site).

    Raises
    ------
    NetstormError
        The variables do not describe whole sites of consecutive ranks.
    """
    env = os.environ if env is None else env
    rank = int(env.get("RANK", "0")) if rank is None else rank
    world = int(env.get("WORLD_SIZE", "1")) if world_size is None else world_size
    size = int(env.get("LOCAL_WORLD_SIZE") or 1)
    local = int(env.get("LOCAL_RANK") or 0) if size > 1 else 0
    if size < 1 or world % size or rank % size != local:
        raise NetstormError(f"RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local}, "
                            f"LOCAL_WORLD_SIZE {size}: expected LOCAL_WORLD_SIZE processes "
                            f"per site with RANK = site * LOCAL_WORLD_SIZE + LOCAL_RANK")
    return Layout(rank, world, local, size)


class SiteGroup:
    """The state of the hook and the backend when a site runs several processes.

    Parameters
    ----------
    layout
        Where this process is.
    reduce, broadcast
        Two gloo groups of the site's processes (process groups, or bare gloo backends
        inside the netstorm backend's constructor, where no group can be registered): the
        caller's thread sums on the first while a thread of this object broadcasts earlier
        buckets on the second.
    site
        This process's site (leaders only).
    """

    def __init__(self, layout: Layout, reduce: Any, broadcast: Any,
                 site: Site | ElasticSite | None) -> None:
        self.layout = layout
        self.reduce = reduce
        self.broadcast = broadcast
        self.site = site
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._broadcaster, daemon=True,
                                        name="site-broadcast")
        self._thread.start()

    def allreduce_async(self, tensor: torch.Tensor,
                        scale: float | None = None) -> torch.futures.Future[torch.Tensor]:
        """Start the mean of ``tensor`` over every process of every site, in place (then
        times ``scale``); every process must call it for the same tensors in the same order.

        Notes
        -----
        Sums inside the site over gloo and divides by the site's process count (here, before
        returning: a fast local step), the leader averages over the plan, the leader
        broadcasts (both in the background, in call order): the mean over sites of the
        sites' means, which is the mean over processes because every site has as many.
        """
        self.reduce.allreduce([tensor]).wait()  # SUM
        tensor.div_(self.layout.local_size)
        wan = allreduce_tensor(self.site, tensor) if self.site is not None else None
        outcome, fut = settled()
        self._queue.put((tensor, wan, scale, outcome))
        return fut

    def allreduce(self, tensor: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """:meth:`allreduce_async` and wait."""
        return self.allreduce_async(tensor, scale).wait()

    def _broadcaster(self) -> None:
        opts = BroadcastOptions()
        opts.rootRank = 0  # the leader, in the site's group
        while (item := self._queue.get()) is not None:
            tensor, wan, scale, outcome = item
            try:
                if wan is not None:
                    wan.wait()
                self.broadcast.broadcast([tensor], opts).wait()
                if scale is not None:
                    tensor.mul_(scale)
                outcome.set_result((None, tensor))
            except BaseException as exc:
                outcome.set_result((exc, tensor))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        if self.site is not None:
            self.site.close()


def join(**init_kwargs: object) -> Site | ElasticSite | SiteGroup:
    """The state to pass to :func:`netstorm.runtime.torch.comm_hook`: this process's
    :class:`Site` with one process per site, else a :class:`SiteGroup` (the default
    process group must be initialised; every process calls this, in the same order).
    ``init_kwargs`` go to :func:`netstorm.runtime.init` (the leaders')."""
    where = layout(rank=dist.get_rank(), world_size=dist.get_world_size())
    if where.local_size == 1:
        return init(**init_kwargs)  # type: ignore[arg-type]
    check_all_workers(init_kwargs.get("topology") or os.environ.get("NETSTORM_TOPOLOGY"))
    mine: list[Any] = []
    for s in range(where.sites):  # new_group is collective: every process makes every group
        groups = [dist.new_group(where.ranks_of(s), backend="gloo") for _ in range(2)]
        if s == where.site:
            mine = groups
    site = None
    if where.local_rank == 0:
        site = init(rank=where.site, world_size=where.sites, **init_kwargs)  # type: ignore[arg-type]
    return SiteGroup(where, mine[0], mine[1], site)


def check_all_workers(topology: object) -> None:
    """Several processes per site: every site must train (a relay-only site's leader
    would leave its other processes with nothing to do)."""
    from netstorm.topology import load_topology
    from netstorm.view import NetworkView

    if topology is None:
        return  # init() says what is missing
    view = topology if isinstance(topology, NetworkView) else load_topology(str(topology))
    if view.workers != tuple(range(view.n)):
        raise NetstormError(f"topology {view.name!r}: several processes per site need "
                            f"every site to be a worker (it has relay-only sites)")
