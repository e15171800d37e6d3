"""netstorm: plan and run synchronous data-parallel training across a wide-area network.

The planning core: network views, jobs, plans, planners, the cost model and the bound.
``netstorm.sim`` (simulator), ``netstorm.runtime`` (TCP runtime) and ``netstorm.kernels``
are imported on demand.
"""

from .awareness import BandwidthEstimator, ReplanPolicy
from .bound import Bound, bound, simple_bounds
from .check import check_plan
from .cost import Prediction, link_loads, predict
from .errors import NetstormError, PeerError, PlanError, ProtocolError, TopologyError
from .job import MODELS, Job, ModelSpec
from .plan import Plan, Route, Shard
from .registry import get_planner, plan, planner_names, register_planner
from .schedule import NodeProgram, compile
from .topology import load_topology
from .view import NetworkView

__all__ = [
    "MODELS", "BandwidthEstimator", "Bound", "Job", "ModelSpec", "NetstormError", "NetworkView",
    "NodeProgram", "PeerError", "Plan", "PlanError", "Prediction", "ProtocolError",
    "ReplanPolicy", "Route", "Shard", "TopologyError", "bound", "check_plan", "compile",
    "get_planner", "link_loads", "load_topology", "plan", "planner_names", "predict",
    "register_planner", "simple_bounds",
]
__version__ = "0.1.0"
