"""Built-in planners. Each is a plain function ``(view, job, *, seed, state, **options)``.

They are registered by name in :mod:`netstorm.registry`; import them from here only to call
one directly.
"""

from .mlnet import mlnet
from .netstorm import netstorm
from .ps import ps
from .ring import ring, ring_order
from .treepack import treepack
from .tsengine import TSEngineState, tsengine

__all__ = ["BUILTIN", "TSEngineState", "mlnet", "netstorm", "ps", "ring", "ring_order",
           "treepack", "tsengine"]

#: Name -> planner function for every built-in planner.
BUILTIN = {"ps": ps, "ring": ring, "mlnet": mlnet, "tsengine": tsengine, "netstorm": netstorm,
           "treepack": treepack}
