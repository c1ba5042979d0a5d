"""``hyperhive-agent serve`` end to end: the real claude CLI, the fake API, a stand-in socket.

Each test starts ``python -m harness serve`` as a subprocess with an isolated HOME /
CLAUDE_CONFIG_DIR / state dir, its credential file, a stand-in controller socket
(tests/component/harness/standin.py, which refuses requests without that credential) and the
scripted fake API (tests/fakeapi). The web UI is reached on its unix socket (the default:
``web.sock`` beside the broker socket). Skipped when no claude CLI is installed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "component" / "harness"))

from standin import TOKEN, StandIn, UnixHTTPConnection, request, write_credential  # noqa: E402

from tests.fakeapi import (  # noqa: E402
    FakeAnthropic,
    Request,
    Rules,
    Usage,
    find_claude_cli,
    reply_error,
    reply_prompt_too_long,
    reply_text,
    reply_tool_use,
    rule,
)

CLI = find_claude_cli(REPO)
pytestmark = pytest.mark.skipif(
    CLI is None, reason="the claude CLI is not installed (./hh test installs it)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    """A running ``serve`` with its fake API and stand-in socket."""

    proc: subprocess.Popen[bytes]
    api: FakeAnthropic
    sock: StandIn
    state: Path
    web: Path  # the web UI's unix socket
    log_path: Path

    def conn(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.web, timeout)

    def get(self, path: str) -> Any:
        status, doc = request(self.conn(), "GET", path)
        if status != 200:
            raise OSError(f"GET {path}: {status} {doc}")
        return doc

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return request(self.conn(), "POST", path, json.dumps(body).encode(),
                       {"Content-Type": "application/json"})  # fmt: skip

    def turns(self) -> list[dict[str, Any]]:
        db = self.state / "hyperhive-turn-stats.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM turns ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def events(self) -> list[dict[str, Any]]:
        con = sqlite3.connect(f"file:{self.state / 'hyperhive-events.sqlite'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id, kind, turn, data FROM events ORDER BY id").fetchall()
        finally:
            con.close()
        return [{"id": i, "kind": k, "turn": t, "data": json.loads(d)} for i, k, t, d in rows]

    def wait_turns(self, n: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        assert wait_for(lambda: len(self.turns()) >= n, timeout), f"no turn {n}; log:\n{self.log()}"
        return self.turns()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def claude_pids(self) -> list[int]:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [k.pid for k in kids]


def wait_for(pred: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def _start(
        script: Any,
        flavor: str = "agent",
        name: str = "alice",
        settings: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        wait_up: bool = True,
    ) -> Agent:
        api = FakeAnthropic(script).start()
        for earlier in agents:  # a restart test: the new harness gets a fresh controller
            if earlier.sock.path == str(tmp_path / f"{name}.sock"):
                earlier.sock.stop()
        sock = StandIn(tmp_path / f"{name}.sock", agent=name).start()
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        home = tmp_path / "home"
        env = api.cli_env(home)
        env.update(
            HYPERHIVE_AGENT=name,
            HYPERHIVE_FLAVOR=flavor,
            HYPERHIVE_SOCKET=sock.path,
            HYPERHIVE_CREDENTIAL_FILE=str(write_credential(tmp_path / "credential")),
            HYPERHIVE_STATE_DIR=str(state),
            HYPERHIVE_CLAUDE_BIN=str(CLI),
            HYPERHIVE_LOG_LEVEL="DEBUG",
            PYTHONPATH=str(REPO),
        )
        env.update(extra_env or {})
        if settings is not None:
            sp = tmp_path / "settings.json"
            sp.write_text(json.dumps({"agent": name, "flavor": flavor, **settings}))
            env["HYPERHIVE_SETTINGS"] = str(sp)
        log_path = tmp_path / "serve.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "serve"],
            env=env,
            cwd=state,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("w"),
        )
        agent = Agent(proc, api, sock, state, tmp_path / "web.sock", log_path)
        agents.append(agent)
        if not wait_up:
            return agent
        assert wait_for(lambda: _up(agent), 20), agent.log()
        return agent

    yield _start
    for a in agents:
        if a.proc.poll() is None:
            a.proc.send_signal(signal.SIGTERM)
            try:
                a.proc.wait(30)
            except subprocess.TimeoutExpired:
                a.proc.kill()
        a.sock.stop()
        a.api.stop()


def _up(agent: Agent) -> bool:
    try:
        return bool(agent.get("/healthz")["ok"])
    except OSError:
        return False


def sse_until(
    agent: Agent,
    pred: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60.0,
    last_event_id: int | None = None,
) -> list[dict[str, Any]]:
    """Read ``/events/stream`` until ``pred(events)``; returns the events (and the ready marker)."""
    conn = agent.conn(timeout)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "/events/stream", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    frame: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = resp.readline().decode().rstrip("\n")
            if line == "":
                if "data" in frame:
                    ev = json.loads(frame["data"])
                    ev["_event"] = frame.get("event", "message")
                    ev["_id"] = frame.get("id")
                    events.append(ev)
                    if pred(events):
                        return events
                frame = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                frame[key] = value.removeprefix(" ")
    finally:
        conn.close()
    raise AssertionError(
        f"SSE predicate not met; got {[e.get('kind', e['_event']) for e in events]}"
    )


# ---------------------------------------------------------------------------------------- tests


def test_message_in_send_out_recorded_everywhere(start: Callable[..., Agent]) -> None:
    script = Rules(
        rule(reply_text("greeted bob", usage=Usage(100, 20, 30, 40)), tool_result=True),
        rule(
            reply_tool_use(
                "mcp__hyperhive__send", {"to": "bob", "body": "hello bob"}, usage=Usage(50, 10)
            ),
            contains="greet",
        ),
        default=reply_text("ok"),
    )
    a = start(script)
    # a live SSE subscriber that is connected before the turn starts
    mid = a.sock.deliver("bob", "please greet bob")
    (row,) = a.wait_turns(1)
    # the stand-in socket got POST /send from the MCP server claude launched
    (sent,) = a.sock.sent
    assert len(sent.pop("idempotency_key")) >= 16  # the MCP server's retry guard
    assert sent == {"to": "bob", "body": "hello bob"}
    assert mid in a.sock.acked
    # the wake prompt reached the model: names the agent, the sender and the body
    first = a.api.parsed[0]
    assert "please greet bob" in first.last_user_text and "**bob**" in first.last_user_text
    assert (
        "mcp__hyperhive__send" in first.tool_names
        and "mcp__hyperhive__request_spawn" not in first.tool_names
    )
    assert "WebFetch" not in first.tool_names and "Task" not in first.tool_names
    # the tool result the model saw ends with the status line
    tr = a.api.parsed[1].tool_results[0]
    assert tr.text.startswith("sent message #") and tr.text.splitlines()[-1].startswith("[status] ")
    # turn-stats row: the fake's token counts (summed over both requests)
    assert row["result_kind"] == "ok" and row["model"] == "haiku" and row["wake_from"] == "bob"
    assert (row["input_tokens"], row["output_tokens"]) == (150, 30)
    assert (row["cache_read_tokens"], row["cache_creation_tokens"]) == (30, 40)
    assert row["tool_calls"] == 1 and json.loads(row["tool_breakdown"]) == {
        "mcp__hyperhive__send": 1
    }
    assert row["cost_usd"] > 0 and row["duration_ms"] > 0 and row["message_id"] == mid
    assert row["open_threads"] == 0 and row["pending_reminders"] == 0
    # events in sqlite
    evs = a.events()
    kinds = [e["kind"] for e in evs]
    for k in (
        "turn_start",
        "system_init",
        "tool_use",
        "tool_result",
        "assistant_text",
        "result",
        "turn_end",
    ):
        assert k in kinds, kinds
    assert (
        kinds.index("turn_start")
        < kinds.index("tool_use")
        < kinds.index("result")
        < kinds.index("turn_end")
    )
    tool = next(e for e in evs if e["kind"] == "tool_use")
    assert tool["data"]["name"] == "mcp__hyperhive__send" and tool["turn"] == 1
    states = [e["data"]["state"] for e in evs if e["kind"] == "turn_state_changed"]
    assert states == ["thinking", "idle"]
    # SSE: backfill has the same events with ids, then "ready"
    got = sse_until(a, lambda es: es[-1]["_event"] == "ready")
    assert [e["id"] for e in got[:-1]] == [e["id"] for e in evs]
    assert all(e["_id"] == str(e["id"]) for e in got[:-1])
    # resume with Last-Event-ID: only newer events (a second turn), live
    last = evs[-1]["id"]
    a.sock.deliver("bob", "second")
    live = sse_until(a, lambda es: any(e.get("kind") == "turn_end" for e in es), last_event_id=last)
    ids = [e["id"] for e in live if e["_event"] != "ready" and e["_id"] is not None]
    assert ids == list(range(last + 1, last + 1 + len(ids)))  # nothing repeated, nothing lost
    # the model's text streamed live (--include-partial-messages) before the stored block
    deltas = [i for i, e in enumerate(live) if e["_event"] == "text_delta"]
    assert deltas and all(live[i]["_id"] is None and live[i]["id"] == 0 for i in deltas)
    done = next(i for i, e in enumerate(live) if e.get("kind") == "assistant_text")
    assert max(deltas) < done and "".join(live[i]["data"]["text"] for i in deltas) == "ok"
    assert sum(1 for e in live if e["_event"] == "ready") == 1
    # /api/state
    st = a.get("/api/state")
    assert st["agent"] == "alice" and st["model"] == "haiku" and st["turn_state"] == "idle"
    assert st["needs_login"] is False and st["last_turn_ms"] > 0
    assert st["usage"]["context_tokens"] > 0 and isinstance(st["inbox"], list)


def test_the_model_reads_the_operators_pronouns(start: Callable[..., Agent]) -> None:
    """settings.json's operator_pronouns (the controller's config) reach the model in the
    role intro of a fresh session."""
    a = start(Rules(default=reply_text("ok")), settings={"operator_pronouns": "they/them"})
    a.sock.deliver("operator", "hello")
    a.wait_turns(1)
    intro = a.api.parsed[0].last_user_text
    assert intro.startswith("You are **alice**")
    assert "The operator (a human, they/them)" in intro
    assert "use\nthey/them pronouns" in intro or "use they/them pronouns" in intro
    assert "she/her" not in intro


def test_prompt_too_long_compacts_and_retries(start: Callable[..., Agent]) -> None:
    def overflowing(req: Request) -> bool:
        # the harness' retry after its /compact carries the role intro again
        return "You are **alice**" not in req.last_user_text

    script = Rules(
        rule(reply_prompt_too_long(), contains="overflow", compaction=False, when=overflowing),
        default=reply_text("ok"),
    )
    a = start(script)
    a.sock.deliver("bob", "hello")
    a.wait_turns(1)
    a.sock.deliver("bob", "overflow please")
    rows = a.wait_turns(2)
    row = rows[1]
    assert row["result_kind"] == "ok", a.log()
    assert row["compactions"] == 1
    compactions = [r for r in a.api.parsed if r.is_compaction]
    assert compactions, "no /compact request reached the API"
    retry = a.api.parsed[-1]
    assert "overflow please" in retry.last_user_text and not retry.is_compaction
    evs = a.events()
    states = [
        e["data"]["state"] for e in evs if e["kind"] == "turn_state_changed" and e["turn"] == 2
    ]
    assert states == ["thinking", "compacting", "thinking", "idle"]
    assert any(
        e["kind"] == "result" and e["data"]["terminal_reason"] == "prompt_too_long" for e in evs
    )


def test_operator_cancel_mid_turn(start: Callable[..., Agent]) -> None:
    script = Rules(
        rule(reply_text("x" * 2000, chunk_delay=0.1, chunk_chars=10), contains="slow"),
        default=reply_text("ok"),
    )
    a = start(script)
    code, body = a.post("/api/cancel", {})
    assert code == 409 and body["error"]["code"] == "conflict"
    mid = a.sock.deliver("bob", "slow please")
    assert wait_for(lambda: a.get("/api/state")["turn_state"] == "thinking" and a.api.requests, 30)
    time.sleep(0.3)
    code, body = a.post("/api/cancel", {})
    assert code == 200, body
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "cancelled"
    assert mid in a.sock.acked  # an operator cancel consumes the message
    assert wait_for(lambda: not a.claude_pids(), 10), "claude process tree left behind"
    assert a.get("/api/state")["turn_state"] == "idle"


def test_sigterm_mid_turn_records_cancelled_and_exits_0(start: Callable[..., Agent]) -> None:
    script = Rules(
        rule(reply_text("y" * 2000, chunk_delay=0.1, chunk_chars=10), contains="slow"),
        default=reply_text("ok"),
    )
    a = start(script)
    mid = a.sock.deliver("bob", "slow please")
    assert wait_for(lambda: bool(a.api.requests) and bool(a.claude_pids()), 30)
    time.sleep(0.3)
    pids = a.claude_pids()
    assert pids
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0, a.log()
    (row,) = a.turns()
    assert row["result_kind"] == "cancelled"
    assert mid not in a.sock.acked  # stays leased: redelivered after a restart
    assert not [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


def test_failed_turn_is_reported_to_the_manager(start: Callable[..., Agent]) -> None:
    script = Rules(
        rule(reply_error(500, "api_error", "boom"), contains="break"), default=reply_text("ok")
    )
    a = start(script)
    a.sock.deliver("bob", "break please")
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "failed" and row["exit_code"] == 1
    assert "boom" in (row["note"] or "")
    assert wait_for(lambda: any(s["to"] == "manager" for s in a.sock.sent), 10)
    report = next(s for s in a.sock.sent if s["to"] == "manager")
    assert "alice" in report["body"] and "failed" in report["body"] and "boom" in report["body"]


def test_operator_send_and_model_override(start: Callable[..., Agent]) -> None:
    a = start(
        Rules(default=reply_text("ok")),
        settings={"model": "haiku", "dashboard_url": "http://x:7000"},
    )
    code, body = a.post("/api/model", {"model": "bad model!"})
    assert code == 400 and body["error"]["field"] == "model"
    code, body = a.post("/api/send", {})
    assert code == 400 and body["error"]["field"] == "body"
    code, body = a.post("/api/model", {"model": "sonnet"})
    assert code == 200 and body == {
        "model": "sonnet",
        "override": "sonnet",
        "settings_model": "haiku",
    }
    assert json.loads((a.state / "hyperhive-model").read_text())["model"] == "sonnet"
    code, body = a.post("/api/send", {"body": "hi from the operator"})
    assert code == 200 and body["id"] >= 1
    (row,) = a.wait_turns(1)
    assert (
        row["model"] == "sonnet" and row["wake_from"] == "operator" and row["wake_kind"] == "wake"
    )
    req = a.api.parsed[-1]
    assert (
        "sonnet" in req.model and "The operator wrote this" in req.last_user_text
    )  # alias resolved by the CLI
    st = a.get("/api/state")
    assert st["model"] == "sonnet" and st["dashboard_url"] == "http://x:7000"


def test_controller_restart_is_survived(start: Callable[..., Agent]) -> None:
    a = start(Rules(default=reply_text("ok")))
    a.sock.stop()
    time.sleep(2.5)  # the loop notices and backs off
    assert a.proc.poll() is None
    st = a.get("/api/state")
    assert st["status"] == "controller_unreachable"
    a.sock.start()
    mid = a.sock.deliver("bob", "are you back?")
    (row,) = a.wait_turns(1, timeout=60)
    assert row["result_kind"] == "ok" and mid in a.sock.acked
    assert a.get("/api/state")["status"] == "online"
    assert a.log().count("; retrying with backoff") == 1  # logged once per outage


def test_manager_flavor_offers_manager_tools(start: Callable[..., Agent]) -> None:
    script = Rules(
        rule(reply_text("proposed"), tool_result=True),
        rule(
            reply_tool_use("mcp__hyperhive__request_spawn", {"name": "Bad_Name"}), contains="spawn"
        ),
        default=reply_text("ok"),
    )
    a = start(script, flavor="manager", name="manager")
    a.sock.deliver("operator", "spawn someone")
    a.wait_turns(1)
    first = a.api.parsed[0]
    assert (
        "mcp__hyperhive__request_spawn" in first.tool_names
        and "mcp__hyperhive__list" in first.tool_names
    )
    tr = a.api.parsed[1].tool_results[0]
    assert tr.is_error and "invalid agent name 'Bad_Name'" in tr.text


def test_systemd_ready_notification(start: Callable[..., Agent], tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(path)
    sd.settimeout(20)
    try:
        a = start(Rules(default=reply_text("ok")), extra_env={"NOTIFY_SOCKET": path})
        msg = sd.recv(4096).decode()
        assert msg.startswith("READY=1") and f"web UI on unix:{a.web}" in msg
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0
        assert sd.recv(4096).decode() == "STOPPING=1"
    finally:
        sd.close()


# ------------------------------------------------------------------------- the web surface


def test_bounded_input_on_the_running_harness(start: Callable[..., Agent]) -> None:
    """A 1 GiB Content-Length is a 413 before the body is read (the harness does not grow);
    100k-deep JSON and a lone surrogate are 400s naming the field; a form is a 415."""
    a = start(Rules(default=reply_text("ok")))
    proc = psutil.Process(a.proc.pid)
    before = proc.memory_info().rss
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(str(a.web))
    raw.sendall(b"POST /api/send HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1073741824\r\n\r\n")  # fmt: skip
    answer = raw.recv(4096)  # the head alone is answered
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.sendall(b"x" * (1 << 20))  # the server hung up: nothing of this is read
    raw.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert proc.memory_info().rss - before < 32 * 1024 * 1024
    js = {"Content-Type": "application/json"}
    deep = b'{"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, err = request(a.conn(), "POST", "/api/send", deep, js)
    assert status == 400 and err["error"]["field"] == "(root)", err
    status, err = request(a.conn(), "POST", "/api/send", b'{"body": "a\\ud800"}', js)
    assert status == 400 and err["error"]["field"] == "body", err
    status, err = request(a.conn(), "POST", "/api/model", b"model=opus",
                          {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 415, err
    assert not [c for c in a.sock.calls if c[1] == "/wake"]
    assert a.get("/api/state")["model"] == "haiku"
    assert "Traceback" not in a.log()


def test_tcp_is_opt_in_and_needs_the_credential(start: Callable[..., Agent]) -> None:
    port = free_port()
    a = start(Rules(default=reply_text("ok")),
              extra_env={"HYPERHIVE_WEB_TCP": "1", "HYPERHIVE_WEB_PORT": str(port)})  # fmt: skip
    tcp = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # noqa: E731
    status, err = request(tcp(), "GET", "/api/state")
    assert status == 401 and err["error"]["code"] == "unauthorized"
    status, _ = request(tcp(), "POST", "/api/send", b'{"body": "x"}',
                        {"Content-Type": "application/json"})  # fmt: skip
    assert status == 401 and not [c for c in a.sock.calls if c[1] == "/wake"]
    status, doc = request(tcp(), "GET", "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and doc["agent"] == "alice"
    assert a.get("/api/state")["agent"] == "alice"  # the socket serves as well


def test_without_opt_in_there_is_no_tcp_port(start: Callable[..., Agent]) -> None:
    """No web UI on TCP; the one loopback listener is the MCP endpoint, which answers nothing
    without the running turn's credential."""
    port = free_port()
    a = start(Rules(default=reply_text("ok")), extra_env={"HYPERHIVE_WEB_PORT": str(port)})
    assert a.get("/healthz")["ok"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    (mcp,) = psutil.Process(a.proc.pid).net_connections(kind="inet")
    assert mcp.status == "LISTEN" and mcp.laddr.ip == "127.0.0.1"
    for path in ("/", "/api/state", "/mcp"):
        conn = http.client.HTTPConnection("127.0.0.1", mcp.laddr.port, timeout=10)
        conn.request("GET", path)
        assert conn.getresponse().status in (401, 404), path
        conn.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"HYPERHIVE_CREDENTIAL_FILE": "/nonexistent/credential"},
         "the agent credential file /nonexistent/credential does not exist"),
        ({"HYPERHIVE_WEB_TCP": "1"}, "HYPERHIVE_WEB_TCP=1 needs a port"),
        ({"HYPERHIVE_WEB_TCP": "maybe"}, "HYPERHIVE_WEB_TCP: must be 1 or 0"),
    ],
    ids=["missing-credential", "tcp-without-port", "bad-tcp-flag"],
)  # fmt: skip
def test_a_configuration_error_exits_2_and_says_what(
    start: Callable[..., Agent], env: dict[str, str], says: str
) -> None:
    a = start(Rules(default=reply_text("ok")), extra_env=env, wait_up=False)
    assert a.proc.wait(30) == 2
    assert says in a.log() and "Traceback" not in a.log()
    assert not a.web.exists()


def test_mcp_tools_work_across_a_harness_restart(start: Callable[..., Agent]) -> None:
    """The harness serves the hyperhive MCP tools itself (a loopback port, a credential per
    claude run): after a restart between two turns the new process' endpoint is the one
    claude gets, and the earlier turn's credential is dead."""
    script = Rules(
        rule(reply_text("greeted"), tool_result=True),
        rule(reply_tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi"}), contains="greet"),
        default=reply_text("ok"),
    )
    a = start(script)
    a.sock.deliver("bob", "please greet bob")
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "ok" and len(a.sock.sent) == 1
    first = json.loads((a.state / "hyperhive-mcp.json").read_text())["mcpServers"]["hyperhive"]
    assert first["type"] == "http" and first["url"].startswith("http://127.0.0.1:")
    assert (a.state / "hyperhive-mcp.json").stat().st_mode & 0o077 == 0
    init = next(e for e in a.events() if e["kind"] == "system_init")
    assert init["data"]["mcp_servers"] == [{"name": "hyperhive", "status": "connected"}]
    # no MCP server process: claude's only child would have been a python one
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0

    b = start(script)
    b.sock.deliver("bob", "greet bob again")
    rows = b.wait_turns(2)
    assert rows[-1]["result_kind"] == "ok", b.log()
    assert [s["body"] for s in b.sock.sent] == ["hi"]
    tr = b.api.parsed[-1].tool_results[0]
    assert tr.text.startswith("sent message #") and not tr.is_error
    second = json.loads((b.state / "hyperhive-mcp.json").read_text())["mcpServers"]["hyperhive"]
    assert second["headers"] != first["headers"]
    # the first harness' credential opens nothing on the new endpoint
    host, port = second["url"].removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    headers = {**first["headers"], "Content-Type": "application/json"}
    conn.request("POST", "/mcp", body, headers)
    assert conn.getresponse().status == 401
    conn.close()
    # nor does the last run's, once the run is over
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/mcp", body, {**second["headers"], "Content-Type": "application/json"})
    assert conn.getresponse().status == 401
    conn.close()
