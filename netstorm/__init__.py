"""netstorm: plan and run synchronous data-parallel training across a wide-area network.

The planning core: network views, jobs, plans, planners, the cost model and the bound.
``netstorm.sim`` (simulator), ``netstorm.runtime`` (TCP runtime) and ``netstorm.kernels``
are imported on demand.
"""

from .awareness import BandwidthEstimator, ReplanPolicy
from .bound import Bound, bound, simple_bounds
from .check import check_plan
from .compiler import compile
from .controller import Controller, Switch
from .cost import Prediction, link_loads, predict
from .errors import InputError, NetstormError, PeerError, PlanError, ProtocolError, TopologyError
from .executor import Executor, Outgoing, SiteProgram
from .job import MODELS, Job, ModelSpec
from .plan import Plan, QueueRule, Route, Shard
from .plan_files import load_plan
from .program import Message, NodeProgram, Send, Step, StepKind
from .registry import get_planner, plan, planner_info, planner_names, register_planner
from .topology import load_topology
from .view import NetworkView

__all__ = [
    "MODELS", "BandwidthEstimator", "Bound", "Controller", "Executor", "InputError", "Job",
    "Message",
    "ModelSpec", "NetstormError", "NetworkView", "NodeProgram", "Outgoing", "PeerError", "Plan",
    "PlanError", "Prediction", "ProtocolError", "QueueRule", "ReplanPolicy", "Route", "Send",
    "Shard", "SiteProgram", "Step", "StepKind", "Switch", "TopologyError", "bound",
    "check_plan", "compile", "get_planner", "link_loads", "load_plan", "load_topology", "plan",
    "planner_info", "planner_names", "predict", "register_planner", "simple_bounds",
]
__version__ = "0.1.0"
