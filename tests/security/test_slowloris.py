"""Slow and idle clients cannot hold the server's connections (issue 33): a bounded slowloris run
against a real uvicorn server on 127.0.0.1 with the options ``sdstudio serve`` uses (smaller limits,
so the test is quick). Every loop is bounded in count and every socket in time."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi import Request

from sdstudio.api.connections import ConnectionLimits, uvicorn_options
from tests.server.conftest import free_port

HEAD_TIMEOUT = 1.0
LIMITS = ConnectionLimits(head_timeout=HEAD_TIMEOUT, body_timeout=2.0, max_connections=40, max_per_client=20)
HALF_SENT = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # the head never ends


@pytest.fixture(scope="module")
def server():
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(LIMITS))
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started
    yield srv, port
    srv.should_exit = True
    thread.join(10)


def _connect(port: int, payload: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        s.sendall(payload)
    return s


def _get(port: int) -> bytes:
    with _connect(port, b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") as s:
        chunks = []
        for _ in range(100):  # bounded: the answer is one small response
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closes ``s`` within ``within`` seconds (EOF or reset)."""
    s.settimeout(within)
    try:
        for _ in range(100):
            if not s.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def _open_connections(srv) -> int:
    return len(srv.server_state.connections)


def test_half_sent_and_idle_connections_are_closed_after_the_head_timeout(server):
    srv, port = server
    slow = [_connect(port, HALF_SENT) for _ in range(8)] + [_connect(port) for _ in range(8)]
    try:
        time.sleep(0.3)
        assert _get(port).startswith(b"HTTP/1.1 200"), "the server must answer while they wait"
        t0 = time.monotonic()
        closed = [_closed_by_server(s, HEAD_TIMEOUT + 3.0) for s in slow]
        assert all(closed), f"{closed.count(False)} slow connections were left open"
        assert time.monotonic() - t0 < HEAD_TIMEOUT + 3.0
    finally:
        for s in slow:
            s.close()
    deadline = time.monotonic() + 3
    while _open_connections(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_connections(srv) == 0


def test_a_trickled_head_is_cut_at_the_deadline_however_often_bytes_arrive(server):
    _, port = server
    s = _connect(port, b"GET /ping HTTP/1.1\r\n")
    t0 = time.monotonic()
    cut = False
    try:
        for i in range(40):  # one header byte every 0.1 s: never a whole head
            s.sendall(b"X-A: b\r\n"[i % 8 : i % 8 + 1])
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    cut = cut or _closed_by_server(s, 1.0)
    s.close()
    assert cut and time.monotonic() - t0 < HEAD_TIMEOUT + 3.5


def test_connections_past_the_per_client_cap_get_503_and_the_server_stays_reachable(server):
    srv, port = server
    held = []
    try:
        for _ in range(LIMITS.max_per_client + 5):  # bounded: 25 sockets
            held.append(_connect(port, HALF_SENT))
        time.sleep(0.3)
        assert _open_connections(srv) <= LIMITS.max_per_client
        refused = held[-1]
        refused.settimeout(2)
        assert refused.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 3
    while _open_connections(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _get(port).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("path", ["/echo", "/ping"])  # read by the app / answered 405 before it came
def test_a_slow_body_is_cut_at_the_body_deadline(server, path):
    _, port = server
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n".encode()
    s = _connect(port, head + b"ab")
    t0 = time.monotonic()
    assert _closed_by_server(s, LIMITS.body_timeout + 3.0)
    s.close()
    assert time.monotonic() - t0 < LIMITS.body_timeout + 3.0


def test_a_whole_body_is_read(server):
    _, port = server
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    with _connect(port, head + b"abc") as s:
        s.settimeout(5)
        data = b""
        for _ in range(100):  # bounded: until the server closes
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"bytes":3}')


def test_keep_alive_requests_still_work(server):
    _, port = server
    with _connect(port) as s:
        for _ in range(3):  # three requests on one connection, each answered
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            for _ in range(20):
                data += s.recv(4096)
                if data.endswith(b"}"):
                    break
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"ok":true}')
            time.sleep(HEAD_TIMEOUT + 0.3)  # idle longer than the head deadline: keep-alive rules
