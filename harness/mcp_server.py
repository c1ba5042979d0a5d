"""``hyperhive-agent mcp``: the stdio MCP server claude launches (server key ``hyperhive``).

A thin client of the agent socket (``HYPERHIVE_SOCKET``): every tool is one
HTTP call through :class:`schemas.client.UnixClient` (``retry=True``), and every
result ends with the one-line inbox status from ``GET /status`` (a
non-mutating peek). An HTTP 4xx from the socket becomes a ``ToolError`` whose
text starts with the server's message verbatim, so the model sees which rule it
broke. When the call only succeeded after transport retries, the result says
so, so the model does not repeat a call that already worked.

Tools (claude sees them as ``mcp__hyperhive__<name>``): ``send``, ``recv``,
``ask``, ``answer``, ``remind``, ``recent``, ``status``; with
``HYPERHIVE_FLAVOR=manager`` also ``request_spawn``, ``request_apply_commit``,
``start``, ``kill``, ``restart``, ``update``, ``ask_operator``, ``list``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from harness.credential import CredentialError, broker_client, load_credential
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.wire import Message, MessageKind, Status, rfc3339

log = logging.getLogger("harness.mcp")

SERVER_NAME = "hyperhive"
MAX_WAIT = 180
INSTRUCTIONS = (
    "hyperhive: talk to the other agents, the manager and the operator through this broker. "
    "Plain text you write is not delivered to anyone; use send / ask / answer. Every result ends "
    "with your inbox status line."
)


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

    def finish(self, text: str, retries: int) -> str:
        """Append the retry note (if any) and the status line."""
        parts = [text.rstrip()]
        if retries:
            parts.append(
                f"(note: the hyperhive socket was briefly unreachable; this call succeeded after "
                f"{retries} retr{'y' if retries == 1 else 'ies'} — it is done, do not repeat it)"
            )
        parts.append(self.status_line())
        return "\n".join(parts)

    # -- agent verbs

    def send(self, to: str, body: str) -> str:
        data, r = self.call("POST", "/send", {"to": to, "body": body, "idempotency_key": _key()})
        return self.finish(f"sent message #{data.get('id')} to {to}.", r)

    def recv(self, wait_seconds: float = 0) -> str:
        wait = max(0.0, min(float(wait_seconds), MAX_WAIT))
        data, r = self.call("POST", "/recv", {"wait_seconds": wait}, timeout=wait + 30.0)
        raw = data.get("message") if isinstance(data, dict) else None
        if raw is None:
            text = "no message." if wait == 0 else f"no message arrived within {wait:g} s."
        else:
            text = format_message(Message.from_json(raw))
        return self.finish(text, r)

    def ask(self, to: str, question: str) -> str:
        data, r = self.call(
            "POST", "/ask", {"to": to, "question": question, "idempotency_key": _key()}
        )
        return self.finish(
            f"asked {to} (message #{data.get('id')}, thread {data.get('thread')}); the answer will "
            "arrive in your inbox as kind 'answer' on that thread.",
            r,
        )

    def answer(self, thread: int, body: str) -> str:
        data, r = self.call("POST", "/answer", {"thread": thread, "body": body})
        return self.finish(f"answered thread {thread} (message #{data.get('id')}).", r)

    def remind(self, after_seconds: int, body: str) -> str:
        data, r = self.call(
            "POST",
            "/remind",
            {"after_seconds": after_seconds, "body": body, "idempotency_key": _key()},
        )
        return self.finish(
            f"reminder #{data.get('id')} set; it arrives in your inbox at {data.get('due_at')}.", r
        )

    def recent(self, limit: int = 20) -> str:
        data, r = self.call("POST", "/recent", {"limit": limit})
        msgs = [Message.from_json(m) for m in data.get("messages", [])]
        if not msgs:
            return self.finish("no messages yet.", r)
        text = "\n\n".join(format_message(m) for m in msgs)
        return self.finish(f"{len(msgs)} most recent message(s), oldest first:\n\n{text}", r)

    def status(self) -> str:
        data, r = self.call("GET", "/status")
        line = Status.from_json(data).line()
        if r:
            return self.finish(line, r)
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
        )

    def request_apply_commit(self, commit: str, note: str = "") -> str:
        body: dict[str, Any] = {"commit": commit}
        if note:
            body["note"] = note
        data, r = self.call("POST", "/request_apply_commit", body)
        return self.finish(
            f"commit {commit} proposed as proposal #{data.get('id')} ({data.get('ref')}"
            f"{': ' + str(data['title']) if data.get('title') else ''}); "
            "it waits for "
            "the operator's approval. The outcome arrives as an ApprovalResolved event.",
            r,
        )

    def lifecycle(self, verb: str, name: str) -> str:
        data, r = self.call("POST", f"/{verb}", {"name": name}, timeout=120.0)
        result = data.get("result") if isinstance(data, dict) else data
        return self.finish(f"{verb} {name}: {result}", r)

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
        )

    def list_agents(self) -> str:
        data, r = self.call("GET", "/list")
        agents = data.get("agents", []) if isinstance(data, dict) else []
        if not agents:
            return self.finish("no agents.", r)
        lines = [json.dumps(a, sort_keys=True) if not isinstance(a, str) else a for a in agents]
        return self.finish(f"{len(agents)} agent(s):\n" + "\n".join(lines), r)


Recipient = Annotated[
    str, Field(description="An agent name (e.g. 'alice'), 'manager' or 'operator' (the human).")
]
Body = Annotated[str, Field(description="The message text (1-65536 characters).")]
AgentName = Annotated[str, Field(description="The agent's name (1-9 characters, e.g. 'alice').")]


def build_server(flavor: str, client: UnixClient) -> MCPServer:
    """The MCP server for ``flavor`` (``agent`` or ``manager``) over ``client``."""
    server: MCPServer = MCPServer(name=SERVER_NAME, instructions=INSTRUCTIONS)
    t = Tools(client)

    @server.tool(structured_output=False)
    def send(to: Recipient, body: Body) -> str:
        """Send a message to another agent, the manager or the operator. This is the only way
        anyone sees what you say — plain text in your turn is not delivered. Use it to reply to
        the message that woke you. Returns the message id and your inbox status."""
        return t.send(to, body)

    @server.tool(structured_output=False)
    def recv(
        wait_seconds: Annotated[
            float,
            Field(
                description="0 (default) returns at once; up to 180 parks until a message arrives.",
                ge=0,
                le=MAX_WAIT,
            ),
        ] = 0,
    ) -> str:
        """Take the next message from your inbox (it counts as read). With wait_seconds=0 it only
        peeks and returns at once; with up to 180 it waits for a message — use that to wait for a
        reply instead of sleeping in Bash. Returns the message (sender, kind, thread, body) or
        'no message', then your inbox status."""
        return t.recv(wait_seconds)

    @server.tool(structured_output=False)
    def ask(to: Recipient, question: Body) -> str:
        """Ask another agent a question on a new thread. Returns at once with the thread number;
        the answer arrives later in your inbox (kind 'answer', same thread). Use it when you need
        a reply tied to the question; use send for plain messages."""
        return t.ask(to, question)

    @server.tool(structured_output=False)
    def answer(
        thread: Annotated[
            int, Field(description="The thread number of the question you answer.", ge=1)
        ],
        body: Body,
    ) -> str:
        """Answer a question someone asked you (a message of kind 'question' names its thread).
        Returns the answer's message id and your inbox status."""
        return t.answer(thread, body)

    @server.tool(structured_output=False)
    def remind(
        after_seconds: Annotated[
            int, Field(description="Delay in seconds (1 to 2592000 = 30 days).", ge=1, le=2592000)
        ],
        body: Body,
    ) -> str:
        """Schedule a message to yourself: it arrives in your inbox (kind 'reminder') after the
        delay and wakes you then. Use it for follow-ups instead of waiting. Returns when it is
        due."""
        return t.remind(after_seconds, body)

    @server.tool(structured_output=False)
    def recent(
        limit: Annotated[int, Field(description="How many messages (1-200).", ge=1, le=200)] = 20,
    ) -> str:
        """Your most recent messages, sent and received, oldest first — to recall a conversation.
        Does not mark anything read."""
        return t.recent(limit)

    @server.tool(structured_output=False)
    def status() -> str:
        """Your inbox status: unread messages, open question threads, pending reminders.
        Changes nothing."""
        return t.status()

    if flavor != "manager":
        return server

    @server.tool(structured_output=False)
    def request_spawn(name: AgentName) -> str:
        """Propose a new agent. Creates a proposal the operator must approve; returns the proposal
        id at once. The outcome arrives later as an ApprovalResolved event. Names: 1-9 characters,
        a lowercase letter first, then lowercase letters, digits or '-'."""
        return t.request_spawn(name)

    @server.tool(structured_output=False)
    def request_apply_commit(
        commit: Annotated[str, Field(description="The commit id (hex) in your meta clone.")],
        note: Annotated[str, Field(description="Why: shown to the operator with the diff.")] = "",
    ) -> str:
        """Propose deploying a commit of your meta clone (agent manifests, agent.nix, flake
        inputs). The operator approves or denies it; the outcome arrives as an ApprovalResolved
        event. Returns the proposal id at once."""
        return t.request_apply_commit(commit, note)

    @server.tool(structured_output=False)
    def start(name: AgentName) -> str:
        """Start a stopped agent. Returns what the controller did."""
        return t.lifecycle("start", name)

    @server.tool(structured_output=False)
    def kill(name: AgentName) -> str:
        """Stop a running agent gracefully (its state is kept). Returns what the controller did."""
        return t.lifecycle("kill", name)

    @server.tool(structured_output=False)
    def restart(name: AgentName) -> str:
        """Restart an agent (e.g. after a crash). Returns what the controller did."""
        return t.lifecycle("restart", name)

    @server.tool(structured_output=False)
    def update(name: AgentName) -> str:
        """Rebuild an agent onto the current hyperhive version and deployed config (idempotent).
        Returns what the controller did."""
        return t.lifecycle("update", name)

    @server.tool(structured_output=False)
    def ask_operator(
        question: Body,
        options: Annotated[
            list[str] | None, Field(description="Choices to offer; omit for a free-text answer.")
        ] = None,
        multi: Annotated[bool, Field(description="Allow several options to be picked.")] = False,
        ttl_seconds: Annotated[
            int | None,
            Field(description="Expire unanswered after this many seconds (answer '[expired]')."),
        ] = None,
    ) -> str:
        """Put a question on the operator's dashboard when you need a human decision. Returns the
        question id at once; the answer arrives later as an OperatorAnswered event."""
        return t.ask_operator(question, options, multi, ttl_seconds)

    @server.tool(name="list", structured_output=False)
    def list_agents() -> str:
        """List the agents in the swarm with their state. Changes nothing."""
        return t.list_agents()

    return server


def main(environ: Mapping[str, str] | None = None) -> int:
    """Serve over stdio until claude closes the pipe. Logs go to stderr.

    Returns 2 (at once) when the agent credential (``HYPERHIVE_CREDENTIAL_FILE``) cannot be
    read: every tool would be refused by the controller anyway.
    """
    env = os.environ if environ is None else environ
    logging.basicConfig(
        level=env.get("HYPERHIVE_LOG_LEVEL", "WARNING").upper(),
        stream=sys.stderr,
        format="%(asctime)s hyperhive-mcp %(levelname)s %(message)s",
    )
    socket = env.get("HYPERHIVE_SOCKET", "/run/hive/mcp.sock")
    flavor = env.get("HYPERHIVE_FLAVOR", "agent")
    try:
        token = load_credential(env)
    except CredentialError as exc:
        # claude shows the server as failed; the reason lands in its MCP log
        print(f"hyperhive-agent mcp: {exc}", file=sys.stderr)
        return 2
    server = build_server(flavor, broker_client(socket, token))
    server.run("stdio")
    # claude waits for this process to exit after every turn: skip the interpreter teardown
    # (~150 ms of module cleanup for mcp/pydantic) — nothing is left to flush but the streams
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
