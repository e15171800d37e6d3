"""Everything a site process is configured by, read in one place (environment variables).

======================== ==================================================================
``RANK``, ``WORLD_SIZE`` This process's site index in the topology, and the number of sites
                         (relay-only sites included): torchrun's variables.
``MASTER_ADDR``          The coordinator's (rank 0's) host; ``MASTER_PORT`` its port, or
                         ``MASTER_PORT + 1`` under torchrun (whose agent holds
                         ``MASTER_PORT``); ``NETSTORM_COORD_PORT`` overrides both.
``NETSTORM_SECRET``      Shared secret every connection authenticates with (or
                         ``NETSTORM_SECRET_FILE``, a file holding it).
``NETSTORM_BIND``        Address this site's data listener binds (default: ``MASTER_ADDR``
                         on rank 0, else ``127.0.0.1`` when ``MASTER_ADDR`` is loopback,
                         else ``0.0.0.0``).
``NETSTORM_ADVERTISE``   Address peers reach this site at (default: the bind address, or
                         this host's name when binding every interface).
``NETSTORM_PORT``        Data port of ranks other than 0 (default 0: any free port).
``NETSTORM_TIMEOUT``     Seconds before a silent peer is an error (default 60).
``NETSTORM_CONNECTIONS`` TCP connections per link (default 1).
``NETSTORM_EMULATE``     ``inprocess`` (shape every link as the topology says), ``none``, or
                         ``netns`` (the kernel shapes, set up by ``netstorm run --emulate
                         netns``; the site only adds the links' delays).
``NETSTORM_TIME_SCALE``  Emulated rates times K, latencies and dynamics times 1/K.
``NETSTORM_DYNAMICS``    Dynamics applied live to the emulated links (DESIGN 5.2).
``NETSTORM_MAX_FRAME``   Largest payload accepted, bytes (default 1 GiB).
``NETSTORM_WIRE``        ``fp32`` (default), ``fp16`` or ``bf16``: how gradients travel (sums
                         stay float32; every site must use the same).
``NETSTORM_ELASTIC``     ``1``: a site that dies or goes silent leaves the run, and the
                         others go on without it (:mod:`netstorm.runtime.elastic`).
``NETSTORM_JOIN``        ``1`` (elastic runs): this site was not in the run (or left it) and
                         joins it at the workers' next iteration boundary, receiving their
                         state first (``netstorm run --rejoin`` sets it on a restarted site).
``NETSTORM_TOPOLOGY``    The topology ``init()`` loads when not given one; likewise
                         ``NETSTORM_PLANNER`` and ``NETSTORM_POLICY`` (``netstorm run`` sets
                         all three).
``NETSTORM_LOG``         JSON lines file this site appends to: one line per collective
                         (time, plan version, bytes, busy time and rate per outgoing link)
                         and one per plan switch (``netstorm run --log-dir`` sets it).
``NETSTORM_TLS_CA``      A CA bundle (PEM): when set, every connection (data and control)
                         runs over mutual TLS (1.2 or later) and the peer's certificate must
                         chain to it; the HMAC handshake still runs inside.
``NETSTORM_TLS_CERT``    This site's certificate chain (PEM), and ``NETSTORM_TLS_KEY`` its
                         unencrypted private key (PEM): both required with
                         ``NETSTORM_TLS_CA``.
======================== ==================================================================
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from netstorm.errors import NetstormError

__all__ = ["EMULATE_MODES", "TLS_ENV", "WIRE_DTYPES", "RuntimeConfig", "TlsContexts",
           "tls_contexts"]

EMULATE_MODES = ("inprocess", "netns", "none")
WIRE_DTYPES = ("fp32", "fp16", "bf16")


class ConfigError(NetstormError, ValueError):
    """The runtime's environment is incomplete or malformed."""


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        if default is None:
            raise ConfigError(f"{key} is not set (netstorm run and torchrun set it)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {raw}")
    return value


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


TLS_ENV = ("NETSTORM_TLS_CA", "NETSTORM_TLS_CERT", "NETSTORM_TLS_KEY")


@dataclass(frozen=True)
class TlsContexts:
    """The TLS contexts of one site: ``client`` wraps the connections it makes, ``server``
    the ones it accepts. Both present this site's certificate and require the peer's."""

    client: ssl.SSLContext
    server: ssl.SSLContext


def _read_pem(key: str, path: str, marker: bytes, what: str) -> None:
    """Fail with one line naming ``key`` unless ``path`` is a readable file holding
    ``marker`` (errors ssl would not pin on one of the three files)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{key}={path}: cannot read the {what}: "
                          f"{exc.strerror or exc}") from exc
    if marker not in data:
        raise ConfigError(f"{key}={path}: no PEM {what} in it (no '-----BEGIN "
                          f"...{marker.decode()}' line)")


def _encrypted_key(path: str) -> Callable[[], str]:
    def ask() -> str:  # without a callback OpenSSL would prompt on the terminal
        raise ConfigError(f"NETSTORM_TLS_KEY={path}: the private key is encrypted; give an "
                          "unencrypted one (openssl pkey -in KEY -out PLAIN)")
    return ask


def tls_contexts(ca: str, cert: str, key: str) -> TlsContexts:
    """Build a site's mutual-TLS contexts from a CA bundle, its certificate chain and key.

    Both sides verify the peer's certificate chain against ``ca`` (the server requires a
    client certificate). Host names are not checked: sites are often addressed by IP, and a
    site is authenticated by a certificate from the run's CA plus the HMAC shared-secret
    handshake that still runs inside TLS. TLS 1.2 at least (1.3 when both sides have it);
    no session tickets (nothing resumes a session, and a ticket a send-only connection
    never reads would turn its close into a reset).

    Raises
    ------
    ConfigError
        A file is missing, unreadable or not what it should be (one line naming the
        variable).
    """
    _read_pem("NETSTORM_TLS_CA", ca, b"CERTIFICATE-----", "CA certificate")
    _read_pem("NETSTORM_TLS_CERT", cert, b"CERTIFICATE-----", "certificate")
    _read_pem("NETSTORM_TLS_KEY", key, b"PRIVATE KEY-----", "private key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # see above: the CA and the shared secret authenticate
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.num_tickets = 0
    for ctx in (client, server):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"NETSTORM_TLS_CA={ca}: not a usable CA bundle "
                              f"({getattr(exc, 'reason', None) or exc})") from exc
        try:
            ctx.load_cert_chain(cert, key, password=_encrypted_key(key))
        except (ssl.SSLError, OSError) as exc:
            reason = str(getattr(exc, "reason", None) or exc)
            if "KEY_VALUES_MISMATCH" in reason:
                raise ConfigError(f"NETSTORM_TLS_KEY={key}: the private key does not match "
                                  f"NETSTORM_TLS_CERT={cert}") from exc
            raise ConfigError(f"NETSTORM_TLS_CERT={cert}, NETSTORM_TLS_KEY={key}: the "
                              f"certificate and key do not load ({reason})") from exc
    return TlsContexts(client=client, server=server)


def _tls(env: Mapping[str, str]) -> TlsContexts | None:
    ca, cert, key = (env.get(k) or None for k in TLS_ENV)
    if ca is None:
        for name, value in zip(TLS_ENV[1:], (cert, key), strict=True):
            if value is not None:
                raise ConfigError(f"{name} is set but NETSTORM_TLS_CA is not (TLS is on when "
                                  "NETSTORM_TLS_CA names the CA peers are checked against)")
        return None
    for name, value in zip(TLS_ENV[1:], (cert, key), strict=True):
        if value is None:
            raise ConfigError(f"{name} is not set (NETSTORM_TLS_CA is set, so TLS is on: "
                              "NETSTORM_TLS_CERT and NETSTORM_TLS_KEY must name this site's "
                              "certificate and private key)")
    assert cert is not None and key is not None
    return tls_contexts(ca, cert, key)


def _coordinator_port(env: Mapping[str, str]) -> int:
    if env.get("NETSTORM_COORD_PORT"):
        return _int(env, "NETSTORM_COORD_PORT")
    # torchrun's agent serves its own store on MASTER_PORT (TORCHELASTIC_RUN_ID is its mark)
    return _int(env, "MASTER_PORT") + (1 if env.get("TORCHELASTIC_RUN_ID") else 0)


@dataclass(frozen=True)
class RuntimeConfig:
    """A site process's settings (see the module docstring for the variables)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    secret: bytes
    bind: str
    advertise: str
    port: int = 0
    timeout_s: float = 60.0
    emulate: str = "inprocess"
    time_scale: float = 1.0
    dynamics: str | None = None
    max_frame: int = 1 << 30
    log: str | None = None
    connections: int = 1
    wire: str = "fp32"
    tls: TlsContexts | None = None  # mutual TLS on every connection (NETSTORM_TLS_CA)
    elastic: bool = False
    join: bool = False  # enter a running elastic run (NETSTORM_JOIN)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"RANK {self.rank} is outside 0..{self.world_size - 1}")
        if self.emulate not in EMULATE_MODES:
            raise ConfigError(f"NETSTORM_EMULATE must be one of {', '.join(EMULATE_MODES)}, "
                              f"got {self.emulate!r}")
        if self.wire not in WIRE_DTYPES:
            raise ConfigError(f"NETSTORM_WIRE must be one of {', '.join(WIRE_DTYPES)}, "
                              f"got {self.wire!r}")
        if self.connections < 1:
            raise ConfigError(f"NETSTORM_CONNECTIONS must be >= 1, got {self.connections}")
        if self.join and not self.elastic:
            raise ConfigError("NETSTORM_JOIN needs NETSTORM_ELASTIC: only an elastic run "
                              "takes a site in while it runs")
        if self.join and self.rank == 0:
            raise ConfigError("NETSTORM_JOIN: rank 0 serves the coordinator; it starts the "
                              "run and cannot join it")
        if not 0 < self.master_port < 65536:
            raise ConfigError(f"MASTER_PORT {self.master_port} is not a TCP port")

    @property
    def listen_port(self) -> int:
        """The port this site's listener binds: ``MASTER_PORT`` on rank 0."""
        return self.master_port if self.rank == 0 else self.port

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> RuntimeConfig:
        """Read the configuration; ``overrides`` (non-``None`` keyword values) win.

        Raises
        ------
        ConfigError
            A variable is missing or malformed (one line naming it).
        """
        from .auth import load_secret

        env = os.environ if env is None else env
        given = {k: v for k, v in overrides.items() if v is not None}
        rank = int(given.pop("rank")) if "rank" in given else _int(env, "RANK")  # type: ignore[call-overload]
        master = str(given.pop("master_addr", env.get("MASTER_ADDR") or "127.0.0.1"))
        bind = env.get("NETSTORM_BIND") or (
            master if rank == 0 or _loopback(master) else "0.0.0.0")
        advertise = env.get("NETSTORM_ADVERTISE") or (
            socket.gethostname() if bind == "0.0.0.0" else bind)
        readers: dict[str, Callable[[], object]] = {
            "world_size": lambda: _int(env, "WORLD_SIZE"),
            "master_port": lambda: _coordinator_port(env),
            "port": lambda: _int(env, "NETSTORM_PORT", 0),
            "timeout_s": lambda: _float(env, "NETSTORM_TIMEOUT", 60.0),
            "emulate": lambda: env.get("NETSTORM_EMULATE") or "inprocess",
            "time_scale": lambda: _float(env, "NETSTORM_TIME_SCALE", 1.0),
            "dynamics": lambda: env.get("NETSTORM_DYNAMICS") or None,
            "max_frame": lambda: _int(env, "NETSTORM_MAX_FRAME", 1 << 30),
            "log": lambda: env.get("NETSTORM_LOG") or None,
            "connections": lambda: _int(env, "NETSTORM_CONNECTIONS", 1),
            "wire": lambda: env.get("NETSTORM_WIRE") or "fp32",
            "elastic": lambda: env.get("NETSTORM_ELASTIC", "") not in ("", "0"),
            "join": lambda: env.get("NETSTORM_JOIN", "") not in ("", "0"),
            "secret": lambda: load_secret(env),
            "tls": lambda: _tls(env),
        }
        values: dict[str, object] = {"rank": rank, "master_addr": master, "bind": bind,
                                     "advertise": advertise}
        values.update(given)  # an override is not read from the environment at all
        for key, read in readers.items():
            if key not in values:
                values[key] = read()
        return cls(**values)  # type: ignore[arg-type]
