"""``hyperhive-agent mcp``: the stdio MCP server claude launches (server key ``hyperhive``).

Standard library only, on purpose: claude waits for this process before its first model
request (``MCP_CONNECTION_NONBLOCKING=0``), so its start-up is on the critical path of every
turn. The MCP SDK's server took 612-694 ms to answer ``initialize`` (pydantic model
building, and ``import mcp`` pulling in uvicorn, starlette, httpx, cryptography); this one
answers in tens of milliseconds (bench/turn.py, docs/turn-loop.md). It speaks the subset of
MCP claude uses: ``initialize``, ``notifications/*``, ``ping``, ``tools/list``,
``tools/call`` — newline-delimited JSON-RPC 2.0 on stdin/stdout. Verified with the MCP
SDK's own stdio client (tests/component/harness/test_harness_mcp.py) and the real claude CLI.

A thin client of the agent socket (``HYPERHIVE_SOCKET``): every tool is one
HTTP call through :class:`schemas.client.UnixClient` (``retry=True``), and every
result ends with the one-line inbox status from ``GET /status`` (a
non-mutating peek). An HTTP 4xx from the socket becomes a tool error whose
text starts with the server's message verbatim, so the model sees which rule it
broke. When the call only succeeded after transport retries, the result says
so, so the model does not repeat a call that already worked. When the socket stays
unreachable (the controller is restarting) the call ends with a tool error saying
nothing was done and to try again — never a hang.

Tools (claude sees them as ``mcp__hyperhive__<name>``): ``send``, ``recv``,
``ask``, ``answer``, ``remind``, ``recent``, ``status``; with
``HYPERHIVE_FLAVOR=manager`` also ``request_spawn``, ``request_apply_commit``,
``start``, ``kill``, ``restart``, ``update``, ``ask_operator``, ``list``. Their names,
input schemas and descriptions are the ones the SDK server published
(pinned by tests/unit/harness/data/mcp_tools_*.json).

Signals: claude ends a stdio server with SIGINT (then SIGTERM 100 ms later); both make
this process exit at once, as does EOF on stdin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from harness.credential import CredentialError, broker_client, broker_target, load_credential
from harness.metaclone import MetaCloneError, drop_pushed, push_commit, remote_clone
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.wire import Message, MessageKind, Status, rfc3339

log = logging.getLogger("harness.mcp")

SERVER_NAME = "hyperhive"
MAX_WAIT = 180
#: The protocol revisions this server speaks; it answers the client's when listed, else the newest.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
INSTRUCTIONS = (
    "hyperhive: talk to the other agents, the manager and the operator through this broker. "
    "Plain text you write is not delivered to anyone; use send / ask / answer. Every result ends "
    "with your inbox status line."
)


class ToolError(Exception):
    """A tool failed in a way the model should read: ``str()`` is the text it gets."""


def format_message(m: Message) -> str:
    """A message as the model reads it: header line, then the body."""
    extra = ""
    if m.kind == MessageKind.QUESTION:
        extra = f", thread {m.thread} — reply with answer(thread={m.thread}, body=...)"
    elif m.thread is not None:
        extra = f", thread {m.thread}"
    head = f"#{m.id} from {m.sender} to {m.recipient} ({m.kind}{extra}, sent {rfc3339(m.sent_at)})"
    if m.event:
        head += f"\nevent: {json.dumps(m.event, sort_keys=True)}"
    return f"{head}:\n{m.body}"


def _key() -> str:
    """A fresh idempotency key for one tool call.

    Made once per call, not per attempt: ``UnixClient`` retries re-send the same
    body, so a send that committed before the controller died is not duplicated
    (docs/broker.md, "Idempotency").
    """
    return uuid.uuid4().hex


class Tools:
    """The tool implementations, independent of the MCP plumbing (easy to test)."""

    def __init__(self, client: UnixClient) -> None:
        self.client = client
        #: the running turn's W3C traceparent (``harness.telemetry``), stamped on send / ask /
        #: answer; None: not traced
        self.trace: Callable[[], str | None] | None = None

    def status_line(self) -> str:
        """``Status.line()`` from ``GET /status``; a placeholder when the socket does not answer."""
        try:
            return Status.from_json(self.client.get("/status", timeout=10.0, retry=True)).line()
        except (ApiError, Unreachable, KeyError, TypeError, ValueError) as exc:
            log.warning("status peek failed: %s", exc)
            return "[status] unavailable (the hyperhive controller did not answer)"

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> tuple[Any, int]:
        """One socket call → ``(data, retries)``; raises ``ToolError`` for 4xx/5xx and outages."""
        log.info("%s %s %s", method, path, json.dumps(body)[:500] if body is not None else "")
        try:
            res = self.client.call(method, path, body, timeout=timeout, retry=True)
        except ApiError as exc:
            log.info("%s %s -> %d %s", method, path, exc.status, exc.message)
            raise ToolError(f"{exc.message}\n{self.status_line()}") from None
        except Unreachable as exc:
            log.warning("%s %s -> unreachable: %s", method, path, exc)
            raise ToolError(
                "The hyperhive controller is unreachable right now (it may be restarting); "
                "nothing was done. Try again in a minute."
            ) from None
        return res.data, res.retries

    def finish(self, text: str, retries: int, data: Any = None) -> str:
        """Append the retry note (if any) and the status line: from ``data``'s ``status``
        (every broker verb answers with the caller's status after the call), else from a
        ``GET /status``."""
        parts = [text.rstrip()]
        if retries:
            parts.append(
                f"(note: the hyperhive socket was briefly unreachable; this call succeeded after "
                f"{retries} retr{'y' if retries == 1 else 'ies'} — it is done, do not repeat it)"
            )
        parts.append(self.status_of(data))
        return "\n".join(parts)

    def status_of(self, data: Any) -> str:
        """The status line of a verb's answer ``data`` (its ``status``, ``wire#Status``);
        ``status_line()`` (one more round trip) when it carries none."""
        raw = data.get("status") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return Status.from_json(raw).line()
        return self.status_line()

    # -- agent verbs

    def traced(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the running turn's ``traceparent`` when telemetry is on."""
        tp = self.trace() if self.trace is not None else None
        return {**body, "traceparent": tp} if tp else body

    def send(self, to: str, body: str) -> str:
        data, r = self.call(
            "POST", "/send", self.traced({"to": to, "body": body, "idempotency_key": _key()})
        )
        return self.finish(f"sent message #{data.get('id')} to {to}.", r, data)

    def recv(self, wait_seconds: float = 0) -> str:
        wait = max(0.0, min(float(wait_seconds), MAX_WAIT))
        data, r = self.call("POST", "/recv", {"wait_seconds": wait}, timeout=wait + 30.0)
        raw = data.get("message") if isinstance(data, dict) else None
        if raw is None:
            text = "no message." if wait == 0 else f"no message arrived within {wait:g} s."
        else:
            text = format_message(Message.from_json(raw))
        return self.finish(text, r, data)

    def ask(self, to: str, question: str) -> str:
        data, r = self.call(
            "POST",
            "/ask",
            self.traced({"to": to, "question": question, "idempotency_key": _key()}),
        )
        return self.finish(
            f"asked {to} (message #{data.get('id')}, thread {data.get('thread')}); the answer will "
            "arrive in your inbox as kind 'answer' on that thread.",
            r,
            data,
        )

    def answer(self, thread: int, body: str) -> str:
        data, r = self.call("POST", "/answer", self.traced({"thread": thread, "body": body}))
        return self.finish(f"answered thread {thread} (message #{data.get('id')}).", r, data)

    def remind(self, after_seconds: int, body: str) -> str:
        data, r = self.call(
            "POST",
            "/remind",
            {"after_seconds": after_seconds, "body": body, "idempotency_key": _key()},
        )
        return self.finish(
            f"reminder #{data.get('id')} set; it arrives in your inbox at {data.get('due_at')}.",
            r,
            data,
        )

    def recent(self, limit: int = 20) -> str:
        data, r = self.call("POST", "/recent", {"limit": limit})
        msgs = [Message.from_json(m) for m in data.get("messages", [])]
        if not msgs:
            return self.finish("no messages yet.", r, data)
        text = "\n\n".join(format_message(m) for m in msgs)
        return self.finish(f"{len(msgs)} most recent message(s), oldest first:\n\n{text}", r, data)

    def status(self) -> str:
        data, r = self.call("GET", "/status")
        line = Status.from_json(data).line()
        if r:
            return self.finish(line, r, {"status": data})
        return line

    # -- manager verbs

    def request_spawn(self, name: str) -> str:
        data, r = self.call("POST", "/request_spawn", {"name": name})
        return self.finish(
            f"spawn of {name!r} proposed as proposal #{data.get('id')} ({data.get('ref')}"
            f"{': ' + str(data['title']) if data.get('title') else ''}); "
            "it waits for "
            "the operator's approval. The outcome arrives as an ApprovalResolved event.",
            r,
            data,
        )

    def request_apply_commit(self, commit: str, note: str = "") -> str:
        remote = remote_clone()
        if remote is not None:  # a manager in a pod: hand the commit to meta.git first
            try:
                commit = push_commit(remote[0], commit)
            except MetaCloneError as exc:
                raise ToolError(
                    f"could not push {commit!r} to meta.git ({remote[1]}) for the proposal; "
                    f"nothing was proposed: {exc}"
                ) from None
        body: dict[str, Any] = {"commit": commit}
        if note:
            body["note"] = note
        try:
            data, r = self.call("POST", "/request_apply_commit", body)
        except ToolError:
            if remote is not None:  # refused: take back what was pushed for it
                drop_pushed(remote[0], commit)
            raise
        return self.finish(
            f"commit {commit} proposed as proposal #{data.get('id')} ({data.get('ref')}"
            f"{': ' + str(data['title']) if data.get('title') else ''}); "
            "it waits for "
            "the operator's approval. The outcome arrives as an ApprovalResolved event.",
            r,
            data,
        )

    def lifecycle(self, verb: str, name: str) -> str:
        data, r = self.call("POST", f"/{verb}", {"name": name}, timeout=120.0)
        result = data.get("result") if isinstance(data, dict) else data
        return self.finish(f"{verb} {name}: {result}", r, data)

    def ask_operator(
        self, question: str, options: list[str] | None, multi: bool, ttl_seconds: int | None
    ) -> str:
        body: dict[str, Any] = {"question": question, "multi": multi}
        if options:
            body["options"] = options
        if ttl_seconds:
            body["ttl_seconds"] = ttl_seconds
        data, r = self.call("POST", "/ask_operator", body)
        return self.finish(
            f"question #{data.get('id')} is on the operator's dashboard; the answer arrives "
            "later as an OperatorAnswered event in your inbox (do not wait for it in this turn "
            "unless you must).",
            r,
            data,
        )

    def list_agents(self) -> str:
        data, r = self.call("GET", "/list")
        agents = data.get("agents", []) if isinstance(data, dict) else []
        if not agents:
            return self.finish("no agents.", r, data)
        lines = [json.dumps(a, sort_keys=True) if not isinstance(a, str) else a for a in agents]
        return self.finish(f"{len(agents)} agent(s):\n" + "\n".join(lines), r, data)


# -- the published tool table (names, descriptions, input schemas)

_RECIPIENT = "An agent name (e.g. 'alice'), 'manager' or 'operator' (the human)."
_BODY = "The message text (1-65536 characters)."
_AGENT_NAME = "The agent's name (1-9 characters, e.g. 'alice')."


def _prop(title: str, description: str, type_: str | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description, "title": title}
    if type_ is not None:
        doc["type"] = type_
    doc.update(extra)
    return doc


def _schema(fn: str, props: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"properties": props}
    if required:
        doc["required"] = required
    doc.update(type="object", title=f"{fn}Arguments")
    return doc


def _name_only(fn: str) -> dict[str, Any]:
    return _schema(fn, {"name": _prop("Name", _AGENT_NAME, "string")}, ["name"])


@dataclass(frozen=True)
class ToolSpec:
    """One MCP tool: ``name`` as claude lists it, the model-facing ``description``, the JSON
    ``schema`` of its arguments (which :func:`check_arguments` enforces) and ``run(tools,
    args)`` → the result text (raises :class:`ToolError`)."""

    name: str
    description: str
    schema: dict[str, Any]
    run: Callable[[Tools, dict[str, Any]], str]
    manager_only: bool = False


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "send",
        "Send a message to another agent, the manager or the operator. This is the only way "
        "anyone sees what you say — plain text in your turn is not delivered. Use it to reply to "
        "the message that woke you. Returns the message id and your inbox status.",
        _schema(
            "send",
            {"to": _prop("To", _RECIPIENT, "string"), "body": _prop("Body", _BODY, "string")},
            ["to", "body"],
        ),
        lambda t, a: t.send(a["to"], a["body"]),
    ),
    ToolSpec(
        "recv",
        "Take the next message from your inbox (it counts as read). With wait_seconds=0 it only "
        "peeks and returns at once; with up to 180 it waits for a message — use that to wait for "
        "a reply instead of sleeping in Bash. Returns the message (sender, kind, thread, body) "
        "or 'no message', then your inbox status.",
        _schema(
            "recv",
            {
                "wait_seconds": {
                    "default": 0,
                    "description": "0 (default) returns at once; up to 180 parks until a message "
                    "arrives.",
                    "maximum": MAX_WAIT,
                    "minimum": 0,
                    "title": "Wait Seconds",
                    "type": "number",
                }
            },
            [],
        ),
        lambda t, a: t.recv(a.get("wait_seconds", 0)),
    ),
    ToolSpec(
        "ask",
        "Ask another agent a question on a new thread. Returns at once with the thread number; "
        "the answer arrives later in your inbox (kind 'answer', same thread). Use it when you "
        "need a reply tied to the question; use send for plain messages.",
        _schema(
            "ask",
            {
                "to": _prop("To", _RECIPIENT, "string"),
                "question": _prop("Question", _BODY, "string"),
            },
            ["to", "question"],
        ),
        lambda t, a: t.ask(a["to"], a["question"]),
    ),
    ToolSpec(
        "answer",
        "Answer a question someone asked you (a message of kind 'question' names its thread). "
        "Returns the answer's message id and your inbox status.",
        _schema(
            "answer",
            {
                "thread": _prop(
                    "Thread",
                    "The thread number of the question you answer.",
                    "integer",
                    minimum=1,
                ),
                "body": _prop("Body", _BODY, "string"),
            },
            ["thread", "body"],
        ),
        lambda t, a: t.answer(a["thread"], a["body"]),
    ),
    ToolSpec(
        "remind",
        "Schedule a message to yourself: it arrives in your inbox (kind 'reminder') after the "
        "delay and wakes you then. Use it for follow-ups instead of waiting. Returns when it is "
        "due.",
        _schema(
            "remind",
            {
                "after_seconds": {
                    "description": "Delay in seconds (1 to 2592000 = 30 days).",
                    "maximum": 2592000,
                    "minimum": 1,
                    "title": "After Seconds",
                    "type": "integer",
                },
                "body": _prop("Body", _BODY, "string"),
            },
            ["after_seconds", "body"],
        ),
        lambda t, a: t.remind(a["after_seconds"], a["body"]),
    ),
    ToolSpec(
        "recent",
        "Your most recent messages, sent and received, oldest first — to recall a conversation. "
        "Does not mark anything read.",
        _schema(
            "recent",
            {
                "limit": {
                    "default": 20,
                    "description": "How many messages (1-200).",
                    "maximum": 200,
                    "minimum": 1,
                    "title": "Limit",
                    "type": "integer",
                }
            },
            [],
        ),
        lambda t, a: t.recent(a.get("limit", 20)),
    ),
    ToolSpec(
        "status",
        "Your inbox status: unread messages, open question threads, pending reminders. "
        "Changes nothing.",
        _schema("status", {}, []),
        lambda t, a: t.status(),
    ),
    ToolSpec(
        "request_spawn",
        "Propose a new agent. Creates a proposal the operator must approve; returns the proposal "
        "id at once. The outcome arrives later as an ApprovalResolved event. Names: 1-9 "
        "characters, a lowercase letter first, then lowercase letters, digits or '-'.",
        _name_only("request_spawn"),
        lambda t, a: t.request_spawn(a["name"]),
        manager_only=True,
    ),
    ToolSpec(
        "request_apply_commit",
        "Propose deploying a commit of your meta clone (agent manifests, agent.nix, flake "
        "inputs). The operator approves or denies it; the outcome arrives as an ApprovalResolved "
        "event. Returns the proposal id at once.",
        _schema(
            "request_apply_commit",
            {
                "commit": _prop("Commit", "The commit id (hex) in your meta clone.", "string"),
                "note": {
                    "default": "",
                    "description": "Why: shown to the operator with the diff.",
                    "title": "Note",
                    "type": "string",
                },
            },
            ["commit"],
        ),
        lambda t, a: t.request_apply_commit(a["commit"], a.get("note", "")),
        manager_only=True,
    ),
    ToolSpec(
        "start",
        "Start a stopped agent. Returns what the controller did.",
        _name_only("start"),
        lambda t, a: t.lifecycle("start", a["name"]),
        manager_only=True,
    ),
    ToolSpec(
        "kill",
        "Stop a running agent gracefully (its state is kept). Returns what the controller did.",
        _name_only("kill"),
        lambda t, a: t.lifecycle("kill", a["name"]),
        manager_only=True,
    ),
    ToolSpec(
        "restart",
        "Restart an agent (e.g. after a crash). Returns what the controller did.",
        _name_only("restart"),
        lambda t, a: t.lifecycle("restart", a["name"]),
        manager_only=True,
    ),
    ToolSpec(
        "update",
        "Rebuild an agent onto the current hyperhive version and deployed config (idempotent). "
        "Returns what the controller did.",
        _name_only("update"),
        lambda t, a: t.lifecycle("update", a["name"]),
        manager_only=True,
    ),
    ToolSpec(
        "ask_operator",
        "Put a question on the operator's dashboard when you need a human decision. Returns the "
        "question id at once; the answer arrives later as an OperatorAnswered event.",
        _schema(
            "ask_operator",
            {
                "question": _prop("Question", _BODY, "string"),
                "options": {
                    "anyOf": [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}],
                    "default": None,
                    "description": "Choices to offer; omit for a free-text answer.",
                    "title": "Options",
                },
                "multi": {
                    "default": False,
                    "description": "Allow several options to be picked.",
                    "title": "Multi",
                    "type": "boolean",
                },
                "ttl_seconds": {
                    "anyOf": [{"type": "integer"}, {"type": "null"}],
                    "default": None,
                    "description": "Expire unanswered after this many seconds (answer "
                    "'[expired]').",
                    "title": "Ttl Seconds",
                },
            },
            ["question"],
        ),
        lambda t, a: t.ask_operator(
            a["question"], a.get("options"), a.get("multi", False), a.get("ttl_seconds")
        ),
        manager_only=True,
    ),
    ToolSpec(
        "list",
        "List the agents in the swarm with their state. Changes nothing.",
        _schema("list_agents", {}, []),
        lambda t, a: t.list_agents(),
        manager_only=True,
    ),
)


def tool_specs(flavor: str) -> tuple[ToolSpec, ...]:
    """The tools ``flavor`` (``agent`` or ``manager``) exposes, in listing order."""
    return tuple(s for s in TOOL_SPECS if flavor == "manager" or not s.manager_only)


def _check(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    """``value`` checked against the subset of JSON Schema the tool table uses (type, anyOf,
    items, minimum, maximum); returns it normalised (an integral float for an integer → int).
    Raises ``ValueError`` naming ``where``."""
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                return _check(value, alt, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    kind = schema.get("type")
    if kind == "null":
        if value is not None:
            raise ValueError(f"{where}: must be null")
        return None
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise ValueError(f"{where}: must be an array")
        items = schema.get("items", {})
        return [_check(v, items, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"{where}: must be {'an integer' if kind == 'integer' else 'a number'}"
            )
        if kind == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{where}: must be an integer")
            value = int(value)
        if "minimum" in schema and value < schema["minimum"]:
            raise ValueError(f"{where}: must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValueError(f"{where}: must be at most {schema['maximum']}")
        return value
    return value


def check_arguments(spec: ToolSpec, args: Any) -> dict[str, Any]:
    """``args`` of a ``tools/call`` checked against ``spec.schema``: an object, every required
    key present, each known key of the right type and range (unknown keys are dropped, as the
    SDK did). Returns the checked arguments; raises ``ValueError`` naming the argument."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError("arguments: must be an object")
    props: Mapping[str, Any] = spec.schema["properties"]
    for key in spec.schema.get("required", ()):
        if key not in args:
            raise ValueError(f"{key}: required")
    return {k: _check(v, props[k], k) for k, v in args.items() if k in props}


# -- JSON-RPC

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def _text_result(text: str, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


class McpHandler:
    """The MCP method table over :class:`Tools`, independent of the transport.

    :meth:`handle` takes one decoded JSON-RPC message and returns the response object,
    or ``None`` for a notification (or a response the client sent). Thread-safe: the
    stdio loop runs each ``tools/call`` on its own thread so a parked ``recv`` does not
    hold up ``ping`` or other calls.
    """

    def __init__(self, flavor: str, client: UnixClient) -> None:
        self.tools = Tools(client)
        self.specs = {s.name: s for s in tool_specs(flavor)}

    def list_tools(self) -> list[dict[str, Any]]:
        """The ``tools/list`` entries: ``{"name", "description", "inputSchema"}``."""
        return [
            {"name": s.name, "description": s.description, "inputSchema": s.schema}
            for s in self.specs.values()
        ]

    def call_tool(self, name: Any, args: Any) -> dict[str, Any]:
        """A ``tools/call`` result: the tool's text, or ``isError`` with the reason
        (``Error executing tool <name>: <message>`` as the SDK worded it)."""
        spec = self.specs.get(name) if isinstance(name, str) else None
        if spec is None:
            return _text_result(f"Unknown tool: {name}", True)
        try:
            checked = check_arguments(spec, args)
        except ValueError as exc:
            return _text_result(f"Error executing tool {spec.name}: {exc}", True)
        try:
            return _text_result(spec.run(self.tools, checked))
        except ToolError as exc:
            return _text_result(f"Error executing tool {spec.name}: {exc}", True)
        except Exception as exc:  # a bug must reach the model as an error, not kill the server
            log.exception("tool %s failed", spec.name)
            return _text_result(f"Error executing tool {spec.name}: {exc}", True)

    def handle(self, msg: Any) -> dict[str, Any] | None:
        """One JSON-RPC message → its response (``None`` for notifications and responses)."""
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
            return _error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        if "method" not in msg:
            return None  # a response to a request we never send
        rid = msg.get("id")
        method = msg["method"]
        if "id" not in msg:
            return None  # notifications/initialized, notifications/cancelled, ...
        params = msg.get("params") or {}
        if not isinstance(params, dict):
            return _error(rid, INVALID_PARAMS, "params: must be an object")
        if method == "initialize":
            asked = params.get("protocolVersion")
            version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
            result: dict[str, Any] = {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": SERVER_NAME, "version": ""},
                "instructions": INSTRUCTIONS,
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": self.list_tools()}
        elif method == "tools/call":
            result = self.call_tool(params.get("name"), params.get("arguments"))
        elif method in ("resources/list", "prompts/list"):
            result = {method.split("/")[0]: []}
        elif method == "resources/templates/list":
            result = {"resourceTemplates": []}
        else:
            return _error(rid, METHOD_NOT_FOUND, f"method not found: {method}")
        return {"jsonrpc": "2.0", "id": rid, "result": result}


def serve_stdio(handler: McpHandler, inp: IO[bytes], out: IO[bytes]) -> None:
    """Newline-delimited JSON-RPC on ``inp``/``out`` until EOF. ``tools/call`` runs on its
    own (daemon) thread; the rest is answered inline. Writes are serialised."""
    lock = threading.Lock()

    def reply(doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with lock:
            out.write(data)
            out.flush()

    for line in inp:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            reply(_error(None, PARSE_ERROR, "not JSON"))
            continue
        if isinstance(msg, dict) and msg.get("method") == "tools/call" and "id" in msg:
            threading.Thread(target=lambda m=msg: reply(handler.handle(m)), daemon=True).start()
        else:
            reply(handler.handle(msg))


def _exit_now(signum: int, frame: object) -> None:
    # claude sends SIGINT, then SIGTERM after 100 ms: leave at once (no interpreter teardown;
    # every reply was flushed when written)
    os._exit(0)


def main(environ: Mapping[str, str] | None = None) -> int:
    """Serve over stdio until claude closes the pipe or signals. Logs go to stderr.

    Returns 2 (at once) when the agent credential (``HYPERHIVE_CREDENTIAL_FILE``) cannot be
    read: every tool would be refused by the controller anyway.
    """
    signal.signal(signal.SIGINT, _exit_now)
    signal.signal(signal.SIGTERM, _exit_now)
    env = os.environ if environ is None else environ
    logging.basicConfig(
        level=env.get("HYPERHIVE_LOG_LEVEL", "WARNING").upper(),
        stream=sys.stderr,
        format="%(asctime)s hyperhive-mcp %(levelname)s %(message)s",
    )
    flavor = env.get("HYPERHIVE_FLAVOR", "agent")
    try:
        target = broker_target(env)
        token = load_credential(env)
    except (CredentialError, ValueError) as exc:
        # claude shows the server as failed; the reason lands in its MCP log
        print(f"hyperhive-agent mcp: {exc}", file=sys.stderr)
        return 2
    serve_stdio(
        McpHandler(flavor, broker_client(target, token)), sys.stdin.buffer, sys.stdout.buffer
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
