"""Pure parsing of ``claude -p --output-format stream-json --verbose`` stdout.

One stdout line is one JSON object; :func:`parse_line` turns it into zero or
more typed events (an assistant line may carry several content blocks, a user
line several tool results). No I/O, no clock: every function here is a pure
function of its input, so the unit tests run on captured lines.

Line shapes (claude-code 2.1.x, see docs/claude-cli.md):

- ``{"type":"system","subtype":"init","session_id","model","cwd","tools":[...],
  "mcp_servers":[{"name","status"}],"claude_code_version"}`` → :class:`SystemInit`
- ``{"type":"system","subtype":"status"|"compact_boundary"|...}`` → :class:`SystemEvent`
- ``{"type":"assistant","message":{"id","model","content":[{"type":"text","text"}|
  {"type":"tool_use","id","name","input"}|{"type":"thinking",...}],"usage":{...}}}``
  → :class:`AssistantText` / :class:`ToolUse` (thinking blocks are skipped)
- ``{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id",
  "content": str | [{"type":"text","text"}], "is_error"?}] | str}}``
  → :class:`ToolResult` / :class:`UserText`
- ``{"type":"result","subtype","is_error","terminal_reason","session_id","usage",
  "total_cost_usd","duration_ms","num_turns","result","api_error_status"}`` → :class:`Result`
- with ``--include-partial-messages``: ``{"type":"stream_event","event":{...}}`` — the
  API's own SSE events, one per line, *before* the complete ``assistant`` line of the
  same block: ``message_start`` → :class:`MessageStart` (the request's input usage,
  so the context size is known as soon as a request starts), ``content_block_delta``
  with a ``text_delta`` → :class:`TextDelta`; every other stream event (block
  start/stop, ``input_json_delta``, ``thinking_delta``, ``message_delta``,
  ``message_stop``) gives ``[]`` — the complete lines carry the same content.
- anything else, or a line that is not a JSON object → :class:`Unknown`
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Tool results longer than this (characters) are cut when parsed; the UI shows a note.
MAX_TOOL_RESULT_CHARS = 20_000


@dataclass(frozen=True)
class Usage:
    """Token counts, as the API reports them (all integers, tokens)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def context_tokens(self) -> int:
        """Tokens in the context window for the request: input + cache read + cache creation."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
        )

    def to_json(self) -> dict[str, int]:
        """The API shape: ``{"input_tokens", "output_tokens", "cache_read_input_tokens",
        "cache_creation_input_tokens"}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> Usage:
        """Read an API ``usage`` object; missing or non-integer counts are 0."""
        if not isinstance(d, dict):
            return cls()

        def num(key: str) -> int:
            v = d.get(key)
            return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0

        return cls(
            num("input_tokens"),
            num("output_tokens"),
            num("cache_read_input_tokens"),
            num("cache_creation_input_tokens"),
        )


@dataclass(frozen=True)
class SystemInit:
    """The first line of a run: session, model, tools and MCP server status."""

    session_id: str
    model: str
    cwd: str
    tools: tuple[str, ...]
    mcp_servers: tuple[tuple[str, str], ...]  # (name, status)
    version: str
    plugins: tuple[str, ...] = ()  # "name@marketplace" of every loaded plugin
    kind: str = field(default="system_init", init=False)


@dataclass(frozen=True)
class SystemEvent:
    """Any other ``system`` line (``status`` while compacting, ``compact_boundary``, ...)."""

    subtype: str
    data: dict[str, Any]
    kind: str = field(default="system", init=False)


@dataclass(frozen=True)
class AssistantText:
    """A text block the model wrote. ``usage`` is the request's usage as streamed so far."""

    text: str
    message_id: str
    usage: Usage | None
    kind: str = field(default="assistant_text", init=False)


@dataclass(frozen=True)
class ToolUse:
    """A tool call: ``name`` (``Bash``, ``mcp__hyperhive__send``, ...) with its ``input``."""

    id: str
    name: str
    input: dict[str, Any]
    message_id: str
    usage: Usage | None
    kind: str = field(default="tool_use", init=False)


@dataclass(frozen=True)
class ToolResult:
    """The result of a tool call, as text (cut at ``MAX_TOOL_RESULT_CHARS``)."""

    tool_use_id: str
    text: str
    is_error: bool
    truncated: bool = False
    kind: str = field(default="tool_result", init=False)


@dataclass(frozen=True)
class UserText:
    """A user-role text line the CLI emits itself (compaction summary, local command output)."""

    text: str
    synthetic: bool
    kind: str = field(default="user_text", init=False)


@dataclass(frozen=True)
class Result:
    """The last line of a run.

    ``is_error`` with ``terminal_reason == "prompt_too_long"`` means: compact and
    retry. ``cost_usd`` is dollars, ``duration_ms`` milliseconds, ``usage`` the
    token sums over every API request of the run.
    """

    subtype: str
    is_error: bool
    terminal_reason: str | None
    session_id: str
    usage: Usage
    cost_usd: float
    duration_ms: int
    num_turns: int
    text: str
    api_error_status: int | None
    kind: str = field(default="result", init=False)

    @property
    def prompt_too_long(self) -> bool:
        """The context overflowed (compact and retry once)."""
        if self.terminal_reason == "prompt_too_long":
            return True
        return self.is_error and self.text.strip().lower().startswith("prompt is too long")


@dataclass(frozen=True)
class MessageStart:
    """A model request started streaming (partial messages only): its id and input usage."""

    message_id: str
    model: str
    usage: Usage | None
    kind: str = field(default="message_start", init=False)


@dataclass(frozen=True)
class TextDelta:
    """A piece of model text as it streams (partial messages only).

    ``index`` is the content block's index within its message. The complete
    text arrives afterwards as an :class:`AssistantText` for the same block.
    """

    index: int
    text: str
    kind: str = field(default="text_delta", init=False)


@dataclass(frozen=True)
class Unknown:
    """A line the parser does not understand; ``raw`` is kept (cut at 4000 characters)."""

    raw: str
    reason: str
    kind: str = field(default="unknown", init=False)


StreamEvent = (
    SystemInit
    | SystemEvent
    | AssistantText
    | ToolUse
    | ToolResult
    | UserText
    | Result
    | MessageStart
    | TextDelta
    | Unknown
)

#: Event kinds that only matter while they stream (not worth a row in the event log).
LIVE_ONLY_KINDS = frozenset({"message_start", "text_delta"})


def event_json(ev: StreamEvent) -> dict[str, Any]:
    """The JSON stored in the event log and sent over SSE: the dataclass fields (with ``kind``)."""
    d = asdict(ev)
    if isinstance(ev, SystemInit):
        d["tools"] = list(ev.tools)
        d["mcp_servers"] = [{"name": n, "status": s} for n, s in ev.mcp_servers]
        d["plugins"] = list(ev.plugins)
    return d


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "image":
                    parts.append("[image]")
    return "\n".join(parts)


def _str(d: dict[str, Any], key: str, default: str = "") -> str:
    v = d.get(key)
    return v if isinstance(v, str) else default


def _system(obj: dict[str, Any]) -> list[StreamEvent]:
    subtype = _str(obj, "subtype", "?")
    if subtype != "init":
        data = {k: v for k, v in obj.items() if k not in ("type", "subtype", "uuid")}
        return [SystemEvent(subtype, data)]
    servers: list[tuple[str, str]] = []
    for s in obj.get("mcp_servers") or []:
        if isinstance(s, dict):
            servers.append((_str(s, "name"), _str(s, "status")))
    tools = obj.get("tools") or []
    plugins: list[str] = []
    for pl in obj.get("plugins") or []:
        if isinstance(pl, dict):
            plugins.append(_str(pl, "source") or _str(pl, "name"))
        elif isinstance(pl, str):
            plugins.append(pl)
    return [
        SystemInit(
            session_id=_str(obj, "session_id"),
            model=_str(obj, "model"),
            cwd=_str(obj, "cwd"),
            tools=tuple(str(t) for t in tools if isinstance(t, str)),
            mcp_servers=tuple(servers),
            version=_str(obj, "claude_code_version"),
            plugins=tuple(p for p in plugins if p),
        )
    ]


def _assistant(obj: dict[str, Any]) -> list[StreamEvent]:
    msg = obj.get("message")
    if not isinstance(msg, dict):
        return [Unknown(_cut(json.dumps(obj)), "assistant line without message")]
    mid = _str(msg, "id")
    usage = Usage.from_json(msg["usage"]) if isinstance(msg.get("usage"), dict) else None
    if msg.get("model") == "<synthetic>":  # the CLI's own error text: no API request, no usage
        usage = None
    out: list[StreamEvent] = []
    content = msg.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            out.append(AssistantText(_str(block, "text"), mid, usage))
        elif btype in ("tool_use", "server_tool_use"):
            inp = block.get("input")
            out.append(
                ToolUse(
                    _str(block, "id"),
                    _str(block, "name"),
                    inp if isinstance(inp, dict) else {},
                    mid,
                    usage,
                )
            )
    return out


def _user(obj: dict[str, Any]) -> list[StreamEvent]:
    msg = obj.get("message")
    if not isinstance(msg, dict):
        return [Unknown(_cut(json.dumps(obj)), "user line without message")]
    content = msg.get("content")
    synthetic = bool(obj.get("isSynthetic") or obj.get("isReplay"))
    if isinstance(content, str):
        return [UserText(content, synthetic)]
    out: list[StreamEvent] = []
    texts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "tool_result":
            text = _text_of(block.get("content"))
            truncated = len(text) > MAX_TOOL_RESULT_CHARS
            out.append(
                ToolResult(
                    _str(block, "tool_use_id"),
                    text[:MAX_TOOL_RESULT_CHARS] if truncated else text,
                    bool(block.get("is_error", False)),
                    truncated,
                )
            )
        elif block.get("type") == "text":
            texts.append(_str(block, "text"))
    if texts:
        out.append(UserText("\n".join(texts), synthetic))
    return out


def _result(obj: dict[str, Any]) -> list[StreamEvent]:
    cost = obj.get("total_cost_usd")
    dur = obj.get("duration_ms")
    turns = obj.get("num_turns")
    status = obj.get("api_error_status")
    reason = obj.get("terminal_reason")
    return [
        Result(
            subtype=_str(obj, "subtype"),
            is_error=bool(obj.get("is_error", False)),
            terminal_reason=reason if isinstance(reason, str) else None,
            session_id=_str(obj, "session_id"),
            usage=Usage.from_json(obj.get("usage")),
            cost_usd=float(cost) if isinstance(cost, int | float) else 0.0,
            duration_ms=int(dur) if isinstance(dur, int | float) else 0,
            num_turns=int(turns) if isinstance(turns, int) else 0,
            text=_text_of(obj.get("result")),
            api_error_status=status if isinstance(status, int) else None,
        )
    ]


def _stream_event(obj: dict[str, Any]) -> list[StreamEvent]:
    ev = obj.get("event")
    if not isinstance(ev, dict):
        return []
    etype = ev.get("type")
    if etype == "message_start":
        msg = ev.get("message")
        if not isinstance(msg, dict):
            return []
        usage = Usage.from_json(msg["usage"]) if isinstance(msg.get("usage"), dict) else None
        return [MessageStart(_str(msg, "id"), _str(msg, "model"), usage)]
    if etype == "content_block_delta":
        delta = ev.get("delta")
        index = ev.get("index")
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            text = _str(delta, "text")
            if text:
                return [TextDelta(index if isinstance(index, int) else 0, text)]
    return []


def _cut(raw: str, n: int = 4000) -> str:
    return raw if len(raw) <= n else raw[:n] + "…"


def parse_line(line: str | bytes) -> list[StreamEvent]:
    """Parse one stdout line into events; never raises.

    A blank line gives ``[]``; a line that is not a JSON object, or of an
    unknown ``type``, gives one :class:`Unknown` carrying the raw text.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text:
        return []
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return [Unknown(_cut(text), f"not JSON: {exc}")]
    if not isinstance(obj, dict):
        return [Unknown(_cut(text), "not a JSON object")]
    kind = obj.get("type")
    if kind == "system":
        return _system(obj)
    if kind == "assistant":
        return _assistant(obj)
    if kind == "user":
        return _user(obj)
    if kind == "result":
        return _result(obj)
    if kind == "stream_event":
        return _stream_event(obj)
    return [Unknown(_cut(text), f"unknown type {kind!r}")]
