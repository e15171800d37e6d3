"""``netstorm run --emulate netns``: a network namespace per site, links shaped by tc htb.

Root only (and ``ip netns`` must work): skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netstorm.topology import load_topology
from netstorm.view import NetworkView

pytestmark = pytest.mark.timeout(240)

NETSTORM = [sys.executable, "-m", "netstorm"]
MBIT = 1e6 / 8  # B/s


def _netns_works() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"nstest-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_WHY = _netns_works()
needs_netns = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _traces_of(pid: int) -> list[str]:
    """Namespaces and interfaces whose names carry launcher pid ``pid``."""
    names = [line.split()[0] for line in _namespaces().splitlines() if line.strip()]
    names += [line.split(":")[1].strip() for line in _links().splitlines()]
    return [n for n in names
            if n.startswith(f"netstorm-{pid}-") or n.startswith((f"nsb{pid:07d}",
                                                                  f"nsv{pid:07d}"))]


def _dead_pid() -> int:
    for pid in range(99999, 1000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid")


FOUR = """
name: four
units: {bandwidth: Mbit/s, latency: ms}
sites: [{name: a}, {name: b}, {name: c, egress: 300}, {name: d}]
links:
  - {src: a, dst: b, bandwidth: 200, latency: 5, symmetric: true}
  - {src: b, dst: c, bandwidth: 200, latency: 5, symmetric: true}
  - {src: c, dst: d, bandwidth: 200, latency: 5, symmetric: true}
  - {src: d, dst: a, bandwidth: 200, latency: 5, symmetric: true}
  - {src: a, dst: c, bandwidth: 100, latency: 8, symmetric: true}
"""


@needs_netns
def test_ddp_trains_on_four_sites_in_four_namespaces_and_leaves_nothing(tmp_path: Path
                                                                        ) -> None:
    # the built-in training: gloo (DDP's start-up) and the runtime (the hook) both cross
    # the namespaces' veths
    topo = tmp_path / "four.yaml"
    topo.write_text(FOUR)
    logs = tmp_path / "logs"
    proc = subprocess.Popen([*NETSTORM, "run", "--topology", str(topo), "--emulate", "netns",
                             "--iterations", "3", "--json",
                             "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # while it runs: four namespaces of this launcher, each on its own address
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while proc.poll() is None and len(seen) < 4 and time.monotonic() < deadline:
        for ns in [line.split()[0] for line in _namespaces().splitlines() if line.strip()]:
            if ns.startswith(f"netstorm-{proc.pid}-") and ns not in seen:
                addr = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev",
                                       "eth0"], capture_output=True, text=True).stdout.split()
                if "inet" in addr:
                    seen[ns] = addr[addr.index("inet") + 1]
        time.sleep(0.05)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert len(seen) == 4 and len(set(seen.values())) == 4, seen
    doc = json.loads(out)  # stdout is one JSON object
    assert len(doc["iterations"]) == 3 and doc["accuracy"] is not None
    assert "[a] step 3/3: loss" in err  # the first worker's progress line
    for site in "abcd":
        rows = [json.loads(line) for line in (logs / f"{site}.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows if "iteration" in r] == [0, 1, 2]
        assert any("collective" in r for r in rows)  # the hook's all-reduces, logged
    assert sum(doc["bytes"].values()) > 0
    assert _traces_of(proc.pid) == []  # no namespace, bridge or veth of this run is left


SINK = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); n = 0; first = None
while (k := c.recv_into(buf)):
    first = first or time.perf_counter(); n += k
print(n, time.perf_counter() - first, flush=True)
"""
SOURCE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 5201)); block = bytes(1 << 20); left = int(sys.argv[2])
while left > 0:
    s.sendall(block[:min(left, len(block))]); left -= len(block)
s.close()
"""


def _transfer(wan: object, src: int, dst: int, nbytes: int) -> float:
    """One-way TCP transfer src -> dst inside the WAN's namespaces: goodput, B/s."""
    ns, addr = wan.namespaces, wan.addresses  # type: ignore[attr-defined]
    sink = subprocess.Popen(["ip", "netns", "exec", ns[dst], sys.executable, "-c", SINK,
                             addr[dst]], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", ns[src], sys.executable, "-c", SOURCE, addr[dst],
                        str(nbytes)], check=True, timeout=60)
        got, seconds = sink.stdout.readline().split()
        sink.wait(10)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    assert int(got) == nbytes
    return nbytes / float(seconds)


@needs_netns
def test_the_kernel_shapes_a_link_to_its_rate_and_a_site_to_its_caps() -> None:
    from netstorm.runtime.netns import NetnsWAN

    cap = np.zeros((4, 4))
    cap[0, 1] = cap[1, 0] = 200 * MBIT
    cap[2, 1] = cap[1, 2] = cap[2, 0] = 200 * MBIT
    cap[0, 3] = cap[3, 0] = 200 * MBIT
    inf = np.inf
    view = NetworkView(("s0", "s1", "s2", "s3"), cap,
                       egress=np.array([inf, inf, 100 * MBIT, inf]),
                       ingress=np.array([inf, inf, inf, 50 * MBIT]))
    with NetnsWAN(view, time_scale=1.0) as wan:
        names = [*wan.namespaces, wan.bridge, *wan.veths]
        link = _transfer(wan, 0, 1, 20_000_000) / (200 * MBIT)
        egress = _transfer(wan, 2, 1, 10_000_000) / (100 * MBIT)
        ingress = _transfer(wan, 0, 3, 5_000_000) / (50 * MBIT)
    print(f"\nnetns shaping, achieved / configured goodput: link 200 Mbit/s {link:.3f}; "
          f"egress cap 100 Mbit/s (link 200) {egress:.3f}; ingress cap 50 Mbit/s (link 200) "
          f"{ingress:.3f}")
    assert abs(link - 1) < 0.10 and abs(egress - 1) < 0.10 and abs(ingress - 1) < 0.10
    left = _namespaces() + _links()
    assert not [n for n in names if n in left]  # namespaces, bridge and veths all gone


@needs_netns
def test_a_failing_site_ends_the_run_with_its_status_and_tears_down() -> None:
    script = "import os, sys; sys.exit(3 if os.environ['RANK'] == '1' else 0)"
    done = subprocess.Popen([*NETSTORM, "run", "--topology", "random:3:1", "--emulate",
                             "netns", "--", sys.executable, "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done.communicate(timeout=60)
    assert done.returncode == 3 and _traces_of(done.pid) == []


@needs_netns
def test_dynamics_change_the_kernel_rates_live() -> None:
    from netstorm.runtime.netns import NetnsWAN

    cap = np.zeros((2, 2))
    cap[0, 1] = cap[1, 0] = 100 * MBIT
    view = NetworkView(("s0", "s1"), cap)
    with NetnsWAN(view, time_scale=2.0) as wan:
        assert wan.rate_bps(0, 1) == pytest.approx(2 * 100e6 * 1514 / 1448, rel=1e-6)
        wan.set_rates(cap / 4)
        shown = subprocess.run(["tc", "-n", wan.namespaces[0], "class", "show", "dev", "eth0"],
                               capture_output=True, text=True, check=True).stdout
        # the class of link 0 -> 1: 1/4 of 100 Mbit/s, times 2, in Ethernet frames
        m = re.search(r"class htb 1:11 .*? rate (\d+)([KMG]?)bit", shown)
        assert m is not None, shown
        rate = int(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
        assert rate == pytest.approx(2 * 25e6 * 1514 / 1448, rel=1e-3)
        assert wan.rate_bps(0, 1) == pytest.approx(2 * 25e6 * 1514 / 1448, rel=1e-6)


@needs_netns
def test_a_killed_launcher_leaves_resources_the_next_start_removes(tmp_path: Path) -> None:
    from netstorm.runtime.netns import NetnsWAN

    marker = f"netstorm-netns-test-{time.time_ns()}"
    script = f"import time; tag = '{marker}'; time.sleep(120)"
    launcher = subprocess.Popen([*NETSTORM, "run", "--topology", "random:3:1", "--emulate",
                                 "netns", "--log-dir", str(tmp_path / "logs"), "--",
                                 sys.executable, "-c", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_traces_of(launcher.pid)) < 3 + 1 + 3 or _ps().count(marker) < 4:
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.1)
    finally:
        launcher.kill()  # SIGKILL: no teardown; the sites sleep on in their namespaces
        launcher.wait()
    assert len(_traces_of(launcher.pid)) == 7 and marker in _ps()
    # and a by-hand leftover of another dead pid, made half-way (a namespace, no veth yet)
    fake = _dead_pid()
    subprocess.run(["ip", "netns", "add", f"netstorm-{fake}-abc-0"], check=True)
    view = NetworkView(("x", "y"), np.array([[0, 1e6], [1e6, 0]]))
    with NetnsWAN(view) as wan:
        assert _traces_of(launcher.pid) == [] and _traces_of(fake) == []
        assert len(_traces_of(os.getpid())) == 2 + 1 + 2  # its own
        assert wan.pid == os.getpid()
    deadline = time.monotonic() + 10
    while marker in _ps():  # the orphaned sites were killed with their namespaces
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _traces_of(os.getpid()) == []


def _ps() -> str:
    # -ww: without it ps cuts lines at 80 columns when its output is not a terminal
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout


@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_launcher_stops_the_sites_and_tears_down(sig: int, tmp_path: Path) -> None:
    marker = f"netstorm-netns-test-{time.time_ns()}"
    script = f"import time; tag = '{marker}'; time.sleep(120)"
    launcher = subprocess.Popen([*NETSTORM, "run", "--topology", "random:3:1", "--emulate",
                                 "netns", "--log-dir", str(tmp_path / "logs"), "--",
                                 sys.executable, "-c", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _ps().count(marker) < 4:  # the launcher and its 3 sites
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.1)
    finally:
        launcher.send_signal(sig)
        _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == (130 if sig == signal.SIGINT else 128 + sig), err[-2000:]
    assert _traces_of(launcher.pid) == [] and marker not in _ps()


@pytest.mark.parametrize("lack", ["root", "tc"])
def test_without_root_or_iproute2_netns_mode_is_one_line_and_exit_2(
        lack: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from netstorm.runtime import netns

    from netstorm.cli import main

    if lack == "root":
        monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    else:
        real = shutil.which
        monkeypatch.setattr(netns.shutil, "which", lambda t: None if t == "tc" else real(t))
    status = main(["run", "--topology", "random:2:1", "--emulate", "netns"])
    err = capsys.readouterr().err
    assert status == 2 and err.strip().count("\n") == 0
    assert "needs root and iproute2" in err and ("not running as root" if lack == "root"
                                                   else "tc not found") in err


@needs_netns
def test_measure_times_kernel_shaped_links_at_their_receivers(tmp_path: Path) -> None:
    """`netstorm measure` between namespaces: each link's rate as its receiver saw it (a
    sender's write time overstates a shaped link by what socket buffers absorb)."""
    topo = tmp_path / "four.yaml"
    topo.write_text(FOUR)
    out = tmp_path / "measured.yaml"
    done = subprocess.run([*NETSTORM, "run", "--topology", str(topo), "--emulate", "netns",
                           "--", sys.executable, "-m", "netstorm.runtime.measure", "--out",
                           str(out), "--seconds", "4"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    want, got = load_topology(topo), load_topology(out)
    links = want.capacity > 0
    ratio = got.capacity[links] / want.capacity[links]
    # never overstated (a sender's timing is, 1.5x-150x), typically exact; a receiver the
    # loaded host schedules late understates (0.80 seen once under the full suite)
    assert np.all(ratio < 1.1) and np.all(ratio > 0.7), ratio.round(3)
    assert abs(float(np.median(ratio)) - 1) < 0.05, ratio.round(3)
