"""The planner registry and `plan()`, the one entry point to every planner.

Planner contract
----------------
A planner is a callable ``planner(view, job, *, seed=None, state=None, **options) -> Plan``:

- it is a pure function of its arguments (no sockets, clocks or globals); ``seed`` makes any
  randomness reproducible; a stateful planner keeps what it learns in ``state``, an object the
  caller owns and passes back on the next call;
- ties are broken by site index, so every site computes the same plan;
- the returned plan satisfies :func:`netstorm.check_plan`; ``plan()`` checks that, and fills
  ``predicted_time_s`` from the cost model.

Planners are found by name among the built-ins, those registered with
:func:`register_planner`, and those advertised by installed packages under the entry-point
group ``netstorm.planners`` (``name = package.module:function``).

A planner may bring two things that the loop driving it (:class:`netstorm.Controller`, in the
simulator and the runtime) needs: ``make_state(seed)``, a fresh state object for a run, and
``default_policy``, the re-plan policy it runs under unless the user picks one. An
entry-point planner gives them as attributes of its function (``f.make_state``,
``f.default_policy``). Both drivers bind them the same way, through
:meth:`PlannerInfo.planner_call` and :meth:`PlannerInfo.run_policy`.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .awareness import Policy, ReplanPolicy, StaticPolicy, policy_named
from .check import check_plan
from .controller import MakePlan
from .cost import predict
from .errors import PlanError
from .job import Job
from .plan import Plan
from .view import NetworkView

__all__ = ["ENTRY_POINT_GROUP", "Planner", "PlannerInfo", "get_planner", "plan",
           "planner_info", "planner_names", "register_planner"]

Planner = Callable[..., Plan]
ENTRY_POINT_GROUP = "netstorm.planners"


@dataclass(frozen=True)
class PlannerInfo:
    """A registered planner and what a run of it needs.

    Attributes
    ----------
    name, func
        The registered name and the planner callable.
    make_state
        ``make_state(seed) -> state`` for a stateful planner (``None``: stateless).
    default_policy
        Its re-plan policy: a :class:`~netstorm.awareness.Policy`, a policy name
        (:func:`~netstorm.awareness.policy_named`), or ``None`` for
        :class:`~netstorm.ReplanPolicy` (ours, with hysteresis).
    """

    name: str
    func: Planner
    make_state: Callable[[int | None], Any] | None = None
    default_policy: Policy | str | None = None

    def new_state(self, seed: int | None) -> Any:
        """A fresh state object for one run (``None`` for a stateless planner)."""
        return None if self.make_state is None else self.make_state(seed)

    def policy(self, name: str | None = None) -> Policy:
        """The policy named ``name``, else the planner's default."""
        chosen = name if name is not None else self.default_policy
        if chosen is None:
            return ReplanPolicy()
        return policy_named(chosen) if isinstance(chosen, str) else chosen

    def run_policy(self, policy: Policy | str | None = None, *, aware: bool = True,
                   noise: float = 0.0) -> Policy:
        """The re-plan policy of one run.

        Parameters
        ----------
        policy
            A policy, or its name; ``None``: the planner's default.
        aware
            ``False``: the run never re-plans (:class:`~netstorm.awareness.StaticPolicy`).
        noise
            The relative scatter of the link timings the run sees (0 for exact timings):
            a default hysteresis below it is raised to it, so that measurements on a real
            network do not switch plans on their noise. A policy the user chose is kept.
        """
        if not aware:
            return StaticPolicy()
        if policy is not None and not isinstance(policy, str):
            return policy
        rule = self.policy(policy)
        if policy is None and isinstance(rule, ReplanPolicy) and noise > rule.threshold:
            rule = dataclasses.replace(rule, threshold=noise)
        return rule

    def planner_call(self, *, seed: int | None = None,
                     options: Mapping[str, Any] | None = None,
                     fresh_state: bool = False) -> MakePlan:
        """The planner as a run calls it: ``make_plan(view, job) -> Plan`` (through
        :func:`plan`: checked, with its prediction), seed and options bound.

        Notes
        -----
        The planner's state (``make_state(seed)``) lives for one run: made here, passed to
        every call, so a stateful planner learns from the versions before. That suits the
        simulator, which plans every version of a run in one process, in order. With
        ``fresh_state`` every call gets a new state instead, and a plan is a function of
        its view and job alone: the runtime needs that, since every site plans every
        (version, size) by itself, in an order of its own (on demand, ahead in the
        background, the coordinator's candidates), and all must make the same plan.
        """
        bound = dict(options or {})
        state = None if fresh_state else self.new_state(seed)
        target: str | Planner = self.name if _registry.get(self.name) is self else self.func

        def make_plan(view: NetworkView, job: Job) -> Plan:
            return plan(view, job, target, seed=seed,
                        state=self.new_state(seed) if fresh_state else state, **bound)

        return make_plan


_registry: dict[str, PlannerInfo] = {}
_loaded = False
_loading = False
_load_lock = threading.RLock()


def _info(name: str, func: object, make_state: Any = None,
          default_policy: Any = None) -> PlannerInfo:
    if make_state is not None and not callable(make_state):
        raise PlanError(f"planner {name!r}: make_state must be callable, got {make_state!r}")
    if isinstance(default_policy, str):
        try:
            policy_named(default_policy)
        except ValueError as exc:
            raise PlanError(f"planner {name!r}: {exc}") from None
    elif default_policy is not None and not callable(getattr(default_policy, "decide", None)):
        raise PlanError(f"planner {name!r}: default_policy must be a policy or its name, "
                        f"got {default_policy!r}")
    return PlannerInfo(name, _validate(name, func), make_state, default_policy)


def _validate(name: str, func: object) -> Planner:
    if not callable(func):
        raise PlanError(f"planner {name!r} is not callable: {func!r}")
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return func  # builtins and C callables: trust them
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(positional) < 2 and not var_pos:
        raise PlanError(f"planner {name!r} must take (view, job, *, seed, state, **options)")
    for keyword in ("seed", "state"):
        if keyword not in sig.parameters and not var_kw:
            raise PlanError(f"planner {name!r} must accept the keyword argument {keyword!r}")
    return func


def _load() -> None:
    """Fill the registry once: built-ins, then entry points. Threads that come while it is
    filled wait for it (a site's threads plan at once); a plug-in that registers while being
    loaded re-enters and returns."""
    global _loaded, _loading
    if _loaded:
        return
    with _load_lock:
        if _loaded or _loading:
            return
        _loading = True
        try:
            from .planners import BUILTIN, BUILTIN_RUNS

            for name, func in BUILTIN.items():
                _registry.setdefault(name, _info(name, func, **BUILTIN_RUNS.get(name, {})))
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in _registry:
                    continue
                try:
                    func = ep.load()
                    _registry[ep.name] = _info(ep.name, func,
                                               getattr(func, "make_state", None),
                                               getattr(func, "default_policy", None))
                except Exception as exc:  # a broken plug-in must not break the built-ins
                    _registry[ep.name] = PlannerInfo(ep.name,
                                                     _broken(ep.name, ep.value, exc))
            _loaded = True
        finally:
            _loading = False


def _broken(name: str, target: str, exc: Exception) -> Planner:
    def planner(view: NetworkView, job: Job, *, seed: Any = None, state: Any = None,
                **options: Any) -> Plan:
        raise PlanError(f"planner {name!r} ({target}) failed to load: {exc}")

    return planner


def register_planner(name: str, func: Planner | None = None, *, replace: bool = False,
                     make_state: Callable[[int | None], Any] | None = None,
                     default_policy: Policy | str | None = None) -> Any:
    """Register ``func`` under ``name``; usable as a decorator (``@register_planner("x")``).

    Parameters
    ----------
    make_state
        ``make_state(seed)``: a fresh state object for one run of a stateful planner; the
        loop passes it as ``state`` on every call of that run.
    default_policy
        The re-plan policy the planner runs under by default: a policy or its name
        (``"hysteresis"``, ``"any-change"``, ``"every-iteration"``, ``"static"``).

    Raises
    ------
    PlanError
        If the name is taken (and ``replace`` is false) or an argument breaks the contract.
    """
    def add(f: Planner) -> Planner:
        _load()
        if not name or not isinstance(name, str):
            raise PlanError(f"planner name must be a non-empty string, got {name!r}")
        if name in _registry and not replace:
            raise PlanError(f"planner {name!r} is already registered (pass replace=True)")
        _registry[name] = _info(name, f, make_state, default_policy)
        return f

    return add if func is None else add(func)


def planner_names() -> list[str]:
    """Names of every available planner, sorted."""
    _load()
    return sorted(_registry)


def planner_info(planner: str | Planner) -> PlannerInfo:
    """Resolve a name or a callable to its :class:`PlannerInfo` (a bare callable brings its
    ``make_state`` / ``default_policy`` attributes, if any)."""
    _load()
    if callable(planner):
        name = getattr(planner, "__name__", "custom")
        return _info(name, planner, getattr(planner, "make_state", None),
                     getattr(planner, "default_policy", None))
    try:
        return _registry[planner]
    except KeyError:
        raise PlanError(f"unknown planner {planner!r} (available: "
                        f"{', '.join(sorted(_registry))})") from None


def get_planner(planner: str | Planner) -> tuple[str, Planner]:
    """Resolve a name or a callable to ``(name, function)``."""
    info = planner_info(planner)
    return info.name, info.func


def plan(view: NetworkView, job: Job, planner: str | Planner = "treepack", *,
         seed: int | None = None, state: Any = None, **options: Any) -> Plan:
    """Plan one all-reduce on ``view`` for ``job`` with the named (or given) planner.

    Returns
    -------
    Plan
        A plan that passed :func:`check_plan`, with ``predicted_time_s`` filled in.

    Raises
    ------
    PlanError
        Unknown planner, unknown option, a view no all-reduce can be planned on
        (:meth:`NetworkView.degenerate`), or a plan that breaks an invariant.
    """
    name, func = get_planner(planner)
    problem = view.degenerate()
    if problem is not None:
        raise PlanError(f"planner {name!r} on {view.name!r}: {problem}")
    try:
        inspect.signature(func).bind(view, job, seed=seed, state=state, **options)
    except TypeError as exc:
        raise PlanError(f"planner {name!r}: {exc}") from None
    except ValueError:
        pass  # no signature to check against
    result = func(view, job, seed=seed, state=state, **options)
    if not isinstance(result, Plan):
        raise PlanError(f"planner {name!r} returned {type(result).__name__}, not a Plan")
    try:
        check_plan(result, view, job)
    except PlanError as exc:
        raise PlanError(f"planner {name!r} returned an invalid plan: {exc}") from None
    return result.with_prediction(predict(result, view, job).time_s)
