"""End-to-end checks of :mod:`tests.fakeapi` against the REAL ``claude`` CLI, offline.

Each test starts the fake Messages API on an ephemeral loopback port, runs
``claude -p --output-format stream-json`` with an isolated ``HOME`` /
``CLAUDE_CONFIG_DIR`` and asserts on the stream-json lines, the requests the
fake received and the files the CLI left behind. The facts these tests pin
down are written up in ``docs/claude-cli.md``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.claude import project_dir_name

from .server import (
    FakeAnthropic,
    Reply,
    Request,
    Rules,
    Usage,
    find_claude_cli,
    reply_prompt_too_long,
    reply_text,
    reply_tool_use,
    rule,
)

CLI = find_claude_cli()
ECHO_MCP = Path(__file__).with_name("echo_mcp.py")
TIMEOUT = 60.0

_skip_without_cli = pytest.mark.skipif(
    CLI is None,
    reason="real claude CLI not found: set HYPERHIVE_CLAUDE_BIN or run `npm ci` in the repo root",
)

_F = TypeVar("_F", bound=Callable[..., None])


def needs_cli(fn: _F) -> _F:
    """Mark a test as ``e2e`` and skip it when no ``claude`` CLI is installed."""
    marked: _F = pytest.mark.e2e(_skip_without_cli(fn))
    return marked


# --------------------------------------------------------------------------- helpers


@dataclass
class CliRun:
    """One finished CLI invocation: exit code, parsed stream-json lines, timing."""

    returncode: int
    lines: list[dict[str, Any]]
    stderr: str
    elapsed: float

    def of(self, type_: str, subtype: str | None = None) -> list[dict[str, Any]]:
        """Lines with ``type`` (and ``subtype``, when given)."""
        return [
            ln
            for ln in self.lines
            if ln.get("type") == type_ and (subtype is None or ln.get("subtype") == subtype)
        ]

    @property
    def result(self) -> dict[str, Any]:
        """The single ``result`` line."""
        results = self.of("result")
        assert len(results) == 1, (
            f"expected one result line, got {self.lines!r}\nstderr: {self.stderr}"
        )
        return results[0]

    @property
    def init(self) -> dict[str, Any]:
        """The ``system``/``init`` line."""
        inits = self.of("system", "init")
        assert inits, f"no init line in {self.lines!r}"
        return inits[0]


@dataclass
class Sandbox:
    """An isolated HOME / CLAUDE_CONFIG_DIR / cwd for CLI runs."""

    home: Path
    cwd: Path
    api: FakeAnthropic

    @property
    def config_dir(self) -> Path:
        """``$CLAUDE_CONFIG_DIR``."""
        return self.home / ".claude"

    @property
    def echo_log(self) -> Path:
        """File the echo MCP tool appends to."""
        return self.home / "echo.log"

    def mcp_config(self, command: str | None = None) -> Path:
        """Write an ``--mcp-config`` file with the ``hyperhive`` echo server."""
        path = self.home / "mcp.json"
        server = {
            "type": "stdio",
            "command": command or sys.executable,
            "args": [str(ECHO_MCP)],
            "env": {"ECHO_MCP_LOG": str(self.echo_log)},
        }
        path.write_text(json.dumps({"mcpServers": {"hyperhive": server}}))
        return path

    def argv(self, *extra: str, mcp_command: str | None = None) -> list[str]:
        """The harness-style argv (prompt goes on stdin)."""
        assert CLI is not None
        return [
            str(CLI),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model=claude-test",
            f"--mcp-config={self.mcp_config(mcp_command)}",
            "--strict-mcp-config",
            "--allowedTools=mcp__hyperhive__echo",
            *extra,
        ]

    def popen(self, prompt: str, *extra: str) -> subprocess.Popen[str]:
        """Start the CLI with ``prompt`` on stdin (stdin is then closed)."""
        proc = subprocess.Popen(
            self.argv(*extra),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=self.api.cli_env(self.home),
        )
        assert proc.stdin is not None
        proc.stdin.write(prompt)
        proc.stdin.close()
        proc.stdin = None
        return proc

    def run(self, prompt: str, *extra: str, mcp_command: str | None = None) -> CliRun:
        """Run the CLI to completion and parse its stream-json output."""
        start = time.monotonic()
        proc = subprocess.run(
            self.argv(*extra, mcp_command=mcp_command),
            input=prompt,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.api.cli_env(self.home),
            timeout=TIMEOUT,
            check=False,
        )
        elapsed = time.monotonic() - start
        what = " ".join(extra) or "(fresh)"
        print(f"claude {what} <<< {prompt!r}: rc={proc.returncode} in {elapsed:.2f}s")
        return CliRun(proc.returncode, _parse(proc.stdout), proc.stderr, elapsed)


def _parse(stdout: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for raw in stdout.splitlines():
        raw = raw.strip()
        if raw:
            lines.append(json.loads(raw))
    return lines


@pytest.fixture
def api() -> Iterator[FakeAnthropic]:
    """A started fake with a trivial script (tests replace it)."""
    with FakeAnthropic(Rules(default=reply_text("ok"))) as fake:
        yield fake


@pytest.fixture
def sandbox(tmp_path: Path, api: FakeAnthropic) -> Sandbox:
    """Fresh HOME and cwd under ``tmp_path``."""
    home = tmp_path / "home"
    cwd = tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    return Sandbox(home=home, cwd=cwd, api=api)


# --------------------------------------------------------------------------- fake only


def _post(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def test_fake_speaks_messages_api_without_cli() -> None:
    """SSE framing, non-streaming JSON, count_tokens, errors and unknown paths."""
    script = Rules(
        rule(reply_prompt_too_long(300, 200), contains="huge"),
        rule(reply_tool_use("mcp__hyperhive__echo", {"text": "a" * 50}, text="calling")),
    )
    with FakeAnthropic(script) as fake:
        msg = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        status, ctype, raw = _post(
            fake.base_url + "/v1/messages?beta=true", {**msg, "stream": True}
        )
        assert status == 200 and ctype.startswith("text/event-stream")
        events = [
            blk.split("\n")[0].removeprefix("event: ") for blk in raw.decode().strip().split("\n\n")
        ]
        assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
        assert "content_block_start" in events and "content_block_stop" in events
        datas = [
            json.loads(blk.split("\n")[1].removeprefix("data: "))
            for blk in raw.decode().strip().split("\n\n")
        ]
        partial = "".join(
            d["delta"]["partial_json"]
            for d in datas
            if d.get("delta", {}).get("type") == "input_json_delta"
        )
        assert json.loads(partial) == {"text": "a" * 50}
        assert datas[-2]["delta"]["stop_reason"] == "tool_use"

        status, _, raw = _post(fake.base_url + "/v1/messages", msg)
        body = json.loads(raw)
        assert status == 200 and body["content"][0] == {"type": "text", "text": "calling"}
        assert body["content"][1]["name"] == "mcp__hyperhive__echo"

        status, _, raw = _post(
            fake.base_url + "/v1/messages",
            {**msg, "messages": [{"role": "user", "content": "huge"}]},
        )
        assert status == 400
        assert json.loads(raw)["error"] == {
            "type": "invalid_request_error",
            "message": "prompt is too long: 300 tokens > 200 maximum",
        }

        status, _, raw = _post(fake.base_url + "/v1/messages/count_tokens", msg)
        assert status == 200 and json.loads(raw)["input_tokens"] > 0

        status, _, _ = _post(fake.base_url + "/v1/nope", msg)
        assert status == 404 and fake.unknown == ["POST /v1/nope"]
        assert len(fake.requests) == 3 and fake.parsed[0].last_user_text == "hi"


def test_project_dir_name() -> None:
    """The sanitizer, including the >200-character branch (hash from the CLI's JS)."""
    assert project_dir_name("/") == "-"
    long = "/" + "x" * 250
    name = project_dir_name(long)
    assert name.startswith("-" + "x" * 199 + "-") and len(name) > 201


# --------------------------------------------------------------------------- real CLI


@needs_cli
def test_plain_text_reply(sandbox: Sandbox) -> None:
    """Test 1: text reply → init, assistant and a success result with our usage."""
    sandbox.api.set_script(
        Rules(default=reply_text("Hello from the fake.", usage=Usage(123, 45, 6, 7), chunk_chars=5))
    )
    run = sandbox.run("say hello")
    assert run.returncode == 0, run.stderr
    init = run.init
    assert init["model"] == "claude-test"
    assert init["mcp_servers"] == [{"name": "hyperhive", "status": "connected"}]
    assert "mcp__hyperhive__echo" in init["tools"]
    assistant = run.of("assistant")
    assert assistant and assistant[0]["message"]["content"] == [
        {"type": "text", "text": "Hello from the fake."}
    ]
    result = run.result
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "Hello from the fake."
    assert result["terminal_reason"] == "completed" and result["num_turns"] == 1
    assert result["session_id"] == init["session_id"]
    usage = result["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (123, 45)
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (6, 7)
    assert result["total_cost_usd"] > 0 and result["duration_ms"] >= 0

    req = sandbox.api.parsed[0]
    assert req.stream and req.model == "claude-test" and req.path == "/v1/messages?beta=true"
    assert req.last_user_text == "say hello"
    assert req.headers.get("x-api-key") == "test-key"
    assert not sandbox.api.unknown and not sandbox.api.script_errors
    # All the CLI asks for: an optional HEAD / probe and streaming POST /v1/messages?beta=true.
    assert set(sandbox.api.calls) <= {("HEAD", "/"), ("POST", "/v1/messages?beta=true")}
    assert not sandbox.api.count_token_requests


@needs_cli
def test_mcp_tool_round_trip(sandbox: Sandbox) -> None:
    """Test 2: tool_use → CLI calls the stdio MCP tool → tool_result → final text."""

    def final(req: Request) -> Reply:
        return reply_text(f"tool said: {req.tool_results[0].text}")

    sandbox.api.set_script(
        Rules(
            rule(final, tool_result=True),
            rule(reply_tool_use("mcp__hyperhive__echo", {"text": "ping-42"}), contains="echo"),
        )
    )
    run = sandbox.run("please echo ping-42")
    assert run.returncode == 0, run.stderr
    assert sandbox.echo_log.read_text() == "ping-42\n"  # the tool really ran

    first, second = sandbox.api.parsed
    assert "mcp__hyperhive__echo" in first.tool_names and not first.tool_results
    (tr,) = second.tool_results
    assert tr.text == "echo: ping-42" and not tr.is_error

    tool_use = run.of("assistant")[0]["message"]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "mcp__hyperhive__echo"
    user = run.of("user")[0]["message"]["content"][0]
    assert user["type"] == "tool_result" and user["tool_use_id"] == tool_use["id"] == tr.tool_use_id
    result = run.result
    assert result["subtype"] == "success" and not result["is_error"]
    assert result["result"] == "tool said: echo: ping-42" and result["num_turns"] == 2


@needs_cli
def test_prompt_too_long_then_compact(sandbox: Sandbox) -> None:
    """Test 3: context overflow → is_error/prompt_too_long (exit 1); /compact recovers."""
    sandbox.api.set_script(
        Rules(
            rule(reply_prompt_too_long(), when=lambda r: "OVERFLOW" in r.all_text),
            default=reply_text("fine"),
            summary="SUMMARY-7Q",
        )
    )
    run = sandbox.run("OVERFLOW please")
    assert run.returncode == 1
    result = run.result
    assert result["is_error"] is True and result["terminal_reason"] == "prompt_too_long"
    assert result["subtype"] == "success" and result["api_error_status"] == 400
    assert result["result"].startswith("Prompt is too long")
    session = result["session_id"]

    before = len(sandbox.api.parsed)
    run = sandbox.run("/compact", "--continue")
    assert run.returncode == 0, run.stderr
    compactions = [r for r in sandbox.api.parsed[before:] if r.is_compaction]
    assert len(compactions) == 1 and compactions[0].stream
    assert "OVERFLOW please" in compactions[0].all_text  # the history being summarised
    boundary = run.of("system", "compact_boundary")
    assert boundary and boundary[0]["compact_metadata"]["trigger"] == "manual"
    statuses = [ln.get("compact_result") for ln in run.of("system", "status")]
    assert "success" in statuses
    assert run.result["is_error"] is False and run.result["session_id"] == session

    # The retry after compaction carries the summary, not the oversized turn.
    before = len(sandbox.api.parsed)
    run = sandbox.run("retry the task", "--continue")
    assert run.returncode == 0 and run.result["result"] == "fine"
    retry = sandbox.api.parsed[before]
    assert "SUMMARY-7Q" in retry.all_text and "OVERFLOW please" not in retry.all_text
    assert run.result["session_id"] == session


@needs_cli
def test_continue_resumes_session(sandbox: Sandbox, tmp_path: Path) -> None:
    """Test 4: --continue in the same cwd + config dir resumes the previous session."""
    # A cwd longer than 200 characters with odd characters exercises the sanitizer.
    sandbox.cwd = tmp_path / ("deep_dir.v2 " + "x" * 60) / ("y" * 80) / "work"
    sandbox.cwd.mkdir(parents=True)
    sandbox.api.set_script(
        Rules(
            rule(reply_text("Noted: PINEAPPLE."), contains="remember"),
            default=reply_text("It was PINEAPPLE."),
        )
    )
    first = sandbox.run("remember PINEAPPLE")
    assert first.returncode == 0, first.stderr
    session = first.result["session_id"]
    session_file = (
        sandbox.config_dir / "projects" / project_dir_name(sandbox.cwd) / f"{session}.jsonl"
    )
    assert session_file.is_file(), sorted(
        p.name for p in (sandbox.config_dir / "projects").iterdir()
    )

    second = sandbox.run("which fruit?", "--continue")
    assert second.returncode == 0, second.stderr
    assert second.result["session_id"] == session
    req = sandbox.api.parsed[-1]
    texts = [(m["role"], json.dumps(m["content"])) for m in req.messages if m["role"] != "system"]
    assert any(role == "user" and "remember PINEAPPLE" in t for role, t in texts)
    assert any(role == "assistant" and "Noted: PINEAPPLE." in t for role, t in texts)
    assert req.last_user_text == "which fruit?"
    assert second.result["result"] == "It was PINEAPPLE."

    # Without --continue a new session starts.
    third = sandbox.run("which fruit?")
    assert third.result["session_id"] != session
    assert "remember PINEAPPLE" not in sandbox.api.parsed[-1].all_text


@needs_cli
def test_cancel_mid_stream(sandbox: Sandbox) -> None:
    """SIGINT mid-stream → result error_during_execution/aborted_streaming, exit 0;
    SIGTERM → no result line, exit 143."""
    sandbox.api.set_script(Rules(default=reply_text("x" * 200, chunk_delay=0.05, chunk_chars=2)))

    def cancel(sig: signal.Signals) -> tuple[int, list[dict[str, Any]]]:
        n = len(sandbox.api.requests)
        proc = sandbox.popen("slow answer please")
        assert sandbox.api.wait_for_requests(n + 1, TIMEOUT)
        time.sleep(0.4)  # some deltas are out, the rest would take ~5 s
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, _parse(out)

    rc, lines = cancel(signal.SIGINT)
    (result,) = [ln for ln in lines if ln["type"] == "result"]
    assert rc == 0
    assert result["subtype"] == "error_during_execution" and result["is_error"] is True
    assert result["terminal_reason"] == "aborted_streaming"

    rc, lines = cancel(signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM
    assert not [ln for ln in lines if ln["type"] == "result"]


@needs_cli
def test_mcp_server_that_fails_to_start(sandbox: Sandbox) -> None:
    """A dead MCP server is reported in init as ``failed``; its tools vanish; exit 0."""
    sandbox.api.set_script(Rules(default=reply_text("no tools")))
    run = sandbox.run("hi", mcp_command=str(sandbox.home / "does-not-exist"))
    assert run.returncode == 0
    assert run.init["mcp_servers"] == [{"name": "hyperhive", "status": "failed"}]
    assert not [t for t in run.init["tools"] if t.startswith("mcp__")]
    assert "mcp__hyperhive__echo" not in sandbox.api.parsed[0].tool_names
