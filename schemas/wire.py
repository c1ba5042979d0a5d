"""Typed wire models shared by controller and harness.

The JSON shapes are fixed by ``schemas/json/wire.schema.json`` and
``events.schema.json``; these dataclasses are the Python view of them.
Timestamps on the wire are RFC 3339 UTC strings with millisecond precision.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_SECONDS: dict[int, str] = {}
"""Whole unix second → its ``YYYY-MM-DDTHH:MM:SS`` text: a message's three stamps, and the
messages of one second, share it (``strftime`` was three calls per message delivered)."""


def rfc3339(ts: float) -> str:
    """Format unix seconds as RFC 3339 UTC with milliseconds: ``2026-11-22T10:00:00.123Z``.

    The same text as ``datetime.fromtimestamp(ts, UTC)`` formatted with ``%f`` cut to
    milliseconds (microseconds rounded half-even, then truncated), with the whole-second
    part cached."""
    # datetime.fromtimestamp's own split: the fraction rounded to microseconds
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole += 1
        us -= 1_000_000
    elif us < 0:
        whole -= 1
        us += 1_000_000
    sec = int(whole)
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) >= 4096:  # old seconds are rarely asked again: stay bounded
            _SECONDS.clear()
        head = _SECONDS[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{us // 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (as written by ``rfc3339``) back to unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class MessageKind(enum.StrEnum):
    """What a broker message is: plain, typed event, question/answer, reminder or wake."""

    MESSAGE = "message"
    EVENT = "event"
    QUESTION = "question"
    ANSWER = "answer"
    REMINDER = "reminder"
    WAKE = "wake"


class EventType(enum.StrEnum):
    """Typed events the controller sends to the manager's inbox (``events.schema.json``)."""

    APPROVAL_RESOLVED = "ApprovalResolved"
    CONTAINER_CRASH = "ContainerCrash"
    NEEDS_LOGIN = "NeedsLogin"
    LOGGED_IN = "LoggedIn"
    NEEDS_UPDATE = "NeedsUpdate"
    REBUILT = "Rebuilt"
    OPERATOR_ANSWERED = "OperatorAnswered"
    DEAD_LETTER = "DeadLetter"
    BUDGET_WARNING = "BudgetWarning"
    BUDGET_EXCEEDED = "BudgetExceeded"
    BUDGET_EXTENDED = "BudgetExtended"


#: MCP tools every agent has (``mcp__hyperhive__<verb>``); each is a path on its socket.
AGENT_VERBS: tuple[str, ...] = ("send", "recv", "ask", "answer", "remind", "recent", "status")
#: Verbs only the manager's socket serves (DESIGN.md "Wire").
MANAGER_ONLY_VERBS: tuple[str, ...] = (
    "request_spawn",
    "request_apply_commit",
    "start",
    "kill",
    "restart",
    "update",
    "ask_operator",
    "list",
)


#: Environment variables whose values the harness reports as digests (``AgentReport.env``)
#: and the controller compares with its own pass-through environment: the ones that decide
#: how claude reaches and authenticates to the Messages API.
REPORTED_ENV_PREFIXES: tuple[str, ...] = ("ANTHROPIC_", "CLAUDE_CODE_")
REPORTED_ENV_MAX = 64


def env_digest(value: str) -> str:
    """A short digest of an environment value (16 hex chars of SHA-256): lets the controller
    tell whether an agent runs with the value it would pass through now, without the agent
    sending the value (an API key) itself."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def reported_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``{name: env_digest(value)}`` of ``environ``'s ``REPORTED_ENV_PREFIXES`` variables
    (non-empty values, at most ``REPORTED_ENV_MAX``, sorted by name)."""
    names = sorted(
        k for k, v in environ.items() if v and k.startswith(REPORTED_ENV_PREFIXES) and k.isupper()
    )
    return {k: env_digest(environ[k]) for k in names[:REPORTED_ENV_MAX]}


@dataclass(frozen=True)
class ApiTrouble:
    """The last Messages API error an agent's claude hit since the model last answered
    (wire ``AgentReport.api``: the harness sends it, the controller's ``Degraded`` condition
    reads it).

    ``status`` is the HTTP status (None: no answer at all — refused, reset, DNS, timeout);
    ``error`` claude's short name for it (``overloaded``, ``unknown``, ...); ``attempt`` /
    ``max_retries`` / ``retry_delay_ms`` claude's retry count and wait (``system``/``api_retry``
    events); ``gave_up`` True when the run ended on it; ``at`` unix seconds (the agent's
    clock; None: not said).
    """

    status: int | None
    error: str = ""
    attempt: int = 0
    max_retries: int = 0
    retry_delay_ms: float = 0.0
    gave_up: bool = False
    at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire shape, held to the schema: a status outside 100-599 is sent as null,
        ``error`` cut at 200 characters, negative counts as 0, ``at`` left out when None."""
        status = self.status
        out: dict[str, Any] = {
            "status": status if status is not None and 100 <= status <= 599 else None,
            "error": self.error[:200],
            "attempt": max(0, self.attempt),
            "max_retries": max(0, self.max_retries),
            "retry_delay_ms": max(0.0, self.retry_delay_ms),
            "gave_up": self.gave_up,
        }
        if self.at is not None:
            out["at"] = self.at
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ApiTrouble:
        """From the wire shape (already validated against the schema; absent fields take
        their defaults)."""

        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        status = d.get("status")
        return cls(
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            error=str(d.get("error") or ""),
            attempt=int(num("attempt") or 0),
            max_retries=int(num("max_retries") or 0),
            retry_delay_ms=num("retry_delay_ms") or 0.0,
            gave_up=bool(d.get("gave_up", False)),
            at=num("at"),
        )


@dataclass(frozen=True)
class Status:
    """The one-line inbox summary every broker verb returns.

    ``dead_letters`` (optional on the wire, 0 when absent) counts messages to
    this agent that were leased and never acked too many times and are no
    longer delivered.
    """

    unread: int = 0
    open_threads: int = 0
    pending_reminders: int = 0
    dead_letters: int = 0

    def to_json(self) -> dict[str, int]:
        """The wire shape (``wire#Status``)."""
        return {
            "unread": self.unread,
            "open_threads": self.open_threads,
            "pending_reminders": self.pending_reminders,
            "dead_letters": self.dead_letters,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Status:
        """Build from the wire shape (``dead_letters`` may be absent)."""
        return cls(
            int(d["unread"]),
            int(d["open_threads"]),
            int(d["pending_reminders"]),
            int(d.get("dead_letters", 0)),
        )

    def line(self) -> str:
        """``[status] 2 unread message(s), 1 open thread(s), 0 pending reminder(s)``.

        ``, 1 dead letter(s)`` is appended only when there are any.
        """
        dead = f", {self.dead_letters} dead letter(s)" if self.dead_letters else ""
        return (
            f"[status] {self.unread} unread message(s), {self.open_threads} open thread(s), "
            f"{self.pending_reminders} pending reminder(s){dead}"
        )


@dataclass(frozen=True)
class Message:
    """One broker message (``wire#Message``). ``sent_at`` etc. are unix seconds."""

    id: int
    sender: str
    recipient: str
    body: str
    kind: MessageKind = MessageKind.MESSAGE
    thread: int | None = None
    event: dict[str, Any] | None = None
    sent_at: float = 0.0
    delivered_at: float | None = None
    acked_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    dead_at: float | None = None
    traceparent: str | None = None
    """W3C ``traceparent`` of the sender's span (OpenTelemetry), when it sent one."""

    def to_json(self) -> dict[str, Any]:
        """The wire shape (``wire#Message``); ``dead_at`` only for a dead letter,
        ``traceparent`` only when the sender sent one."""
        out: dict[str, Any] = {
            "id": self.id,
            "from": self.sender,
            "to": self.recipient,
            "body": self.body,
            "kind": str(self.kind),
            "thread": self.thread,
            "event": self.event,
            "sent_at": rfc3339(self.sent_at),
            "delivered_at": None if self.delivered_at is None else rfc3339(self.delivered_at),
            "acked_at": None if self.acked_at is None else rfc3339(self.acked_at),
        }
        if self.dead_at is not None:
            out["dead_at"] = rfc3339(self.dead_at)
        if self.traceparent is not None:
            out["traceparent"] = self.traceparent
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        """Build from the wire shape."""
        return cls(
            id=int(d["id"]),
            sender=str(d["from"]),
            recipient=str(d["to"]),
            body=str(d["body"]),
            kind=MessageKind(d.get("kind", "message")),
            thread=d.get("thread"),
            event=d.get("event"),
            sent_at=parse_rfc3339(d["sent_at"]),
            delivered_at=parse_rfc3339(d["delivered_at"]) if d.get("delivered_at") else None,
            acked_at=parse_rfc3339(d["acked_at"]) if d.get("acked_at") else None,
            dead_at=parse_rfc3339(d["dead_at"]) if d.get("dead_at") else None,
            traceparent=str(d["traceparent"]) if d.get("traceparent") else None,
        )
