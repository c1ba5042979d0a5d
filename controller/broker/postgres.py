"""The PostgreSQL store: the broker's tables in a database that several controller processes
may share (``broker: postgresql://…`` in the controller config).

Connections: a ``psycopg_pool.ConnectionPool`` (autocommit connections; a write is an
explicit transaction) and one more connection that only ``LISTEN`` s.

Claims: ``UPDATE … WHERE id = (SELECT … ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)``: two
claims (threads or processes) never lock the same row, so a delivery is never handed out
twice; a row another claim holds is skipped, and ``next_due`` still sees it, so the skipped
receiver looks again a few milliseconds later. Marking dead letters skips locked rows too.

Ids in commit order: a transaction that inserts a message first takes one advisory lock
(held until it commits), so message ids become visible in id order, as with sqlite's single
writer. Followers that resume from an id (the dashboard's stream with ``Last-Event-ID``,
``hyperhive messages --follow``) therefore never miss a message that committed late under a
smaller id. Idempotency keys, event coalescing, threads and operator questions take row or
advisory locks so two processes never both act on the same key, thread or question.

Wake-ups: a transaction that changed inboxes sends ``NOTIFY hyperhive_broker`` with
``{"o": origin, "r": [recipients] | null, "l": last_id}`` (delivered at commit); every other
store on the database (``o`` differs) hands it to its own wake-ups. The listener reconnects
after a lost connection and then wakes everyone, since notifications may have been missed.

Text: PostgreSQL ``text`` cannot hold NUL, which sqlite stores and agents may send, so text
columns are stored with NUL (and the escape character itself) escaped and read back as sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from controller.broker.errors import BrokerClosed, BrokerDiskFull, BrokerStorageError
from controller.broker.model import (
    MESSAGE_COLUMNS,
    QUESTION_COLUMNS,
    NewMessage,
    OperatorQuestion,
    ThreadRow,
    message_from_row,
    question_from_row,
    thread_from_row,
)
from controller.broker.postgres_schema import SchemaTooNew, migrate
from controller.broker.store import OnChange
from schemas.wire import Message, Status

log = logging.getLogger("controller.broker")

CHANNEL = "hyperhive_broker"
"""The ``LISTEN`` / ``NOTIFY`` channel of wake-ups."""

POOL_MAX = 8
"""Most connections one store opens for transactions (plus one listener)."""

POOL_TIMEOUT = 10.0
"""Seconds a transaction waits for a pooled connection before it is a storage error."""

_ORDER_LOCK = (0x6868, 1)
"""``pg_advisory_xact_lock(classid, objid)`` key a transaction holds once it inserts a message:
message ids commit in id order."""

_NOTIFY_LIMIT = 7900
"""Payload bytes ``NOTIFY`` takes (8000 minus room); a longer recipient list becomes "anyone"."""

_COLS = ", ".join(MESSAGE_COLUMNS)
_Q_COLS = ", ".join(QUESTION_COLUMNS)
_T_COLS = "id, asker, asked, answered_at, closed_reason"
_INBOX = "acked_at IS NULL AND dead_at IS NULL"
_DELIVERABLE = (
    f"recipient = %(r)s AND {_INBOX} AND due_at <= %(now)s "
    "AND (lease_until IS NULL OR (lease_until <= %(now)s AND attempts < %(max)s))"
)
_EXHAUSTED = (
    f"recipient = %(r)s AND {_INBOX} AND lease_until IS NOT NULL AND lease_until <= %(now)s "
    "AND attempts >= %(max)s"
)

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


# --------------------------------------------------------------------- errors

# SQLSTATE classes that mean the database, not the request, is at fault
_STORAGE_CLASSES = {
    "08": "the connection to PostgreSQL failed",
    "53": "PostgreSQL is out of resources",
    "57": "PostgreSQL is shutting down or refused the operation",
    "58": "PostgreSQL had an I/O error",
    "XX": "PostgreSQL reported an internal error (damaged data?)",
}


def storage_error(exc: BaseException, where: str) -> BrokerStorageError | None:
    """The storage error ``exc`` (or what it was raised while handling) stands for, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.DiskFull):
            return BrokerDiskFull(
                f"the disk holding the broker database {where} is full; nothing was stored "
                "(free space, then retry)"
            )
        if isinstance(seen, PoolTimeout):
            return BrokerStorageError(
                f"the broker database {where} is unavailable: no connection within "
                f"{POOL_TIMEOUT:.0f} s ({seen}); nothing was stored"
            )
        if isinstance(seen, psycopg.Error):
            state = seen.sqlstate or ""
            why = _STORAGE_CLASSES.get(state[:2])
            if isinstance(seen, psycopg.errors.ReadOnlySqlTransaction):
                why = "the database is read-only"
            elif isinstance(seen, psycopg.OperationalError) and why is None:
                why = "the database cannot be reached"
            if why is not None:
                text = " ".join(str(seen).split())
                return BrokerStorageError(
                    f"the broker database {where} is unavailable: {why} ({text}); "
                    "nothing was stored"
                )
        seen = seen.__context__
    return None


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo("", **parts)


# --------------------------------------------------------------------- the transaction


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
                ("\x1f".join(parts),),
            )

    # ---------------------------------------------------------------- messages

    def insert(self, m: NewMessage) -> Message:
        """Insert ``m`` (taking the id-order lock first); the stored message."""
        idem = m.idem
        params = (
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
        )
        # the lock is taken in the row source, so before the identity default is drawn
        source = "SELECT pg_advisory_xact_lock(%s, %s)" if not self._ordered else "SELECT 1"
        lock = _ORDER_LOCK if not self._ordered else ()
        row = self._one(
            "INSERT INTO messages (sender, recipient, kind, body, thread, event, dedup_key, "
            "sent_at, due_at, idem_owner, idem_key, idem_hash) "
            "SELECT %s, %s, %s, %s, %s::bigint, %s, %s, %s::float8, %s::float8, %s, %s, %s "
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
        row = self._one(
            "SELECT count(*) FILTER (WHERE due_at <= %(now)s AND (lease_until IS NULL "
            "  OR (lease_until <= %(now)s AND attempts < %(max)s))) AS unread, "
            "count(*) FILTER (WHERE kind = 'reminder' AND due_at > %(now)s) AS reminders, "
            "count(*) FILTER (WHERE lease_until IS NOT NULL AND lease_until <= %(now)s "
            "  AND attempts >= %(max)s) AS exhausted, "
            "(SELECT count(*) FROM threads WHERE answered_at IS NULL "
            "  AND (asker = %(r)s OR asked = %(r)s)) AS threads, "
            "(SELECT count(*) FROM messages WHERE recipient = %(r)s AND dead_at IS NOT NULL) "
            "  AS dead "
            f"FROM messages WHERE recipient = %(r)s AND {_INBOX}",
            {"r": enc(recipient), "now": now, "max": max_deliveries},
        )
        assert row is not None
        return Status(
            int(row["unread"]),
            int(row["threads"]),
            int(row["reminders"]),
            int(row["dead"]) + int(row["exhausted"]),
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


def _payload(origin: str, touched: Sequence[tuple[Sequence[str] | None, int | None]]) -> str:
    """The ``NOTIFY`` payload for a transaction's changes (one per transaction)."""
    names: set[str] | None = set()
    last: int | None = None
    for recipients, last_id in touched:
        if recipients is None or names is None:
            names = None
        else:
            names.update(recipients)
        if last_id is not None:
            last = last_id if last is None else max(last, last_id)
    doc: dict[str, Any] = {"o": origin, "r": None if names is None else sorted(names), "l": last}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > _NOTIFY_LIMIT:
        doc["r"] = None
        text = json.dumps(doc, separators=(",", ":"))
    return text


# --------------------------------------------------------------------- the store


class PostgresStore:
    """``Store`` on a PostgreSQL database (see the module docstring).

    ``url`` is a libpq connection URL or string (``postgresql://user@host/db``,
    ``postgresql:///db?host=/run/postgresql``). Migrates the schema on open. Raises
    ``BrokerStorageError`` when the database cannot be reached or was migrated by a newer
    hyperhive.
    """

    def __init__(self, url: str, on_change: OnChange) -> None:
        self._url = url
        self._where = redact(url)
        self._on_change = on_change
        self._origin = uuid.uuid4().hex
        self._closed = False
        self._stop = threading.Event()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
            self._listener = self._listen()
        except SchemaTooNew as exc:
            raise BrokerStorageError(f"the broker database {self._where}: {exc}") from exc
        except psycopg.Error as exc:
            raise BrokerStorageError(
                f"cannot open the broker database {self._where}: {' '.join(str(exc).split())}"
            ) from exc
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
            min_size=1,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT,
            open=False,
            name="hyperhive-broker",
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT)
        except PoolTimeout as exc:
            self._stop_listener()
            raise BrokerStorageError(
                f"cannot open the broker database {self._where}: {exc}"
            ) from exc
        self._thread = threading.Thread(target=self._listen_loop, name="broker-listen", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self._where

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        if self._closed:
            raise BrokerClosed("broker is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolClosed as exc:
            raise BrokerClosed("broker is closed") from exc
        except (psycopg.Error, PoolTimeout) as exc:
            if (err := storage_error(exc, self._where)) is None:
                raise
            raise err from exc

    @contextmanager
    def read(self) -> Iterator[PgTx]:
        """A pooled connection; each statement sees what was committed when it started."""
        with self._conn() as conn:
            yield PgTx(conn, writing=False)

    @contextmanager
    def write(self) -> Iterator[PgTx]:
        """One transaction (``BEGIN`` … ``COMMIT``, the ``NOTIFY`` of its changes included)."""
        with self._conn() as conn:
            tx = PgTx(conn, writing=True)
            # (measured: psycopg's pipeline mode cost more CPU than the round trips it saved)
            with conn.transaction():
                yield tx
                if tx.touched:
                    conn.execute(
                        b"SELECT pg_notify(%s, %s)", (CHANNEL, _payload(self._origin, tx.touched))
                    )
        for recipients, last_id in tx.touched:
            self._on_change(recipients, last_id)

    def compact(self) -> None:
        """Nothing: autovacuum gives the space of swept rows back."""

    # ---------------------------------------------------------------- wake-ups

    def _listen(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}".encode())
        return conn

    def _listen_loop(self) -> None:
        """Hand other processes' changes to ``on_change`` until closed; reconnect on loss."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                for note in self._listener.notifies(timeout=1.0):
                    self._deliver(note.payload)
                    if self._stop.is_set():
                        break
                backoff = 0.1
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                log.warning("broker: lost the LISTEN connection to %s: %s", self._where, exc)
                with contextlib.suppress(psycopg.Error):
                    self._listener.close()
                while not self._stop.wait(backoff):
                    try:
                        self._listener = self._listen()
                    except psycopg.Error:
                        backoff = min(backoff * 2, 5.0)
                        continue
                    # notifications sent meanwhile are lost: wake everyone to look again
                    self._on_change(None, None)
                    break
        with contextlib.suppress(psycopg.Error):
            self._listener.close()

    def _deliver(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
            if doc.get("o") == self._origin:
                return  # our own change (woken at commit), or close() stopping the loop
            names = doc.get("r")
            last = doc.get("l")
            recipients = None if names is None else [str(n) for n in names]
            self._on_change(recipients, None if last is None else int(last))
        except (ValueError, TypeError, AttributeError):
            log.warning("broker: ignored a malformed notification %r", payload[:200])

    def _stop_listener(self) -> None:
        self._stop.set()
        with contextlib.suppress(psycopg.Error):
            self._listener.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # the listener waits in notifies(); a notification of our own ends the wait now
        with contextlib.suppress(psycopg.Error, PoolTimeout), self._pool.connection() as conn:
            conn.execute(b"SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps({"o": self._origin})))
        self._thread.join(timeout=5.0)
        self._pool.close(timeout=5.0)
