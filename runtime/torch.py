"""PyTorch on the runtime: a DDP communication hook, and the ``"netstorm"`` backend.

>>> import netstorm.runtime as nr
>>> site = nr.init()                                  # topology and planner from the env
>>> ddp.register_comm_hook(site, nr.torch.comm_hook)  # DDP over gloo, gradients over netstorm

or with no hook at all (importing this module registers the backend)::

    import netstorm.runtime.torch
    dist.init_process_group("netstorm")               # see netstorm.runtime.process_group
    model = DistributedDataParallel(model)

The hook follows torch's comm-hook contract: a stateless function of explicit state (the
:class:`~netstorm.runtime.Site`) and a :class:`~torch.distributed.GradBucket`, returning a
future of the bucket's averaged gradient. Buckets are pipelined: the hook starts the bucket's
all-reduce and returns at once, so backward goes on computing the next bucket.
"""

# no "from __future__ import annotations": DDP checks the hook's annotations as objects
import os

import torch
import torch.distributed as dist

from netstorm.errors import NetstormError

from .elastic import ElasticSite
from .process_group import BACKEND, ProcessGroupNetstorm, register
from .site import Site
from .site_group import SiteGroup, join
from .tensors import allreduce_tensor, settled

__all__ = ["BACKEND", "ProcessGroupNetstorm", "SiteGroup", "allreduce_tensor", "comm_hook",
           "join", "settled", "workers_group"]

#: Whether this process asked for :func:`workers_group` (a relay then knows DDP will not
#: wait for it on the default group).
workers_group_made = False


def workers_group(topology: str | None = None) -> dist.ProcessGroup | None:
    """torch's process group of the worker ranks, to build DDP on when the topology has
    relay-only sites (one process per site); ``None`` when every site is a worker (use the
    default group). A relay-only rank never trains: a DDP on the default group would wait
    for it. Every rank must call this (``new_group`` is collective), relays included, before
    :func:`netstorm.runtime.init`. ``topology``: default ``NETSTORM_TOPOLOGY``."""
    from netstorm.topology import load_topology

    source = topology or os.environ.get("NETSTORM_TOPOLOGY")
    if not source:
        raise NetstormError("workers_group: no topology (pass one or set NETSTORM_TOPOLOGY)")
    global workers_group_made
    view = load_topology(source)
    workers_group_made = True
    if len(view.workers) == view.n:
        return None
    if dist.get_world_size() != view.n:
        raise NetstormError(f"workers_group: {view.name!r} has relay-only sites, which take "
                            f"one process each: WORLD_SIZE must be {view.n}, got "
                            f"{dist.get_world_size()}")
    return dist.new_group(list(view.workers))


def comm_hook(state: "Site | ElasticSite | SiteGroup",
              bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average the bucket over every worker through the runtime.

    Register with ``ddp.register_comm_hook(site, comm_hook)``; with several processes per
    site, ``state`` is what :func:`~netstorm.runtime.site_group.join` returned (on every
    process): each bucket is summed inside the site before the hook returns, then averaged
    over the plan by the site's leader and broadcast inside the site in the background.
    Every worker must build the same buckets (DDP does: same model, same ``bucket_cap_mb``);
    each bucket is one runtime collective, planned for its size. The result equals plain
    DDP's average within float32 rounding, and is bit-identical on every worker.
    """
    if isinstance(state, SiteGroup):
        return state.allreduce_async(bucket.buffer())
    return allreduce_tensor(state, bucket.buffer())


register()

