"""The PostgreSQL store's transaction: the SQL of every ``Tx`` primitive
(``controller.broker.store``) on one pooled connection.

Locks: a transaction that inserts a message first takes one advisory lock (held until it
commits), so message ids commit in id order, as with sqlite's single writer, and followers
that resume from an id never miss a message that committed late under a smaller id. Claims
and dead-letter marking use ``FOR UPDATE SKIP LOCKED``; idempotency keys and event
coalescing tokens take an advisory lock on the key; threads and operator questions are read
``FOR UPDATE`` inside a write, so two processes never both act on the same one.

Text: PostgreSQL ``text`` cannot hold NUL, which sqlite stores and agents may send, so text
columns are stored with NUL (and the escape character itself) escaped and read back as sent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import psycopg

from controller.broker.model import (
    BrokerGauges,
    NewMessage,
    OperatorQuestion,
    ThreadRow,
    message_from_row,
    question_from_row,
    thread_from_row,
)
from controller.broker.predicates import COLS as _COLS
from controller.broker.predicates import INBOX as _INBOX
from controller.broker.predicates import Q_COLS as _Q_COLS
from controller.broker.predicates import deliverable, exhausted
from controller.broker.statuscache import StatusReading
from schemas.wire import Message, Status

_ORDER_LOCK = (0x6868, 1)
"""``pg_advisory_xact_lock(classid, objid)`` key a transaction holds once it inserts a message:
message ids commit in id order."""

_T_COLS = "id, asker, asked, answered_at, closed_reason"
_DELIVERABLE = deliverable("%(r)s", "%(now)s", "%(max)s")
_EXHAUSTED = exhausted("%(r)s", "%(now)s", "%(max)s")

# --------------------------------------------------------------------- NUL-safe text

_ESC = "\ue000"
_ESCAPED = re.compile(_ESC + "(.)", re.DOTALL)


def enc(value: str) -> str:
    """``value`` as stored: NUL → ``\\ue000 0``, ``\\ue000`` → ``\\ue000 e`` (reversible)."""
    if "\x00" not in value and _ESC not in value:
        return value
    return value.replace(_ESC, _ESC + "e").replace("\x00", _ESC + "0")


def dec(value: str) -> str:
    """The text ``enc`` stored as ``value``."""
    if _ESC not in value:
        return value
    return _ESCAPED.sub(lambda m: _ESC if m[1] == "e" else "\x00", value)


def _opt(value: str | None) -> str | None:
    return None if value is None else enc(value)


_MESSAGE_TEXT = ("sender", "recipient", "body")
_QUESTION_TEXT = ("asker", "question", "answer")
_THREAD_TEXT = ("asker", "asked", "closed_reason")


def _decoded(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    for c in columns:
        if isinstance(row.get(c), str):
            row[c] = dec(row[c])
    return row


def _message(row: dict[str, Any]) -> Message:
    return message_from_row(_decoded(row, _MESSAGE_TEXT))


class PgTx:
    """``Tx`` on one pooled connection; ``writing`` is True inside ``Store.write``."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], writing: bool) -> None:
        self._conn = conn
        self._writing = writing
        self._ordered = False
        self.touched: list[tuple[Sequence[str] | None, int | None]] = []

    def _all(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        return self._conn.execute(query.encode(), params).fetchall()

    def _one(self, query: str, params: Any = None) -> dict[str, Any] | None:
        return self._conn.execute(query.encode(), params).fetchone()

    def _key_lock(self, *parts: str) -> None:
        """Serialise the transactions that act on one key (an idempotency key, an event's
        coalescing token) until this one commits."""
        if self._writing:
            self._conn.execute(
                b"SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                ("\x1f".join(enc(p) for p in parts),),
            )

    # ---------------------------------------------------------------- messages

    def insert(self, m: NewMessage) -> Message:
        """Insert ``m`` (taking the id-order lock first); the stored message."""
        idem = m.idem
        params: tuple[Any, ...] = (
            enc(m.sender),
            enc(m.recipient),
            str(m.kind),
            enc(m.body),
            m.thread,
            m.event_json(),
            _opt(m.dedup_key),
            m.sent_at,
            m.sent_at if m.due_at is None else m.due_at,
            None if idem is None else enc(idem.owner),
            None if idem is None else enc(idem.key),
            None if idem is None else idem.digest,
            m.traceparent,  # checked: lowercase hex and dashes only
        )
        # the lock is taken in the row source, so before the identity default is drawn
        source = "SELECT pg_advisory_xact_lock(%s, %s)" if not self._ordered else "SELECT 1"
        lock = _ORDER_LOCK if not self._ordered else ()
        columns, values = "", ""
        claimed = m.claimed
        if claimed is not None:  # handed to a parked receiver as it is stored
            acked = claimed.delivered_at if claimed.lease_until is None else None
            columns = ", delivered_at, lease_until, acked_at, attempts"
            values = ", %s::float8, %s::float8, %s::float8, 1"
            params = (*params, claimed.delivered_at, claimed.lease_until, acked)
        row = self._one(
            "INSERT INTO messages (sender, recipient, kind, body, thread, event, dedup_key, "
            f"sent_at, due_at, idem_owner, idem_key, idem_hash, traceparent{columns}) "
            "SELECT %s, %s, %s, %s, %s::bigint, %s, %s, %s::float8, %s::float8, %s, %s, %s, "
            f"%s::text{values} "
            f"FROM ({source}) AS ordered RETURNING {_COLS}",
            (*params, *lock),
        )
        self._ordered = True
        assert row is not None
        return _message(row)

    def by_idempotency_key(self, owner: str, key: str) -> tuple[Message, str] | None:
        """The message stored under ``(owner, key)`` and its request digest, or None."""
        self._key_lock("idem", owner, key)
        row = self._one(
            f"SELECT {_COLS}, idem_hash FROM messages WHERE idem_owner = %s AND idem_key = %s",
            (enc(owner), enc(key)),
        )
        return None if row is None else (_message(row), str(row["idem_hash"]))

    def has_undelivered(self, recipient: str, dedup_key: str) -> bool:
        """True when an undelivered, unacked message to ``recipient`` has ``dedup_key``."""
        self._key_lock("dedup", recipient, dedup_key)
        row = self._one(
            "SELECT id FROM messages WHERE recipient = %s AND dedup_key = %s "
            "AND delivered_at IS NULL AND acked_at IS NULL LIMIT 1",
            (enc(recipient), enc(dedup_key)),
        )
        return row is not None

    def claim(
        self, recipient: str, now: float, lease_until: float | None, max_deliveries: int
    ) -> Message | None:
        """Deliver the oldest deliverable message no other claim holds."""
        params = {"r": enc(recipient), "now": now, "until": lease_until, "max": max_deliveries}
        if lease_until is None:
            sets = "delivered_at = %(now)s, acked_at = %(now)s, lease_until = NULL"
        else:
            sets = "delivered_at = %(now)s, lease_until = %(until)s"
        row = self._one(
            f"UPDATE messages SET {sets}, attempts = attempts + 1 WHERE id = "
            f"(SELECT id FROM messages WHERE {_DELIVERABLE} ORDER BY id LIMIT 1 "
            f"FOR UPDATE SKIP LOCKED) RETURNING {_COLS}",
            params,
        )
        return None if row is None else _message(row)

    def next_due(self, recipient: str, now: float, max_deliveries: int) -> float | None:
        """When the next pending message may be deliverable, or None."""
        row = self._one(
            "SELECT min(greatest(due_at, coalesce(lease_until, 0))) AS due FROM messages "
            f"WHERE recipient = %(r)s AND {_INBOX} "
            "AND (lease_until IS NULL OR lease_until > %(now)s OR attempts < %(max)s)",
            {"r": enc(recipient), "now": now, "max": max_deliveries},
        )
        return None if row is None or row["due"] is None else float(row["due"])

    def exhausted_recipients(self, now: float, max_deliveries: int) -> list[str]:
        """Recipients with exhausted leases."""
        rows = self._all(
            f"SELECT DISTINCT recipient FROM messages WHERE {_INBOX} "
            "AND lease_until IS NOT NULL AND lease_until <= %s AND attempts >= %s",
            (now, max_deliveries),
        )
        return [dec(r["recipient"]) for r in rows]

    def mark_dead(self, recipient: str, now: float, max_deliveries: int) -> list[Message]:
        """Mark ``recipient``'s exhausted leases (those no other transaction holds) dead."""
        params = {"r": enc(recipient), "now": now, "max": max_deliveries}
        # one statement either way (a round trip costs more than the empty index scan)
        rows = self._all(
            "UPDATE messages SET dead_at = %(now)s, lease_until = NULL WHERE id IN "
            f"(SELECT id FROM messages WHERE {_EXHAUSTED} FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLS}",
            params,
        )
        return sorted((_message(r) for r in rows), key=lambda m: m.id)

    def dead_letters(self, recipient: str | None, limit: int) -> list[Message]:
        """Dead letters, oldest first, at most ``limit``."""
        if recipient is None:
            rows = self._all(
                f"SELECT {_COLS} FROM messages WHERE dead_at IS NOT NULL ORDER BY id LIMIT %s",
                (limit,),
            )
        else:
            rows = self._all(
                f"SELECT {_COLS} FROM messages WHERE dead_at IS NOT NULL AND recipient = %s "
                "ORDER BY id LIMIT %s",
                (enc(recipient), limit),
            )
        return [_message(r) for r in rows]

    def requeue(self, ids: Sequence[int]) -> list[str]:
        """Requeue the dead letters among ``ids``; their recipients."""
        rows = self._all(
            "UPDATE messages SET dead_at = NULL, attempts = 0, delivered_at = NULL, "
            "lease_until = NULL WHERE dead_at IS NOT NULL AND id = ANY(%s) RETURNING recipient",
            (list(ids),),
        )
        return [dec(r["recipient"]) for r in rows]

    def ack(self, recipient: str, ids: Sequence[int], now: float) -> int:
        """Ack ``recipient``'s delivered, unacked messages among ``ids``; how many."""
        cur = self._conn.execute(
            b"UPDATE messages SET acked_at = %s, lease_until = NULL, dead_at = NULL "
            b"WHERE recipient = %s AND acked_at IS NULL AND delivered_at IS NOT NULL "
            b"AND id = ANY(%s)",
            (now, enc(recipient), list(ids)),
        )
        return cur.rowcount

    def release(self, recipient: str, ids: Sequence[int] | None, now: float) -> int:
        """End ``recipient``'s live leases (among ``ids``) at ``now``; how many."""
        where = (
            "recipient = %s AND acked_at IS NULL AND dead_at IS NULL "
            "AND lease_until IS NOT NULL AND lease_until > %s"
        )
        args: tuple[Any, ...] = (now, enc(recipient), now)
        if ids is not None:
            where += " AND id = ANY(%s)"
            args = (*args, list(ids))
        cur = self._conn.execute(
            f"UPDATE messages SET lease_until = %s WHERE {where}".encode(), args
        )
        return cur.rowcount

    def status(self, recipient: str, now: float, max_deliveries: int) -> Status:
        """``recipient``'s counts, in one statement."""
        return self.status_reading(recipient, now, max_deliveries).status

    def status_reading(self, recipient: str, now: float, max_deliveries: int) -> StatusReading:
        """``status`` with the pending count and when time alone changes the counts."""
        row = self._one(
            "SELECT count(*) AS pending, "
            "count(*) FILTER (WHERE due_at <= %(now)s AND (lease_until IS NULL "
            "  OR (lease_until <= %(now)s AND attempts < %(max)s))) AS unread, "
            "count(*) FILTER (WHERE kind = 'reminder' AND due_at > %(now)s) AS reminders, "
            "count(*) FILTER (WHERE lease_until IS NOT NULL AND lease_until <= %(now)s "
            "  AND attempts >= %(max)s) AS exhausted, "
            "min(due_at) FILTER (WHERE kind = 'reminder' AND due_at > %(now)s) AS next_due, "
            "min(lease_until) FILTER (WHERE lease_until > %(now)s) AS next_lease_end, "
            "(SELECT count(*) FROM threads WHERE answered_at IS NULL "
            "  AND (asker = %(r)s OR asked = %(r)s)) AS threads, "
            "(SELECT count(*) FROM messages WHERE recipient = %(r)s AND dead_at IS NOT NULL) "
            "  AS dead "
            f"FROM messages WHERE recipient = %(r)s AND {_INBOX}",
            {"r": enc(recipient), "now": now, "max": max_deliveries},
        )
        assert row is not None
        ends = [float(row[k]) for k in ("next_due", "next_lease_end") if row[k] is not None]
        return StatusReading(
            Status(
                int(row["unread"]),
                int(row["threads"]),
                int(row["reminders"]),
                int(row["dead"]) + int(row["exhausted"]),
            ),
            int(row["pending"]),
            now,
            min(ends) if ends else math.inf,
        )

    def dead_letter_counts(self, now: float, max_deliveries: int) -> dict[str, int]:
        """``{recipient: dead letters}`` for those with any."""
        rows = self._all(
            "SELECT recipient, count(*) AS n FROM messages WHERE dead_at IS NOT NULL "
            "OR (acked_at IS NULL AND lease_until IS NOT NULL AND lease_until <= %s "
            "AND attempts >= %s) GROUP BY recipient",
            (now, max_deliveries),
        )
        return {dec(r["recipient"]): int(r["n"]) for r in rows}

    def recent(self, name: str, now: float, limit: int) -> list[Message]:
        """The newest ``limit`` due messages to or from ``name``, newest first."""
        rows = self._all(
            f"(SELECT {_COLS} FROM messages WHERE recipient = %(r)s AND due_at <= %(now)s "
            "ORDER BY id DESC LIMIT %(limit)s) "
            f"UNION (SELECT {_COLS} FROM messages WHERE sender = %(r)s AND due_at <= %(now)s "
            "ORDER BY id DESC LIMIT %(limit)s) ORDER BY id DESC LIMIT %(limit)s",
            {"r": enc(name), "now": now, "limit": limit},
        )
        return [_message(r) for r in rows]

    def messages(self, since_id: int, limit: int) -> list[Message]:
        """Messages with ``id > since_id``, oldest first."""
        rows = self._all(
            f"SELECT {_COLS} FROM messages WHERE id > %s ORDER BY id LIMIT %s", (since_id, limit)
        )
        return [_message(r) for r in rows]

    def last_id(self) -> int:
        """The newest committed message id (0 when there is none)."""
        row = self._one("SELECT coalesce(max(id), 0) AS id FROM messages")
        return 0 if row is None else int(row["id"])

    # ---------------------------------------------------------------- threads

    def open_thread(self, asker: str, asked: str, now: float) -> int:
        """A new open thread; its id."""
        row = self._one(
            "INSERT INTO threads (asker, asked, opened_at) VALUES (%s, %s, %s) RETURNING id",
            (enc(asker), enc(asked), now),
        )
        assert row is not None
        return int(row["id"])

    def set_thread_question(self, thread: int, message_id: int) -> None:
        """Record the message that asked ``thread``."""
        self._conn.execute(
            b"UPDATE threads SET question_id = %s WHERE id = %s", (message_id, thread)
        )

    def thread(self, thread: int) -> ThreadRow | None:
        """Thread ``thread`` (locked until commit inside a write), or None."""
        lock = " FOR UPDATE" if self._writing else ""
        row = self._one(f"SELECT {_T_COLS} FROM threads WHERE id = %s{lock}", (thread,))
        return None if row is None else thread_from_row(_decoded(row, _THREAD_TEXT))

    def open_threads(self, agent: str) -> list[ThreadRow]:
        """Open threads ``agent`` asked or was asked, in id order (locked inside a write)."""
        lock = " FOR UPDATE" if self._writing else ""
        rows = self._all(
            f"SELECT {_T_COLS} FROM threads WHERE answered_at IS NULL "
            f"AND (asker = %(a)s OR asked = %(a)s) ORDER BY id{lock}",
            {"a": enc(agent)},
        )
        # a thread answered while we waited for its lock is no longer open
        return [thread_from_row(_decoded(r, _THREAD_TEXT)) for r in rows]

    def close_thread(
        self, thread: int, now: float, answer_id: int | None, reason: str | None
    ) -> None:
        """Mark ``thread`` answered (by ``answer_id``) or closed for ``reason``."""
        self._conn.execute(
            b"UPDATE threads SET answered_at = %s, answer_id = %s, closed_reason = %s "
            b"WHERE id = %s",
            (now, answer_id, _opt(reason), thread),
        )

    # ---------------------------------------------------------------- operator questions

    def insert_question(
        self,
        asker: str,
        question: str,
        options: Sequence[str],
        multi: bool,
        now: float,
        deadline_at: float | None,
    ) -> int:
        """A new pending operator question; its id."""
        row = self._one(
            "INSERT INTO operator_questions (asker, question, options, multi, asked_at, "
            "deadline_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (
                enc(asker),
                enc(question),
                json.dumps(list(options), ensure_ascii=False),
                bool(multi),
                now,
                deadline_at,
            ),
        )
        assert row is not None
        return int(row["id"])

    def question(self, id: int) -> OperatorQuestion | None:
        """Operator question ``id`` (locked until commit inside a write), or None."""
        lock = " FOR UPDATE" if self._writing else ""
        row = self._one(f"SELECT {_Q_COLS} FROM operator_questions WHERE id = %s{lock}", (id,))
        return None if row is None else question_from_row(_decoded(row, _QUESTION_TEXT))

    def questions(self, pending_only: bool) -> list[OperatorQuestion]:
        """Operator questions in id order."""
        where = "WHERE answered_at IS NULL" if pending_only else ""
        rows = self._all(f"SELECT {_Q_COLS} FROM operator_questions {where} ORDER BY id")
        return [question_from_row(_decoded(r, _QUESTION_TEXT)) for r in rows]

    def resolve_question(
        self, id: int, answer: str, now: float, resolution: str
    ) -> OperatorQuestion:
        """Store the resolution of question ``id``; the question now."""
        row = self._one(
            "UPDATE operator_questions SET answer = %s, answered_at = %s, resolution = %s "
            f"WHERE id = %s RETURNING {_Q_COLS}",
            (enc(answer), now, resolution, id),
        )
        assert row is not None
        return question_from_row(_decoded(row, _QUESTION_TEXT))

    def due_questions(self, now: float) -> list[int]:
        """Pending questions whose deadline is at or before ``now``."""
        rows = self._all(
            "SELECT id FROM operator_questions WHERE answered_at IS NULL "
            "AND deadline_at IS NOT NULL AND deadline_at <= %s ORDER BY id",
            (now,),
        )
        return [int(r["id"]) for r in rows]

    def next_question_deadline(self) -> float | None:
        """The earliest deadline of a pending question, or None."""
        row = self._one(
            "SELECT min(deadline_at) AS d FROM operator_questions WHERE answered_at IS NULL"
        )
        return None if row is None or row["d"] is None else float(row["d"])

    # ---------------------------------------------------------------- retention, wake-ups

    def sweep(self, cutoff: float) -> int:
        """Delete what retention lets go before ``cutoff``; how many messages."""
        deleted = self._conn.execute(
            b"DELETE FROM messages WHERE (acked_at IS NOT NULL AND acked_at < %s) "
            b"OR (dead_at IS NOT NULL AND dead_at < %s)",
            (cutoff, cutoff),
        ).rowcount
        self._conn.execute(
            b"DELETE FROM threads WHERE answered_at IS NOT NULL AND answered_at < %s", (cutoff,)
        )
        self._conn.execute(
            b"DELETE FROM operator_questions WHERE answered_at IS NOT NULL AND answered_at < %s",
            (cutoff,),
        )
        return int(deleted)

    def changed(self, recipients: Sequence[str] | None, last_id: int | None = None) -> None:
        """Wake ``recipients`` (here and in every process on this database) once this commits."""
        self.touched.append((recipients, last_id))

    def adjust(self, inbox: str, pending: int, unread: int) -> None:
        """Nothing to do: no status is cached over a store other processes write."""

    def only(self, inboxes: Sequence[str]) -> None:
        """Nothing to do: no status is cached over a store other processes write."""

    # ---------------------------------------------------------------- metrics (read-only)

    def gauges(self, now: float, sent_after: int | None) -> BrokerGauges:
        """The metrics scrape's figures (``controller.broker.postgres_gauges``)."""
        from controller.broker import postgres_gauges  # it imports ``dec`` from here

        return postgres_gauges.gauges(self._conn, now, sent_after)
