"""Built-in planners. Each is a plain function ``(view, job, *, seed, state, **options)``.

They are registered by name in :mod:`netstorm.registry`; import them from here only to call
one directly.
"""

from .ps import ps
from .ring import ring, ring_order

__all__ = ["BUILTIN", "ps", "ring", "ring_order"]

#: Name -> planner function for every built-in planner.
BUILTIN = {"ps": ps, "ring": ring}
