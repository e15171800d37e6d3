"""The netstorm exception hierarchy.

Every error netstorm raises on purpose derives from :class:`NetstormError`, so a caller can
catch one type. Messages are one line that names the input, the field and the problem.
"""

from __future__ import annotations

__all__ = ["InputError", "NetstormError", "PeerError", "PlanError", "ProtocolError",
           "SiteLost", "SitesJoined", "TopologyError", "UnknownSiteError"]


class NetstormError(Exception):
    """Base class of all netstorm errors."""


class InputError(NetstormError, ValueError):
    """A value given to netstorm is malformed or out of range: a job, a size with its
    unit, an option of a command, planner, estimator or policy. (A ``ValueError`` too,
    as DESIGN 3 promises; the CLI exits 2 on it and on every other ``NetstormError``, and
    shows a traceback for anything else: a bug must not pass for bad input.)"""


class TopologyError(NetstormError, ValueError):
    """A topology file, built-in topology name or network view is malformed."""


class UnknownSiteError(TopologyError, KeyError):
    """A site name or index that the view does not have (a ``KeyError`` too)."""

    def __str__(self) -> str:  # KeyError's repr-quoting would garble the one line
        return str(self.args[0]) if self.args else ""


class PlanError(NetstormError, ValueError):
    """A planner is unknown, misbehaves, or returned a plan that breaks an invariant."""


class ProtocolError(NetstormError):
    """A peer sent a frame that breaks the wire protocol (bad magic, checksum, size)."""


class PeerError(NetstormError):
    """A peer died, went silent, or failed to authenticate."""


class SiteLost(PeerError):
    """Sites left an elastic run (``ranks``, of the run's topology as it stood): the
    collectives not yet done everywhere are redone without them."""

    def __init__(self, message: str, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = ranks


class SitesJoined(NetstormError):
    """Sites joined an elastic run at an iteration boundary: the run goes on over
    ``members`` (indices into the run's topology as first loaded), ``joined`` among them.
    Not a failure: it ends one membership's site so that the next one can start."""

    def __init__(self, message: str, members: tuple[int, ...] = (),
                 joined: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.members = members
        self.joined = joined
