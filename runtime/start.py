""":func:`init`: join the run as this process's site (``netstorm.runtime.init``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from netstorm.awareness import Policy
from netstorm.errors import NetstormError
from netstorm.plan_files import fixed_planner, load_plan
from netstorm.registry import Planner
from netstorm.topology import load_topology
from netstorm.view import NetworkView

from .config import RuntimeConfig
from .elastic import ElasticSite
from .engine import WINDOW
from .site import Site

__all__ = ["init"]

log = logging.getLogger("netstorm.runtime")


def init(topology: str | NetworkView | None = None, planner: str | Planner | None = None, *,
         seed: int = 0, policy: Policy | str | None = None, window: int = WINDOW,
         chunk_bytes: int = 4_000_000, planner_options: dict[str, Any] | None = None,
         **config: Any) -> Site | ElasticSite:
    """Join the run as this process's site (torchrun-style environment: see
    :mod:`netstorm.runtime.config`).

    Parameters
    ----------
    topology
        A topology file, a built-in name, or a :class:`~netstorm.NetworkView`; every rank
        must load the same one (checked). Rank i is the topology's i-th site. Default:
        ``NETSTORM_TOPOLOGY`` (``netstorm run`` sets it). ``"measure"`` times every ordered
        pair of the run's hosts first (:func:`~netstorm.runtime.measure.measure`,
        ``NETSTORM_MEASURE_SECONDS``, default 3) and plans on that: sites ``site0..``, all
        workers.
    planner, seed, planner_options
        The planner every site plans with (every site computes the same plans). Default:
        ``NETSTORM_PLANNER``, else ``treepack``.
    policy
        Re-plan policy (name or object); default ``NETSTORM_POLICY``, else the planner's own.
    window
        Collectives a site may start ahead of the last one finished everywhere; a plan
        switch takes effect that many collectives after it is decided.
    chunk_bytes
        The pipelining chunk plans are made for (a planner may pick its own).
    config
        Overrides of the environment (``rank``, ``master_addr``, ...): see
        :class:`~netstorm.runtime.config.RuntimeConfig`.

    Returns
    -------
    Site or ElasticSite
        On a worker (an :class:`~netstorm.runtime.elastic.ElasticSite` when
        ``NETSTORM_ELASTIC`` is set: the same calls, surviving other sites' loss). A
        relay-only rank relays inside ``init()`` until every worker has closed, then exits
        the process (status 0), so one script serves every rank.
    """
    topology = topology if topology is not None else os.environ.get("NETSTORM_TOPOLOGY")
    if topology is None:
        raise NetstormError("netstorm.runtime.init: no topology: pass topology= or set "
                            "NETSTORM_TOPOLOGY (netstorm run sets it)")
    planner = planner or os.environ.get("NETSTORM_PLANNER") or "treepack"
    policy = policy if policy is not None else os.environ.get("NETSTORM_POLICY") or None
    fixed = os.environ.get("NETSTORM_PLAN")
    if topology == "measure":  # the real network between the hosts, timed now
        from .measure import measure

        seconds = float(os.environ.get("NETSTORM_MEASURE_SECONDS") or 3.0)
        # (measure's own ``emulate`` is a view to emulate; it times the network unshaped)
        view = measure(seconds, **{k: v for k, v in config.items() if k != "emulate"})
        log.info("measured %d sites in %.1f s", view.n, seconds)
    else:
        view = topology if isinstance(topology, NetworkView) else load_topology(topology)
    cfg = RuntimeConfig.from_env(**config)
    if fixed:  # a plan file: every site runs it as it is (checked here against the view)
        planner = fixed_planner(load_plan(fixed, view), fixed)
        policy = "static"

    def make(cfg: RuntimeConfig, view: NetworkView) -> Site:
        return Site(cfg, view, planner, seed=seed, policy=policy, window=window,
                    chunk_bytes=chunk_bytes, planner_options=planner_options)

    site = ElasticSite(cfg, view, make) if cfg.elastic else make(cfg, view)
    if not site.is_worker:
        _warn_if_torch_waits(site.name)
        site.serve()
        raise SystemExit(0)
    return site


def _warn_if_torch_waits(name: str) -> None:
    """A relay-only rank inside torch's default group: a DDP built on that group waits for
    this rank, which never trains, until gloo's timeout (half an hour). Say so at once."""
    dist = sys.modules.get("torch.distributed")
    ours = sys.modules.get("netstorm.runtime.torch")
    if getattr(ours, "workers_group_made", False):
        return  # the script built its DDP on the workers' group
    if dist is not None and dist.is_available() and dist.is_initialized():
        log.warning("site %s is relay-only but in torch's default process group: a DDP built "
                    "on that group waits for it forever; build DDP on "
                    "netstorm.runtime.torch.workers_group() (or use the netstorm backend)",
                    name)
