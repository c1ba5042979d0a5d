"""The sqlite store's transaction: the SQL of every ``Tx`` primitive
(``controller.broker.store``) on the store's one connection.

Pending rows are found through partial covering indexes (not acked, not dead), forced with
``INDEXED BY``: a claim stops at the first deliverable row; ``status`` counts the
recipient's pending rows once (a plain covering count) and its leased rows and reminders
through their own small indexes; the dead-letter check before each claim looks at leased
rows only. Nothing costs O(30 days of history). See docs/broker.md for figures.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from controller.broker import sqlite_gauges
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

# Pending rows only ever go through the partial index: without it sqlite may walk the
# recipient's whole history (messages_to), which grows for 30 days. Every query through
# it must repeat the index's WHERE (_INBOX).
_PENDING = "INDEXED BY messages_inbox"
_LEASED = "INDEXED BY messages_leased"
_REMINDERS = "INDEXED BY messages_reminders"
_DELIVERABLE = deliverable(":r", ":now", ":max")
_EXHAUSTED = exhausted(":r", ":now", ":max")
_INSERT = (
    "INSERT INTO messages (sender, recipient, kind, body, thread, event, dedup_key, "
    "sent_at, due_at, idem_owner, idem_key, idem_hash, traceparent) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING " + _COLS
)
_INSERT_CLAIMED = (
    "INSERT INTO messages (sender, recipient, kind, body, thread, event, dedup_key, "
    "sent_at, due_at, idem_owner, idem_key, idem_hash, traceparent, "
    "delivered_at, lease_until, acked_at, attempts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING " + _COLS
)
# sqlite binds at most 32766 variables; ids go in chunks well below that
_CHUNK = 500


def _chunks(ids: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
    """``(placeholders, ids)`` per chunk of ``ids``."""
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        yield ",".join("?" * len(chunk)), chunk


class SqliteTx:
    """``Tx`` on the store's one connection (the store's lock is held)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.touched: list[tuple[Sequence[str] | None, int | None]] = []
        # the inboxes whose status this transaction may change (None: any); see ``only``
        self.scope: set[str] | None = None
        # inbox → (pending, unread) change: the whole change to that inbox; see ``adjust``
        self.deltas: dict[str, tuple[int, int]] = {}

    def only(self, inboxes: Sequence[str]) -> None:
        """Declare that this transaction changes no inbox's status but ``inboxes`` (and those
        it passes to ``changed``): the status cache forgets only them at the commit."""
        self.scope = (self.scope or set()) | set(inboxes)

    def adjust(self, inbox: str, pending: int, unread: int) -> None:
        """Declare the whole change this transaction makes to ``inbox``'s status: ``pending``
        and ``unread`` move by these amounts, nothing else does (a reading the status cache
        holds is moved instead of forgotten). Implies ``only([])``."""
        if self.scope is None:
            self.scope = set()
        p, u = self.deltas.get(inbox, (0, 0))
        self.deltas[inbox] = (p + pending, u + unread)

    def dirty(self) -> set[str] | None:
        """The inboxes whose status may have changed at the commit (None: any), except those
        with a declared change (``deltas``)."""
        if self.scope is None:
            return None
        out = set(self.scope)
        for recipients, _ in self.touched:
            if recipients is None:
                return None
            out.update(recipients)
        return out - self.deltas.keys()

    # ---------------------------------------------------------------- messages

    def insert(self, m: NewMessage) -> Message:
        """Insert ``m`` (already delivered when ``m.claimed``); the stored message."""
        idem = m.idem
        params = (
            m.sender,
            m.recipient,
            str(m.kind),
            m.body,
            m.thread,
            m.event_json(),
            m.dedup_key,
            m.sent_at,
            m.sent_at if m.due_at is None else m.due_at,
            None if idem is None else idem.owner,
            None if idem is None else idem.key,
            None if idem is None else idem.digest,
            m.traceparent,
        )
        claimed = m.claimed
        if claimed is None:
            row = self._conn.execute(_INSERT, params).fetchall()[0]
        else:
            acked = claimed.delivered_at if claimed.lease_until is None else None
            row = self._conn.execute(
                _INSERT_CLAIMED, (*params, claimed.delivered_at, claimed.lease_until, acked)
            ).fetchall()[0]
        return message_from_row(row)

    def by_idempotency_key(self, owner: str, key: str) -> tuple[Message, str] | None:
        """The message stored under ``(owner, key)`` and its request digest, or None."""
        row = self._conn.execute(
            f"SELECT {_COLS}, idem_hash FROM messages INDEXED BY messages_idem "
            "WHERE idem_owner = ? AND idem_key = ? AND idem_key IS NOT NULL",
            (owner, key),
        ).fetchone()
        return None if row is None else (message_from_row(row), str(row["idem_hash"]))

    def has_undelivered(self, recipient: str, dedup_key: str) -> bool:
        """True when an undelivered, unacked message to ``recipient`` has ``dedup_key``."""
        row = self._conn.execute(
            "SELECT id FROM messages WHERE recipient = ? AND dedup_key = ? "
            "AND delivered_at IS NULL AND acked_at IS NULL LIMIT 1",
            (recipient, dedup_key),
        ).fetchone()
        return row is not None

    def claim(
        self, recipient: str, now: float, lease_until: float | None, max_deliveries: int
    ) -> Message | None:
        """Deliver the oldest deliverable message (one ``UPDATE ... RETURNING``)."""
        params = {"r": recipient, "now": now, "until": lease_until, "max": max_deliveries}
        if lease_until is None:
            sets = "delivered_at = :now, acked_at = :now, lease_until = NULL"
        else:
            sets = "delivered_at = :now, lease_until = :until"
        rows = self._conn.execute(
            f"UPDATE messages SET {sets}, attempts = attempts + 1 WHERE id = "
            f"(SELECT id FROM messages {_PENDING} WHERE {_DELIVERABLE} ORDER BY id LIMIT 1) "
            f"RETURNING {_COLS}",
            params,
        ).fetchall()
        return message_from_row(rows[0]) if rows else None

    def next_due(self, recipient: str, now: float, max_deliveries: int) -> float | None:
        """When the next pending message may be deliverable, or None."""
        value = self._conn.execute(
            f"SELECT min(max(due_at, coalesce(lease_until, 0))) FROM messages {_PENDING} "
            f"WHERE recipient = :r AND {_INBOX} "
            "AND (lease_until IS NULL OR lease_until > :now OR attempts < :max)",
            {"r": recipient, "now": now, "max": max_deliveries},
        ).fetchone()[0]
        return None if value is None else float(value)

    def exhausted_recipients(self, now: float, max_deliveries: int) -> list[str]:
        """Recipients with exhausted leases."""
        return [
            str(r[0])
            for r in self._conn.execute(
                f"SELECT DISTINCT recipient FROM messages {_LEASED} WHERE {_INBOX} "
                "AND lease_until IS NOT NULL AND lease_until <= ? AND attempts >= ?",
                (now, max_deliveries),
            )
        ]

    def mark_dead(self, recipient: str, now: float, max_deliveries: int) -> list[Message]:
        """Mark ``recipient``'s exhausted leases dead; them, in id order."""
        params = {"r": recipient, "now": now, "max": max_deliveries}
        # the cheap look first: almost always there is nothing to mark
        if (
            self._conn.execute(
                f"SELECT 1 FROM messages {_LEASED} WHERE {_EXHAUSTED} LIMIT 1", params
            ).fetchone()
            is None
        ):
            return []
        dead = self._conn.execute(
            "UPDATE messages SET dead_at = :now, lease_until = NULL WHERE id IN "
            f"(SELECT id FROM messages {_LEASED} WHERE {_EXHAUSTED}) RETURNING {_COLS}",
            params,
        ).fetchall()
        return sorted((message_from_row(r) for r in dead), key=lambda m: m.id)

    def dead_letters(self, recipient: str | None, limit: int) -> list[Message]:
        """Dead letters, oldest first, at most ``limit``."""
        where = "dead_at IS NOT NULL" + ("" if recipient is None else " AND recipient = ?")
        args: tuple[Any, ...] = () if recipient is None else (recipient,)
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM messages INDEXED BY messages_dead WHERE {where} "
            "ORDER BY id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [message_from_row(r) for r in rows]

    def requeue(self, ids: Sequence[int]) -> list[str]:
        """Requeue the dead letters among ``ids``; their recipients."""
        out: list[str] = []
        for marks, chunk in _chunks(ids):
            rows = self._conn.execute(
                "UPDATE messages SET dead_at = NULL, attempts = 0, delivered_at = NULL, "
                f"lease_until = NULL WHERE dead_at IS NOT NULL AND id IN ({marks}) "
                "RETURNING recipient",
                chunk,
            ).fetchall()
            out += [str(r[0]) for r in rows]
        return out

    def ack(self, recipient: str, ids: Sequence[int], now: float) -> int:
        """Ack ``recipient``'s delivered, unacked messages among ``ids``; how many."""
        acked = 0
        for marks, chunk in _chunks(ids):
            cur = self._conn.execute(
                "UPDATE messages SET acked_at = ?, lease_until = NULL, dead_at = NULL "
                "WHERE recipient = ? "
                f"AND acked_at IS NULL AND delivered_at IS NOT NULL AND id IN ({marks})",
                (now, recipient, *chunk),
            )
            acked += cur.rowcount
        return acked

    def release(self, recipient: str, ids: Sequence[int] | None, now: float) -> int:
        """End ``recipient``'s live leases (among ``ids``) at ``now``; how many."""
        where = (
            "recipient = ? AND acked_at IS NULL AND dead_at IS NULL "
            "AND lease_until IS NOT NULL AND lease_until > ?"
        )
        if ids is None:
            cur = self._conn.execute(
                f"UPDATE messages SET lease_until = ? WHERE {where}", (now, recipient, now)
            )
            return cur.rowcount
        released = 0
        for marks, chunk in _chunks(ids):
            cur = self._conn.execute(
                f"UPDATE messages SET lease_until = ? WHERE {where} AND id IN ({marks})",
                (now, recipient, now, *chunk),
            )
            released += cur.rowcount
        return released

    def status(self, recipient: str, now: float, max_deliveries: int) -> Status:
        """``recipient``'s counts."""
        return self.status_reading(recipient, now, max_deliveries).status

    def status_reading(self, recipient: str, now: float, max_deliveries: int) -> StatusReading:
        """``status`` with what the status cache needs: the pending count, and when time
        alone changes the counts (the next reminder due or lease end after ``now``)."""
        params = {"r": recipient, "now": now, "max": max_deliveries}
        # unread = pending - reminders not due - leased rows not deliverable: only the
        # first count walks every pending row (the cheapest walk: a covering count)
        row = self._conn.execute(
            f"SELECT (SELECT count(*) FROM messages {_PENDING} "
            f"  WHERE recipient = :r AND {_INBOX}), "
            f"(SELECT count(*) FROM messages {_REMINDERS} WHERE recipient = :r "
            f"  AND kind = 'reminder' AND {_INBOX} AND due_at > :now), "
            f"(SELECT count(*) FROM messages {_LEASED} WHERE recipient = :r "
            f"  AND lease_until IS NOT NULL AND {_INBOX} AND lease_until > :now), "
            f"(SELECT count(*) FROM messages {_LEASED} WHERE {_EXHAUSTED}), "
            "(SELECT count(*) FROM threads WHERE answered_at IS NULL "
            "  AND (asker = :r OR asked = :r)), "
            "(SELECT count(*) FROM messages INDEXED BY messages_dead "
            "  WHERE recipient = :r AND dead_at IS NOT NULL), "
            f"(SELECT min(due_at) FROM messages {_REMINDERS} WHERE recipient = :r "
            f"  AND kind = 'reminder' AND {_INBOX} AND due_at > :now), "
            f"(SELECT min(lease_until) FROM messages {_LEASED} WHERE recipient = :r "
            f"  AND lease_until IS NOT NULL AND {_INBOX} AND lease_until > :now)",
            params,
        ).fetchone()
        pending, reminders, leased, exhausted, threads, dead = (int(v) for v in row[:6])
        unread = pending - reminders - leased - exhausted
        ends = [float(v) for v in row[6:] if v is not None]
        return StatusReading(
            Status(unread, threads, reminders, dead + exhausted),
            pending,
            now,
            min(ends) if ends else math.inf,
        )

    def dead_letter_counts(self, now: float, max_deliveries: int) -> dict[str, int]:
        """``{recipient: dead letters}`` for those with any."""
        rows = self._conn.execute(
            "SELECT recipient, count(*) FROM messages INDEXED BY messages_dead "
            "WHERE dead_at IS NOT NULL GROUP BY recipient"
        ).fetchall()
        out = {str(r[0]): int(r[1]) for r in rows}
        for r in self._conn.execute(
            f"SELECT recipient, count(*) FROM messages {_LEASED} WHERE {_INBOX} "
            "AND lease_until IS NOT NULL AND lease_until <= ? AND attempts >= ? "
            "GROUP BY recipient",
            (now, max_deliveries),
        ).fetchall():
            out[str(r[0])] = out.get(str(r[0]), 0) + int(r[1])
        return out

    def recent(self, name: str, now: float, limit: int) -> list[Message]:
        """The newest ``limit`` due messages to or from ``name``, newest first."""
        # two index walks newest-first, each stopping after `limit`, instead of sorting
        # the recipient's whole history
        rows = self._conn.execute(
            f"SELECT * FROM (SELECT {_COLS} FROM messages INDEXED BY messages_to "
            "WHERE recipient = :r AND due_at <= :now ORDER BY id DESC LIMIT :limit) "
            f"UNION SELECT * FROM (SELECT {_COLS} FROM messages INDEXED BY messages_from "
            "WHERE sender = :r AND due_at <= :now ORDER BY id DESC LIMIT :limit) "
            "ORDER BY id DESC LIMIT :limit",
            {"r": name, "now": now, "limit": limit},
        ).fetchall()
        return [message_from_row(r) for r in rows]

    def messages(self, since_id: int, limit: int) -> list[Message]:
        """Messages with ``id > since_id``, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (since_id, limit)
        ).fetchall()
        return [message_from_row(r) for r in rows]

    def last_id(self) -> int:
        """The newest message id (0 when there is none)."""
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])

    # ---------------------------------------------------------------- threads

    def open_thread(self, asker: str, asked: str, now: float) -> int:
        """A new open thread; its id."""
        return int(
            self._conn.execute(
                "INSERT INTO threads (asker, asked, opened_at) VALUES (?, ?, ?) RETURNING id",
                (asker, asked, now),
            ).fetchall()[0][0]
        )

    def set_thread_question(self, thread: int, message_id: int) -> None:
        """Record the message that asked ``thread``."""
        self._conn.execute("UPDATE threads SET question_id = ? WHERE id = ?", (message_id, thread))

    def thread(self, thread: int) -> ThreadRow | None:
        """Thread ``thread``, or None."""
        row = self._conn.execute(
            "SELECT id, asker, asked, answered_at, closed_reason FROM threads WHERE id = ?",
            (thread,),
        ).fetchone()
        return None if row is None else thread_from_row(row)

    def open_threads(self, agent: str) -> list[ThreadRow]:
        """Open threads ``agent`` asked or was asked, in id order."""
        rows = self._conn.execute(
            "SELECT id, asker, asked, answered_at, closed_reason FROM threads "
            "WHERE answered_at IS NULL AND (asker = ? OR asked = ?) ORDER BY id",
            (agent, agent),
        ).fetchall()
        return [thread_from_row(r) for r in rows]

    def close_thread(
        self, thread: int, now: float, answer_id: int | None, reason: str | None
    ) -> None:
        """Mark ``thread`` answered (by ``answer_id``) or closed for ``reason``."""
        self._conn.execute(
            "UPDATE threads SET answered_at = ?, answer_id = ?, closed_reason = ? WHERE id = ?",
            (now, answer_id, reason, thread),
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
        return int(
            self._conn.execute(
                "INSERT INTO operator_questions "
                "(asker, question, options, multi, asked_at, deadline_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    asker,
                    question,
                    json.dumps(list(options), ensure_ascii=False),
                    int(bool(multi)),
                    now,
                    deadline_at,
                ),
            ).fetchall()[0][0]
        )

    def question(self, id: int) -> OperatorQuestion | None:
        """Operator question ``id``, or None."""
        row = self._conn.execute(
            f"SELECT {_Q_COLS} FROM operator_questions WHERE id = ?", (id,)
        ).fetchone()
        return None if row is None else question_from_row(row)

    def questions(self, pending_only: bool) -> list[OperatorQuestion]:
        """Operator questions in id order."""
        where = "WHERE answered_at IS NULL" if pending_only else ""
        rows = self._conn.execute(
            f"SELECT {_Q_COLS} FROM operator_questions {where} ORDER BY id"
        ).fetchall()
        return [question_from_row(r) for r in rows]

    def resolve_question(
        self, id: int, answer: str, now: float, resolution: str
    ) -> OperatorQuestion:
        """Store the resolution of question ``id``; the question now."""
        row = self._conn.execute(
            "UPDATE operator_questions SET answer = ?, answered_at = ?, resolution = ? "
            f"WHERE id = ? RETURNING {_Q_COLS}",
            (answer, now, resolution, id),
        ).fetchall()[0]
        return question_from_row(row)

    def due_questions(self, now: float) -> list[int]:
        """Pending questions whose deadline is at or before ``now``."""
        return [
            int(r[0])
            for r in self._conn.execute(
                "SELECT id FROM operator_questions WHERE answered_at IS NULL "
                "AND deadline_at IS NOT NULL AND deadline_at <= ? ORDER BY id",
                (now,),
            )
        ]

    def next_question_deadline(self) -> float | None:
        """The earliest deadline of a pending question, or None."""
        value = self._conn.execute(
            "SELECT min(deadline_at) FROM operator_questions WHERE answered_at IS NULL"
        ).fetchone()[0]
        return None if value is None else float(value)

    # ---------------------------------------------------------------- retention, wake-ups

    def sweep(self, cutoff: float) -> int:
        """Delete what retention lets go before ``cutoff``; how many messages."""
        deleted = self._conn.execute(
            "DELETE FROM messages WHERE acked_at IS NOT NULL AND acked_at < ?", (cutoff,)
        ).rowcount
        deleted += self._conn.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages INDEXED BY "
            "messages_dead WHERE dead_at IS NOT NULL AND dead_at < ?)",
            (cutoff,),
        ).rowcount
        self._conn.execute(
            "DELETE FROM threads WHERE answered_at IS NOT NULL AND answered_at < ?", (cutoff,)
        )
        self._conn.execute(
            "DELETE FROM operator_questions WHERE answered_at IS NOT NULL AND answered_at < ?",
            (cutoff,),
        )
        return int(deleted)

    def changed(self, recipients: Sequence[str] | None, last_id: int | None = None) -> None:
        """Wake ``recipients`` (and followers up to ``last_id``) once this commits."""
        self.touched.append((recipients, last_id))

    # ---------------------------------------------------------------- metrics (read-only)

    def gauges(self, now: float, sent_after: int | None) -> BrokerGauges:
        """The metrics scrape's figures (``controller.broker.sqlite_gauges``)."""
        return sqlite_gauges.gauges(self._conn, now, sent_after)
