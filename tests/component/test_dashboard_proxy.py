"""Agent web UIs behind the dashboard: ``/agents/<name>/`` over a real listener.

The dashboard runs on a real ``hivehttp`` TCP listener; each agent's UI is a
real ``falcon.asgi`` app (``FakeAgentUi``) on a real unix socket that records
what it was sent. Checks: the page comes from the controller's copy of the
harness assets, only the JSON API and the event stream are forwarded, the
operator's cookie and credentials never reach the agent, nothing but JSON and
event streams comes back, and events stream through as they happen.
"""

from __future__ import annotations

import http.client
import json
import socketserver
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
from dashboard_fakes import (
    SSE,
    FakeAgentUi,
    FakeOps,
    demo,
    make_app,
    serve,
    serve_agent_ui,
    session_cookie,
)


@dataclass
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """The body as a JSON object."""
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


@dataclass
class Env:
    """The dashboard's base URL, the operator's cookie, and alice's stand-in UI."""

    base: str
    cookie: str
    alice: FakeAgentUi
    socks: Path
    ops: FakeOps

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request with the operator's cookie (unless ``headers`` replace it)."""
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(self.base).netloc, timeout=15)
        try:
            conn.request(
                method, path, body=body, headers={"Cookie": self.cookie, **(headers or {})}
            )
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()


@pytest.fixture
def env() -> Iterator[Env]:
    """Dashboard over the demo swarm; alice's UI up, bob's socket missing."""
    ops, broker = demo()
    with tempfile.TemporaryDirectory(prefix="hh-proxy-") as d:  # short: sun_path is 107 bytes
        socks = Path(d)
        stop = threading.Event()
        app = make_app(ops, broker, socks=socks, heartbeat_seconds=0.3, stop=stop)
        with (
            serve_agent_ui(FakeAgentUi("alice"), socks / "alice.sock") as alice,
            serve(app) as base,
        ):
            yield Env(base, session_cookie(), alice, socks, ops)
            stop.set()


def _proxied_headers_ok(r: Reply) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert "set-cookie" not in r.headers


def test_the_page_is_the_controllers_copy(env: Env) -> None:
    r = env.call("GET", "/agents/alice/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    own = resources.files("harness").joinpath("assets", "index.html").read_bytes()
    assert r.body == own
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = env.call("GET", f"/agents/alice/static/{name}")
        assert r.status == 200 and r.headers["content-type"].startswith(ctype), name
        assert r.body == resources.files("harness").joinpath("assets", name).read_bytes()
    for bad in ("web.py", "index.html", "..%2Fweb.py", "nope.js"):
        r = env.call("GET", f"/agents/alice/static/{bad}")
        assert r.status == 404 and r.json()["error"], bad
    r = env.call("GET", "/agents/alice")
    assert r.status == 308 and r.headers["location"] == "/agents/alice/"
    assert env.alice.seen == []  # none of it asked the agent


def test_unknown_agents_are_404(env: Env) -> None:
    for path in (
        "/agents/zed/",
        "/agents/zed/api/state",
        "/agents/zed/events/stream",
        "/agents/Bad%20Name/api/state",
        "/agents/operator/api/state",
    ):
        r = env.call("GET", path)
        assert r.status == 404, path
        assert r.json()["error"]["field"] == "name", path


def test_api_is_forwarded_without_the_operators_credentials(env: Env) -> None:
    r = env.call(
        "GET",
        "/agents/alice/api/state?x=1&y=a%20b",
        headers={
            "Cookie": f"{env.cookie}; other=1",
            "Authorization": "Bearer operator-secret",
            "Accept": "application/json",
            "X-Forwarded-For": "1.2.3.4",
            "Origin": "http://127.0.0.1:7000",
        },
    )
    assert r.status == 200 and r.json()["agent"] == "alice" and r.json()["what"] == "state"
    assert r.headers["content-type"].startswith("application/json")
    _proxied_headers_ok(r)
    (seen,) = env.alice.seen
    assert seen["method"] == "GET" and seen["path"] == "/api/state"
    assert seen["query"] == "x=1&y=a%20b"
    got = seen["headers"]
    assert "cookie" not in got and "authorization" not in got
    assert "x-forwarded-for" not in got and "origin" not in got
    assert got["accept"] == "application/json"
    assert env.cookie.split("=", 1)[1] not in json.dumps(got)


def test_posts_are_forwarded_as_json(env: Env) -> None:
    body = json.dumps({"text": "hello alice"}).encode()
    r = env.call(
        "POST",
        "/agents/alice/api/send",
        body,
        {"Content-Type": "application/json", "Authorization": "Bearer x"},
    )
    assert r.status == 200 and r.json()["echo"] == body.decode()
    _proxied_headers_ok(r)
    seen = env.alice.seen[-1]
    assert seen["method"] == "POST" and seen["headers"]["content-type"] == "application/json"
    assert "cookie" not in seen["headers"] and "authorization" not in seen["headers"]
    n = len(env.alice.seen)
    # a form is what another site could post: refused before it reaches the agent
    for ctype in ("application/x-www-form-urlencoded", "text/plain"):
        r = env.call("POST", "/agents/alice/api/send", b"text=hi", {"Content-Type": ctype})
        assert r.status == 415, ctype
    r = env.call(
        "POST",
        "/agents/alice/api/send",
        body,
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
    )
    assert r.status == 403
    assert len(env.alice.seen) == n


def test_only_json_and_event_streams_come_back(env: Env) -> None:
    for what in ("html", "plain"):
        r = env.call("GET", f"/agents/alice/api/{what}")
        assert r.status == 502, what
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "bad_gateway"
        assert b"<script>" not in r.body
        _proxied_headers_ok(r)
    r = env.call("GET", "/agents/alice/api/cookie")
    assert r.status == 200 and r.json()["what"] == "cookie"
    _proxied_headers_ok(r)  # the agent's Set-Cookie stays behind


def test_a_large_body_streams_through(env: Env) -> None:
    n = 3 * 1024 * 1024
    r = env.call("GET", f"/agents/alice/api/big?n={n}")
    assert r.status == 200 and len(r.json()["pad"]) == n  # type: ignore[arg-type]


def test_only_the_api_and_events_are_forwarded(env: Env) -> None:
    for path in (
        "/agents/alice/healthz",
        "/agents/alice/static/../healthz",
        "/agents/alice/api",
        "/agents/alice/api/%2e%2e/healthz",
        "/agents/alice/events/other",
    ):
        r = env.call("GET", path)
        assert r.status in (404, 405), (path, r.status)
    r = env.call("POST", "/agents/alice/events/stream", b"{}", {"Content-Type": "application/json"})
    assert r.status == 405
    assert env.alice.seen == []


def test_a_missing_socket_says_the_ui_is_not_running(env: Env) -> None:
    for path in ("/agents/bob/api/state", "/agents/bob/events/stream"):
        r = env.call("GET", path)
        assert r.status == 503, path
        err = r.json()["error"]
        assert err["code"] == "agent_ui_down" and "bob" in err["message"]
    (env.socks / "carol.sock").write_text("not a socket")
    r = env.call("GET", "/agents/carol/api/state")
    assert r.status == 503 and r.json()["error"]["code"] == "agent_ui_down"
    # the page itself still loads (it shows the UI as disconnected)
    assert env.call("GET", "/agents/bob/").status == 200


def test_events_stream_through_as_they_come(env: Env) -> None:
    s = SSE(env.base, "/agents/alice/events/stream", {"Cookie": env.cookie}, login=False)
    try:
        assert s.resp.status == 200
        assert s.resp.getheader("Content-Type", "").startswith("text/event-stream")
        assert s.resp.getheader("Content-Security-Policy") == "default-src 'none'; sandbox"
        assert s.next_block().get("retry") == "1000"
        for i in range(3):  # each one arrives before the next is even sent
            env.alice.push(f"event {i}")
            block = s.next_block()
            assert block == {"event": "x", "data": f"event {i}"}
        seen = env.alice.seen[-1]
        assert seen["path"] == "/events/stream" and "cookie" not in seen["headers"]
    finally:
        s.close()
    # the agent's stream ends once the browser has gone
    deadline = time.monotonic() + 10
    while env.alice.streams_open:
        assert time.monotonic() < deadline, "the proxied stream outlived its client"
        time.sleep(0.05)


def test_proxied_streams_count_against_the_session(env: Env) -> None:
    streams = [
        SSE(env.base, "/agents/alice/events/stream", {"Cookie": env.cookie}, login=False)
        for _ in range(8)
    ]
    try:
        assert [s.resp.status for s in streams] == [200] * 8
        r = env.call("GET", "/agents/alice/events/stream")
        assert r.status == 503 and r.json()["error"]["code"] == "too_many_streams"
        r = env.call("GET", "/messages/stream")
        assert r.status == 503
        assert env.call("GET", "/agents/alice/api/state").status == 200  # the API still answers
    finally:
        for s in streams:
            s.close()


def test_the_cookie_never_reaches_the_agent_by_any_route(env: Env) -> None:
    """Every request the stand-in saw during a busy session: none carried a credential."""
    env.call("GET", "/agents/alice/api/state")
    env.call("POST", "/agents/alice/api/send", b"{}", {"Content-Type": "application/json"})
    s = SSE(env.base, "/agents/alice/events/stream", {"Cookie": env.cookie}, login=False)
    s.next_block()
    s.close()
    assert len(env.alice.seen) == 3
    secret = env.cookie.split("=", 1)[1]
    for seen in env.alice.seen:
        assert "cookie" not in seen["headers"] and "authorization" not in seen["headers"]
        assert secret not in json.dumps(seen)


def test_without_a_session_nothing_is_forwarded(env: Env) -> None:
    for method, path in (
        ("GET", "/agents/alice/api/state"),
        ("GET", "/agents/alice/events/stream"),
        ("POST", "/agents/alice/api/send"),
    ):
        r = env.call(method, path, b"{}", {"Cookie": "", "Content-Type": "application/json"})
        assert r.status == 401, path
    assert env.alice.seen == []


# ----------------------------------------------------------------- odd upstreams

CANNED = {
    "/api/garbage": b"garbage\r\n\r\n",
    "/api/close": b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"closed": true}',
    "/api/chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nX-Trailer: y\r\n\r\n'
    ),
    "/api/bad-chunk": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    ),
    "/api/huge-head": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 100_000 + b"\r\n\r\n{}",
    "/api/status-1xx": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "/api/folded": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n json\r\n\r\n<b>",
    "/api/sniff": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: a=b\r\n"
        b"Content-Length: 27\r\n\r\n<script>alert(1)</script>\r\n"
    ),
}


class _Canned(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        head = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        path = head.split(" ")[1].split("?")[0]
        self.wfile.write(CANNED.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))


@pytest.fixture
def odd(env: Env) -> Iterator[Env]:
    """``env`` plus carol's 'UI': a raw socket server answering canned bytes."""
    server = socketserver.ThreadingUnixStreamServer(str(env.socks / "carol.sock"), _Canned)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield env
    finally:
        server.shutdown()
        server.server_close()


def test_odd_upstream_answers_never_pass_unchecked(odd: Env) -> None:
    for path in ("garbage", "huge-head", "status-1xx", "folded"):
        r = odd.call("GET", f"/agents/carol/api/{path}")
        assert r.status == 502, (path, r.status, r.body[:200])
        assert r.json()["error"]["code"] == "bad_gateway", path
        assert r.headers["content-type"].startswith("application/json")
    r = odd.call("GET", "/agents/carol/api/close")  # HTTP/1.0, body until the connection closes
    assert r.status == 200 and r.json() == {"closed": True}
    r = odd.call("GET", "/agents/carol/api/chunked")  # chunk extensions and trailers
    assert r.status == 200 and r.json() == {"a": 1}
    r = odd.call("GET", "/agents/carol/api/bad-chunk")  # cut short: the body just ends
    assert r.status == 200 and r.body == b""
    # a "JSON" body that is really HTML: passed as JSON, never sniffed, never run
    r = odd.call("GET", "/agents/carol/api/sniff")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    _proxied_headers_ok(r)
    # the dashboard is fine afterwards
    assert odd.call("GET", "/api/state").status == 200
