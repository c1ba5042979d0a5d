"""The agent web UI app (falcon's ASGI test client) and its hivehttp listeners, against a
stand-in controller socket that checks the agent's bearer credential.

Real listeners: the UI's unix socket (mode 0600) and the opt-in TCP port (bearer, Host
allow-list, JSON-only same-origin mutations); bounded input (a 1 GiB Content-Length is a 413
before the body is read, deep JSON and lone surrogates are 400, a form is 415); SSE as async
streams (backfill, resume, heartbeat, live text, disconnects, a cap that never blocks
``/api/state``); bind retry on a held socket or port; the ``wake`` CLI with its credential.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import TOKEN, StandIn, UnixHTTPConnection, request, write_credential

from harness import login
from harness import web as webmod
from harness.config import HarnessEnv, parse_settings
from harness.credential import broker_client
from harness.events import Bus, EventLog, TurnState
from harness.httpserve import TcpEndpoint, UnixEndpoint, WebServer, tcp_app, tcp_policy
from harness.model import ModelStore
from harness.turnstats import TurnRow, TurnStats

REPO = Path(__file__).resolve().parents[3]
GiB = 1024**3


class FakeControls:
    def __init__(self, models: ModelStore, bus: Bus) -> None:
        self.models = models
        self.bus = bus
        self.running = False
        self.calls: list[str] = []

    def cancel_turn(self) -> bool:
        self.calls.append("cancel")
        return self.running

    def request_compact(self) -> str:
        self.calls.append("compact")
        return "queued" if self.running else "started"

    def request_new_session(self) -> None:
        self.calls.append("new")

    def set_model(self, model: str) -> str:
        eff = self.models.set(model)
        self.bus.set_model(eff, "operator")
        return eff

    # login: the real credential store on a temporary claude dir, a scripted session
    config_dir = Path("/nonexistent")
    environ: dict[str, str]
    session: dict[str, Any] | None = None

    def login_state(self) -> dict[str, Any]:
        source = login.credential_source(self.environ, self.config_dir)
        return {
            "needs_login": source is None,
            "reason": None if source else "no credentials",
            "source": source,
            "stored": login.stored_kind(self.config_dir),
            "session": self.session,
        }

    def start_login(self, method: str = "claudeai") -> dict[str, Any]:
        self.calls.append(f"login:{method}")
        if self.session is not None and self.session["state"] == "waiting_code":
            raise login.LoginBusy("a login is already in progress")
        self.session = {"state": "waiting_code", "method": method, "url": "https://x/auth"}
        return self.session

    def submit_login_code(self, code: str) -> dict[str, Any]:
        self.calls.append("code")
        if self.session is None:
            raise login.LoginBusy("no login is waiting for a code")
        self.session = {**self.session, "state": "exchanging"}
        return self.session

    def cancel_login(self) -> bool:
        had, self.session = self.session is not None, None
        return had

    def store_credential(self, kind: str, value: str) -> str:
        login.store_credential(self.config_dir, kind, value)
        return login.credential_source(self.environ, self.config_dir) or "none"

    def forget_credential(self) -> bool:
        return login.forget_credential(self.config_dir)

    def plugin_state(self) -> list[dict[str, Any]] | None:
        return [{"kind": "plugin", "spec": "hello@mkt", "ok": True, "action": "present"}]

    @property
    def turn_timeout(self) -> float:
        return 1800.0


Rig = tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    sock = StandIn(tmp_path / "a.sock", agent="alice").start()
    env = HarnessEnv(
        "alice", "agent", sock.path, tmp_path, None, "127.0.0.1", 0, "claude", tmp_path / "claude"
    )
    settings = parse_settings(
        {"model": "haiku", "dashboard_url": "http://127.0.0.1:7000"}, agent="alice", flavor="agent"
    )
    models = ModelStore(tmp_path / "hyperhive-model", "haiku")
    bus = Bus(EventLog(tmp_path / "ev.sqlite"), "haiku")
    stats = TurnStats(tmp_path / "ts.sqlite")
    controls = FakeControls(models, bus)
    controls.config_dir = tmp_path / "claude"
    controls.environ = {"ANTHROPIC_API_KEY": "k"}
    app = webmod.WebApp(
        env,
        settings,
        bus,
        stats,
        models,
        controls,
        {"ANTHROPIC_API_KEY": "k"},
        client=broker_client(sock.path, TOKEN),
    )
    yield falcon.testing.TestClient(app.app), app, sock, controls
    app.stop()
    sock.stop()


def test_static_page_and_assets(
    rig: Rig,
) -> None:
    c = rig[0]
    r = c.simulate_get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="static/app.js">' in r.text
    assert c.simulate_get("/static/app.js").status_code == 200
    assert "text/css" in c.simulate_get("/static/app.css").headers["content-type"]
    r = c.simulate_get("/static/../../etc/passwd")
    assert r.status_code == 404
    r = c.simulate_get("/static/secret.py")
    assert r.status_code == 404 and r.json["error"]["field"] == "name"


def test_state(rig: Rig) -> None:
    c, app, sock, _ = rig
    sock.deliver("bob", "hello")
    sock._take(None)  # delivered, shows in recent
    app.bus.set_state(TurnState.THINKING)
    s = c.simulate_get("/api/state").json
    assert s["agent"] == "alice" and s["flavor"] == "agent" and s["model"] == "haiku"
    assert s["turn_state"] == "thinking" and s["turn_state_since"] > 0
    assert s["needs_login"] is False and s["dashboard_url"] == "http://127.0.0.1:7000"
    assert [m["body"] for m in s["inbox"]] == ["hello"]
    sock.stop()
    s = c.simulate_get("/api/state").json
    assert s["inbox"] is None  # best effort: the controller is away


def test_send_goes_to_wake_as_operator(
    rig: Rig,
) -> None:
    c, _, sock, _ = rig
    r = c.simulate_post("/api/send", json={"body": "do the thing"})
    assert r.status_code == 200 and r.json["id"] == 1
    assert ("POST", "/wake", {"from": "operator", "body": "do the thing"}) in sock.calls
    assert sock.unauthorized == 0  # the broker call carried the agent's credential


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"]
)
def test_only_json_bodies_are_taken(rig: Rig, ctype: str) -> None:
    """What an HTML form on another site can send without a preflight is refused: 415."""
    c, _, sock, controls = rig
    for path in ("/api/send", "/api/cancel", "/api/login/key"):
        r = c.simulate_post(path, body="body=hi+there", headers={"Content-Type": ctype})
        assert r.status_code == 415 and r.json["error"]["code"] == "unsupported_media_type"
    r = c.simulate_post("/api/cancel", body="", headers={"Content-Type": ctype})
    assert r.status_code == 415  # an empty form too
    r = c.simulate_post("/api/send", body='{"body": "x"}')  # no Content-Type at all
    assert r.status_code == 415
    assert not [x for x in sock.calls if x[1] == "/wake"] and controls.calls == []


def test_pages_use_relative_urls_only(rig: Rig) -> None:
    """The dashboard serves the same files at /agents/<name>/: no absolute URL may remain."""
    c = rig[0]
    html = c.simulate_get("/").text
    js = c.simulate_get("/static/app.js").text
    css = c.simulate_get("/static/app.css").text
    assert re.findall(r'(?:src|href)="(/[^"]*)"', html) == []
    assert re.findall(r"""(?:fetch|EventSource|post|loginAction)\(\s*["'`](/[^"'`]*)""", js) == []
    assert "url(/" not in css.replace(" ", "")
    for rel in ("static/app.css", "static/app.js"):
        assert f'"{rel}"' in html
    for rel in ('"api/state"', '"events/stream"', "`api/history", '"api/send"', '"api/model"'):
        assert rel in js


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/send", {}, 400, "body"),
        ("/api/send", {"body": "   "}, 400, "body"),
        ("/api/send", {"body": 5}, 400, "body"),
        ("/api/send", {"body": "x" * 70000}, 400, "body"),
        ("/api/model", {}, 400, "model"),
        ("/api/model", {"model": "a b"}, 400, "model"),
        ("/api/compact", {"now": True}, 400, "now"),
        ("/api/cancel", {"x": 1}, 400, "x"),
    ],
)
def test_bad_input_names_the_field(
    rig: Rig,
    path: str,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    r = rig[0].simulate_post(path, json=body)
    assert r.status_code == status
    assert r.json["error"]["field"] == field and r.json["error"]["message"]


def test_malformed_json_and_unknown_route(
    rig: Rig,
) -> None:
    c = rig[0]
    r = c.simulate_post("/api/send", body="{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json["error"]["field"] == "(root)"
    r = c.simulate_post("/api/send", body="[1]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = c.simulate_get("/api/nope")
    assert r.status_code == 404 and "error" in r.json
    r = c.simulate_get("/api/history?before=abc")
    assert r.status_code == 400 and r.json["error"]["field"] == "before"
    r = c.simulate_get("/events/stream", headers={"Last-Event-ID": "x"})
    assert r.status_code == 400 and r.json["error"]["field"] == "Last-Event-ID"


def test_controls(
    rig: Rig,
) -> None:
    c, _app, _, controls = rig
    r = c.simulate_post("/api/cancel", json={})
    assert r.status_code == 409 and r.json["error"]["code"] == "conflict"
    controls.running = True
    assert c.simulate_post("/api/cancel").json == {"result": "cancelled"}
    assert c.simulate_post("/api/compact", json={}).json == {"result": "queued"}
    assert c.simulate_post("/api/new", json={}).status_code == 200
    r = c.simulate_post("/api/model", json={"model": "opus"})
    assert r.json == {"model": "opus", "override": "opus", "settings_model": "haiku"}
    assert c.simulate_post("/api/model", json={"model": ""}).json["override"] is None
    assert controls.calls == ["cancel", "cancel", "compact", "new"]


def test_history_paging(
    rig: Rig,
) -> None:
    c, app, _, _ = rig
    for i in range(25):
        app.bus.note(f"n{i}")
    r = c.simulate_get("/api/history?limit=10").json
    assert [e["id"] for e in r["events"]] == list(range(16, 26)) and r["has_more"]
    r = c.simulate_get("/api/history?before=6&limit=10").json
    assert [e["id"] for e in r["events"]] == [1, 2, 3, 4, 5] and not r["has_more"]


def test_turns_endpoint(
    rig: Rig,
) -> None:
    c, app, _, _ = rig
    app.stats.record(
        TurnRow(model="haiku", result_kind="ok", started_at=1, ended_at=2, duration_ms=1000)
    )
    (t,) = c.simulate_get("/api/turns").json["turns"]
    assert t["result_kind"] == "ok" and t["duration_ms"] == 1000


@pytest.fixture
def served(rig: Rig, tmp_path: Path) -> Iterator[WebServer]:
    """The rig's app on its unix socket, as ``serve`` runs it."""
    server = WebServer(rig[1].asgi, UnixEndpoint(tmp_path / "web.sock"))
    server.start()
    assert server.wait_bound(10) and server.listener is not None
    yield server
    rig[1].stop()
    server.stop()


class SSE:
    """Reads one ``/events/stream`` response line by line."""

    def __init__(self, conn: http.client.HTTPConnection, path: str = "/events/stream",
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.conn = conn
        conn.request("GET", path, headers=headers or {})
        self.resp = conn.getresponse()
        self.lines: list[str] = []

    def until(self, token: str) -> str:
        while token not in "".join(self.lines):
            line = self.resp.readline().decode()
            assert line, f"stream ended before {token!r}: {''.join(self.lines)[-500:]}"
            self.lines.append(line)
        return "".join(self.lines)

    def close(self) -> None:
        self.conn.close()


def test_unix_socket_is_the_owners_alone(served: WebServer) -> None:
    assert served.path is not None
    mode = os.stat(served.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert request(UnixHTTPConnection(served.path), "GET", "/healthz") == (200, {"ok": True})


def test_sse_backfill_resume_heartbeat(
    rig: Rig, served: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, app, _, _ = rig
    monkeypatch.setattr(webmod, "HEARTBEAT", 0.3)
    for i in range(3):
        app.bus.note(f"old {i}")
    path = served.path
    assert path is not None
    sse = SSE(UnixHTTPConnection(path), "/events/stream?backfill=2")
    assert sse.resp.status == 200
    assert sse.resp.getheader("Cache-Control") == "no-cache"
    text = sse.until("event: ready")
    assert "id: 2\nevent: note" in text and "id: 3\nevent: note" in text and "id: 1\n" not in text
    sse.until(": heartbeat")
    threading.Timer(0.1, lambda: app.bus.note("live one")).start()
    sse.until("live one")
    assert "id: 4\nevent: note" in "".join(sse.lines)
    sse.close()
    # resume after id 3: exactly id 4, then ready
    sse = SSE(UnixHTTPConnection(path), headers={"Last-Event-ID": "3"})
    text = sse.until("event: ready")
    assert "id: 4\n" in text and "id: 3\n" not in text
    sse.close()
    # stop() ends the streams that are open
    sse = SSE(UnixHTTPConnection(path))
    sse.until("event: ready")
    t0 = time.monotonic()
    app.stop()
    sse.resp.read()  # returns once the server has ended the stream (else: socket timeout)
    assert time.monotonic() - t0 < 8


def test_sse_streams_live_text_without_ids(rig: Rig, served: WebServer) -> None:
    """Streaming model text is live-only: no ``id:`` (a resume point never moves), ordered with
    the stored events around it, and the text so far is in ``ready`` for a late subscriber."""
    _, app, _, _ = rig
    app.bus.note("before")
    app.bus.set_state(TurnState.THINKING, 1)
    app.bus.text_delta(1, 0, "Hel")
    assert served.path is not None
    sse = SSE(UnixHTTPConnection(served.path))
    text = sse.until('"partial"')
    assert '"partial":{"turn":1,"index":0,"text":"Hel"}' in text.replace(" ", "")
    app.bus.text_delta(1, 0, "lo")
    app.bus.emit("assistant_text", {"text": "Hello"}, 1)
    app.bus.text_delta(1, 0, "next")
    text = sse.until('"next"')
    tail = text[text.index("event: ready") :]
    i_lo, i_full, i_next = tail.index('"lo"'), tail.index("assistant_text"), tail.index("next")
    assert i_lo < i_full < i_next  # publication order kept
    frame = tail[tail.index("event: text_delta") - 1 : i_lo]
    assert "id:" not in frame and '"offset":3' in tail.replace(" ", "")
    sse.close()
    assert app.bus.snapshot()["partial"] == {"turn": 1, "index": 0, "text": "next"}
    app.bus.set_state(TurnState.IDLE, 1)
    assert app.bus.snapshot()["partial"] is None


def test_open_streams_never_block_state_and_are_capped(rig: Rig, served: WebServer) -> None:
    """Streams are coroutines on one loop: with every stream slot taken (and more refused with
    503) /api/state still answers at once; a client that goes frees its slot."""
    _, app, _, _ = rig
    assert served.path is not None
    streams = [SSE(UnixHTTPConnection(served.path)) for _ in range(app.max_streams)]
    for sse in streams:
        sse.until("event: ready")
    assert app.open_streams == app.max_streams
    status, err = request(UnixHTTPConnection(served.path), "GET", "/events/stream")
    assert status == 503 and err["error"]["code"] == "busy"
    for _ in range(5):
        status, doc = request(UnixHTTPConnection(served.path, timeout=5), "GET", "/api/state")
        assert status == 200 and doc["agent"] == "alice"
    app.bus.note("to everyone")
    for sse in streams:
        sse.until("to everyone")
    for sse in streams:
        sse.close()
    deadline = time.monotonic() + 10
    while app.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.open_streams == 0
    sse = SSE(UnixHTTPConnection(served.path))
    assert sse.resp.status == 200
    sse.close()


def test_a_1gib_body_is_refused_before_it_is_read(served: WebServer) -> None:
    """413 on the Content-Length alone: the process does not grow by the body's size."""
    assert served.path is not None
    me = psutil.Process()
    before = me.memory_info().rss
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(served.path))
    head = (f"POST /api/send HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {GiB}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:  # the head alone is answered
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b'{"body": "' + b"x" * (1 << 20))  # the server hung up: none of it is read
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert me.memory_info().rss - before < 64 * 1024 * 1024
    # the listener is fine afterwards
    assert request(UnixHTTPConnection(served.path), "GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "(root)"),
        (b'{"body": ' + b"[" * 70 + b"]" * 70 + b"}", "body" + ".0" * 63),
        (b'{"body": "hi \\ud800 there"}', "body"),
        (b'{"\\udfff": "x"}', "\udfff"),
        (b'{"body": "\xff\xfe"}', "(root)"),
        (b"[1, 2]", "(root)"),
        (b'{"body": NaN}', "body"),
    ],
    ids=["100k-deep", "65-deep", "lone-surrogate", "surrogate-key", "not-utf8", "array", "nan"],
)
def test_bad_json_is_a_400_naming_the_field(served: WebServer, raw: bytes, field: str) -> None:
    assert served.path is not None
    status, err = request(UnixHTTPConnection(served.path), "POST", "/api/send", raw,
                          {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400, err
    assert err["error"]["message"]
    if field != "\udfff":  # a surrogate field name cannot be named back in JSON text
        assert err["error"]["field"] == field, err


def test_a_form_post_on_the_socket_is_415(rig: Rig, served: WebServer) -> None:
    assert served.path is not None
    status, err = request(UnixHTTPConnection(served.path), "POST", "/api/send", b"body=hi",
                          {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 415 and err["error"]["code"] == "unsupported_media_type"
    assert not [x for x in rig[2].calls if x[1] == "/wake"]


@pytest.fixture
def tcp(rig: Rig) -> Iterator[WebServer]:
    """The opt-in TCP listener, as ``serve`` builds it with HYPERHIVE_WEB_TCP=1."""
    ep = TcpEndpoint("127.0.0.1", 0)
    server = WebServer(tcp_app(rig[1].asgi, TOKEN), ep, policy=tcp_policy(ep, ("alice.box",)))
    server.start()
    assert server.wait_bound(10) and server.port
    yield server
    rig[1].stop()
    server.stop()


def test_tcp_needs_the_agents_credential(rig: Rig, tcp: WebServer) -> None:
    assert tcp.port is not None
    conn = lambda: http.client.HTTPConnection("127.0.0.1", tcp.port, timeout=10)  # noqa: E731
    auth = {"Authorization": f"Bearer {TOKEN}"}
    js = {"Content-Type": "application/json"}
    for path in ("/", "/api/state", "/events/stream", "/healthz", "/static/app.js"):
        status, err = request(conn(), "GET", path)
        assert status == 401 and err["error"]["code"] == "unauthorized", path
    status, _ = request(conn(), "GET", "/api/state", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _ = request(conn(), "POST", "/api/send", b'{"body": "x"}', js)
    assert status == 401
    status, doc = request(conn(), "GET", "/api/state", headers=auth)
    assert status == 200 and doc["agent"] == "alice"
    status, _ = request(conn(), "GET", "/api/state", headers={**auth, "Host": "alice.box:1"})
    assert status == 200  # a configured extra name
    # DNS rebinding: the page's own name in Host
    status, err = request(conn(), "GET", "/api/state", headers={**auth, "Host": "evil.example"})
    assert status == 403 and err["error"]["code"] == "bad_host"
    # mutations: JSON only, same origin only
    status, _ = request(conn(), "POST", "/api/send", b"body=x",
                        {**auth, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 415
    status, _ = request(conn(), "POST", "/api/send", b'{"body": "x"}',
                        {**auth, **js, "Origin": "http://127.0.0.2:8000"})  # fmt: skip
    assert status == 403
    assert not [x for x in rig[2].calls if x[1] == "/wake"]
    status, doc = request(conn(), "POST", "/api/send", b'{"body": "x"}', {**auth, **js})
    assert status == 200 and doc["id"] == 1


def test_login_endpoints(
    rig: Rig,
    tmp_path: Path,
) -> None:
    c, _, _, controls = rig
    controls.environ = {}
    s = c.simulate_get("/api/state").json
    assert s["needs_login"] is True and s["login"]["source"] is None
    assert s["plugins"][0]["spec"] == "hello@mkt" and s["turn_timeout_seconds"] == 1800
    # interactive login: start, paste a code, cancel
    r = c.simulate_post("/api/login/start", json={"method": "console"})
    assert r.status_code == 200 and r.json["login"]["url"] == "https://x/auth"
    assert c.simulate_post("/api/login/start", json={}).status_code == 409
    r = c.simulate_post("/api/login/code", json={"code": "no-hash-here"})
    assert r.status_code == 400 and r.json["error"]["field"] == "code"
    r = c.simulate_post("/api/login/code", json={"code": " abc#def \n"})
    assert r.status_code == 200 and r.json["login"]["state"] == "exchanging"
    assert c.simulate_post("/api/login/cancel", json={}).json == {"result": "cancelled"}
    assert c.simulate_post("/api/login/cancel", json={}).status_code == 409
    assert controls.calls == ["login:console", "login:claudeai", "code"]
    # paste a key: stored in the claude dir's settings.json env, mode 0600
    r = c.simulate_post("/api/login/key", json={"kind": "api_key", "value": "sk-ant-api03-x"})
    assert r.status_code == 200 and r.json == {"result": "stored", "source": "stored api key"}
    settings = controls.config_dir / "settings.json"
    assert (settings.stat().st_mode & 0o777) == 0o600
    s = c.simulate_get("/api/state").json
    assert s["needs_login"] is False and s["login"]["stored"] == "api_key"
    assert "sk-ant" not in str(s)  # the secret is never echoed
    assert c.simulate_post("/api/login/forget", json={}).json == {"result": "removed"}
    assert c.simulate_post("/api/login/forget", json={}).json == {"result": "nothing stored"}


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/login/start", {"method": "sso"}, 400, "method"),
        ("/api/login/start", {"email": "x"}, 400, "email"),
        ("/api/login/code", {}, 400, "code"),
        ("/api/login/code", {"code": "a b#c"}, 400, "code"),
        ("/api/login/key", {"kind": "password", "value": "x"}, 400, "kind"),
        ("/api/login/key", {"kind": "api_key"}, 400, "value"),
        ("/api/login/key", {"kind": "api_key", "value": "two words"}, 400, "value"),
        ("/api/login/key", {"kind": "oauth_token", "value": "x" * 5000}, 400, "value"),
        ("/api/login/nope", {}, 404, "action"),
    ],
)
def test_login_bad_input_names_the_field(
    rig: Rig,
    path: str,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    r = rig[0].simulate_post(path, json=body)
    assert r.status_code == status, r.json
    assert r.json["error"]["field"] == field and r.json["error"]["message"]


def test_bind_retry_waits_for_a_held_socket_and_port(rig: Rig, tmp_path: Path) -> None:
    """A live process on the socket (the old harness during a restart) is waited out; so is a
    held TCP port. A stale socket file nobody answers on is replaced at once."""
    _, app, _, _ = rig
    path = tmp_path / "held.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    holder.listen()
    server = WebServer(app.asgi, UnixEndpoint(path), retry_interval=0.2)
    server.start()
    assert not server.wait_bound(0.6)  # still retrying
    holder.close()  # the file stays: stale now
    assert server.wait_bound(5)
    assert request(UnixHTTPConnection(path), "GET", "/healthz")[0] == 200
    server.stop()
    assert not path.exists()

    tcp_holder = socket.socket()
    tcp_holder.bind(("127.0.0.1", 0))
    tcp_holder.listen()
    port = tcp_holder.getsockname()[1]
    server = WebServer(tcp_app(app.asgi, TOKEN), TcpEndpoint("127.0.0.1", port),
                       retry_interval=0.2)  # fmt: skip
    server.start()
    assert not server.wait_bound(0.6) and server.port is None
    tcp_holder.close()
    assert server.wait_bound(5) and server.port == port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert request(conn, "GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    server.stop()


def _wake(sock: StandIn, *args: str, cred: Path | None, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {"HYPERHIVE_SOCKET": sock.path, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    if cred is not None:
        env["HYPERHIVE_CREDENTIAL_FILE"] = str(cred)
    return subprocess.run(
        [sys.executable, "-m", "harness", "wake", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def test_wake_cli(tmp_path: Path) -> None:
    cred = write_credential(tmp_path / "credential")
    with StandIn(tmp_path / "w.sock", agent="alice") as sock:
        r = _wake(sock, "--from", "matrix: new dm", "--body", "ping", cred=cred)
        assert r.returncode == 0 and "message #1" in r.stdout
        r = _wake(sock, "--from", "cron", "--body", "-", cred=cred, stdin="line one\nline two\n")
        assert r.returncode == 0
        assert sock.unauthorized == 0
        wakes = [b for m, p, b in sock.calls if p == "/wake"]
        assert all(len(b.pop("idempotency_key", "")) >= 16 for b in wakes)  # retries never dup
        assert wakes == [
            {"from": "matrix: new dm", "body": "ping"},
            {"from": "cron", "body": "line one\nline two\n"},
        ]
        r = _wake(sock, "--from", "", "--body", "x", cred=cred)
        assert r.returncode == 1 and "from" in r.stderr
        r = _wake(sock, "--from", "x", "--body", "-", cred=cred, stdin="")
        assert r.returncode == 2
        r = _wake(sock, "--help", cred=None)
        assert r.returncode == 0 and "--from LABEL" in r.stdout and "stdin" in r.stdout
        assert "HYPERHIVE_CREDENTIAL_FILE" in r.stdout


def test_wake_cli_without_a_usable_credential(tmp_path: Path) -> None:
    with StandIn(tmp_path / "w.sock", agent="alice") as sock:
        missing = tmp_path / "no-such-credential"
        r = _wake(sock, "--from", "x", "--body", "y", cred=missing)
        assert r.returncode == 2 and f"{missing} does not exist" in r.stderr
        empty = tmp_path / "empty"
        empty.write_text("\n")
        r = _wake(sock, "--from", "x", "--body", "y", cred=empty)
        assert r.returncode == 2 and f"{empty} is empty" in r.stderr
        wrong = write_credential(tmp_path / "wrong", "d3Jvbmc")
        r = _wake(sock, "--from", "x", "--body", "y", cred=wrong)
        assert r.returncode == 1 and "refused" in r.stderr
        assert sock.unauthorized == 1 and sock.calls == []
