"""netstorm: plan and run synchronous data-parallel training across a wide-area network.

The planning core: network views, jobs, plans, planners, the cost model and the bound.
``netstorm.sim`` (simulator), ``netstorm.runtime`` (TCP runtime) and ``netstorm.kernels``
are imported on demand.
"""

from .bound import Bound, bound, simple_bounds
from .check import check_plan
from .cost import Prediction, link_loads, predict
from .errors import NetstormError, PeerError, PlanError, ProtocolError, TopologyError
from .job import MODELS, Job, ModelSpec
from .plan import Plan, Route, Shard
from .registry import get_planner, plan, planner_names, register_planner
from .topology import load_topology
from .view import NetworkView

__all__ = [
    "MODELS", "Bound", "Job", "ModelSpec", "NetstormError", "NetworkView", "PeerError", "Plan",
    "PlanError", "Prediction", "ProtocolError", "Route", "Shard", "TopologyError", "bound",
    "check_plan", "get_planner", "link_loads", "load_topology", "plan", "planner_names",
    "predict", "register_planner", "simple_bounds",
]
__version__ = "0.1.0"
