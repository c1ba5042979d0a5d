"""The agent web UI in real headless Chromium, against a real harness running the real CLI.

``python -m harness serve`` runs with the real ``claude`` CLI, the scripted fake Messages
API and a stand-in controller socket (as in tests/integration/harness). One turn is run
before the browser comes (history to backfill: a Write, an Edit, a Bash call, a send);
then ``tests/browser/agent_ui.mjs`` drives the page: ``/model sonnet`` changes the chip,
a message typed in the prompt box wakes a turn whose text streams into the live tail
while the badge says thinking, the badge goes back to idle, a turn arriving while scrolled
up raises the "↓ N new" pill, ``/help`` and the cancel button work. A second harness
without credentials shows the login panel; the real ``claude auth login`` URL appears in
it.

The harness serves its UI on a unix socket only; the browser reaches it through
:class:`Forwarder`, a loopback HTTP server in this test. The first story runs the page
the way the controller's dashboard serves it, under ``/agents/alice/``: the page and
``static/*`` from the harness' asset files, ``api/*`` and ``events/stream`` forwarded to
the socket (Cookie and Authorization stripped). The login story forwards everything at
``/``, so the harness' own page is the one loaded. Screenshots go to the test's tmp dir;
with ``HYPERHIVE_UPDATE_SCREENSHOTS=1`` (or when missing) they also replace
``docs/img/agent-ui.png`` and ``docs/img/agent-ui-login.png``.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "component" / "harness"))

from standin import StandIn, UnixHTTPConnection, request, write_credential  # noqa: E402

from tests import chromium  # noqa: E402
from tests.fakeapi import (  # noqa: E402
    FakeAnthropic,
    Request,
    Rules,
    Usage,
    find_claude_cli,
    reply_text,
    reply_tool_use,
    rule,
)

SCRIPT = Path(__file__).with_name("agent_ui.mjs")
DOC_SHOTS = {"main": ROOT / "docs" / "img" / "agent-ui.png",
             "login": ROOT / "docs" / "img" / "agent-ui-login.png"}  # fmt: skip
CLI = find_claude_cli(ROOT)

pytestmark = pytest.mark.browser

STORY = (
    "Here is the plan for today. First I read the inbox and sort it by thread; then I answer "
    "bob's question about the deploy window (Thursday, after the freeze lifts); finally I "
    "write the summary to notes.md so the manager can see where things stand."
)


def _skip_reason() -> str | None:
    if CLI is None:
        return "the claude CLI is not installed (./hh test installs it)"
    return chromium.skip_reason()


def last_tool(req: Request) -> str | None:
    """The name of the last tool the model called in this conversation."""
    for msg in reversed(req.messages):
        if msg.get("role") != "assistant" or not isinstance(msg.get("content"), list):
            continue
        for block in reversed(msg["content"]):
            if isinstance(block, dict) and block.get("type") == "tool_use":
                return str(block.get("name"))
        return None
    return None


def scene(state: Path) -> Rules:
    """A turn that writes and edits a file, runs a command and messages bob; a streamed story."""
    notes = str(state / "notes.md")

    def after(tool: str) -> Any:
        return lambda req: last_tool(req) == tool

    u = Usage(1800, 120, 9400, 600)
    write = {"file_path": notes, "content": "# notes\n- buy milk\n- call bob\n- water plants\n"}
    edit = {
        "file_path": notes,
        "old_string": "- call bob\n",
        "new_string": "- call bob about the deploy window\n- review proposal #12\n",
    }
    bash = {"command": "wc -l notes.md", "description": "count items"}
    send = {"to": "bob", "body": "notes are tidy: 4 items, one is yours"}
    done = "Done: notes.md has 4 items and bob knows about his."
    return Rules(
        rule(reply_tool_use("Edit", edit, text="Now the follow-ups.", usage=u),
             tool_result=True, when=after("Write")),
        rule(reply_tool_use("Bash", bash, usage=u), tool_result=True, when=after("Edit")),
        rule(reply_tool_use("mcp__hyperhive__send", send, usage=u),
             tool_result=True, when=after("Bash")),
        rule(reply_text(done, usage=u), tool_result=True),
        rule(reply_tool_use("Write", write, text="I'll put the list into notes.md first.",
                            usage=u), contains="tidy"),
        rule(reply_text(STORY, chunk_delay=0.12, chunk_chars=5,
                        usage=Usage(2100, 180, 11200, 300)), contains="plan"),
        rule(reply_text("z" * 4000, chunk_delay=0.1, chunk_chars=8), contains="endless"),
        default=reply_text("Noted.", usage=Usage(1900, 12, 11000, 0)),
    )  # fmt: skip


ASSETS = ROOT / "harness" / "assets"
#: What the dashboard serves itself under /agents/<name>/ (the rest goes to the socket).
PAGE_FILES = {"": ("index.html", "text/html; charset=utf-8"),
              "static/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "static/app.css": ("app.css", "text/css; charset=utf-8")}  # fmt: skip
FORWARDED = ("api/", "events/stream")
PASS_HEADERS = ("content-type", "accept", "last-event-id", "content-length")


class Forwarder:
    """A loopback HTTP server in front of the UI's unix socket, mounted at ``prefix``.

    ``page_from_assets``: serve the page and ``static/*`` from the harness' files and forward
    only ``api/*`` and ``events/stream`` (what the dashboard does); otherwise forward all.
    Streams (SSE) are copied as they arrive.
    """

    def __init__(self, sock: Path, prefix: str = "/", page_from_assets: bool = False) -> None:
        self.sock, self.prefix, self.from_assets = sock, prefix, page_from_assets
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; streams end on close

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.handle(self)

            do_POST = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == self.prefix.rstrip("/"):
            h.send_response(301)
            h.send_header("Location", self.prefix)
            h.end_headers()
            return
        if not h.path.startswith(self.prefix):
            h.send_error(404)
            return
        rest = h.path[len(self.prefix) :]
        where = rest.split("?", 1)[0]
        if self.from_assets and where in PAGE_FILES:
            name, ctype = PAGE_FILES[where]
            data = (ASSETS / name).read_bytes()
            h.send_response(200)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if self.from_assets and not where.startswith(FORWARDED):
            h.send_error(404)
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() in PASS_HEADERS}
        conn = UnixHTTPConnection(self.sock, timeout=600)
        try:
            conn.request(h.command, "/" + rest, body=body, headers=headers)
            resp = conn.getresponse()
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    h.send_header(k, v)
            h.send_header("X-Content-Type-Options", "nosniff")
            h.end_headers()
            while chunk := resp.read1(65536):
                h.wfile.write(chunk)
                h.wfile.flush()
        except OSError:
            pass  # the browser or the harness went away
        finally:
            conn.close()


@dataclass
class Harness:
    proc: subprocess.Popen[bytes]
    api: FakeAnthropic
    sock: StandIn
    state: Path
    web: Path
    log: Path

    def state_doc(self) -> Any:
        status, doc = request(UnixHTTPConnection(self.web), "GET", "/api/state")
        if status != 200:
            raise OSError(f"{status}: {doc}")
        return doc


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@contextmanager
def harness(root: Path, name: str, script: Any, *, key: bool = True) -> Iterator[Harness]:
    root.mkdir(parents=True)
    api = FakeAnthropic(script).start()
    sock = StandIn(root / "a.sock", agent=name).start()
    state = root / "state"
    state.mkdir()
    settings = root / "settings.json"
    settings.write_text(json.dumps({
        "agent": name, "flavor": "agent", "model": "haiku",
        "dashboard_url": "http://127.0.0.1:7000/", "meta_commit": "4f9c2d1e" * 5,
        "hyperhive_version": "0.1.0",
    }))  # fmt: skip
    env = api.cli_env(root / "home")
    if not key:
        env["ANTHROPIC_API_KEY"] = ""
    web = root / "web.sock"
    env.update(
        HYPERHIVE_AGENT=name, HYPERHIVE_FLAVOR="agent", HYPERHIVE_SOCKET=sock.path,
        HYPERHIVE_CREDENTIAL_FILE=str(write_credential(root / "credential")),
        HYPERHIVE_STATE_DIR=str(state), HYPERHIVE_SETTINGS=str(settings),
        HYPERHIVE_WEB_SOCKET=str(web), HYPERHIVE_CLAUDE_BIN=str(CLI), PYTHONPATH=str(ROOT),
    )  # fmt: skip
    log = root / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "serve"], env=env, cwd=state,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))  # fmt: skip
    h = Harness(proc, api, sock, state, web, log)
    try:
        assert _wait(lambda: h.state_doc()["agent"] == name, 20), log.read_text()
        yield h
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sock.stop()
        api.stop()


def _turns(h: Harness) -> int:
    import sqlite3

    db = h.state / "hyperhive-turn-stats.sqlite"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM turns").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _drive(mode: str, base: str, shot: Path) -> dict[str, Any]:
    proc = subprocess.run(["node", str(SCRIPT), mode, base, str(shot)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    seen: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seen


def _keep(shot: Path, which: str) -> None:
    assert shot.stat().st_size > 10_000
    doc = DOC_SHOTS[which]
    if os.environ.get("HYPERHIVE_UPDATE_SCREENSHOTS") == "1" or not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, doc)


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_agent_ui_in_chromium(tmp_path: Path) -> None:
    with harness(tmp_path / "alice", "alice", scene(tmp_path / "alice" / "state")) as h:
        h.sock.deliver("bob", "please tidy the notes and tell me when done")
        assert _wait(lambda: _turns(h) >= 1, 90), h.log.read_text()[-3000:]
        shot = tmp_path / "agent-ui.png"
        fwd = Forwarder(h.web, "/agents/alice/", page_from_assets=True)
        try:
            seen = _drive("main", fwd.url, shot)
        finally:
            fwd.close()
        log = h.log.read_text()[-4000:]
        # the history was backfilled: the first turn's tools, rendered readably
        summaries = seen["summaries"]
        assert any(s.startswith("→ Write notes.md · +4") for s in summaries), summaries
        assert any(s.startswith("→ Edit notes.md · -1 +2") for s in summaries)
        assert "+ - review proposal #12" in seen["editDiff"]
        assert any(r.startswith("$ wc -l notes.md") for r in seen["tools"]), seen["tools"]
        assert any(r.startswith("✉ send → bob: notes are tidy") for r in seen["tools"])
        # /model changes the chip; the next turn runs with it
        assert seen["modelChip"] == "model · sonnet"
        # the live tail showed the text while it streamed, then the complete block
        assert seen["badgeWhileStreaming"].startswith("thinking"), seen
        assert 0 < len(seen["streamingText"]) < len(STORY), seen["streamingText"]
        assert STORY.startswith(seen["streamingText"])
        assert seen["finalText"] == STORY and seen["streamingLeft"] == 0
        assert seen["badgeAfter"].startswith("idle")
        assert seen["states"][-2:] == ["thinking", "idle"], seen["states"]
        # scrolled up: a new turn raises the pill instead of moving the page; it scrolls back
        assert seen["pillText"].startswith("↓") and seen["pillCount"] >= 1
        assert seen["stayedUp"] is True and seen["pillGone"] is True and seen["atBottom"] is True
        # slash commands and the cancel button
        assert "/compact" in seen["help"] and "/login" in seen["help"]
        assert seen["cancelIdle"].startswith("✗ no turn is running")
        assert seen["cancelledRow"].startswith("━━ end turn")
        assert "cancelled" in seen["cancelledRow"] and seen["cutOff"] >= 1
        assert seen["ctx"].startswith("ctx · ") and "cache read" in seen["ctxTitle"]
        assert seen["lastTurn"].startswith("last turn")
        assert seen["dashboardHref"] == "http://127.0.0.1:7000/"
        assert seen["inboxSummary"].startswith("inbox ·")
        assert seen["errors"] == [], seen["errors"]
        models = [r.model for r in h.api.parsed]
        assert "haiku" in models[0] and "sonnet" in models[-1], models  # the CLI resolves aliases
        assert "Traceback" not in log
        _keep(shot, "main")


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_login_panel_in_chromium(tmp_path: Path) -> None:
    with harness(tmp_path / "carol", "carol", Rules(), key=False) as h:
        assert _wait(lambda: h.state_doc()["status"] == "needs_login", 20)
        shot = tmp_path / "agent-ui-login.png"
        fwd = Forwarder(h.web, "/")
        try:
            seen = _drive("login", fwd.url, shot)
        finally:
            fwd.close()
        assert seen["badge"] == "needs login"
        assert seen["panelTitle"].startswith("claude needs a login")
        assert seen["url"].startswith("https://claude.com/cai/oauth/authorize?")
        assert seen["codeFormVisible"] is True
        assert seen["badCode"].startswith("✗ code:")
        assert seen["errors"] == [], seen["errors"]
        _keep(shot, "login")
