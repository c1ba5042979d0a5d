"""The web UI's socket before ``hivehttp`` is imported (``harness.earlyweb``), on real sockets.

The stdlib server answers the starting state, the page and its assets at once; holds
anything else until the real server (``hivehttp.adopt_unix`` through
``harness.httpserve.WebServer``) serves the same listening socket, then relays it there;
answers 503 ``starting`` when the harness gives up; never takes a socket a live server
answers on; bounds what a client may send. And ``python -m harness serve`` answers with it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import StandIn, UnixHTTPConnection, harness_env, request, write_credential

from harness import earlyweb, webstart
from harness import web as webmod
from harness.earlyweb import EarlyWeb
from harness.httpserve import UnixEndpoint, WebServer
from harness.webstart import LateApp
from hivehttp.guard import Receive, Scope, Send

REPO = Path(__file__).resolve().parents[3]


def env_for(path: Path, agent: str = "alice") -> dict[str, str]:
    return {"HYPERHIVE_AGENT": agent, "HYPERHIVE_WEB_SOCKET": str(path)}


@pytest.fixture
def early(tmp_path: Path) -> Iterator[EarlyWeb]:
    e = EarlyWeb.open(env_for(tmp_path / "run" / "web.sock"))
    assert e is not None
    e.start()
    yield e
    e.close()


def get(path: Path | str, method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return request(UnixHTTPConnection(path), method, url, body, headers)


def raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """A real app stand-in: answers ``{"method", "path", "body"}``."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    doc = {"method": scope["method"], "path": scope["path"], "body": body.decode()}
    out = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": out})


def test_the_starting_state_page_and_assets_answer_at_once(early: EarlyWeb) -> None:
    path = early.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    status, doc = get(path, "GET", "/api/state?x=1")
    assert status == 200
    assert doc == json.loads(json.dumps(webstart.starting_state("alice", "agent", early.since)))
    pages = (("/", "index.html"), ("/static/app.js", "app.js"), ("/static/app.css", "app.css"))
    for url, name in pages:
        conn = UnixHTTPConnection(path)
        conn.request("GET", url)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("cache-control") == "no-cache"
        assert resp.read() == (REPO / "harness" / "assets" / name).read_bytes()
        assert resp.getheader("content-type") == webmod.ASSETS[name]
    conn = UnixHTTPConnection(path)
    conn.request("HEAD", "/api/state")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""


def test_other_requests_are_held_then_relayed_to_the_real_server(early: EarlyWeb) -> None:
    path = early.path
    got: list[tuple[int, Any]] = []

    plain: list[bytes] = []

    def ask(method: str, url: str, body: bytes | None) -> None:
        got.append(get(path, method, url, body))

    def ask_plain() -> None:  # hivehttp's guards judge relayed requests: mutations are JSON
        head = b"POST /api/send HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        plain.append(raw(path, head + b"Content-Type: text/plain\r\nConnection: close\r\n\r\nhi"))

    held = [
        threading.Thread(target=ask, args=("POST", "/api/send", b'{"body": "hi"}')),
        threading.Thread(target=ask, args=("GET", "/healthz", None)),
        threading.Thread(target=ask_plain),
    ]
    for t in held:
        t.start()
    held[0].join(0.3)
    assert all(t.is_alive() for t in held) and not got
    server = WebServer(echo, UnixEndpoint(Path(path)), early=early)
    server.start()
    try:
        assert server.wait_bound(10)
        for t in held:
            t.join(10)
        assert sorted(got, key=str) == sorted(
            [
                (200, {"method": "POST", "path": "/api/send", "body": '{"body": "hi"}'}),
                (200, {"method": "GET", "path": "/healthz", "body": ""}),
            ],
            key=str,
        )
        assert plain[0].startswith(b"HTTP/1.1 415"), plain
        # from now on the real server answers everything, the state too
        assert get(path, "GET", "/api/state")[1]["path"] == "/api/state"
    finally:
        server.stop()
    assert not os.path.exists(path)


def test_a_connection_in_the_backlog_at_handover_is_served(tmp_path: Path) -> None:
    e = EarlyWeb.open(env_for(tmp_path / "web.sock"))
    assert e is not None
    e.start()
    sock = e.handover()
    # nobody accepts now: the connection waits in the backlog, none is refused
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(e.path)
    c.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    import hivehttp

    listener = hivehttp.adopt_unix(echo, sock, Path(e.path))
    e.served(True)
    try:
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        assert out.startswith(b"HTTP/1.1 200") and b'"path": "/late"' in out
    finally:
        c.close()
        listener.stop()


def test_held_requests_get_503_starting_when_the_harness_gives_up(early: EarlyWeb) -> None:
    got: list[tuple[int, Any]] = []
    t = threading.Thread(target=lambda: got.append(get(early.path, "GET", "/healthz")))
    t.start()
    t.join(0.3)
    early.close()
    t.join(10)
    assert got and got[0][0] == 503 and got[0][1]["error"]["code"] == "starting"
    assert not os.path.exists(early.path)


def test_a_live_server_or_a_file_is_never_taken(tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    late = LateApp("alice", "agent")
    server = WebServer(late, UnixEndpoint(path))
    server.start()
    try:
        assert server.wait_bound(10)
        assert EarlyWeb.open(env_for(path)) is None
        assert get(path, "GET", "/api/state")[0] == 200  # still the live server's
    finally:
        server.stop()
    other = tmp_path / "file"
    other.write_text("x")
    assert EarlyWeb.open(env_for(other)) is None and other.read_text() == "x"
    assert EarlyWeb.open({"HYPERHIVE_WEB_SOCKET": str(path)}) is None  # no agent named
    long = tmp_path / ("d" * 120) / "web.sock"
    assert EarlyWeb.open(env_for(long)) is None


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    e = EarlyWeb.open(env_for(path, agent="manager"))
    assert e is not None
    e.start()
    try:
        assert get(path, "GET", "/api/state")[1]["agent"] == "manager"
    finally:
        e.close()


def test_a_client_gets_bounds_not_a_stuck_server(early: EarlyWeb, monkeypatch: Any) -> None:
    out = raw(early.path, b"GET /" + b"a" * (earlyweb.MAX_HEAD + 10))
    assert out.startswith(b"HTTP/1.1 431")
    monkeypatch.setattr(earlyweb, "HEAD_DEADLINE", 0.2)
    assert raw(early.path, b"GET / HTTP/1.1\r\n").startswith(b"HTTP/1.1 408")
    # garbage is not answered here but held for the real server (which judges it)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(0.3)
    c.connect(early.path)
    c.sendall(b"BREW /pot HTCPCP/1.0\r\n\r\n")
    with pytest.raises(TimeoutError):
        c.recv(10)
    c.close()
    assert get(early.path, "GET", "/api/state")[0] == 200


def test_python_m_harness_serve_answers_from_the_early_server(tmp_path: Path) -> None:
    """The real entry point: the UI answers; once built, the real state replaces it."""
    sock = StandIn(tmp_path / "alice.sock", agent="alice").start()
    cred = write_credential(tmp_path / "credential")
    state, web = tmp_path / "state", tmp_path / "run" / "web.sock"
    state.mkdir()
    env = harness_env(sock.path, cred, state, web, tmp_path / "home", REPO)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "serve"], env=env, cwd=state,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline:
            try:
                status, doc = get(web, "GET", "/api/state")
            except OSError:
                time.sleep(0.005)
                continue
            assert status == 200 and doc["agent"] == "alice"
            seen.add(doc["status"])
            if doc["status"] != "starting":
                break
        assert seen - {"starting"}, f"never left starting: {seen}"
        assert get(web, "GET", "/healthz") == (200, {"ok": True})
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        sock.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert not web.exists()


def test_a_configuration_error_leaves_no_socket(tmp_path: Path) -> None:
    web = tmp_path / "web.sock"
    env = {
        **os.environ,
        "HYPERHIVE_AGENT": "alice",
        "HYPERHIVE_SOCKET": str(tmp_path / "alice.sock"),
        "HYPERHIVE_CREDENTIAL_FILE": str(tmp_path / "missing"),
        "HYPERHIVE_STATE_DIR": str(tmp_path),
        "HYPERHIVE_WEB_SOCKET": str(web),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run([sys.executable, "-m", "harness", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and b"credential" in proc.stderr
    assert not web.exists()
