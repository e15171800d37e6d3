"""Every timeout of the runtime and every deadline derived from one, named, in one place.

A run has one user-facing timeout, ``NETSTORM_TIMEOUT`` (:attr:`RuntimeConfig.timeout_s
<netstorm.runtime.config.RuntimeConfig.timeout_s>`, ``netstorm run --timeout``): a peer
silent that long is an error. Everything else either is a fixed pace of the control plane
(heartbeats, the watchdog) or follows from that timeout here, so that the order the failure
handling relies on holds by construction:

- a silent site is named (:func:`silence_limit`) before the collectives it holds up time
  out (``timeout_s``);
- a site's own error waits for the coordinator's verdict (:func:`verdict_hold`) longer than
  the coordinator waits for a loss to explain an error report (:data:`ELASTIC_GRACE_S`);
- an elastic caller waits (:func:`recovery_limit`) longer than a membership change takes.
"""

from __future__ import annotations

__all__ = ["ELASTIC_GRACE_S", "HEARTBEAT_S", "KNOCK_RETRY_S", "LAUNCH_GRACE_S", "LINK_STOP_S",
           "STOP_GRACE_S", "THREAD_STOP_S", "VERDICT_HOLD_S", "WATCHDOG_S", "launcher_grace",
           "member_gone_limit", "recovery_limit", "silence_limit", "verdict_hold"]

#: Sites and the coordinator send each other a heartbeat this often, seconds.
HEARTBEAT_S = 1.0
#: How often a site's engine looks for collectives past the timeout, seconds.
WATCHDOG_S = HEARTBEAT_S
#: Elastic runs: how long the coordinator holds a site's error report for a loss that
#: explains it before it aborts the run, seconds.
ELASTIC_GRACE_S = 2.0
#: Seconds a site's own peer error waits for the coordinator's verdict on its cause (rank
#: 0 aborting on a silent site closes its connections a moment before the others read why).
VERDICT_HOLD_S = 0.5
#: Seconds, beyond the runtime's timeout, that sites get to stop by themselves after one
#: failed (a dead peer is seen at once; a silent one after the timeout).
LAUNCH_GRACE_S = 5.0
#: Seconds a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0
#: Seconds between a joining site's knocks while rank 0 is between memberships.
KNOCK_RETRY_S = 0.2
#: Seconds a stopping site waits for each of its threads (they end at once unless stuck).
THREAD_STOP_S = 2.0
#: Seconds a closing link waits for its senders (one may be blocked writing to a stopped
#: peer: closing the connection afterwards unblocks it).
LINK_STOP_S = 5.0


def silence_limit(timeout_s: float) -> float:
    """Seconds without a heartbeat after which a peer on the control plane is taken for
    stopped: half the run's timeout (at least 2 s), so that a silent site is named before
    the collectives it holds up reach their own timeout."""
    return max(2.0, timeout_s / 2)


def verdict_hold(elastic: bool) -> float:
    """Seconds a site's own peer error waits for the coordinator's verdict before it fails
    the run: in an elastic run, the coordinator's grace for a loss plus two heartbeats for
    the verdict to travel."""
    return ELASTIC_GRACE_S + 2 * HEARTBEAT_S if elastic else VERDICT_HOLD_S


def member_gone_limit(timeout_s: float) -> float:
    """Seconds rank 0 lets a knocking site wait for its old self to be found gone (a
    restarted site may knock before its silence is noticed); a site still in the run after
    that is a second copy."""
    return silence_limit(timeout_s) + 2.0


def recovery_limit(timeout_s: float) -> float:
    """Seconds an elastic caller waits across membership changes: for an all-reduce redone
    on the next membership, for the workers to meet at a boundary, for a newcomer's state."""
    return 3.0 * timeout_s


def launcher_grace(timeout_s: float) -> float:
    """Seconds ``netstorm run`` gives the other sites to stop by themselves after one
    failed, before it stops them."""
    return timeout_s + LAUNCH_GRACE_S
