"""Optional mutual TLS on every runtime connection (``NETSTORM_TLS_CA``, ``NETSTORM_TLS_CERT``,
``NETSTORM_TLS_KEY``): sites in threads on loopback with certificates made at run time by the
``openssl`` command line. An all-reduce over TLS gives numpy's mean on every worker, on
sockets that really are TLS; a certificate from another CA, a plain client at a TLS site and
a TLS client at a plain site are refused with one error naming the peer, never a hang; a bad
TLS environment is one ConfigError line naming the variable."""

from __future__ import annotations

import gc
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from netstorm.runtime import RuntimeConfig, Site
from netstorm.runtime.auth import client_handshake
from netstorm.runtime.config import ConfigError, TlsContexts, tls_contexts
from netstorm.runtime.links import Connection, accept, connect

from netstorm import NetworkView
from netstorm.builtin_topologies import builtin
from netstorm.errors import NetstormError, PeerError
from tests.runtime.harness import SECRET, config, free_port, in_threads

pytestmark = pytest.mark.timeout(120)

OPENSSL = shutil.which("openssl")
LEAF_EXTENSIONS = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")


class Pki:
    """Certificates in one folder: CAs ``ca`` and ``rogue``; sites ``site-a`` and ``site-b``
    signed by ``ca``, ``site-r`` signed by ``rogue``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._contexts: dict[tuple[str, str], TlsContexts] = {}

    def _run(self, *args: str) -> None:
        subprocess.run([str(OPENSSL), *args], cwd=self.folder, check=True,
                       capture_output=True, timeout=30)

    def make_ca(self, name: str) -> None:
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-noenc", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                  "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def make_site(self, name: str, ca: str) -> None:
        (self.folder / "leaf.cnf").write_text(LEAF_EXTENSIONS)
        self._run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-noenc", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                  f"/CN={name}")
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                  f"{ca}.key", "-set_serial", str(abs(hash(name)) + 1), "-days", "2",
                  "-extfile", "leaf.cnf", "-out", f"{name}.pem")

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def tls(self, site: str, ca: str = "ca") -> TlsContexts:
        """The contexts of a site holding ``site``'s certificate and trusting ``ca``."""
        key = (site, ca)
        if key not in self._contexts:
            self._contexts[key] = tls_contexts(self.path(f"{ca}.pem"), self.path(f"{site}.pem"),
                                               self.path(f"{site}.key"))
        return self._contexts[key]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("making test certificates needs the openssl command line (not on PATH)")
    out = Pki(tmp_path_factory.mktemp("pki"))
    for ca in ("ca", "rogue"):
        out.make_ca(ca)
    for site, ca in (("site-a", "ca"), ("site-b", "ca"), ("site-r", "rogue")):
        out.make_site(site, ca)
    return out


class Lines(logging.Handler):
    """The runtime's log messages, for tests that wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.lines.append(record.getMessage())
            self._cond.notify_all()

    def wait_for(self, test: Callable[[str], bool], within: float) -> str | None:
        deadline = time.monotonic() + within
        with self._cond:
            while True:
                for line in self.lines:
                    if test(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


@pytest.fixture
def runtime_log() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("netstorm.runtime")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Every thread a test started has ended shortly after it (sites closed their links)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while (alive := [t.name for t in threading.enumerate() if t not in before and t.is_alive()]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"threads left running: {alive}"


def grads(view: NetworkView, numel: int, it: int) -> dict[int, np.ndarray]:
    return {w: np.random.default_rng((w, it)).standard_normal(numel, dtype=np.float32)
            for w in view.workers}


def peer_name(sock: socket.socket) -> str:
    assert isinstance(sock, ssl.SSLSocket), f"not a TLS socket: {sock!r}"
    cert = sock.getpeercert()
    assert cert, "the peer presented no certificate"
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cert["subject"])
    names = {key: value for rdn in subject for key, value in rdn}
    return str(names["commonName"])


def run_tls_sites(view: NetworkView, pki: Pki, body: Callable[[Site], Any],
                  certs: dict[int, str], **cfg: Any) -> dict[int, Any]:
    """Every site in a thread, site ``r`` with certificate ``certs[r]`` (``site-r``'s trusts
    the ``ca`` too); returns what ``body(site)`` returned on each."""
    port = free_port()

    def one(rank: int) -> Any:
        site = Site(config(view, rank, port, tls=pki.tls(certs[rank]), **cfg), view, "ring")
        try:
            return body(site)
        finally:
            site.close()

    return in_threads(view.n, one, timeout=60)


@pytest.mark.parametrize("connections", [1, 2])
def test_three_sites_all_reduce_exactly_over_tls(pki: Pki, connections: int,
                                                  no_leftovers: None) -> None:
    view = builtin("random:3:1")
    numel = 300_000  # 1.2 MB: many TLS records, more than a socket buffer holds

    def body(site: Site) -> tuple[list[np.ndarray], list[tuple[str, str, str]]]:
        out = []
        for it in range(2):
            buf = grads(view, numel, it)[site.rank]
            site.allreduce(buf)
            out.append(buf)
        socks = [("control", site.client.conn)]
        socks += [("data out", c) for link in site.sender.links.values() for c in link.conns]
        socks += [("data in", c) for c in site.inbound.connections]
        seen = []
        for kind, conn in socks:
            assert isinstance(conn.sock, ssl.SSLSocket), f"{kind} {conn.name}: not TLS"
            seen.append((kind, str(conn.sock.version()), peer_name(conn.sock)))
        return out, seen

    results = run_tls_sites(view, pki, body, {0: "site-a", 1: "site-b", 2: "site-b"},
                            connections=connections)
    for it in range(2):
        g = grads(view, numel, it)
        want = np.mean([g[w] for w in view.workers], axis=0, dtype=np.float64)
        first = results[0][0][it]
        np.testing.assert_allclose(first, want, rtol=0, atol=2e-6)
        for w in view.workers:
            assert np.array_equal(results[w][0][it], first), f"worker {w} differs"
    for rank, (_, seen) in results.items():
        kinds = {kind for kind, _, _ in seen}
        assert {"control", "data out", "data in"} <= kinds, (rank, seen)
        assert all(version in ("TLSv1.2", "TLSv1.3") for _, version, _ in seen), seen
        # every certificate a site saw came from the site it talks to
        assert all(cn in ("site-a", "site-b") for _, _, cn in seen), seen
        control = next(cn for kind, _, cn in seen if kind == "control")
        assert control == "site-a"  # the coordinator is rank 0


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    return sock


def both_ends(client: TlsContexts | None, server: TlsContexts | None, *, timeout: float = 5,
              ) -> tuple[Connection | BaseException, Connection | BaseException, int, float]:
    """``connect`` and ``accept`` over loopback: each end's connection or error, the client's
    port, and the seconds it all took."""
    box: dict[str, Any] = {}
    began = time.monotonic()
    with listener() as srv:
        def serve() -> None:
            raw, addr = srv.accept()
            box["port"] = addr[1]
            try:
                box["server"] = accept(raw, rank=0, secret=SECRET, timeout=timeout,
                                       names=["site-a", "site-b"], tls=server)
            except BaseException as exc:
                box["server"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            box["client"] = connect(srv.getsockname(), rank=1, secret=SECRET, timeout=timeout,
                                    name="site site-b (rank 1)", tls=client)
        except BaseException as exc:
            box["client"] = exc
        thread.join(timeout + 5)
        assert not thread.is_alive(), "accept() hung"
    return box["client"], box["server"], box["port"], time.monotonic() - began


def close(*ends: Connection | BaseException) -> None:
    for end in ends:
        if isinstance(end, Connection):
            end.close()


def test_a_tls_connection_is_full_duplex(pki: Pki) -> None:
    """Both ends write 24 MB while they read 24 MB, each from two threads: OpenSSL may not run
    two calls on one connection at once, and a writer must not block a reader (or both ends
    would stall with full socket buffers)."""
    client, server, _, _ = both_ends(pki.tls("site-b"), pki.tls("site-a"))
    assert isinstance(client, Connection) and isinstance(server, Connection), (client, server)
    size = 24 << 20
    payload = {end: np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)
               for i, end in enumerate((client, server))}
    got: dict[Connection, np.ndarray] = {}
    errors: list[BaseException] = []

    def write(end: Connection) -> None:
        try:
            for part in np.array_split(payload[end], 7):
                end.write(part.data)
        except BaseException as exc:
            errors.append(exc)

    def read(end: Connection) -> None:
        try:
            buf = np.empty(size, np.uint8)
            end.read_into(buf.data)
            got[end] = buf
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=fn, args=(end,), daemon=True)
                   for end in (client, server) for fn in (write, read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a TLS connection stalled"
        assert not errors, errors
        assert np.array_equal(got[server], payload[client])
        assert np.array_equal(got[client], payload[server])
    finally:
        close(client, server)


@pytest.mark.parametrize("rogue", ["client", "server"])
def test_a_certificate_from_another_ca_is_refused(pki: Pki, rogue: str) -> None:
    client_tls = pki.tls("site-r" if rogue == "client" else "site-b")
    server_tls = pki.tls("site-r" if rogue == "server" else "site-a")
    client, server, port, took = both_ends(client_tls, server_tls)
    try:
        assert isinstance(client, PeerError), client
        assert isinstance(server, PeerError), server
        assert took < 5, f"took {took:.1f} s"
        assert str(client).startswith("site site-b (rank 1): at 127.0.0.1:"), client
        assert str(server).startswith(f"peer 127.0.0.1:{port}: TLS handshake failed"), server
        # the side that checked the rogue certificate says so
        checker = server if rogue == "client" else client
        assert "does not verify against NETSTORM_TLS_CA" in str(checker), checker
        assert "\n" not in str(client) + str(server)
    finally:
        close(client, server)


def join_with_a_rogue_certificate(pki: Pki, timeout: float,
                                  ) -> tuple[dict[int, Any], float, list[str]]:
    """Sites r0 (certificate from the CA) and r1 (from another CA) start; returns each one's
    error, the seconds it took, and the threads of the failed r1 still running (then stops
    them: the test process must go on clean)."""
    view = builtin("random:2:1")
    port = free_port()

    def one(rank: int) -> BaseException | None:
        cert = "site-r" if rank == 1 else "site-a"
        try:
            Site(config(view, rank, port, tls=pki.tls(cert), timeout_s=timeout), view, "ring")
        except NetstormError as exc:
            return exc
        return None

    began = time.monotonic()
    errors = in_threads(2, one, timeout=3 * timeout)
    took = time.monotonic() - began
    time.sleep(0.5)
    leaked = sorted(t.name for t in threading.enumerate() if t.name.startswith("r1:"))
    for obj in gc.get_objects():  # a Site whose __init__ raised is reachable from its threads
        if isinstance(obj, Site) and obj.config.master_port == port:
            obj._stop_threads()
    return errors, took, leaked


def test_a_site_with_a_certificate_from_another_ca_cannot_join(
        pki: Pki, runtime_log: Lines, no_leftovers: None) -> None:
    timeout = 4.0
    errors, took, _ = join_with_a_rogue_certificate(pki, timeout)
    assert took < 2 * timeout + 3, took
    assert isinstance(errors[1], PeerError), errors
    assert str(errors[1]).startswith("the coordinator (site r0, rank 0, 127.0.0.1:"), errors[1]
    assert "TLS refused" in str(errors[1]), errors[1]
    assert isinstance(errors[0], NetstormError), errors  # nobody joined: a clear error
    refused = runtime_log.wait_for(lambda m: "refused a connection" in m
                                   and "does not verify against NETSTORM_TLS_CA" in m, 3)
    assert refused and refused.startswith("site r0: "), runtime_log.lines


def test_a_site_that_fails_to_join_stops_its_threads(pki: Pki) -> None:
    _, _, leaked = join_with_a_rogue_certificate(pki, 2.0)
    assert leaked == []


def test_a_plain_client_at_a_tls_site_is_refused_and_logged(
        pki: Pki, runtime_log: Lines, no_leftovers: None) -> None:
    view = builtin("random:2:1")
    numel = 5000

    def body(site: Site) -> tuple[str, str | None]:
        message, logged = "", None
        if site.rank == 1:
            with socket.create_connection(site.sender.addresses[0], timeout=5) as sock:
                port = sock.getsockname()[1]
                with pytest.raises(PeerError) as caught:
                    client_handshake(sock, SECRET, 1, timeout=5)
                message = str(caught.value)
            logged = runtime_log.wait_for(lambda m: "refused a connection" in m
                                          and f"127.0.0.1:{port}:" in m, 5)
        buf = np.full(numel, site.rank + 1.0, np.float32)
        site.allreduce(buf)  # the site still serves
        assert np.array_equal(buf, np.full(numel, 1.5, np.float32))
        return message, logged

    results = run_tls_sites(view, pki, body, {0: "site-a", 1: "site-b"})
    message, logged = results[1]
    assert "speaks TLS and this side does not" in message or "closed the connection" in message
    assert logged is not None and "TLS handshake failed" in logged, runtime_log.lines


def test_a_tls_client_at_a_plain_site_is_refused_and_logged(
        pki: Pki, runtime_log: Lines, no_leftovers: None) -> None:
    view = builtin("random:2:1")
    port = free_port()

    def one(rank: int) -> str:
        site = Site(config(view, rank, port), view, "ring")  # no TLS
        try:
            message = ""
            if rank == 1:
                with pytest.raises(PeerError) as caught:
                    connect(site.sender.addresses[0], rank=1, secret=SECRET, timeout=5,
                            name="site r0 (rank 0)", tls=pki.tls("site-b"))
                message = str(caught.value)
            buf = np.ones(100, np.float32)
            site.allreduce(buf)
            return message
        finally:
            site.close()

    message = in_threads(2, one, timeout=60)[1]
    assert message.startswith("site r0 (rank 0): at 127.0.0.1:"), message
    assert "TLS handshake failed" in message and "without TLS" in message, message
    assert runtime_log.wait_for(lambda m: "refused a connection" in m
                                and "speaks TLS and this side does not" in m, 5), \
        runtime_log.lines


def test_a_silent_client_times_out_the_tls_handshake(pki: Pki) -> None:
    with listener() as srv, socket.create_connection(srv.getsockname()) as silent:
        raw, _ = srv.accept()
        began = time.monotonic()
        with pytest.raises(PeerError, match=r"^peer 127\.0\.0\.1:\d+: TLS handshake timed out "
                                            r"after 0\.5 s$"):
            accept(raw, rank=0, secret=SECRET, timeout=0.5, tls=pki.tls("site-a"))
        assert time.monotonic() - began < 3
        silent.settimeout(3)
        assert silent.recv(1) == b""  # closed


def base_env(**tls: str) -> dict[str, str]:
    return {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999",
            "NETSTORM_SECRET": "s", **tls}


def test_tls_is_off_without_a_ca_and_on_with_one(pki: Pki) -> None:
    assert RuntimeConfig.from_env(base_env()).tls is None
    cfg = RuntimeConfig.from_env(base_env(
        NETSTORM_TLS_CA=pki.path("ca.pem"), NETSTORM_TLS_CERT=pki.path("site-a.pem"),
        NETSTORM_TLS_KEY=pki.path("site-a.key")))
    assert cfg.tls is not None
    assert cfg.tls.server.verify_mode == ssl.CERT_REQUIRED
    assert cfg.tls.client.verify_mode == ssl.CERT_REQUIRED
    assert cfg.tls.client.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("case", ["no key", "no cert", "missing ca", "ca not pem", "ca corrupt",
                                  "cert without ca", "key mismatch", "encrypted key"])
def test_a_bad_tls_environment_is_one_line_naming_the_variable(pki: Pki, case: str) -> None:
    env = {"NETSTORM_TLS_CA": pki.path("ca.pem"), "NETSTORM_TLS_CERT": pki.path("site-a.pem"),
           "NETSTORM_TLS_KEY": pki.path("site-a.key")}
    folder = Path(pki.folder)
    if case == "no key":
        del env["NETSTORM_TLS_KEY"]
        want = "NETSTORM_TLS_KEY is not set"
    elif case == "no cert":
        del env["NETSTORM_TLS_CERT"]
        want = "NETSTORM_TLS_CERT is not set"
    elif case == "missing ca":
        env["NETSTORM_TLS_CA"] = str(folder / "nowhere.pem")
        want = f"NETSTORM_TLS_CA={folder / 'nowhere.pem'}: cannot read the CA certificate"
    elif case == "ca not pem":
        env["NETSTORM_TLS_CA"] = pki.path("site-a.key")
        want = "NETSTORM_TLS_CA="
    elif case == "ca corrupt":
        (folder / "corrupt.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n"
                                            "-----END CERTIFICATE-----\n")
        env["NETSTORM_TLS_CA"] = str(folder / "corrupt.pem")
        want = "NETSTORM_TLS_CA="
    elif case == "cert without ca":
        del env["NETSTORM_TLS_CA"]
        want = "NETSTORM_TLS_CERT is set but NETSTORM_TLS_CA is not"
    elif case == "key mismatch":
        env["NETSTORM_TLS_KEY"] = pki.path("site-b.key")
        want = "NETSTORM_TLS_KEY="
    else:
        pki._run("pkey", "-in", "site-a.key", "-aes256", "-passout", "pass:secret", "-out",
                 "encrypted.key")
        env["NETSTORM_TLS_KEY"] = pki.path("encrypted.key")
        want = "NETSTORM_TLS_KEY="
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env(base_env(**env))
    message = str(caught.value)
    assert message.startswith(want), message
    assert "\n" not in message, message
    if case == "encrypted key":
        assert "encrypted" in message, message
    if case == "key mismatch":
        assert "does not match" in message, message
