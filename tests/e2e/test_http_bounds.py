"""Bounds on HTTP API clients (slowloris): a client that sends half its request headers, or half
its body, and then waits is cut off after the listener's bound (shortened here through
BLOCKSNAP_HTTP_HEADER_TIMEOUT_MS / BLOCKSNAP_HTTP_BODY_TIMEOUT_MS), over plain HTTP and over TLS,
while other clients are served meanwhile. Without the bounds the server would hold these
connections for ever and the reads below would run into their own (much longer) socket timeout."""
from __future__ import annotations

import signal
import socket
import ssl

import pytest

from conftest import Server
from test_https import make_cert

pytestmark = pytest.mark.blocksnap_only

BOUNDS = {"BLOCKSNAP_HTTP_HEADER_TIMEOUT_MS": "1000", "BLOCKSNAP_HTTP_BODY_TIMEOUT_MS": "1000"}
# How long the test waits for the server to act: far beyond the 1 s bounds, far below "for ever".
PATIENCE = 30


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory):
    srv = Server(kind="blocksnap", workdir=tmp_path_factory.mktemp("bounds"), extra_env=dict(BOUNDS))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bounded_https_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("bounds-https")
    _, cert, key = make_cert(d)
    srv = Server(kind="blocksnap", workdir=d, extra_env=dict(BOUNDS),
                 extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    srv.start()
    yield srv
    srv.stop()


def connect(srv: Server, tls: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=PATIENCE)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    return s


def read_to_close(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it does not)."""
    got = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            return got
        if not chunk:
            return got
        got += chunk


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_half_request_line_is_cut_off(request, tls):
    srv = request.getfixturevalue("bounded_https_server" if tls else "bounded_server")
    with connect(srv, tls) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        if not tls:
            # Served meanwhile: another client's call (boto3 over plain HTTP).
            vols = srv.client().describe_volumes()["Volumes"]
            assert isinstance(vols, list)
        got = read_to_close(s)
    # hyper closes without an answer, or with 408; never a served request.
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_half_body_is_cut_off(request, tls):
    srv = request.getfixturevalue("bounded_https_server" if tls else "bounded_server")
    with connect(srv, tls) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: 100\r\n\r\nAction=DescribeVolumes")
        got = read_to_close(s)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]


def test_stop_with_slow_clients_connected(tmp_path):
    """SIGTERM still stops the server cleanly (exit 0, the stop's grace bounds the wait) while a
    client holds half a request and another an idle keep-alive connection."""
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_env={"BLOCKSNAP_HTTP_HEADER_TIMEOUT_MS": "600000"})
    srv.start()
    try:
        with connect(srv, False) as half, connect(srv, False) as idle:
            half.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            idle.sendall(b"GET /console HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 ")
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=PATIENCE) == 0
            assert read_to_close(idle) == b""
        assert "blocksnap stopped" in srv.log_path.read_text(errors="replace")
    finally:
        srv.stop()
