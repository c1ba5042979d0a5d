"""The HTTP core on real sockets: listeners, the guard's refusals, slowloris, caps and shedding."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hivehttp import (
    HttpCore,
    Limits,
    Policy,
    SocketInUse,
    browser_policy,
    disconnected,
)
from hivehttp.guard import Message, Receive, Scope, Send


class Echo:
    """A raw ASGI app: ``/echo`` answers the body it got, ``/park`` waits until released
    or the client leaves, ``/`` answers ok."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.parked = 0
        self.left = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg: Message = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["path"] == "/park":
            self.parked += 1
            gone = disconnected(scope)
            waits = [asyncio.ensure_future(gone.wait()), asyncio.ensure_future(self.release.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if gone.is_set():
                self.left += 1
                return
            body = b"released"
        elif scope["path"] != "/echo":
            body = b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def core() -> Iterator[HttpCore]:
    c = HttpCore("test-core")
    c.start()
    yield c
    c.stop()


def _unix_conn(path: Path) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    conn.sock = sock
    return conn


def _get(conn: http.client.HTTPConnection, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
    conn.request(method, path, **kw)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _raw(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh TCP connection and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if sock.recv(4096) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_unix_listener_perms_stale_live_and_stop(core: HttpCore, tmp_path: Path) -> None:
    app = Echo()
    path = tmp_path / "run" / "a" / "mcp.sock"
    lis = core.serve_unix(app, path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert _get(_unix_conn(path), "POST", "/echo", body=b'{"x": 1}') == (200, b'{"x": 1}')
    with pytest.raises(SocketInUse):
        core.serve_unix(app, path)
    lis.stop()
    assert not path.exists() and not lis.alive
    lis.stop()  # idempotent
    # a socket file nobody answers on is stale: replaced
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    lis = core.serve_unix(app, path)
    assert _get(_unix_conn(path), "GET", "/")[0] == 200
    lis.stop()
    regular = tmp_path / "file.sock"
    regular.write_text("x")
    with pytest.raises(FileExistsError):
        core.serve_unix(app, regular)
    with pytest.raises(ValueError, match="longer than"):
        core.serve_unix(app, tmp_path / ("x" * 120) / "a.sock")


def test_tcp_ephemeral_port_and_port_taken(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), "127.0.0.1", 0)
    assert lis.port and lis.host == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    assert _get(conn, "GET", "/") == (200, b"ok")
    assert _get(conn, "GET", "/") == (200, b"ok")  # keep-alive reuse
    with pytest.raises(OSError):
        socket_taken = core.serve_tcp(Echo(), "127.0.0.1", lis.port)
        socket_taken.stop()
    lis.stop()


def test_host_allow_list_ends_dns_rebinding(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), policy=browser_policy(frozenset({"hive.lan"})))
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    for host in (f"127.0.0.1:{lis.port}", "localhost", "HIVE.lan:7000", "[::1]:1"):
        assert _get(conn, "GET", "/", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{lis.port}", "127.0.0.1.evil.example", "hive.lan.evil"):
        conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
        status, body = _get(conn, "GET", "/", headers={"Host": host})
        assert status == 403 and json.loads(body)["error"]["code"] == "bad_host", host
    lis.stop()


def test_cross_site_and_non_json_mutations_are_refused(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), policy=browser_policy())
    here = f"127.0.0.1:{lis.port}"
    js = {"Content-Type": "application/json", "Host": here}

    def post(headers: dict[str, str], body: bytes = b"{}") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
        status, raw = _get(conn, "POST", "/echo", body=body, headers=headers)
        return status, (json.loads(raw)["error"]["code"] if status != 200 else raw.decode())

    assert post(js) == (200, "{}")
    assert post({**js, "Origin": f"http://{here}", "Sec-Fetch-Site": "same-origin"}) == (200, "{}")
    assert post({**js, "Origin": "http://127.0.0.2:8000"}) == (403, "cross_site")
    assert post({**js, "Origin": "null"}) == (403, "cross_site")
    assert post({**js, "Sec-Fetch-Site": "cross-site"}) == (403, "cross_site")
    assert post({**js, "Sec-Fetch-Site": "same-site"}) == (403, "cross_site")
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; b=x"):
        refused = post({"Content-Type": ctype, "Host": here}, b"a=b")
        assert refused == (415, "unsupported_media_type")
    assert post({"Host": here}, b"") == (415, "unsupported_media_type")
    lis.stop()


def test_body_limits_answer_before_reading(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), policy=Policy(max_body=1024, body_timeout=0.5))
    # a 1 GiB Content-Length: refused at once, without a byte of the body sent
    t0 = time.monotonic()
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
    out = _raw(lis.port, head)
    assert out.startswith(b"HTTP/1.1 413") and b"too_large" in out
    assert time.monotonic() - t0 < 3
    # a chunked body that grows past the limit
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"400\r\n" + b"a" * 1024 + b"\r\n" + b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n"
    assert _raw(lis.port, chunked).startswith(b"HTTP/1.1 413")
    # a body slower than body_timeout
    with socket.create_connection(("127.0.0.1", lis.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
    # bad Content-Length
    assert _raw(lis.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")[:12] in (
        b"HTTP/1.1 400",
    )
    lis.stop()


def test_slowloris_is_closed_at_the_head_deadline(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), limits=Limits(header_timeout=0.6))
    # silent after connecting
    silent = socket.create_connection(("127.0.0.1", lis.port))
    # drip-feeding a header a byte at a time keeps resetting uvicorn's own timer; not ours
    drip = socket.create_connection(("127.0.0.1", lis.port))
    t0 = time.monotonic()
    closed = False
    for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200:
        try:
            drip.send(bytes([byte]))
        except OSError:
            closed = True
            break
        if time.monotonic() - t0 > 5:
            break
        time.sleep(0.05)
    assert closed or _closed_within(drip, 1.0)
    assert time.monotonic() - t0 < 4
    assert _closed_within(silent, 1.0)
    # a keep-alive connection between requests is not hurried by the head deadline
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    assert _get(conn, "GET", "/")[0] == 200
    time.sleep(1.0)
    assert _get(conn, "GET", "/")[0] == 200
    lis.stop()


def test_idle_keep_alive_connections_are_closed_at_their_timeout(core: HttpCore) -> None:
    # the keep-alive timeout is a deadline the core's sweep checks (no timer per request)
    lis = core.serve_tcp(Echo(), limits=Limits(header_timeout=0.6, keepalive_timeout=1.0))
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    assert _get(conn, "GET", "/")[0] == 200
    assert _get(conn, "GET", "/")[0] == 200  # reused: still open between requests
    sock = conn.sock
    assert sock is not None
    assert _closed_within(sock, 4.0)
    lis.stop()


def test_idle_connections_are_shed_for_new_ones(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), limits=Limits(max_connections=4, per_client=4))
    idle = [socket.create_connection(("127.0.0.1", lis.port)) for _ in range(6)]
    time.sleep(0.2)
    assert lis.connections <= 4
    # the operator still gets in: the oldest idle connection makes room
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    assert _get(conn, "GET", "/") == (200, b"ok")
    assert sum(_closed_within(s, 0.3) for s in idle) >= 3
    for s in idle:
        s.close()
    lis.stop()


def test_busy_connections_are_not_shed_a_new_one_gets_503(core: HttpCore) -> None:
    app = Echo()
    lis = core.serve_tcp(app, limits=Limits(max_connections=2, per_client=2))
    parked = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", lis.port), timeout=5)
        s.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        parked.append(s)
    deadline = time.monotonic() + 5
    while app.parked < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    out = _raw(lis.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503") and b"too many open connections" in out
    core.loop.call_soon_threadsafe(app.release.set)
    for s in parked:
        got = b""
        while b"released" not in got and (chunk := s.recv(4096)):
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"released")
        s.close()
    lis.stop()


def test_unfinished_uploads_are_shed_when_nothing_is_idle(core: HttpCore) -> None:
    """Bodies are read before any app checks a credential: heads whose bodies never finish
    must not hold a listener full."""
    lis = core.serve_tcp(Echo(), limits=Limits(max_connections=4, per_client=4))
    stuck = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", lis.port), timeout=5)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\na")
        stuck.append(s)
    deadline = time.monotonic() + 5
    while lis.connections < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    assert _get(conn, "GET", "/") == (200, b"ok")
    assert sum(_closed_within(s, 0.3) for s in stuck) >= 1
    for s in stuck:
        s.close()
    lis.stop()


def test_refusals_leave_the_connection_usable(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo(), policy=browser_policy())
    conn = http.client.HTTPConnection("127.0.0.1", lis.port, timeout=5)
    here = f"127.0.0.1:{lis.port}"
    form = {"Host": here, "Content-Type": "application/x-www-form-urlencoded"}
    status, _ = _get(conn, "POST", "/echo", body=b"a=" + b"b" * 5000, headers=form)
    assert status == 415
    # the same connection carries the next request
    js = {"Host": here, "Content-Type": "application/json"}
    assert _get(conn, "POST", "/echo", body=b"{}", headers=js) == (200, b"{}")
    lis.stop()


def test_parked_requests_hold_no_threads_and_see_their_client_leave(
    core: HttpCore, tmp_path: Path
) -> None:
    app = Echo()
    path = tmp_path / "park.sock"
    lis = core.serve_unix(app, path, limits=Limits(max_connections=64, per_client=64))
    before = threading.active_count()
    socks = []
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    deadline = time.monotonic() + 5
    while app.parked < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.parked == 50
    assert threading.active_count() <= before + 1
    for s in socks[:10]:
        s.close()
    deadline = time.monotonic() + 5
    while app.left < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.left == 10
    # stop ends the other 40 at once: they see their client gone
    t0 = time.monotonic()
    lis.stop(timeout=3)
    assert time.monotonic() - t0 < 3
    assert app.left == 50
    for s in socks[10:]:
        s.close()


def test_oversized_head_is_a_4xx(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo())
    # a head that never ends is not buffered past 16 KiB
    out = _raw(lis.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
    assert out.startswith(b"HTTP/1.1 400")
    lis.stop()


def test_head_cap_counts_a_head_sent_in_pieces(core: HttpCore) -> None:
    lis = core.serve_tcp(Echo())
    with socket.create_connection(("127.0.0.1", lis.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        out = b""
        try:
            for _ in range(40):  # 40 KiB of headers, 1 KiB a read
                s.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")
                time.sleep(0.005)
        except OSError:
            pass  # closed on us: what we want
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 400")
    # a large head under the cap, and two pipelined requests in one write, are served
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 12_000 + b"\r\n\r\n"
    two = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + big[:-2]
    two += b"Connection: close\r\n\r\n"
    assert (
        _raw(lis.port, big + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").count(
            b"HTTP/1.1 200"
        )
        == 2
    )
    out = _raw(lis.port, two)
    assert out.count(b"HTTP/1.1 200") == 2 and b"abc" in out
    lis.stop()
