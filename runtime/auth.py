"""Mutual HMAC-SHA256 challenge-response authentication on a shared secret (DESIGN 9).

Every runtime connection starts with this handshake; a peer that does not know the secret is
dropped before any frame is read. Both sides run the same three steps:

1. send a fixed-size hello (:data:`HELLO`: magic ``b"NSHS"``, protocol, own rank, a fresh
   32-byte random nonce), and read the peer's; a wrong magic is rejected after 4 bytes, so a
   stray client (a port scanner, an HTTP request) is dropped at once;
2. send the proof ``HMAC-SHA256(secret, b"netstorm-v1" + role + peer_nonce + own_nonce +
   own_rank)`` (role ``b"C"`` for the connecting side, ``b"S"`` for the accepting side; the
   rank as 4 big-endian bytes), and read the peer's;
3. recompute the peer's proof and compare with :func:`hmac.compare_digest`.

Both nonces bind a proof to this connection (no replay); the role stops a peer from reflecting
our own proof back to us; the rank binds the identity the peer claims. Both sides send before
they read, so neither waits on the other, and a wrong secret fails on both sides. The secret
never crosses the wire. This authenticates; it does not encrypt (optional TLS,
``NETSTORM_TLS_CA``, wraps the socket before this handshake runs; see
:mod:`netstorm.runtime.links`).

The only socket code of the wire layer is here: :func:`client_handshake` and
:func:`server_handshake` translate ``OSError`` and timeouts into :class:`netstorm.PeerError`
naming the peer, with ``raise ... from exc``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import struct
import time
from collections.abc import Mapping

from netstorm.errors import PeerError, ProtocolError

__all__ = [
    "HELLO",
    "HELLO_MAGIC",
    "HELLO_PROTOCOL",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "client_handshake",
    "load_secret",
    "proof",
    "server_handshake",
]

SECRET_ENV = "NETSTORM_SECRET"
SECRET_FILE_ENV = "NETSTORM_SECRET_FILE"
HELLO_MAGIC = b"NSHS"
HELLO_PROTOCOL = 1
NONCE_SIZE = 32
PROOF_SIZE = hashlib.sha256().digest_size
HELLO = struct.Struct(f"!4sBI{NONCE_SIZE}s")
"""The hello: magic, protocol (u8), rank (u32), nonce (network byte order, 41 bytes)."""
_DOMAIN = b"netstorm-v1"
_RANK = struct.Struct("!I")


def load_secret(env: Mapping[str, str] = os.environ) -> bytes:
    """Return the shared secret from the environment.

    Parameters
    ----------
    env : Mapping[str, str], optional
        The environment (``os.environ`` by default). ``NETSTORM_SECRET`` holds the secret
        itself; otherwise ``NETSTORM_SECRET_FILE`` names a file holding it (trailing newlines
        are stripped). ``NETSTORM_SECRET`` wins when both are set.

    Returns
    -------
    bytes
        The secret.

    Raises
    ------
    ProtocolError
        If neither variable is set, the file cannot be read, or the secret is empty.
    """
    value = env.get(SECRET_ENV)
    if value is not None:
        secret = os.fsencode(value)
        source = SECRET_ENV
    elif (path := env.get(SECRET_FILE_ENV)) is not None:
        source = f"{SECRET_FILE_ENV}={path}"
        try:
            with open(path, "rb") as f:
                secret = f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise ProtocolError(f"{source}: cannot read the secret file: "
                                f"{exc.strerror or exc}") from exc
    else:
        raise ProtocolError(f"no shared secret: set {SECRET_ENV} to a secret string (the same "
                            f"on every site), or {SECRET_FILE_ENV} to a file holding it")
    if not secret:
        raise ProtocolError(f"{source}: the shared secret is empty; set {SECRET_ENV} to a "
                            "non-empty secret (the same on every site)")
    return secret


def proof(secret: bytes, role: bytes, peer_nonce: bytes, own_nonce: bytes, rank: int) -> bytes:
    """Return the 32-byte proof that the side in ``role`` knows ``secret``.

    Parameters
    ----------
    secret : bytes
        The shared secret.
    role : bytes
        ``b"C"`` for the connecting side, ``b"S"`` for the accepting side.
    peer_nonce, own_nonce : bytes
        The other side's and the proving side's nonces.
    rank : int
        The proving side's rank.

    Returns
    -------
    bytes
        ``HMAC-SHA256(secret, b"netstorm-v1" + role + peer_nonce + own_nonce + rank)``, the
        rank as 4 big-endian bytes.
    """
    msg = _DOMAIN + role + peer_nonce + own_nonce + _RANK.pack(rank)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def client_handshake(sock: socket.socket, secret: bytes, rank: int, *, timeout: float,
                     expect_rank: int | None = None) -> int:
    """Authenticate the connecting side of ``sock`` and its peer; return the peer's rank.

    Parameters
    ----------
    sock : socket.socket
        A connected stream socket (TCP or a socketpair end).
    secret : bytes
        The shared secret (see :func:`load_secret`).
    rank : int
        This side's rank.
    timeout : float
        Seconds the whole handshake may take.
    expect_rank : int, optional
        The rank the peer must claim (the site this side meant to reach).

    Returns
    -------
    int
        The peer's rank, proven by its knowledge of the secret.

    Raises
    ------
    PeerError
        Naming the peer address and the cause: "authentication failed", "timed out",
        "closed the connection", "not a netstorm peer (bad magic)", another handshake
        protocol, an unexpected rank, or a socket error.
    ProtocolError
        If ``secret`` is empty or ``rank`` does not fit in 32 bits (a local mistake).

    Notes
    -----
    The socket's previous timeout is restored afterwards, whatever happens.
    """
    return _handshake(sock, secret, rank, b"C", b"S", timeout, expect_rank)


def server_handshake(sock: socket.socket, secret: bytes, rank: int, *, timeout: float,
                     expect_rank: int | None = None) -> int:
    """Authenticate the accepting side of ``sock`` and its peer; return the peer's rank.

    The same as :func:`client_handshake` with the roles swapped; see there.
    """
    return _handshake(sock, secret, rank, b"S", b"C", timeout, expect_rank)


def _peer_name(sock: socket.socket) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        addr = None
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if addr:
        return str(addr)
    return f"unnamed socket (fd {sock.fileno()})"


def _handshake(sock: socket.socket, secret: bytes, rank: int, role: bytes, peer_role: bytes,
               timeout: float, expect_rank: int | None) -> int:
    if not secret:
        raise ProtocolError(f"empty shared secret; set {SECRET_ENV}")
    if not 0 <= rank < 2**32:
        raise ProtocolError(f"rank {rank} does not fit the handshake's u32")
    peer = _peer_name(sock)
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    step = "sending the hello"
    try:
        nonce = secrets.token_bytes(NONCE_SIZE)
        _send(sock, HELLO.pack(HELLO_MAGIC, HELLO_PROTOCOL, rank, nonce), deadline)
        step = "reading the hello"
        magic = _recv_exact(sock, len(HELLO_MAGIC), deadline)
        if magic != HELLO_MAGIC:
            if magic[:1] in (b"\x15", b"\x16") and magic[1:2] == b"\x03":  # a TLS record
                raise PeerError(f"peer {peer}: speaks TLS and this side does not (is "
                                "NETSTORM_TLS_CA set on one site only?)")
            raise PeerError(f"peer {peer}: not a netstorm peer (bad magic {magic!r})")
        rest = _recv_exact(sock, HELLO.size - len(HELLO_MAGIC), deadline)
        _, protocol, peer_rank, peer_nonce = HELLO.unpack(magic + rest)
        if protocol != HELLO_PROTOCOL:
            raise PeerError(f"peer {peer}: handshake protocol {protocol}, this side speaks "
                            f"{HELLO_PROTOCOL}")
        if peer_nonce == nonce:  # a reflected hello: someone echoing our bytes back
            raise PeerError(f"peer {peer}: authentication failed (peer echoed our nonce)")
        step = "sending the proof"
        _send(sock, proof(secret, role, peer_nonce, nonce, rank), deadline)
        step = "reading the proof"
        got = _recv_exact(sock, PROOF_SIZE, deadline)
    except TimeoutError as exc:
        raise PeerError(f"peer {peer}: handshake timed out after {timeout:g} s while "
                        f"{step}") from exc
    except _Closed as exc:
        raise PeerError(f"peer {peer}: closed the connection during the handshake while "
                        f"{step}") from exc
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
        raise PeerError(f"peer {peer}: closed the connection during the handshake while "
                        f"{step} ({exc.strerror or exc})") from exc
    except OSError as exc:
        raise PeerError(f"peer {peer}: connection error during the handshake while {step}: "
                        f"{exc.strerror or exc}") from exc
    finally:
        try:
            sock.settimeout(previous)
        except OSError:  # pragma: no cover - the socket was closed under us
            pass
    want = proof(secret, peer_role, nonce, peer_nonce, peer_rank)
    if not hmac.compare_digest(got, want):
        raise PeerError(f"peer {peer} (claims rank {peer_rank}): authentication failed "
                        f"(wrong shared secret? check {SECRET_ENV} on both sites)")
    if expect_rank is not None and peer_rank != expect_rank:
        raise PeerError(f"peer {peer}: authenticated as rank {peer_rank}, expected rank "
                        f"{expect_rank}")
    return int(peer_rank)


class _Closed(Exception):
    """The peer closed the connection (recv returned no bytes)."""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("handshake deadline passed")
    return left


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        sock.settimeout(_remaining(deadline))
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise _Closed
        got += k
    return bytes(buf)
