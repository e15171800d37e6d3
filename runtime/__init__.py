"""Real TCP runtime (``netstorm.runtime``); see DESIGN section 9.

>>> import netstorm.runtime as nr
>>> site = nr.init(topology="topo.yaml", planner="treepack")  # RANK, WORLD_SIZE, MASTER_*
>>> site.allreduce(array)          # float32 numpy array or CPU tensor, in place, the mean
>>> site.close()

One process per site; ``netstorm run`` starts them on one machine (an emulated WAN), any
torchrun-style launcher on several hosts.
"""

from .config import RuntimeConfig
from .site import Handle, Site, init

__all__ = ["Handle", "RuntimeConfig", "Site", "init"]
