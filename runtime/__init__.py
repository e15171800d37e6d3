"""Real TCP runtime (``netstorm.runtime``); see DESIGN section 9.

>>> import netstorm.runtime as nr
>>> site = nr.init(topology="topo.yaml", planner="treepack")  # RANK, WORLD_SIZE, MASTER_*
>>> site.allreduce(array)          # float32 numpy array or CPU tensor, in place, the mean
>>> ddp.register_comm_hook(site, nr.torch.comm_hook)   # or dist.init_process_group("netstorm")
>>> site.close()

One process per site; ``netstorm run`` starts them on one machine (an emulated WAN), any
torchrun-style launcher on several hosts.

How one ``site.allreduce(x)`` flows through the modules:

1. :mod:`~.site`: the call gets the next sequence number; :mod:`~.engine` makes its
   :class:`~.collective.Collective` once :mod:`~.versions` knows its plan version (the
   coordinator released it) and its compiled program (planned for this size, cached), then
   posts ``Start``.
2. The engine thread feeds the executor (:mod:`netstorm.executor`, the core's, shared with
   the simulator); the sends it returns go to :mod:`~.sender`, whose per-peer links
   (:mod:`~.links`) checksum and write each frame (:mod:`~.wire`), paced by :mod:`~.emulate`.
3. At the peers, :mod:`~.inbound` reads each frame into the collective's arena, checks it
   and posts ``Arrive``; their engines reduce (:mod:`netstorm.kernels`) and send on, up the
   reduce trees and down the broadcast trees, until ``x`` holds the root's mean.
4. Done here, the site logs the collective and sends a ``Report`` (:mod:`~.messages`) over
   :mod:`~.client`; rank 0's :mod:`~.coordinator` hands it to the pure state machine in
   :mod:`~.control`, which, once every site reported, moves the horizon and may switch
   plans; the ``Horizon`` it broadcasts lets later collectives start (and, in an elastic
   run, :mod:`~.elastic`, releases the result to the caller).
"""

from .config import RuntimeConfig
from .site import Handle, Site
from .start import init

__all__ = ["Handle", "RuntimeConfig", "Site", "init", "torch"]


def __getattr__(name: str) -> object:
    # netstorm.runtime.torch imports torch (seconds): only when asked for
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
