"""A scripted fake of the Anthropic Messages API, good enough for the real ``claude`` CLI.

Tests start :class:`FakeAnthropic` on ``127.0.0.1`` (ephemeral port), point the CLI at
it with ``ANTHROPIC_BASE_URL`` and decide, per request, what the "model" answers.
See ``docs/claude-cli.md`` for what the CLI sends and expects.

Example::

    script = Rules(
        rule(reply_text("done"), tool_result=True),
        rule(reply_tool_use("mcp__hyperhive__echo", {"text": "hi"}), contains="echo"),
        default=reply_text("hello"),
    )
    with FakeAnthropic(script) as api:
        env["ANTHROPIC_BASE_URL"] = api.base_url
        ...
        assert api.requests[-1]["messages"]
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = [
    "COMPACT_MARKER",
    "OFFLINE_ENV",
    "ApiError",
    "FakeAnthropic",
    "Reply",
    "Request",
    "Rule",
    "Rules",
    "Script",
    "TextBlock",
    "ToolResult",
    "ToolUse",
    "Usage",
    "find_claude_cli",
    "reply_error",
    "reply_prompt_too_long",
    "reply_text",
    "reply_tool_use",
    "rule",
]

log = logging.getLogger(__name__)

#: Substring of the last user message of the CLI's ``/compact`` summarisation request
#: (claude-code 2.1.x). :attr:`Request.is_compaction` tests for it.
COMPACT_MARKER = "create a detailed summary of the conversation so far"

#: Environment that keeps the CLI offline, quiet and fail-fast against the fake
#: (verified with strace: only loopback connects). ``CLAUDE_CODE_MAX_RETRIES=0``
#: stops the CLI's own retry loop, which otherwise retries 5xx/529 answers.
OFFLINE_ENV: dict[str, str] = {
    "MCP_CONNECTION_NONBLOCKING": "0",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
}

_FALLBACK_CLI = Path("/tmp/setup/node_modules/.bin/claude")


def find_claude_cli(repo_root: Path | None = None) -> Path | None:
    """Locate the real ``claude`` CLI for end-to-end tests, or ``None``.

    Order: ``$HYPERHIVE_CLAUDE_BIN``; ``<repo>/node_modules/.bin/claude``;
    ``/tmp/setup/node_modules/.bin/claude`` (the dev sandbox); ``claude`` on PATH.
    """
    env_bin = os.environ.get("HYPERHIVE_CLAUDE_BIN")
    if env_bin:
        path = Path(env_bin)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    root = repo_root or Path(__file__).resolve().parents[2]
    for candidate in (root / "node_modules" / ".bin" / "claude", _FALLBACK_CLI):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("claude")
    return Path(on_path) if on_path else None


_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>\s*", re.DOTALL)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Usage:
    """Token counts reported for one reply (``message_start`` / ``message_delta``)."""

    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the API's ``usage`` object."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass(frozen=True)
class TextBlock:
    """A ``text`` content block of a reply."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """A ``tool_use`` content block of a reply; ``id`` is generated when omitted."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ApiError:
    """An error answer: HTTP ``status`` with the API's JSON error body."""

    status: int
    type: str
    message: str

    def body(self) -> dict[str, Any]:
        """Return the error body exactly as the real API shapes it."""
        return {
            "type": "error",
            "error": {"type": self.type, "message": self.message},
            "request_id": f"req_fake{uuid.uuid4().hex[:20]}",
        }


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one ``/v1/messages`` request.

    ``content`` is sent in order. ``stop_reason`` defaults to ``"tool_use"`` when the
    content holds a :class:`ToolUse`, else ``"end_turn"``. Streaming replies split
    text into ``chunk_chars``-sized ``text_delta`` events (tool input into
    ``input_json_delta`` events) and sleep ``chunk_delay`` seconds before each one,
    so a test can interrupt a turn mid-stream. ``error`` replaces the whole answer.
    """

    content: tuple[TextBlock | ToolUse, ...] = ()
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    chunk_delay: float = 0.0
    chunk_chars: int = 16
    error: ApiError | None = None

    def effective_stop_reason(self) -> str:
        """Return ``stop_reason`` or the value the real API would pick."""
        if self.stop_reason is not None:
            return self.stop_reason
        if any(isinstance(b, ToolUse) for b in self.content):
            return "tool_use"
        return "end_turn"


def reply_text(
    text: str,
    *,
    usage: Usage | None = None,
    chunk_delay: float = 0.0,
    chunk_chars: int = 16,
) -> Reply:
    """Return a plain-text reply (``stop_reason`` ``end_turn``)."""
    return Reply(
        content=(TextBlock(text),),
        usage=usage or Usage(),
        chunk_delay=chunk_delay,
        chunk_chars=chunk_chars,
    )


def reply_tool_use(
    name: str,
    input: dict[str, Any] | None = None,
    *more: ToolUse,
    text: str | None = None,
    usage: Usage | None = None,
    chunk_delay: float = 0.0,
) -> Reply:
    """Return a reply calling tool ``name`` with ``input`` (plus any ``more`` calls).

    ``text``, when given, precedes the tool calls as a text block.
    """
    blocks: list[TextBlock | ToolUse] = []
    if text is not None:
        blocks.append(TextBlock(text))
    blocks.append(ToolUse(name, dict(input or {})))
    blocks.extend(more)
    return Reply(content=tuple(blocks), usage=usage or Usage(), chunk_delay=chunk_delay)


def reply_error(status: int, type: str, message: str) -> Reply:
    """Return a reply that fails with HTTP ``status`` and an API error body."""
    return Reply(error=ApiError(status, type, message))


def reply_prompt_too_long(tokens: int = 250_000, maximum: int = 200_000) -> Reply:
    """Return the API's context-overflow error (400 ``invalid_request_error``).

    The CLI turns it into a result line with ``is_error: true`` and
    ``terminal_reason: "prompt_too_long"`` and exits 1.
    """
    return reply_error(
        400,
        "invalid_request_error",
        f"prompt is too long: {tokens} tokens > {maximum} maximum",
    )


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ToolResult:
    """A ``tool_result`` block found in the last user message of a request."""

    tool_use_id: str
    text: str
    is_error: bool
    raw: dict[str, Any]


def _text_of(content: Any) -> str:
    """Join the text of a message ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
    return "\n".join(parts)


@dataclass(frozen=True)
class Request:
    """A parsed ``POST /v1/messages`` request, as handed to the script."""

    body: dict[str, Any]
    path: str
    headers: dict[str, str]
    index: int

    @property
    def model(self) -> str:
        """The requested model name."""
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        """Whether the client asked for an SSE stream."""
        return bool(self.body.get("stream", False))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` array (may include ``role: system`` entries)."""
        msgs = self.body.get("messages", [])
        return msgs if isinstance(msgs, list) else []

    @property
    def system(self) -> str:
        """The system prompt as one string."""
        return _text_of(self.body.get("system", ""))

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered to the model."""
        tools = self.body.get("tools") or []
        return [str(t.get("name")) for t in tools if isinstance(t, dict)]

    @property
    def last_user_message(self) -> dict[str, Any] | None:
        """The last message with ``role: user``, if any."""
        for msg in reversed(self.messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return msg
        return None

    @property
    def last_user_text(self) -> str:
        """Text of the last user message, without ``<system-reminder>`` blocks."""
        msg = self.last_user_message
        if msg is None:
            return ""
        return _SYSTEM_REMINDER.sub("", _text_of(msg.get("content"))).strip()

    @property
    def tool_results(self) -> list[ToolResult]:
        """The ``tool_result`` blocks of the last user message."""
        msg = self.last_user_message
        content = msg.get("content") if msg else None
        found: list[ToolResult] = []
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    found.append(
                        ToolResult(
                            tool_use_id=str(block.get("tool_use_id", "")),
                            text=_text_of(block.get("content", "")),
                            is_error=bool(block.get("is_error", False)),
                            raw=block,
                        )
                    )
        return found

    @property
    def all_text(self) -> str:
        """Every text and tool-result text in ``messages``, joined (for assertions)."""
        parts: list[str] = []
        for msg in self.messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            parts.append(_text_of(content))
            if isinstance(content, list):
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        parts.append(_text_of(block.get("content", "")))
        return "\n".join(parts)

    @property
    def is_compaction(self) -> bool:
        """Whether this is the CLI's ``/compact`` summarisation request."""
        return COMPACT_MARKER in self.last_user_text.lower()


# --------------------------------------------------------------------------- scripts

#: A script maps each request to a reply.
Script = Callable[[Request], Reply]


@dataclass
class Rule:
    """Reply ``reply`` to requests that match every given condition.

    ``contains``: substring of :attr:`Request.last_user_text`; ``tool_result``:
    ``True``/``False`` = the last user message does / does not carry tool results;
    ``compaction``: :attr:`Request.is_compaction` must equal it — ``False`` by
    default, so ordinary rules never answer the CLI's summarisation request
    (whose prompt quotes the whole conversation); ``None`` matches both;
    ``when``: any predicate; ``times``: the rule retires after that many hits.
    """

    reply: Reply | Callable[[Request], Reply]
    contains: str | None = None
    tool_result: bool | None = None
    compaction: bool | None = False
    when: Callable[[Request], bool] | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, req: Request) -> bool:
        """Whether the rule is live and ``req`` satisfies all its conditions."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.contains is not None and self.contains not in req.last_user_text:
            return False
        if self.tool_result is not None and bool(req.tool_results) != self.tool_result:
            return False
        if self.compaction is not None and req.is_compaction != self.compaction:
            return False
        return self.when is None or self.when(req)

    def answer(self, req: Request) -> Reply:
        """Count a hit and produce the reply for ``req``."""
        self.hits += 1
        return self.reply(req) if callable(self.reply) else self.reply


def rule(
    reply: Reply | Callable[[Request], Reply],
    *,
    contains: str | None = None,
    tool_result: bool | None = None,
    compaction: bool | None = False,
    when: Callable[[Request], bool] | None = None,
    times: int | None = None,
) -> Rule:
    """Build a :class:`Rule` (keyword-only conditions, see its docstring)."""
    return Rule(
        reply,
        contains=contains,
        tool_result=tool_result,
        compaction=compaction,
        when=when,
        times=times,
    )


class Rules:
    """A script made of rules: the first matching rule answers, else ``default``.

    Compaction requests that no rule claims get ``<summary>{summary}</summary>``,
    so ``/compact`` (and the CLI's own reactive compaction) works without set-up.
    """

    def __init__(
        self,
        *rules: Rule,
        default: Reply | None = None,
        summary: str = "Fake summary of the conversation.",
    ) -> None:
        """Keep ``rules`` in order; ``default`` answers when none matches."""
        self.rules: list[Rule] = list(rules)
        self.default = default or reply_text("ok")
        self.summary = summary
        self._lock = threading.Lock()

    def __call__(self, req: Request) -> Reply:
        """Answer ``req`` with the first matching rule."""
        with self._lock:
            for r in self.rules:
                if r.matches(req):
                    return r.answer(req)
        if req.is_compaction:
            return reply_text(f"<analysis>fake</analysis>\n<summary>{self.summary}</summary>")
        return self.default


# --------------------------------------------------------------------------- SSE


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunks(text: str, size: int) -> list[str]:
    if not text:
        return [""]
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tool_id() -> str:
    return "toolu_fake" + uuid.uuid4().hex[:16]


def _message_json(reply: Reply, model: str, msg_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for block in reply.content:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": block.id or _tool_id(),
                    "name": block.name,
                    "input": block.input,
                }
            )
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.effective_stop_reason(),
        "stop_sequence": None,
        "usage": reply.usage.as_dict(),
    }


def _sse_events(reply: Reply, model: str, msg_id: str) -> Iterator[tuple[bool, bytes]]:
    """Yield ``(delay_before, frame)`` pairs for a streamed reply."""
    usage = reply.usage
    start_usage = usage.as_dict()
    start_usage["output_tokens"] = 1  # as the real API: the final count arrives in message_delta
    yield (
        False,
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
    )
    for index, block in enumerate(reply.content):
        if isinstance(block, TextBlock):
            yield (
                False,
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
            )
            for piece in _chunks(block.text, reply.chunk_chars):
                yield (
                    True,
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    ),
                )
        else:
            yield (
                False,
                _sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block.id or _tool_id(),
                            "name": block.name,
                            "input": {},
                        },
                    },
                ),
            )
            raw = json.dumps(block.input)
            for piece in _chunks(raw, max(reply.chunk_chars, 32)):
                yield (
                    True,
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    ),
                )
        yield False, _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield (
        False,
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.effective_stop_reason(), "stop_sequence": None},
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cache_read_input_tokens": usage.cache_read_input_tokens,
                    "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                },
            },
        ),
    )
    yield False, _sse("message_stop", {"type": "message_stop"})


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fakeapi: " + format, *args)

    # -- helpers
    def _send_json(
        self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_fake{uuid.uuid4().hex[:20]}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return raw.decode(errors="replace")

    # -- verbs
    def do_HEAD(self) -> None:
        """The CLI fires ``HEAD /`` at start-up; it ignores the answer (even a failure)."""
        self.server.fake._note(self.command, self.path, None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        fake = self.server.fake
        fake._note(self.command, self.path, None)
        path = urlsplit(self.path).path
        if path in ("", "/"):
            self._send_json(200, {"ok": True})
            return
        log.warning("fakeapi: unknown path GET %s", self.path)
        fake._unknown(f"GET {self.path}")
        self._send_json(404, ApiError(404, "not_found_error", f"Not found: {path}").body())

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        fake._note(self.command, self.path, body)
        path = urlsplit(self.path).path
        if not isinstance(body, dict):
            self._send_json(400, ApiError(400, "invalid_request_error", "body is not JSON").body())
            return
        if path == "/v1/messages/count_tokens":
            fake.count_token_requests.append(body)
            self._send_json(200, {"input_tokens": fake.count_tokens(body)})
            return
        if path != "/v1/messages":
            log.warning("fakeapi: unknown path POST %s", self.path)
            fake._unknown(f"POST {self.path}")
            self._send_json(404, ApiError(404, "not_found_error", f"Not found: {path}").body())
            return
        req = fake._record(body, self.path, dict(self.headers))
        try:
            reply = fake.script(req)
        except Exception as exc:  # a broken script must not hang the CLI
            log.exception("fakeapi: script raised")
            fake.script_errors.append(exc)
            reply = reply_error(500, "api_error", f"fake script raised: {exc!r}")
        if reply.error is not None:
            # x-should-retry: false stops the CLI retrying 5xx/429 — but not 529, which
            # it retries anyway unless CLAUDE_CODE_MAX_RETRIES=0 (see OFFLINE_ENV).
            self._send_json(reply.error.status, reply.error.body(), {"x-should-retry": "false"})
            return
        msg_id = "msg_fake" + uuid.uuid4().hex[:20]
        if not req.stream:
            self._send_json(200, _message_json(reply, req.model, msg_id))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("request-id", f"req_fake{uuid.uuid4().hex[:20]}")
        self.end_headers()
        self.close_connection = True
        try:
            for delayed, frame in _sse_events(reply, req.model, msg_id):
                if delayed and reply.chunk_delay > 0:
                    time.sleep(reply.chunk_delay)
                self.wfile.write(frame)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with fake._lock:
                fake.disconnects += 1
            log.info("fakeapi: client went away mid-stream (request %d)", req.index)


class FakeAnthropic:
    """A fake Anthropic Messages API on ``127.0.0.1`` in a background thread.

    ``script`` decides each ``/v1/messages`` answer (a callable, e.g. :class:`Rules`,
    or a sequence of :class:`Rule`); it may be replaced between CLI runs.
    ``requests`` holds every ``/v1/messages`` body, ``parsed`` the matching
    :class:`Request` views, ``calls`` every ``(method, path)`` seen and ``unknown``
    the paths the fake did not serve.
    """

    def __init__(
        self,
        script: Script | Sequence[Rule] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Prepare the server; nothing listens until :meth:`start`."""
        self.script: Script = self._as_script(script)
        self.requests: list[dict[str, Any]] = []
        self.parsed: list[Request] = []
        self.calls: list[tuple[str, str]] = []
        self.unknown: list[str] = []
        self.count_token_requests: list[dict[str, Any]] = []
        self.script_errors: list[BaseException] = []
        self.disconnects = 0
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._got_request = threading.Condition(self._lock)

    @staticmethod
    def _as_script(script: Script | Sequence[Rule] | None) -> Script:
        if script is None:
            return Rules()
        if callable(script):
            return script
        return Rules(*script)

    def set_script(self, script: Script | Sequence[Rule]) -> None:
        """Replace the script (between CLI runs, or mid-run)."""
        self.script = self._as_script(script)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` — the value for ``ANTHROPIC_BASE_URL``."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fakeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        """Start on entry."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on exit."""
        self.stop()

    def cli_env(
        self,
        home: str | os.PathLike[str],
        *,
        config_dir: str | os.PathLike[str] | None = None,
        api_key: str = "test-key",
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """A complete, isolated environment for running the CLI against this fake.

        Only ``PATH`` is inherited; ``HOME`` is ``home``, ``CLAUDE_CONFIG_DIR``
        defaults to ``home/.claude`` and ``CLAUDE_CODE_TMPDIR`` to ``home/tmp``
        (else the CLI creates ``/tmp/claude-<uid>``), plus :data:`OFFLINE_ENV`.
        """
        home_path = Path(home)
        tmp = home_path / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home_path),
            "CLAUDE_CONFIG_DIR": str(
                config_dir if config_dir is not None else home_path / ".claude"
            ),
            "CLAUDE_CODE_TMPDIR": str(tmp),
            "ANTHROPIC_BASE_URL": self.base_url,
            "ANTHROPIC_API_KEY": api_key,
            **OFFLINE_ENV,
        }
        env.update(extra or {})
        return env

    def count_tokens(self, body: dict[str, Any]) -> int:
        """Answer for ``/v1/messages/count_tokens``: a rough 4-characters-per-token guess."""
        return max(1, len(json.dumps(body)) // 4)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` ``/v1/messages`` requests arrived."""
        with self._got_request:
            return self._got_request.wait_for(lambda: len(self.requests) >= n, timeout)

    # -- called by the handler
    def _note(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.calls.append((method, path))

    def _unknown(self, what: str) -> None:
        with self._lock:
            self.unknown.append(what)

    def _record(self, body: dict[str, Any], path: str, headers: dict[str, str]) -> Request:
        with self._got_request:
            req = Request(body=body, path=path, headers=headers, index=next(self._counter))
            self.requests.append(body)
            self.parsed.append(req)
            self._got_request.notify_all()
            return req
