"""``hyperhive-agent serve`` with the real claude CLI: login, plugins, time limit, watchdog, leases.

Same rig as test_harness_serve.py (a ``serve`` subprocess, the fake Messages API, a stand-in
socket). What the CLI cannot do offline — finish an OAuth login — is played by a small
wrapper that answers ``claude auth login`` exactly like claude 2.1.197 does and hands every
other command to the real CLI; the real CLI then uses the ``.credentials.json`` it wrote.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_harness_serve import CLI, Agent, wait_for

from tests.fakeapi import Rules, reply_text

pytestmark = pytest.mark.skipif(
    CLI is None, reason="the claude CLI is not installed (./hh test installs it)"
)

NO_KEY = {"ANTHROPIC_API_KEY": ""}

FAKE_LOGIN = r'''#!PYTHON
"""claude stand-in: `auth login` as claude 2.1.197 prints it; anything else runs the real CLI."""
import json, os, sys, time
args = sys.argv[1:]
if args[:2] == ["auth", "login"]:
    print("Opening browser to sign in\u2026", flush=True)
    print("If the browser didn't open, visit: https://claude.com/cai/oauth/authorize?code=true"
          "&client_id=x&response_type=code&state=fakestate", flush=True)
    sys.stdout.write("Paste code here if prompted > ")
    sys.stdout.flush()
    for line in sys.stdin:
        code, _, state = line.strip().partition("#")
        if not code or not state:
            sys.stderr.write("Invalid code. Please make sure the full code was copied.\n")
            sys.stderr.flush()
            continue
        if code != "good":
            sys.stderr.write("Login failed: Request failed with status code 400\n")
            sys.exit(1)
        cfg = os.environ["CLAUDE_CONFIG_DIR"]
        os.makedirs(cfg, exist_ok=True)
        creds = {"claudeAiOauth": {"accessToken": "sk-ant-oat01-from-login",
                 "refreshToken": "sk-ant-ort01-x", "expiresAt": int((time.time() + 3600) * 1000),
                 "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}}
        with open(os.path.join(cfg, ".credentials.json"), "w") as fh:
            json.dump(creds, fh)
        print("Login successful.", flush=True)
        sys.exit(0)
    sys.exit(1)
os.execv(os.environ["FAKE_CLAUDE_REAL"], [os.environ["FAKE_CLAUDE_REAL"], *args])
'''


def fake_login_cli(tmp_path: Path) -> Path:
    path = tmp_path / "claude-login-standin"
    path.write_text(FAKE_LOGIN.replace("PYTHON", sys.executable, 1))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def events_of(a: Agent, kind: str) -> list[dict[str, Any]]:
    return [e for e in a.events() if e["kind"] == kind]


def statuses(a: Agent) -> list[str]:
    return [e["data"]["status"] for e in events_of(a, "status_changed")]


def login_event(a: Agent, state: str, timeout: float = 30.0) -> dict[str, Any]:
    assert wait_for(lambda: any(e["data"]["state"] == state for e in events_of(a, "login")),
                    timeout), (events_of(a, "login"), a.log())  # fmt: skip
    return next(e["data"] for e in events_of(a, "login") if e["data"]["state"] == state)


# ------------------------------------------------------------------------------------ login


def test_needs_login_then_a_pasted_key_resumes_the_loop(start: Callable[..., Agent]) -> None:
    a = start(Rules(default=reply_text("ok")), extra_env=NO_KEY)
    assert wait_for(lambda: a.get("/api/state")["status"] == "needs_login", 15), a.log()
    st = a.get("/api/state")
    assert st["needs_login"] is True and st["login"]["source"] is None
    assert "no credentials" in st["status_detail"]
    mid = a.sock.deliver("bob", "are you there?")
    time.sleep(1.5)
    assert not a.sock._msgs[0].delivered  # the loop does not take messages without credentials
    stored_at = time.monotonic()
    code, body = a.post("/api/login/key", {"kind": "api_key", "value": "sk-ant-api03-pasted"})
    assert code == 200 and body == {"result": "stored", "source": "stored api key"}
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "ok" and mid in a.sock.acked
    assert time.monotonic() - stored_at < 10  # woken at once, not on the next 5 s poll
    headers = {k.lower(): v for k, v in a.api.parsed[0].headers.items()}
    assert headers["x-api-key"] == "sk-ant-api03-pasted"  # the CLI read it from settings.json
    seen = statuses(a)
    assert "needs_login" in seen and seen.index("needs_login") < len(seen) - 1
    assert seen[-1] == "online"
    # a long-lived OAuth token replaces it (and beats any key in the environment)
    code, body = a.post("/api/login/key", {"kind": "oauth_token", "value": "sk-ant-oat01-pasted"})
    assert code == 200 and body["source"] == "stored oauth token"
    a.sock.deliver("bob", "again")
    a.wait_turns(2)
    headers = {k.lower(): v for k, v in a.api.parsed[-1].headers.items()}
    assert headers["authorization"] == "Bearer sk-ant-oat01-pasted" and "x-api-key" not in headers
    assert "sk-ant" not in json.dumps(a.events())  # no secret in the event log
    # kept across a restart: the new harness starts online
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    b = start(Rules(default=reply_text("ok")), extra_env=NO_KEY)
    st = b.get("/api/state")
    assert st["needs_login"] is False and st["login"]["stored"] == "oauth_token"


def test_claude_auth_login_over_pipes_with_the_real_cli(start: Callable[..., Agent]) -> None:
    """The real ``claude auth login``: its URL reaches the UI, a pasted code reaches the CLI;
    offline the token exchange fails, which the UI reports, and the agent still needs a login."""
    a = start(Rules(default=reply_text("ok")), extra_env=NO_KEY)
    assert wait_for(lambda: a.get("/api/state")["status"] == "needs_login", 15)
    code, body = a.post("/api/login/start", {})
    assert code == 200 and body["login"]["method"] == "claudeai"
    waiting = login_event(a, "waiting_code")
    assert waiting["url"].startswith("https://claude.com/cai/oauth/authorize?")
    assert "code_challenge=" in waiting["url"] and "state=" in waiting["url"]
    st = a.get("/api/state")
    assert st["login"]["session"]["state"] == "waiting_code"
    assert wait_for(lambda: "login in progress" in a.get("/api/state")["status_detail"], 5)
    code, body = a.post("/api/login/start", {})
    assert code == 409
    code, body = a.post("/api/login/code", {"code": "no-state-part"})
    assert code == 400 and body["error"]["field"] == "code"
    code, body = a.post("/api/login/code", {"code": "bogus-code#bogus-state"})
    assert code == 200 and body["login"]["state"] == "exchanging"
    failed = login_event(a, "failed", 60)
    assert failed["message"].startswith("Login failed")
    assert wait_for(lambda: "the last login failed" in a.get("/api/state")["status_detail"], 10)
    assert a.get("/api/state")["needs_login"] is True
    assert "bogus-code" not in a.log() and "bogus-code" not in json.dumps(a.events())
    # a second attempt, cancelled by the operator: the CLI process goes away
    assert a.post("/api/login/start", {"method": "console"})[0] == 200
    login_event(a, "waiting_code")
    assert wait_for(lambda: len([e for e in events_of(a, "login")
                                 if e["data"]["state"] == "waiting_code"]) == 2, 30)  # fmt: skip
    assert a.post("/api/login/cancel", {}) == (200, {"result": "cancelled"})
    assert wait_for(lambda: not a.claude_pids(), 10), "claude auth login left running"
    assert a.post("/api/login/cancel", {})[0] == 409


def test_a_finished_login_resumes_the_loop(start: Callable[..., Agent], tmp_path: Path) -> None:
    wrapper = fake_login_cli(tmp_path)
    a = start(
        Rules(default=reply_text("ok")),
        extra_env={**NO_KEY, "HYPERHIVE_CLAUDE_BIN": str(wrapper), "FAKE_CLAUDE_REAL": str(CLI)},
    )
    assert wait_for(lambda: a.get("/api/state")["status"] == "needs_login", 15)
    mid = a.sock.deliver("bob", "waiting for you")
    assert a.post("/api/login/start", {})[0] == 200
    login_event(a, "waiting_code")
    assert a.post("/api/login/code", {"code": "good#fakestate"})[0] == 200
    login_event(a, "succeeded")
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "ok" and mid in a.sock.acked
    headers = {k.lower(): v for k, v in a.api.parsed[0].headers.items()}
    assert headers["authorization"] == "Bearer sk-ant-oat01-from-login"
    st = a.get("/api/state")
    assert st["status"] == "online" and st["login"]["source"] == "claude login"
    assert "online" in statuses(a)


def test_rejected_credentials_wait_for_a_new_login(start: Callable[..., Agent]) -> None:
    from tests.fakeapi import Request, reply_error, rule

    def old_key(req: Request) -> bool:  # 401 until the request carries the new key
        return not any("sk-new" in v for v in req.headers.values())

    script = Rules(
        rule(reply_error(401, "authentication_error", "invalid x-api-key"), when=old_key),
        default=reply_text("ok"),
    )
    a = start(script)
    first = a.sock.deliver("bob", "first")
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "failed"
    assert wait_for(lambda: a.get("/api/state")["status"] == "needs_login", 10)
    assert "rejected (HTTP 401)" in a.get("/api/state")["status_detail"]
    # the rejected turn never reached the model: its message went back to the inbox
    assert first not in a.sock.acked and any(first in (ids or []) for ids in a.sock.released)
    second = a.sock.deliver("bob", "second")
    time.sleep(1.0)
    assert len(a.turns()) == 1  # waits instead of failing every message
    assert a.post("/api/login/key", {"kind": "api_key", "value": "sk-new"})[0] == 200
    rows = a.wait_turns(3)
    assert [(r["message_id"], r["result_kind"]) for r in rows[1:]] == [
        (first, "ok"),
        (second, "ok"),
    ]


# ---------------------------------------------------------------------------------- plugins


def local_marketplace(root: Path) -> Path:
    mkt = root / "mkt"
    (mkt / ".claude-plugin").mkdir(parents=True)
    (mkt / ".claude-plugin" / "marketplace.json").write_text(json.dumps({
        "name": "hh-test", "owner": {"name": "hyperhive tests"},
        "plugins": [{"name": "hello", "source": "./plugins/hello", "description": "greets",
                     "version": "1.0.0"}],
    }))  # fmt: skip
    plugin = mkt / "plugins" / "hello"
    (plugin / ".claude-plugin").mkdir(parents=True)
    (plugin / ".claude-plugin" / "plugin.json").write_text(
        json.dumps({"name": "hello", "version": "1.0.0", "description": "greets"})
    )
    (plugin / "commands").mkdir()
    (plugin / "commands" / "hello.md").write_text("Say hello.\n")
    return mkt


def test_plugins_and_marketplaces_at_boot(start: Callable[..., Agent], tmp_path: Path) -> None:
    mkt = local_marketplace(tmp_path)
    settings = {"marketplaces": [str(mkt)], "plugins": ["hello@hh-test", "nope@hh-test"]}
    a = start(Rules(default=reply_text("ok")), settings=settings)
    assert wait_for(lambda: a.get("/api/state")["plugins"] is not None, 60), a.log()
    got = {(p["kind"], p["spec"]): p for p in a.get("/api/state")["plugins"]}
    assert got["marketplace", str(mkt)]["action"] == "added"
    assert got["plugin", "hello@hh-test"]["action"] == "installed"
    nope = got["plugin", "nope@hh-test"]
    assert not nope["ok"] and 'Plugin "nope" not found' in nope["detail"]
    # the manager hears about the failure; the boot went on
    assert wait_for(lambda: any("nope@hh-test" in s["body"] for s in a.sock.sent), 20)
    report = next(s for s in a.sock.sent if "nope@hh-test" in s["body"])
    assert report["to"] == "manager" and "hello@hh-test" not in report["body"]
    assert len(events_of(a, "plugin")) == 3
    a.sock.deliver("bob", "hi")
    (row,) = a.wait_turns(1)
    assert row["result_kind"] == "ok"
    init = events_of(a, "system_init")[0]["data"]
    assert init["plugins"] == ["hello@hh-test"]
    assert "Skill" in a.api.parsed[0].tool_names  # plugin commands and skills run through it
    # a restart is idempotent: nothing is installed again
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    b = start(Rules(default=reply_text("ok")), settings=settings)
    assert wait_for(lambda: b.get("/api/state")["plugins"] is not None, 60)
    again = {p["spec"]: p["action"] for p in b.get("/api/state")["plugins"]}
    assert again == {str(mkt): "present", "hello@hh-test": "present", "nope@hh-test": "failed"}


# ------------------------------------------------------------------- time limit, watchdog, leases


def test_turn_time_limit_cancels_and_records_failed(start: Callable[..., Agent]) -> None:
    from tests.fakeapi import rule

    script = Rules(
        rule(reply_text("z" * 3000, chunk_delay=0.1, chunk_chars=10), contains="endless"),
        default=reply_text("ok"),
    )
    a = start(script, extra_env={"HYPERHIVE_TURN_TIMEOUT": "3"})
    mid = a.sock.deliver("bob", "endless please")
    (row,) = a.wait_turns(1, timeout=60)
    assert row["result_kind"] == "failed" and "time limit of 3 s exceeded" in row["note"]
    assert 3000 <= row["duration_ms"] < 15000
    assert mid in a.sock.acked
    assert wait_for(lambda: any("time limit" in s["body"] for s in a.sock.sent), 10)
    assert wait_for(lambda: not a.claude_pids(), 10)
    assert a.get("/api/state")["turn_state"] == "idle"


def test_watchdog_pings_while_the_loop_is_healthy(
    start: Callable[..., Agent], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(path)
    sd.settimeout(10)
    try:
        start(Rules(default=reply_text("ok")),
              extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})  # fmt: skip
        got: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            got.append(sd.recv(4096).decode())
        assert got.count("WATCHDOG=1") >= 3, got
        assert any(m.startswith("READY=1") for m in got)
        assert any(m.startswith("STATUS=agent alice: idle") for m in got)
    finally:
        sd.close()


def test_a_cut_off_message_is_released_at_once(start: Callable[..., Agent]) -> None:
    from tests.fakeapi import rule

    script = Rules(
        rule(reply_text("y" * 2000, chunk_delay=0.1, chunk_chars=10), contains="slow"),
        default=reply_text("ok"),
    )
    a = start(script)
    assert wait_for(lambda: None in a.sock.released, 10)  # boot: release all of ours
    mid = a.sock.deliver("bob", "slow please")
    assert wait_for(lambda: bool(a.api.requests) and bool(a.claude_pids()), 30)
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    assert [mid] in a.sock.released and mid not in a.sock.acked
    assert a.sock.status().unread == 1  # deliverable now, not in 30 minutes
    (row,) = a.turns()
    assert row["result_kind"] == "cancelled"
