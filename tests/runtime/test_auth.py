"""The runtime's HMAC handshake over socketpairs and localhost TCP: success, wrong secrets,
garbage, early close and silence all end in a PeerError within the timeout, never a hang."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netstorm.runtime import auth
from netstorm.runtime.auth import (
    HELLO,
    HELLO_MAGIC,
    client_handshake,
    load_secret,
    server_handshake,
)

from netstorm import PeerError, ProtocolError

SECRET = b"correct horse battery staple"
TIMEOUT = 1.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``fn`` in a thread; return a function that joins it and returns (or raises)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(5 * TIMEOUT)
        assert not thread.is_alive(), "handshake thread hung"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


def test_same_secret_both_sides_learn_the_peer_rank(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    server = in_thread(lambda: server_handshake(b, SECRET, 0, timeout=TIMEOUT))
    assert client_handshake(a, SECRET, 3, timeout=TIMEOUT, expect_rank=0) == 0
    assert server() == 3


def test_previous_timeout_is_restored(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.settimeout(7.5)
    assert b.gettimeout() is None
    server = in_thread(lambda: server_handshake(b, SECRET, 1, timeout=TIMEOUT))
    client_handshake(a, SECRET, 2, timeout=TIMEOUT)
    server()
    assert a.gettimeout() == 7.5 and b.gettimeout() is None
    c, d = socket.socketpair()
    with c, d:
        c.settimeout(3.0)
        with pytest.raises(PeerError):
            client_handshake(c, SECRET, 2, timeout=0.2)  # d stays silent
        assert c.gettimeout() == 3.0


def test_wrong_secret_fails_on_both_sides(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    server = in_thread(lambda: server_handshake(b, b"other secret", 0, timeout=TIMEOUT))
    with pytest.raises(PeerError, match=r"claims rank 0\): authentication failed"):
        client_handshake(a, SECRET, 1, timeout=TIMEOUT)
    with pytest.raises(PeerError, match=r"claims rank 1\): authentication failed"):
        server()


def test_over_tcp_the_error_names_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        addr = listener.getsockname()
        with socket.create_connection(addr, timeout=TIMEOUT) as client:
            conn, _ = listener.accept()
            with conn:
                server = in_thread(lambda: server_handshake(conn, b"nope", 0,
                                                            timeout=TIMEOUT))
                with pytest.raises(PeerError, match=rf"^peer 127\.0\.0\.1:{addr[1]} "
                                                    r"\(claims rank 0\): authentication"):
                    client_handshake(client, SECRET, 1, timeout=TIMEOUT)
                with pytest.raises(PeerError, match=r"^peer 127\.0\.0\.1:\d+ .*authentication"):
                    server()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as client:
            conn, _ = listener.accept()
            with conn:
                server = in_thread(lambda: server_handshake(conn, SECRET, 0, timeout=TIMEOUT))
                assert client_handshake(client, SECRET, 5, timeout=TIMEOUT) == 0
                assert server() == 5


@pytest.mark.parametrize("handshake", [client_handshake, server_handshake])
def test_garbage_peer_is_rejected_at_once(pair: tuple[socket.socket, ...],
                                          handshake: Callable[..., int]) -> None:
    a, b = pair
    b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    t0 = time.monotonic()
    with pytest.raises(PeerError, match=r"not a netstorm peer \(bad magic b'GET '\)"):
        handshake(a, SECRET, 0, timeout=TIMEOUT)
    assert time.monotonic() - t0 < TIMEOUT / 2


@pytest.mark.parametrize("handshake", [client_handshake, server_handshake])
def test_peer_closing_early(handshake: Callable[..., int]) -> None:
    for sent in (b"", HELLO_MAGIC + b"\x01"):  # nothing, or part of a hello
        a, b = socket.socketpair()
        with a:
            b.sendall(sent)
            b.close()
            t0 = time.monotonic()
            with pytest.raises(PeerError, match="closed the connection"):
                handshake(a, SECRET, 0, timeout=TIMEOUT)
            assert time.monotonic() - t0 < TIMEOUT / 2


def test_peer_closing_after_the_hello(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    b.sendall(HELLO.pack(HELLO_MAGIC, 1, 4, bytes(32)))
    b.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerError, match=r"closed the connection .*reading the proof"):
        client_handshake(a, SECRET, 0, timeout=TIMEOUT)


@pytest.mark.parametrize("sent", [b"", HELLO_MAGIC, HELLO.pack(HELLO_MAGIC, 1, 4, bytes(32))])
def test_silent_peer_times_out(pair: tuple[socket.socket, ...], sent: bytes) -> None:
    a, b = pair
    b.sendall(sent)
    t0 = time.monotonic()
    with pytest.raises(PeerError, match=r"timed out after 0\.3 s"):
        server_handshake(a, SECRET, 0, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 1.5


def test_other_handshake_protocol(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    b.sendall(HELLO.pack(HELLO_MAGIC, 9, 4, bytes(32)))
    with pytest.raises(PeerError, match="handshake protocol 9, this side speaks 1"):
        client_handshake(a, SECRET, 0, timeout=TIMEOUT)


def test_reflected_handshake_is_rejected(pair: tuple[socket.socket, ...]) -> None:
    """A peer without the secret that echoes every byte back cannot pass as us."""
    a, b = pair

    def echo() -> None:
        b.settimeout(TIMEOUT)
        try:
            while data := b.recv(4096):
                b.sendall(data)
        except OSError:
            pass

    join = in_thread(echo)
    with pytest.raises(PeerError, match="authentication failed"):
        client_handshake(a, SECRET, 0, timeout=TIMEOUT)
    a.close()
    join()


def test_roles_and_nonces_bind_the_proof() -> None:
    n1, n2 = bytes(range(32)), bytes(range(1, 33))
    p = auth.proof(SECRET, b"C", n1, n2, 3)
    assert len(p) == 32
    assert p != auth.proof(SECRET, b"S", n1, n2, 3)
    assert p != auth.proof(SECRET, b"C", n2, n1, 3)
    assert p != auth.proof(SECRET, b"C", n1, n2, 4)
    assert p != auth.proof(b"x" + SECRET, b"C", n1, n2, 3)


def test_unexpected_rank(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    server = in_thread(lambda: server_handshake(b, SECRET, 2, timeout=TIMEOUT))
    with pytest.raises(PeerError, match="authenticated as rank 2, expected rank 1"):
        client_handshake(a, SECRET, 0, timeout=TIMEOUT, expect_rank=1)
    assert server() == 0


def test_local_mistakes(pair: tuple[socket.socket, ...]) -> None:
    a, _ = pair
    with pytest.raises(ProtocolError, match="empty shared secret"):
        client_handshake(a, b"", 0, timeout=TIMEOUT)
    with pytest.raises(ProtocolError, match="rank -1"):
        client_handshake(a, SECRET, -1, timeout=TIMEOUT)


def test_load_secret_from_env() -> None:
    assert load_secret({"NETSTORM_SECRET": "s3cret"}) == b"s3cret"
    assert load_secret({"NETSTORM_SECRET": "ünï"}) == "ünï".encode()


def test_load_secret_from_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"from-a-file\n")
    assert load_secret({"NETSTORM_SECRET_FILE": str(path)}) == b"from-a-file"
    path.write_bytes(b"crlf\r\n")
    assert load_secret({"NETSTORM_SECRET_FILE": str(path)}) == b"crlf"
    both = {"NETSTORM_SECRET": "value", "NETSTORM_SECRET_FILE": str(path)}
    assert load_secret(both) == b"value"  # the value wins


def test_load_secret_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProtocolError, match="no shared secret: set NETSTORM_SECRET"):
        load_secret({})
    monkeypatch.delenv("NETSTORM_SECRET", raising=False)
    monkeypatch.delenv("NETSTORM_SECRET_FILE", raising=False)
    with pytest.raises(ProtocolError, match="set NETSTORM_SECRET"):
        load_secret()  # os.environ by default
    monkeypatch.setenv("NETSTORM_SECRET", "from-os-environ")
    assert load_secret() == b"from-os-environ"
    with pytest.raises(ProtocolError, match="NETSTORM_SECRET: the shared secret is empty"):
        load_secret({"NETSTORM_SECRET": ""})
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(ProtocolError, match="the shared secret is empty"):
        load_secret({"NETSTORM_SECRET_FILE": str(empty)})
    missing = tmp_path / "missing"
    with pytest.raises(ProtocolError, match=r"NETSTORM_SECRET_FILE=.*missing: cannot read"):
        load_secret({"NETSTORM_SECRET_FILE": str(missing)})
