"""The agent web UI app (Falcon test client) and its waitress server, against a stand-in socket."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import StandIn

from harness import login
from harness import web as webmod
from harness.config import HarnessEnv, parse_settings
from harness.events import Bus, EventLog, TurnState
from harness.httpserve import WebServer
from harness.model import ModelStore
from harness.turnstats import TurnRow, TurnStats
from schemas.client import UnixClient

REPO = Path(__file__).resolve().parents[3]


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


@pytest.fixture
def rig(
    tmp_path: Path,
) -> Iterator[tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls]]:
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
        client=UnixClient(sock.path),
    )
    yield falcon.testing.TestClient(app.app), app, sock, controls
    app.stop()
    sock.stop()


def test_static_page_and_assets(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    c = rig[0]
    r = c.simulate_get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/static/app.js">' in r.text
    assert c.simulate_get("/static/app.js").status_code == 200
    assert "text/css" in c.simulate_get("/static/app.css").headers["content-type"]
    r = c.simulate_get("/static/../../etc/passwd")
    assert r.status_code == 404
    r = c.simulate_get("/static/secret.py")
    assert r.status_code == 404 and r.json["error"]["field"] == "name"


def test_state(rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls]) -> None:
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
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    c, _, sock, _ = rig
    r = c.simulate_post("/api/send", json={"body": "do the thing"})
    assert r.status_code == 200 and r.json["id"] == 1
    assert ("POST", "/wake", {"from": "operator", "body": "do the thing"}) in sock.calls
    # form-encoded works too
    r = c.simulate_post(
        "/api/send",
        body="body=hi+there",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200


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
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
    path: str,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    r = rig[0].simulate_post(path, json=body)
    assert r.status_code == status
    assert r.json["error"]["field"] == field and r.json["error"]["message"]


def test_malformed_json_and_unknown_route(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
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
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
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
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    c, app, _, _ = rig
    for i in range(25):
        app.bus.note(f"n{i}")
    r = c.simulate_get("/api/history?limit=10").json
    assert [e["id"] for e in r["events"]] == list(range(16, 26)) and r["has_more"]
    r = c.simulate_get("/api/history?before=6&limit=10").json
    assert [e["id"] for e in r["events"]] == [1, 2, 3, 4, 5] and not r["has_more"]


def test_turns_endpoint(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    c, app, _, _ = rig
    app.stats.record(
        TurnRow(model="haiku", result_kind="ok", started_at=1, ended_at=2, duration_ms=1000)
    )
    (t,) = c.simulate_get("/api/turns").json["turns"]
    assert t["result_kind"] == "ok" and t["duration_ms"] == 1000


def test_sse_backfill_resume_heartbeat_over_waitress(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, app, _, _ = rig
    monkeypatch.setattr(webmod, "HEARTBEAT", 0.3)
    for i in range(3):
        app.bus.note(f"old {i}")
    server = WebServer(app.app, "127.0.0.1", 0)
    server.start()
    assert server.wait_bound(5) and server.port
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/events/stream?backfill=2")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Cache-Control") == "no-cache"
        lines: list[str] = []

        def read_until(token: str) -> None:
            while token not in "".join(lines):
                lines.append(resp.readline().decode())

        read_until("event: ready")
        text = "".join(lines)
        assert (
            "id: 2\nevent: note" in text and "id: 3\nevent: note" in text and "id: 1\n" not in text
        )
        read_until(": heartbeat")
        threading.Timer(0.1, lambda: app.bus.note("live one")).start()
        read_until("live one")
        assert "id: 4\nevent: note" in "".join(lines)
        conn.close()
        # resume after id 3: exactly id 4, then ready
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/events/stream", headers={"Last-Event-ID": "3"})
        resp = conn.getresponse()
        lines = []
        read_until("event: ready")
        text = "".join(lines)
        assert "id: 4\n" in text and "id: 3\n" not in text
        conn.close()
    finally:
        t0 = time.monotonic()
        app.stop()
        server.stop()
        assert time.monotonic() - t0 < 8


def test_sse_streams_live_text_without_ids(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    """Streaming model text is live-only: no ``id:`` (a resume point never moves), ordered with
    the stored events around it, and the text so far is in ``ready`` for a late subscriber."""
    _, app, _, _ = rig
    app.bus.note("before")
    app.bus.set_state(TurnState.THINKING, 1)
    app.bus.text_delta(1, 0, "Hel")
    server = WebServer(app.app, "127.0.0.1", 0)
    server.start()
    assert server.wait_bound(5) and server.port
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/events/stream")
        resp = conn.getresponse()
        lines: list[str] = []

        def read_until(token: str) -> str:
            while token not in "".join(lines):
                lines.append(resp.readline().decode())
            return "".join(lines)

        text = read_until('"partial"')
        assert '"partial":{"turn":1,"index":0,"text":"Hel"}' in text.replace(" ", "")
        app.bus.text_delta(1, 0, "lo")
        app.bus.emit("assistant_text", {"text": "Hello"}, 1)
        app.bus.text_delta(1, 0, "next")
        text = read_until('"next"')
        tail = text[text.index("event: ready") :]
        i_lo, i_full, i_next = tail.index('"lo"'), tail.index("assistant_text"), tail.index("next")
        assert i_lo < i_full < i_next  # publication order kept
        frame = tail[tail.index("event: text_delta") - 1 : i_lo]
        assert "id:" not in frame and '"offset":3' in tail.replace(" ", "")
        conn.close()
    finally:
        app.stop()
        server.stop()
    assert app.bus.snapshot()["partial"] == {"turn": 1, "index": 0, "text": "next"}
    app.bus.set_state(TurnState.IDLE, 1)
    assert app.bus.snapshot()["partial"] is None


def test_login_endpoints(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
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
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
    path: str,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    r = rig[0].simulate_post(path, json=body)
    assert r.status_code == status, r.json
    assert r.json["error"]["field"] == field and r.json["error"]["message"]


def test_bind_retry_waits_for_the_port(
    rig: tuple[falcon.testing.TestClient, webmod.WebApp, StandIn, FakeControls],
) -> None:
    _, app, _, _ = rig
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    server = WebServer(app.app, "127.0.0.1", port, retry_interval=0.2)
    server.start()
    time.sleep(0.6)
    assert server.port is None  # still retrying
    holder.close()
    assert server.wait_bound(5) and server.port == port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    server.stop()


def test_wake_cli(tmp_path: Path) -> None:
    with StandIn(tmp_path / "w.sock", agent="alice") as sock:
        run = lambda *a, stdin=None: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "harness", "wake", *a],
            input=stdin,
            capture_output=True,
            text=True,
            env={"HYPERHIVE_SOCKET": sock.path, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            cwd=REPO,
            timeout=60,
        )
        r = run("--from", "matrix: new dm", "--body", "ping")
        assert r.returncode == 0 and "message #1" in r.stdout
        r = run("--from", "cron", "--body", "-", stdin="line one\nline two\n")
        assert r.returncode == 0
        wakes = [b for m, p, b in sock.calls if p == "/wake"]
        assert all(len(b.pop("idempotency_key", "")) >= 16 for b in wakes)  # retries never dup
        assert wakes == [
            {"from": "matrix: new dm", "body": "ping"},
            {"from": "cron", "body": "line one\nline two\n"},
        ]
        r = run("--from", "", "--body", "x")
        assert r.returncode == 1 and "from" in r.stderr
        r = run("--from", "x", "--body", "-", stdin="")
        assert r.returncode == 2
        r = run("--help")
        assert r.returncode == 0 and "--from LABEL" in r.stdout and "stdin" in r.stdout
