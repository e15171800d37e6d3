"""Real TCP runtime (``netstorm.runtime``); see DESIGN section 9.

>>> import netstorm.runtime as nr
>>> site = nr.init(topology="topo.yaml", planner="treepack")  # RANK, WORLD_SIZE, MASTER_*
>>> site.allreduce(array)          # float32 numpy array or CPU tensor, in place, the mean
>>> ddp.register_comm_hook(site, nr.torch.comm_hook)   # or dist.init_process_group("netstorm")
>>> site.close()

One process per site; ``netstorm run`` starts them on one machine (an emulated WAN), any
torchrun-style launcher on several hosts.
"""

from .config import RuntimeConfig
from .site import Handle, Site, init

__all__ = ["Handle", "RuntimeConfig", "Site", "init", "torch"]


def __getattr__(name: str) -> object:
    # netstorm.runtime.torch imports torch (seconds): only when asked for
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
