"""Kernel-shaped WAN on one machine: a network namespace per site, ``tc htb`` per link.

``netstorm run --emulate netns`` (root only) runs every site process in its own network
namespace, on its own address, so the sites talk TCP through real interfaces:

- one namespace per site, ``netstorm-<launcher pid>-<run id>-<site index>``, with ``lo`` up
  and ``eth0``, one end of a veth pair whose other end (``nsv<pid:07d><run id><i:02x>``)
  hangs on a bridge in the root namespace (``nsb<pid:07d><run id>``);
- addresses ``10.213.X.(i+1)/24``, ``X`` picked from the pid among the /24s no interface of
  this host uses (the root namespace gets no address on the bridge: the sites only reach
  each other);
- in site i's namespace, on ``eth0``: an ``htb`` root, a parent class at the site's egress cap
  (or, uncapped, the sum of its links), one child per outgoing link ``i -> j`` at the link's
  capacity (a ``u32`` filter on j's address picks it) and a default class at
  :data:`DEFAULT_BPS` for everything else (traffic to a site without a direct link: control
  frames and TCP acknowledgements);
- a finite ingress cap of site i shapes the bridge's veth toward i (its egress is what site i
  receives);
- no delay: this kernel has no ``netem``, so the site processes hold each message for its
  link's one-way delay themselves (``NETSTORM_EMULATE=netns``).

Rates are the topology's (B/s) times the time scale, in bits, times :data:`WIRE_PER_PAYLOAD`:
htb counts Ethernet frames, the topology counts payload (as the in-process shaper and the
planners do), so a bulk TCP transfer's goodput is the link's capacity.

The names carry the launcher's pid: a launcher that dies without tearing down (SIGKILL)
leaves resources that the next :class:`NetnsWAN` removes (:func:`cleanup_stale`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

import numpy as np

from netstorm.dynamics import Dynamics
from netstorm.errors import NetstormError
from netstorm.view import NetworkView

__all__ = ["NetnsError", "NetnsWAN", "check_available", "cleanup_stale", "netns_wan"]

#: Rate of the default class (traffic to sites without a direct link), bits/s.
DEFAULT_BPS = 10e9
#: Ethernet frame bytes per TCP payload byte at MTU 1500 with timestamps (1514 / 1448).
WIRE_PER_PAYLOAD = 1514 / 1448
#: Slowest class rate, bits/s (htb needs a positive rate; a link at 0 is as good as down).
MIN_BPS = 8000
#: Class quantum, bytes (between an MTU and htb's 200000 warning; equal for every class).
QUANTUM = 60000
NS_PREFIX = "netstorm-"
BRIDGE_PREFIX = "nsb"
VETH_PREFIX = "nsv"
_NS_RE = re.compile(rf"^{NS_PREFIX}(\d+)-([0-9a-f]+)-(\d+)$")
_LINK_RE = re.compile(rf"^(?:{BRIDGE_PREFIX}|{VETH_PREFIX})(\d{{7}})[0-9a-f]{{3}}")
_ALL_RANKS = 253  # addresses .1 .. .253 of a /24


class NetnsError(NetstormError):
    """The namespaces, bridge or shaping could not be set up (one line, the failing command)."""


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, check=False,
                              timeout=30)
    except FileNotFoundError:
        raise NetnsError(f"netns mode needs root and iproute2: {cmd[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(cmd)}` did not finish in 30 s") from None
    if check and done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
        raise NetnsError(f"`{' '.join(cmd)}` failed: {why}")
    return done


def check_available() -> None:
    """Raise :class:`NetnsError` (one line) unless this process is root with ``ip`` and ``tc``."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f"{' and '.join(missing)} not found" if missing else "not running as root"
        raise NetnsError(f"--emulate netns needs root and iproute2 (ip, tc): {why}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"]).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in namespace ``ns`` (site processes of a dead launcher)."""
    done = _run(["ip", "netns", "pids", ns], check=False)
    for word in done.stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def cleanup_stale() -> list[str]:
    """Remove every namespace, bridge and veth whose name carries the pid of a process that
    no longer exists (a launcher killed before it could tear down); return their names.

    Processes still running inside such a namespace are killed first (otherwise the
    namespace, and its veth, would outlive its name).
    """
    removed: list[str] = []
    for ns in _namespaces():
        m = _NS_RE.match(ns)
        if m and not _alive(int(m.group(1))):
            _kill_inside(ns)
    for name in _links():
        m = _LINK_RE.match(name)
        if m and not _alive(int(m.group(1))):
            if _run(["ip", "link", "del", name], check=False).returncode == 0:
                removed.append(name)
    for ns in _namespaces():
        m = _NS_RE.match(ns)
        if m and not _alive(int(m.group(1))):
            if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
                removed.append(ns)
    return removed


def _bits(bytes_per_s: float, scale: float) -> int:
    return max(MIN_BPS, round(bytes_per_s * scale * 8 * WIRE_PER_PAYLOAD))


def _used_subnets() -> set[int]:
    """Third octets of the 10.213.X.0/24 networks this host's interfaces already use."""
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    used = set()
    for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out):
        net = ipaddress.ip_network(f"{m.group(1)}/{m.group(2)}", strict=False)
        for x in range(256):
            if net.overlaps(ipaddress.ip_network(f"10.213.{x}.0/24")):
                used.add(x)
    return used


class NetnsWAN:
    """A namespace per site of ``view`` on one bridge, every link shaped by ``tc htb``.

    Use as a context manager: ``__enter__`` removes stale resources of dead launchers,
    builds the WAN and returns it; ``__exit__`` (also on exceptions, and on SIGTERM/SIGHUP,
    which raise ``SystemExit(128 + signal)`` in the main thread meanwhile) deletes every
    namespace, veth and the bridge, killing whatever still runs inside.

    Parameters
    ----------
    view
        The network (capacities, egress and ingress caps in B/s).
    time_scale
        Rates times ``time_scale`` (as ``netstorm run --time-scale``).
    pid
        The pid the names carry (default: this process's).

    Attributes
    ----------
    namespaces, addresses
        Per site: its namespace's name and its address (``addresses[0]`` is the
        coordinator's ``MASTER_ADDR``).
    """

    def __init__(self, view: NetworkView, time_scale: float = 1.0, *,
                 pid: int | None = None) -> None:
        if not 1 <= view.n <= _ALL_RANKS:
            raise NetnsError(f"netns mode runs 1..{_ALL_RANKS} sites, not {view.n}")
        if time_scale <= 0:
            raise NetnsError(f"time scale must be > 0, got {time_scale}")
        self.view = view
        self.time_scale = float(time_scale)
        self.pid = os.getpid() if pid is None else int(pid)
        if not 0 < self.pid < 10**7:
            raise NetnsError(f"pid {self.pid} does not fit the 7 digits of interface names")
        self.run_id = ""
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.bridge = ""
        self.addresses: list[str] = []
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self._lock = threading.Lock()
        self._old_handlers: dict[int, Any] = {}
        self._rates: dict[tuple[int, int], int] = {}
        self._closing = False
        self._deferred: int | None = None
        self.prefix = ""

    # -- names ------------------------------------------------------------------------------
    def _pick_names(self) -> None:
        taken_ns, taken_links = set(_namespaces()), set(_links())
        for _ in range(100):
            run = secrets.token_hex(2)[:3]
            ns = [f"{NS_PREFIX}{self.pid}-{run}-{i}" for i in range(self.view.n)]
            veths = [f"{VETH_PREFIX}{self.pid:07d}{run}{i:02x}" for i in range(self.view.n)]
            bridge = f"{BRIDGE_PREFIX}{self.pid:07d}{run}"
            if not (taken_ns & set(ns)) and not (taken_links & {bridge, *veths}):
                self.run_id, self.namespaces, self.veths, self.bridge = run, ns, veths, bridge
                return
        raise NetnsError("no free namespace names after 100 tries")

    def _pick_subnet(self) -> None:
        used = _used_subnets()
        for k in range(256):
            x = (self.pid + k) % 256
            if x not in used:
                self.addresses = [f"10.213.{x}.{i + 1}" for i in range(self.view.n)]
                self.prefix = f"10.213.{x}"
                return
        raise NetnsError("every 10.213.X.0/24 is in use on this host")

    # -- set-up -----------------------------------------------------------------------------
    def __enter__(self) -> NetnsWAN:
        check_available()
        self._trap_signals()
        try:
            cleanup_stale()
            self._pick_names()
            self._pick_subnet()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Tear everything down (idempotent). A SIGINT, SIGTERM or SIGHUP meanwhile waits
        until it is done (then exits as the signal asks)."""
        self._closing = True
        if threading.current_thread() is threading.main_thread():
            self._old_handlers.setdefault(signal.SIGINT, signal.getsignal(signal.SIGINT))
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._teardown()
        finally:
            self._restore_signals()
            self._closing = False
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            if deferred == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + deferred)

    def _build(self) -> None:
        view = self.view
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._made_links.append(self.bridge)
        _run(["ip", "link", "set", self.bridge, "up"])
        for i, (ns, veth, addr) in enumerate(zip(self.namespaces, self.veths, self.addresses,
                                                 strict=True)):
            _run(["ip", "netns", "add", ns])
            self._made_ns.append(ns)
            # the peer is born inside the namespace: no half-made pair is ever left in root
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            self._made_links.append(veth)
            _run(["ip", "link", "set", veth, "master", self.bridge])
            _run(["ip", "link", "set", veth, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            self._shape(i)
            if np.isfinite(view.ingress[i]):
                self._shape_ingress(i, float(view.ingress[i]))

    def _tc(self, ns: str | None, *args: str) -> None:
        _run(["tc", *(["-n", ns] if ns else []), *args])

    def _class_args(self, rate: int, ceil: int) -> list[str]:
        return ["htb", "rate", f"{rate}bit", "ceil", f"{ceil}bit", "quantum", str(QUANTUM)]

    def _link_rates(self, i: int, capacity: np.ndarray, egress: float
                    ) -> tuple[int, dict[int, tuple[int, int]]]:
        """(parent rate, {j: (guaranteed rate, ceiling)}) of site i's classes, bits/s.

        A leaf under its guaranteed rate sends without asking its parent (htb), so with an
        egress cap the guarantees are the links' rates scaled to sum to the cap; each link
        borrows up to its own capacity from what the cap leaves.
        """
        ceils = {j: _bits(float(capacity[i, j]), self.time_scale)
                 for j in range(self.view.n) if j != i and self.view.capacity[i, j] > 0}
        total = sum(ceils.values())
        if np.isfinite(egress):
            parent = _bits(egress, self.time_scale)
            share = min(1.0, parent / total) if total else 1.0
            return parent, {j: (max(MIN_BPS, int(c * share)), c) for j, c in ceils.items()}
        return max(total, MIN_BPS), {j: (c, c) for j, c in ceils.items()}

    def _shape(self, i: int) -> None:
        ns = self.namespaces[i]
        parent, links = self._link_rates(i, self.view.capacity, float(self.view.egress[i]))
        self._tc(ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb",
                 "default", "2")
        self._tc(ns, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1",
                 *self._class_args(parent, parent))
        default = int(DEFAULT_BPS)
        self._tc(ns, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:2",
                 *self._class_args(default, default))
        for j, (rate, ceil) in links.items():
            self._tc(ns, "class", "add", "dev", "eth0", "parent", "1:1", "classid",
                     f"1:{j + 16:x}", *self._class_args(rate, ceil))
            self._tc(ns, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                     "prio", "1", "u32", "match", "ip", "dst", f"{self.addresses[j]}/32",
                     "flowid", f"1:{j + 16:x}")
            self._rates[i, j] = ceil

    def _shape_ingress(self, i: int, ingress: float, change: bool = False) -> None:
        rate = _bits(ingress, self.time_scale)
        veth = self.veths[i]
        if not change:
            self._tc(None, "qdisc", "add", "dev", veth, "root", "handle", "1:", "htb",
                     "default", "1")
        self._tc(None, "class", "change" if change else "add", "dev", veth, "parent", "1:",
                 "classid", "1:1", *self._class_args(rate, rate))

    # -- live changes -----------------------------------------------------------------------
    def set_rates(self, capacity: np.ndarray, egress: np.ndarray | None = None,
                  ingress: np.ndarray | None = None) -> None:
        """Change every link's (and site cap's) rate to these true capacities (B/s, unscaled)
        with ``tc class change``; links the view has no class for (capacity 0) stay so."""
        capacity = np.asarray(capacity, dtype=float)
        egress = self.view.egress if egress is None else np.asarray(egress, dtype=float)
        with self._lock:
            for i, ns in enumerate(self.namespaces):
                base = float(self.view.egress[i])
                cap = float(egress[i]) if np.isfinite(base) else np.inf  # no parent to cap
                parent, links = self._link_rates(i, capacity, cap)
                self._tc(ns, "class", "change", "dev", "eth0", "parent", "1:", "classid",
                         "1:1", *self._class_args(parent, parent))
                for j, (rate, ceil) in links.items():
                    self._tc(ns, "class", "change", "dev", "eth0", "parent", "1:1",
                             "classid", f"1:{j + 16:x}", *self._class_args(rate, ceil))
                    self._rates[i, j] = ceil
                if ingress is not None and np.isfinite(self.view.ingress[i]):
                    self._shape_ingress(i, float(ingress[i]), change=True)

    def rate_bps(self, src: int, dst: int) -> int:
        """The htb ceiling of link ``src -> dst`` now, bits/s (wire bytes, scaled)."""
        return self._rates[src, dst]

    def follow(self, dynamics: Dynamics, start: float, stop: threading.Event
               ) -> threading.Thread:
        """Apply ``dynamics`` live: the snapshot at time t from wall-clock
        ``start + t / time_scale`` (``start`` from :func:`time.time`)."""
        def run() -> None:
            for snap in dynamics.timeline(self.view):
                wait = start + snap.time_s / self.time_scale - time.time()
                if (wait > 0 and stop.wait(wait)) or stop.is_set():
                    return
                try:
                    self.set_rates(snap.capacity, snap.egress, snap.ingress)
                except NetnsError as exc:
                    if not stop.is_set():  # (else torn down under us)
                        print(f"netstorm: netns dynamics stopped: {exc}", file=sys.stderr)
                    return

        thread = threading.Thread(target=run, name="netns-dynamics", daemon=True)
        thread.start()
        return thread

    # -- teardown ---------------------------------------------------------------------------
    def _teardown(self) -> None:
        with self._lock:
            for ns in self._made_ns:
                _kill_inside(ns)
            errors = []
            # deleting the root end of a veth pair is synchronous; a deleted namespace's
            # interfaces go later (and never while a process still holds the namespace)
            for name in reversed(self._made_links):
                done = _run(["ip", "link", "del", name], check=False)
                if done.returncode != 0 and name in _links():
                    errors.append(f"{name}: {done.stderr.strip()}")
            for ns in self._made_ns:
                done = _run(["ip", "netns", "del", ns], check=False)
                if done.returncode != 0 and ns in _namespaces():
                    errors.append(f"{ns}: {done.stderr.strip()}")
            self._made_links.clear()
            self._made_ns.clear()
        if errors:
            raise NetnsError(f"netns teardown left {'; '.join(errors)}")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._closing:
            self._deferred = signum  # tearing down already: finish first
            return
        raise SystemExit(128 + signum)

    def _trap_signals(self) -> None:
        """SIGTERM and SIGHUP unwind (``SystemExit``) so the teardown runs; SIGINT already
        does (``KeyboardInterrupt``)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()


def netns_wan(view: NetworkView, time_scale: float = 1.0) -> NetnsWAN:
    """The context manager ``with netns_wan(view, K) as wan:`` (see :class:`NetnsWAN`)."""
    return NetnsWAN(view, time_scale)
