"""SimPy discrete-event WAN simulator (``netstorm.sim``); see DESIGN section 8.

- :func:`simulate` -- synchronous iterations of a planner's plans on a (dynamic) network,
  with the bandwidth estimator and re-plan policy in the loop; returns a :class:`SimResult`.
- :func:`allreduce` -- one static all-reduce of a given plan, optionally carrying real
  numpy gradients (payload mode).
- :class:`Network`, :func:`maxmin_rates` -- the link model and its max-min fair solver.
- :mod:`~netstorm.sim.core` (with :mod:`~netstorm.sim.flat`, :mod:`~netstorm.sim.tables`,
  :mod:`~netstorm.sim.sharing`, :mod:`~netstorm.sim.heaps`), driven by
  :class:`~netstorm.sim.compiled.CompiledNetwork` -- the compiled timing core that
  :func:`simulate` runs by default: the executors' firing rule and the network over
  arrays, held equal to the executor path by ``tests/sim/test_core.py``.
- :func:`chrome_trace`, :func:`plot_iterations`, :func:`plot_accuracy`,
  :func:`train_digits` -- outputs and the hybrid accuracy-vs-time loop (torch, lazily).
"""

from netstorm.controller import Switch

from .driver import allreduce, simulate
from .network import Network
from .rates import maxmin_rates, maxmin_rates_reference
from .result import SimResult
from .trace import chrome_trace, write_trace


def __getattr__(name: str) -> object:
    if name in ("plot_iterations", "plot_accuracy"):
        from . import plots

        return getattr(plots, name)
    if name == "train_digits":
        from .training import train_digits

        return train_digits
    raise AttributeError(f"module 'netstorm.sim' has no attribute {name!r}")


__all__ = ["Network", "SimResult", "Switch", "allreduce", "chrome_trace", "maxmin_rates",
           "maxmin_rates_reference", "plot_accuracy", "plot_iterations",
           "simulate", "train_digits", "write_trace"]
