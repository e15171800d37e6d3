"""Built-in planners. Each is a plain function ``(view, job, *, seed, state, **options)``.

They are registered by name in :mod:`netstorm.registry`; import them from here only to call
one directly.
"""

from typing import Any

import numpy as np

from .mlnet import mlnet
from .netstorm import netstorm
from .ps import ps
from .ring import ring, ring_order
from .treepack import treepack
from .tsengine import TSEngineState, tsengine

__all__ = ["BUILTIN", "BUILTIN_RUNS", "TSEngineState", "mlnet", "netstorm", "ps", "ring",
           "ring_order", "treepack", "tsengine"]

#: Name -> planner function for every built-in planner.
BUILTIN = {"ps": ps, "ring": ring, "mlnet": mlnet, "tsengine": tsengine, "netstorm": netstorm,
           "treepack": treepack}

#: What the loop needs to run each built-in (:func:`netstorm.register_planner`'s keywords):
#: the bandwidth-oblivious baselines never re-plan, NetStorm re-plans on any change (as
#: published), TSEngine every iteration with its own random stream; the rest use ours.
BUILTIN_RUNS: dict[str, dict[str, Any]] = {
    "ps": {"default_policy": "static"},
    "ring": {"default_policy": "static"},
    "mlnet": {"default_policy": "static"},
    "netstorm": {"default_policy": "any-change"},
    "tsengine": {"default_policy": "every-iteration",
                 "make_state": lambda seed: TSEngineState(np.random.default_rng(seed))},
}
