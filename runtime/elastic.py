"""Elastic runs: when a site dies, the others agree it left, re-plan without it and go on.

``NETSTORM_ELASTIC=1`` (``netstorm run --elastic``) makes :func:`netstorm.runtime.init` return
an :class:`ElasticSite`: the same calls as :class:`~netstorm.runtime.Site`, over a site that
is rebuilt whenever the membership changes.

How the survivors agree, and on what
------------------------------------
- Rank 0's coordinator decides that a site left: its control connection closed (a killed
  process) or it sent nothing for :func:`~netstorm.runtime.control.silence_limit` of the
  timeout (a stopped process, a cut link). It tells every other site ``lost`` and its part
  in that membership ends. A site's own error (a peer's data connection gone) is held
  until that verdict, and fails the run only when none comes.
- In an elastic run a collective's result becomes the caller's only once the coordinator
  confirms it finished on *every* site (one more control message per collective). The
  coordinator's messages reach every site in one order, so when ``lost`` arrives every
  survivor holds the same set of confirmed collectives: no survivor ever used a result that
  another survivor lacks.
- Every survivor then redoes, in call order, each collective it called that was not
  confirmed, from a copy of its input kept at the call, on a new site over the topology
  without the lost ranks (ranks renumbered in order; rank 0, the coordinator, stays rank 0
  on its port). Results are the exact mean over the surviving workers, bit-identical on
  each. A lost relay is re-planned around the same way (a topology it disconnects fails
  with the planner's error).
- The coordinator itself is not replaced: if rank 0 dies, every site stops, naming it.
  Two sites lost in one moment: the second is found missing when the survivors meet again,
  which fails the run after the timeout.

Costs: one copy of each all-reduce's input while it is outstanding, and one coordinator
round trip before a result is released.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from netstorm.errors import NetstormError, SiteLost
from netstorm.plan import Plan
from netstorm.view import NetworkView

from .collective import flat_float32
from .config import RuntimeConfig
from .site import Handle, Site

__all__ = ["ElasticHandle", "ElasticSite", "without"]

log = logging.getLogger("netstorm.runtime")


def without(view: NetworkView, ranks: tuple[int, ...]) -> NetworkView:
    """``view`` without the sites ``ranks``: the others keep their order, links and caps.

    Raises
    ------
    NetstormError
        Every site left, or a worker can no longer reach another."""
    keep = [i for i in range(view.n) if i not in set(ranks)]
    if not keep:
        raise NetstormError(f"every site of {view.name!r} left the run")
    index = np.ix_(keep, keep)
    renumber = {old: new for new, old in enumerate(keep)}
    less = NetworkView(
        sites=tuple(view.sites[i] for i in keep), capacity=view.capacity[index],
        latency=view.latency[index],
        egress=None if view.egress is None else view.egress[keep],
        ingress=None if view.ingress is None else view.ingress[keep],
        workers=tuple(renumber[w] for w in view.workers if w in renumber),
        name=f"{view.name} without {', '.join(view.sites[r] for r in sorted(ranks))}")
    for w in less.workers:  # every survivor finds this alike, before they try to meet
        seen, todo = {w}, [w]
        while todo:
            u = todo.pop()
            for v in np.nonzero(less.capacity[u] > 0)[0].tolist():
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        cut = [less.sites[v] for v in less.workers if v not in seen]
        if cut:
            raise NetstormError(f"without {', '.join(view.sites[r] for r in ranks)}, worker "
                                f"{less.sites[w]} cannot reach {', '.join(cut)}")
    return less


class _Call:
    """One all-reduce the caller made: its array, a copy of its input, its callbacks."""

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat
        self.kept = flat.copy()
        self.inner: Handle | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.callbacks: list[Callable[[BaseException | None], None]] = []
        self.lock = threading.Lock()

    def finish(self, error: BaseException | None) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.error = error
            self.done.set()
            callbacks, self.callbacks = self.callbacks, []
        for fn in callbacks:
            fn(error)


class ElasticHandle:
    """An outstanding :meth:`ElasticSite.allreduce_async` (the :class:`Handle` contract)."""

    def __init__(self, call: _Call, timeout_s: float) -> None:
        self._call = call
        self._timeout_s = timeout_s

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is in the array (redone after a loss if need be)."""
        if not self._call.done.wait(self._timeout_s * 3 if timeout is None else timeout):
            raise NetstormError("elastic all-reduce not done: the run is stuck recovering")
        if self._call.error is not None:
            raise self._call.error

    def add_done_callback(self, fn: Callable[[BaseException | None], None]) -> None:
        """Call ``fn(error)`` once the result is final (see :meth:`Handle.add_done_callback`)."""
        call = self._call
        with call.lock:
            if not call.done.is_set():
                call.callbacks.append(fn)
                return
        fn(call.error)


class ElasticSite:
    """A :class:`~netstorm.runtime.Site` that survives the loss of other sites.

    Parameters
    ----------
    config, view
        This process's settings and the run's topology (membership at the start).
    make_site
        ``make_site(config, view) -> Site`` with the run's planner, policy and options bound.

    Attributes
    ----------
    losses
        One record per membership change: the sites lost, when, and how long the new
        membership took to meet (``recovery_s``).
    """

    def __init__(self, config: RuntimeConfig, view: NetworkView,
                 make_site: Callable[[RuntimeConfig, NetworkView], Site]) -> None:
        self._make = make_site
        self._config = config
        self._epoch = 0
        self._calls: list[_Call] = []  # outstanding, in call order
        self._lock = threading.RLock()
        self.losses: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        #: the collectives and switches of the memberships before the current one
        self._history: dict[str, list[dict[str, Any]]] = {"collectives": [], "switches": []}
        self.site = self._watch(make_site(config, view))

    # what callers read from a Site
    @property
    def view(self) -> NetworkView:
        return self.site.view

    @property
    def rank(self) -> int:
        return self.site.rank

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def is_worker(self) -> bool:
        return self.site.is_worker

    @property
    def plan(self) -> Plan | None:
        return self.site.plan

    def stats(self) -> dict[str, Any]:
        """:meth:`Site.stats` over every membership so far (collectives and switches of the
        earlier ones first; the current site's bytes), plus ``losses``."""
        now = self.site.stats()
        return {**now, "collectives": self._history["collectives"] + now["collectives"],
                "switches": self._history["switches"] + now["switches"],
                "losses": list(self.losses)}

    def allreduce_async(self, array: Any) -> ElasticHandle:
        """Start an in-place mean all-reduce over the workers alive when it completes."""
        call = _Call(flat_float32(array))
        with self._lock:
            if self._error is not None:
                raise self._error
            self._calls.append(call)
            try:
                self._issue(call)
            except SiteLost:
                pass  # this membership just ended: the recovery issues the call again
            except BaseException:
                self._calls.remove(call)
                raise
        return ElasticHandle(call, self._config.timeout_s)

    def allreduce(self, array: Any) -> None:
        """Replace ``array`` by the mean of every surviving worker's ``array``, in place."""
        self.allreduce_async(array).wait()

    def _issue(self, call: _Call) -> None:
        call.inner = self.site.allreduce_async(call.flat)
        call.inner.add_done_callback(lambda error: self._done(call, error))

    def _watch(self, site: Site) -> Site:
        epoch = self._epoch

        def failed(error: BaseException) -> None:  # on the failing site's thread
            if isinstance(error, SiteLost):
                threading.Thread(target=self._recover, args=(epoch, error), daemon=True,
                                 name=f"{site.name}:recover").start()
            else:
                self._give_up(error)

        site.on_failure = failed
        return site

    def _done(self, call: _Call, error: BaseException | None) -> None:
        """``call``'s collective ended (on its site's engine thread); a failed one is redone
        or given up by the site's failure (:meth:`_watch`)."""
        if error is None:
            with self._lock:
                if call in self._calls:
                    self._calls.remove(call)
            call.finish(None)

    def _give_up(self, error: BaseException) -> None:
        with self._lock:
            self._error = self._error or error
            calls, self._calls = self._calls, []
        for call in calls:
            call.finish(error)

    def _recover(self, epoch: int, lost: SiteLost) -> None:
        """Meet the survivors on a new site without the lost ranks; redo what was not
        confirmed. Once per membership change (the first failed collective's thread)."""
        with self._lock:
            if epoch != self._epoch or self._error is not None:
                return  # already recovered from this loss, or gave up
            started = time.monotonic()
            old = self.site
            if old.rank in lost.ranks:
                self._give_up(NetstormError(f"site {old.name} was taken for lost by the "
                                            f"coordinator ({lost}); it leaves the run"))
                return
            self._epoch += 1  # before the new site: its failures belong to the new membership
            done = old.stats()
            for key in self._history:
                self._history[key] += done[key]
            try:
                old.abandon()
                view = without(old.view, lost.ranks)
                rank = sum(1 for r in lost.ranks if r < old.rank)
                config = dataclasses.replace(self._config, rank=old.rank - rank,
                                             world_size=view.n)
                self.site = self._watch(self._make(config, view))
                redone = [c.inner._coll.seq for c in self._calls if c.inner is not None]
                self.site.log_base = old.log_base + min(redone, default=old._next_seq)
            except BaseException as exc:  # any failure to meet again ends the run: say why
                self._give_up(NetstormError(f"site {old.name}: the run cannot go on ({lost}): "
                                            f"{type(exc).__name__}: {exc}"))
                return
            try:
                for call in self._calls:
                    call.flat[:] = call.kept
                    self._issue(call)
            except BaseException as exc:  # e.g. the survivors cannot be planned for
                self._give_up(NetstormError(f"site {old.name}: the run cannot go on ({lost}): "
                                            f"{type(exc).__name__}: {exc}"))
                return
            record = {"lost": [old.view.sites[r] for r in lost.ranks], "reason": str(lost),
                      "redone": len(self._calls), "recovery_s": time.monotonic() - started,
                      "workers": len(view.workers)}
            self.losses.append(record)
            self.site._write({"site": self.name, "lost": record})
            log.warning("site %s: %s; %d collectives redone on %d workers (%.2f s)",
                        self.name, lost, len(self._calls), len(view.workers),
                        record["recovery_s"])

    def serve(self) -> None:
        """Relay until the workers are done, across membership changes (relay-only rank)."""
        while True:
            site = self.site
            error = site.wait_end()
            if not isinstance(error, SiteLost):
                site.close()
                if error is not None:
                    raise error
                return
            self._recover(self._epoch, error)
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Leave the run (see :meth:`Site.close`)."""
        self.site.close()

    def __enter__(self) -> ElasticSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
