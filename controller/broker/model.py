"""Values the broker's semantics and its stores hand each other, and the row → value readers
every store shares (a row is anything indexable by column name: ``sqlite3.Row``, a psycopg
``dict_row``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.wire import Message, MessageKind

MESSAGE_COLUMNS = (
    "id",
    "sender",
    "recipient",
    "kind",
    "body",
    "thread",
    "event",
    "sent_at",
    "due_at",
    "delivered_at",
    "lease_until",
    "acked_at",
    "attempts",
    "dead_at",
    "traceparent",
)
"""The ``messages`` columns ``message_from_row`` reads, in select order."""

QUESTION_COLUMNS = (
    "id",
    "asker",
    "question",
    "options",
    "multi",
    "asked_at",
    "deadline_at",
    "answer",
    "answered_at",
    "resolution",
)
"""The ``operator_questions`` columns ``question_from_row`` reads, in select order."""


class Row(Protocol):
    """A result row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class OperatorQuestion:
    """A question the manager asked the operator (``ask_operator``).

    Times are unix seconds. ``state`` is ``pending``, ``answered``,
    ``cancelled`` or ``expired``; a resolved question has ``answer`` (the
    operator's text, ``[cancelled]`` or ``[expired]``) and ``answered_at``.
    """

    id: int
    question: str
    options: tuple[str, ...]
    multi: bool
    asker: str
    asked_at: float
    deadline_at: float | None
    answer: str | None
    answered_at: float | None
    state: str

    def to_json(self) -> dict[str, Any]:
        """``{"id", "question", "options", "multi", "asker", "asked_at", "deadline_at",
        "answer", "answered_at", "state"}`` (times as unix seconds)."""
        return {
            "id": self.id,
            "question": self.question,
            "options": list(self.options),
            "multi": self.multi,
            "asker": self.asker,
            "asked_at": self.asked_at,
            "deadline_at": self.deadline_at,
            "answer": self.answer,
            "answered_at": self.answered_at,
            "state": self.state,
        }


@dataclass(frozen=True)
class Idem:
    """An idempotency key as stored: unique per ``owner`` (the caller), with the digest of
    the request it was first used for."""

    owner: str
    key: str
    digest: str


@dataclass(frozen=True)
class Claim:
    """A message inserted already delivered (``controller.broker.handoff``): at
    ``delivered_at`` (unix seconds), leased until ``lease_until``, or acked at once when
    that is None: the same row a claim of it would leave."""

    delivered_at: float
    lease_until: float | None


@dataclass(frozen=True)
class NewMessage:
    """A message row to insert. Times are unix seconds; ``due_at`` None means ``sent_at``
    (deliverable at once); ``dedup_key`` coalesces identical undelivered events."""

    sender: str
    recipient: str
    body: str
    kind: MessageKind
    sent_at: float
    thread: int | None = None
    event: dict[str, Any] | None = None
    dedup_key: str | None = None
    due_at: float | None = None
    idem: Idem | None = None
    traceparent: str | None = None
    """W3C ``traceparent`` of the sender's span (checked: ``checks.check_traceparent``)."""
    claimed: Claim | None = None
    """Set when the message is handed to a parked receiver as it is stored (one
    attempt made); None: it waits in the inbox."""

    def event_json(self) -> str | None:
        """The event as stored (JSON text, key order kept), or None."""
        return None if self.event is None else json.dumps(self.event, ensure_ascii=False)


@dataclass(frozen=True)
class ThreadRow:
    """A thread as stored: ``asker`` asked ``asked``; ``answered_at`` (unix seconds) is set
    once it is answered or closed, ``closed_reason`` only when it was closed."""

    id: int
    asker: str
    asked: str
    answered_at: float | None
    closed_reason: str | None


def message_from_row(row: Row) -> Message:
    """A ``Message`` from a row holding ``MESSAGE_COLUMNS``.

    ``extra`` carries ``attempts``, ``due_at`` for reminders and ``lease_until`` when leased.
    """
    extra: dict[str, Any] = {"attempts": int(row["attempts"])}
    if row["kind"] == MessageKind.REMINDER:
        extra["due_at"] = row["due_at"]
    if row["lease_until"] is not None:
        extra["lease_until"] = row["lease_until"]
    return Message(
        id=int(row["id"]),
        sender=row["sender"],
        recipient=row["recipient"],
        body=row["body"],
        kind=MessageKind(row["kind"]),
        thread=None if row["thread"] is None else int(row["thread"]),
        event=None if row["event"] is None else json.loads(row["event"]),
        sent_at=row["sent_at"],
        delivered_at=row["delivered_at"],
        acked_at=row["acked_at"],
        extra=extra,
        dead_at=row["dead_at"],
        traceparent=row["traceparent"],
    )


def question_from_row(row: Row) -> OperatorQuestion:
    """An ``OperatorQuestion`` from a row holding ``QUESTION_COLUMNS``."""
    answered = row["answered_at"] is not None
    return OperatorQuestion(
        id=int(row["id"]),
        question=row["question"],
        options=tuple(json.loads(row["options"])),
        multi=bool(row["multi"]),
        asker=row["asker"],
        asked_at=row["asked_at"],
        deadline_at=row["deadline_at"],
        answer=row["answer"],
        answered_at=row["answered_at"],
        state=(row["resolution"] or "answered") if answered else "pending",
    )


def thread_from_row(row: Row) -> ThreadRow:
    """A ``ThreadRow`` from a row holding ``id, asker, asked, answered_at, closed_reason``."""
    return ThreadRow(
        id=int(row["id"]),
        asker=row["asker"],
        asked=row["asked"],
        answered_at=row["answered_at"],
        closed_reason=row["closed_reason"],
    )


@dataclass(frozen=True)
class BrokerGauges:
    """What the broker holds now, per agent, for the metrics scrape (``Tx.gauges``).

    ``inbox``: ``{recipient: (depth, oldest_at)}``: messages deliverable now (due, not
    leased, not acked, not dead) and when the first of them in delivery order was sent or
    fell due (unix seconds); ``leased``: messages under a live lease; ``reminders``:
    reminders not due yet; ``open_threads``: ``{asker: questions waiting for an answer}``;
    ``questions_pending``: operator questions not resolved; ``sent``: ``{sender: messages
    with id > sent_after}`` (empty when no ``sent_after`` was given); ``last_id``: the newest
    message id (0 when none), the next call's ``sent_after``. Agents with nothing are absent.
    """

    inbox: dict[str, tuple[int, float]]
    leased: dict[str, int]
    reminders: dict[str, int]
    open_threads: dict[str, int]
    questions_pending: int
    sent: dict[str, int]
    last_id: int
