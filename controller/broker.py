"""The message broker: a sqlite (WAL) inbox per agent with long-poll ``recv``.

One file, ``<state>/broker.sqlite``, holds every message (plain messages,
typed events for the manager, threaded questions and answers, reminders and
wakes) plus the operator questions the manager asks. The agent, manager and
admin sockets (``controller.api``) and the dashboard call the methods below;
nothing else touches the file.

Delivery model
--------------
* ``send`` commits the row, then wakes whatever ``recv`` is parked for that
  recipient (one ``threading.Condition`` per recipient, so a send to ``alice``
  never wakes the 49 other parked agents). Per recipient, messages are
  delivered in id order, which is send order.
* ``recv(lease_seconds=None)`` marks the message delivered *and* acked in the
  same statement that selects it: at-most-once. ``recv(lease_seconds=L)`` only
  leases it (``delivered_at``, ``lease_until``); unless ``ack`` ed within ``L``
  seconds it becomes deliverable again, at its original place in the order:
  at-least-once, and the message id lets the receiver drop a duplicate. The
  harness leases its wake ``recv`` and acks after the turn.
* Poison messages: a leased message delivered ``max_deliveries`` (5) times
  whose lease runs out again without an ``ack`` is a *dead letter*: never
  delivered again, counted in ``Status.dead_letters``, announced to the
  manager as a ``DeadLetter`` event, kept 30 days (``dead_letters``,
  ``requeue_dead_letters``).
* Idempotency: ``send`` / ``ask`` / ``remind`` (and wakes) take an optional
  ``idempotency_key``, unique per caller. A repeat with the same key and the
  same request returns the original message (same id, ``extra["duplicate"]``)
  instead of queueing another; the same key with a different request is a
  ``Conflict``. A client that retries a send whose reply it never got (the
  controller died between commit and reply) so gets exactly-once.
* Reminders are rows with a future ``due_at``: invisible to ``recv`` (and
  counted as ``pending_reminders``, not ``unread``) until due. A parked
  ``recv`` computes the next due time (reminder or lease expiry) of its own
  recipient and wakes then, so no timer thread is needed.

Durability
----------
WAL with ``synchronous=NORMAL``: a commit is a ``write()`` into the WAL file
without ``fsync``. It survives a process crash or ``kill -9`` (the data is in
the OS page cache), not a power loss or kernel panic, which may lose the last
few commits (never corrupts the file). Every method that changes state commits
before it returns, so an HTTP 200 for ``send`` always follows the commit.
``durable=True`` (``synchronous=FULL``) fsyncs every commit for hosts that need
power-loss durability (measured on the dev VM's ext4: 8,200 → 3,100 sends/s
in-process; far less than the HTTP layer costs, so it is a safe switch).

Threads
-------
One connection (``check_same_thread=False``) behind one lock. Measured against
one connection per thread (4 and 50 threads each doing insert+commit+count,
WAL, NORMAL): equal or better throughput (5.4k vs 4.8k ops/s at 4 threads),
the same p50 and a shorter tail at 50 threads (p99 42 vs 79 ms, mostly GIL
hand-offs), no ``SQLITE_BUSY`` (sqlite's busy handler sleeps in 1-100 ms
steps) and a ``recv`` claim that is one atomic ``UPDATE ... RETURNING``
without ``BEGIN IMMEDIATE`` retries. ``busy_timeout`` still covers another
process (a ``sqlite3`` shell) holding the write lock.

Pending rows are found through partial covering indexes (not acked, not
dead), forced with ``INDEXED BY``: ``recv``'s claim stops at the first
deliverable row; ``status`` counts the recipient's pending rows once (a plain
covering count) and its leased rows and reminders through their own small
indexes; the dead-letter check before each claim looks at leased rows only.
Nothing costs O(30 days of history). See docs/broker.md for figures.

Open threads
------------
``ask(sender, to, q)`` opens a thread; ``answer`` by the asked party closes it.
``Status.open_threads`` counts threads that concern the caller and are not
answered yet: questions it asked that await an answer *and* questions asked of
it that it has not answered. ``close_threads(agent)`` (called when an agent is
destroyed) closes every open thread of that agent; an asker still waiting on
it gets a ``[closed]`` answer from ``hyperhive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.errors import Conflict, Forbidden, HyperhiveError, Invalid, NotFound
from schemas.names import MANAGER
from schemas.validate import ValidationFailed, validate
from schemas.wire import EventType, Message, MessageKind, Status

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 180.0
"""Longest a ``recv`` may park (DESIGN.md "Wire")."""

MAX_LEASE_SECONDS = 86400
"""Longest lease ``recv`` accepts."""

MAX_REMIND_SECONDS = 30 * 86400
"""Longest ``remind`` delay."""

RETENTION_SECONDS = 30 * 86400
"""``sweep`` deletes acked messages (and resolved threads/questions) older than this."""

MAX_DELIVERIES = 5
"""A leased message delivered this often and never acked becomes a dead letter."""

WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is trimmed to after an automatic checkpoint."""

MAX_IDEMPOTENCY_KEY = 128
"""Longest ``idempotency_key``."""

EVENT_SENDER = "hyperhive"
"""``from`` of typed events the controller emits."""

CANCELLED = "[cancelled]"
EXPIRED = "[expired]"

_ABANDON_POLL_SECONDS = 1.0
"""How often a parked ``recv`` asks whether its client went away."""

SCHEMA_VERSION = 2
"""``PRAGMA user_version``: 1 = first release; 2 adds idempotency keys, dead letters and
closed threads (columns added in place, the pending index rebuilt)."""

_TABLES = """
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sender       TEXT    NOT NULL,
    recipient    TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    thread       INTEGER,
    event        TEXT,
    dedup_key    TEXT,
    sent_at      REAL    NOT NULL,
    due_at       REAL    NOT NULL,
    delivered_at REAL,
    lease_until  REAL,
    acked_at     REAL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    idem_owner   TEXT,
    idem_key     TEXT,
    idem_hash    TEXT,
    dead_at      REAL
);
CREATE TABLE IF NOT EXISTS threads (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    asker         TEXT    NOT NULL,
    asked         TEXT    NOT NULL,
    question_id   INTEGER,
    opened_at     REAL    NOT NULL,
    answered_at   REAL,
    answer_id     INTEGER,
    closed_reason TEXT
);
CREATE TABLE IF NOT EXISTS operator_questions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asker       TEXT    NOT NULL,
    question    TEXT    NOT NULL,
    options     TEXT    NOT NULL,
    multi       INTEGER NOT NULL,
    asked_at    REAL    NOT NULL,
    deadline_at REAL,
    answer      TEXT,
    answered_at REAL,
    resolution  TEXT
);
"""

# columns added after version 1, for ALTER TABLE on an older file
_ADDED_COLUMNS = {
    "messages": (
        ("idem_owner", "TEXT"),
        ("idem_key", "TEXT"),
        ("idem_hash", "TEXT"),
        ("dead_at", "REAL"),
    ),
    "threads": (("closed_reason", "TEXT"),),
}

_INDEXES = """
-- version 1's pending index had no attempts column and kept dead letters
DROP INDEX IF EXISTS messages_pending;
-- every pending row, in delivery order: recv's claim stops at the first deliverable one;
-- covering (acked_at, dead_at included) so status' count needs no table lookups
CREATE INDEX IF NOT EXISTS messages_inbox
    ON messages(recipient, id, due_at, lease_until, attempts, kind, acked_at, dead_at)
    WHERE acked_at IS NULL AND dead_at IS NULL;
-- the few pending rows that are leased, or reminders: status and the dead-letter check
-- cost O(leased) and O(reminders), not O(pending)
CREATE INDEX IF NOT EXISTS messages_leased
    ON messages(recipient, lease_until, attempts, due_at, acked_at, dead_at)
    WHERE lease_until IS NOT NULL AND acked_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_reminders
    ON messages(recipient, due_at, kind, acked_at, dead_at)
    WHERE kind = 'reminder' AND acked_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_to ON messages(recipient, id);
CREATE INDEX IF NOT EXISTS messages_from ON messages(sender, id);
CREATE INDEX IF NOT EXISTS messages_acked ON messages(acked_at) WHERE acked_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_dedup ON messages(recipient, dedup_key)
    WHERE dedup_key IS NOT NULL AND delivered_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idem ON messages(idem_owner, idem_key)
    WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_dead ON messages(recipient, dead_at) WHERE dead_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS threads_open_asker ON threads(asker) WHERE answered_at IS NULL;
CREATE INDEX IF NOT EXISTS threads_open_asked ON threads(asked) WHERE answered_at IS NULL;
CREATE INDEX IF NOT EXISTS questions_pending ON operator_questions(deadline_at)
    WHERE answered_at IS NULL;
"""

_COLS = (
    "id, sender, recipient, kind, body, thread, event, sent_at, due_at, "
    "delivered_at, lease_until, acked_at, attempts, dead_at"
)
_Q_COLS = (
    "id, asker, question, options, multi, asked_at, deadline_at, answer, answered_at, resolution"
)
# Pending rows only ever go through the partial index: without it sqlite may walk the
# recipient's whole history (messages_to), which grows for 30 days. Every query through
# it must repeat the index's WHERE (_INBOX).
_PENDING = "INDEXED BY messages_inbox"
_LEASED = "INDEXED BY messages_leased"
_REMINDERS = "INDEXED BY messages_reminders"
_INBOX = "acked_at IS NULL AND dead_at IS NULL"
# A message the recipient may be handed now (needs :r, :now and :max bound): due, not
# leased (or the lease ran out) and, if it was leased, not delivered :max times already.
_DELIVERABLE = (
    f"recipient = :r AND {_INBOX} AND due_at <= :now "
    "AND (lease_until IS NULL OR (lease_until <= :now AND attempts < :max))"
)
# Leased :max times and the last lease ran out: a dead letter not yet marked as one.
_EXHAUSTED = (
    f"recipient = :r AND {_INBOX} AND lease_until IS NOT NULL AND lease_until <= :now "
    "AND attempts >= :max"
)


class BrokerClosed(RuntimeError):
    """The broker was closed; the controller is shutting down."""


class BrokerStorageError(HyperhiveError):
    """The database cannot be read or written (read-only, I/O error, damaged, locked): 503.

    The transaction was rolled back: nothing of the request was stored. The API layer
    answers ``status`` with ``{"error": {"code", "message"}}`` (a ``HyperhiveError``).
    """

    code = "storage_unavailable"
    status = 503


class BrokerDiskFull(BrokerStorageError):
    """The disk (or the database's size limit) is full: 507, nothing was stored."""

    code = "insufficient_storage"
    status = 507


# sqlite primary result codes (the low byte of ``sqlite_errorcode``) that mean the storage,
# not the request, is at fault
_SQLITE_FULL = 13
_SQLITE_STORAGE = {
    3: "permission denied",  # SQLITE_PERM
    5: "the database is locked by another process",  # SQLITE_BUSY
    6: "a table is locked",  # SQLITE_LOCKED
    8: "the database is read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    11: "the database file is damaged",  # SQLITE_CORRUPT
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
    26: "the file is not a database",  # SQLITE_NOTADB
}


def _storage_error(exc: BaseException, path: Path) -> BrokerStorageError | None:
    """The storage error ``exc`` (or what it was raised while handling) stands for, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            code = (getattr(seen, "sqlite_errorcode", None) or 0) & 0xFF
            if code == _SQLITE_FULL:
                return BrokerDiskFull(
                    f"the disk holding the broker database {path} is full; nothing was stored "
                    "(free space, then retry)"
                )
            if code in _SQLITE_STORAGE:
                return BrokerStorageError(
                    f"the broker database {path} is unavailable: {_SQLITE_STORAGE[code]} "
                    f"({seen}); nothing was stored"
                )
        seen = seen.__context__
    return None


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


def summarize_event(event: dict[str, Any]) -> str:
    """A one-line human summary of a typed event (the message body an agent reads).

    ``{"type": "ApprovalResolved", "id": 3, "decision": "deployed", "agents": ["alice"]}``
    → ``"proposal 3 deployed (alice)"``. Unknown shapes fall back to the type name.
    """
    t = event.get("type")
    agent = str(event.get("agent", "?"))
    note = str(event.get("note") or "")
    tail = f": {note}" if note else ""
    if t == EventType.APPROVAL_RESOLVED:
        agents = ", ".join(str(a) for a in event.get("agents") or [])
        kind = f" {event['kind']}" if event.get("kind") else ""
        who = f" ({agents})" if agents else ""
        text = f"proposal {event.get('id')}{kind} {event.get('decision')}{who}{tail}"
    elif t == EventType.CONTAINER_CRASH:
        restarts = f" (restarts: {event['restarts']})" if "restarts" in event else ""
        text = f"{agent} crashed{restarts}{tail}"
    elif t == EventType.NEEDS_LOGIN:
        text = f"{agent} needs login (only the operator can complete it)"
    elif t == EventType.LOGGED_IN:
        text = f"{agent} logged in"
    elif t == EventType.NEEDS_UPDATE:
        text = f"{agent} needs update{tail}"
    elif t == EventType.REBUILT:
        commit = f" at {str(event['commit'])[:12]}" if event.get("commit") else ""
        text = f"{agent} rebuilt{commit}"
    elif t == EventType.OPERATOR_ANSWERED:
        text = f"operator answered question {event.get('id')}: {event.get('answer')}"
    elif t == EventType.DEAD_LETTER:
        text = (
            f"message {event.get('id')} from {event.get('from')} to {agent} is a dead letter: "
            f"delivered {event.get('attempts')} times, never acked; it will not be delivered "
            "again"
        )
    else:
        text = str(t or "event")
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:499] + "…"


def _dedup_token(event: dict[str, Any], dedup_key: str | None) -> str:
    if dedup_key is not None:
        return "key:" + dedup_key
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "json:" + hashlib.sha256(canonical.encode()).hexdigest()


def _row_message(row: sqlite3.Row) -> Message:
    extra: dict[str, Any] = {"attempts": row["attempts"]}
    if row["kind"] == MessageKind.REMINDER:
        extra["due_at"] = row["due_at"]
    if row["lease_until"] is not None:
        extra["lease_until"] = row["lease_until"]
    return Message(
        id=row["id"],
        sender=row["sender"],
        recipient=row["recipient"],
        body=row["body"],
        kind=MessageKind(row["kind"]),
        thread=row["thread"],
        event=None if row["event"] is None else json.loads(row["event"]),
        sent_at=row["sent_at"],
        delivered_at=row["delivered_at"],
        acked_at=row["acked_at"],
        extra=extra,
        dead_at=row["dead_at"],
    )


def _row_question(row: sqlite3.Row) -> OperatorQuestion:
    answered = row["answered_at"] is not None
    return OperatorQuestion(
        id=row["id"],
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


def _check_text(value: str, field: str) -> str:
    """``value`` unless it holds a lone surrogate, which sqlite cannot store as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{field} holds a lone surrogate at index {exc.start}", field) from exc
    return value


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise Invalid(f"{field} must be a non-empty string of at most 128 characters", field)
    return _check_text(value, field)


def _check_body(value: object, field: str = "body") -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{field} must be a non-empty string", field)
    return _check_text(value, field)


def _check_id(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise Invalid(f"{field} must be a positive integer", field)
    return value


def _check_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise Invalid(
            f"idempotency_key must be a non-empty string of at most "
            f"{MAX_IDEMPOTENCY_KEY} characters",
            "idempotency_key",
        )
    return _check_text(value, "idempotency_key")


def _recv_args(recipient: str, wait_seconds: float, lease_seconds: int | None) -> float:
    """Check ``recv``'s arguments; the park time in seconds (clamped to 0..180)."""
    _check_name(recipient, "recipient")
    if lease_seconds is not None and (
        isinstance(lease_seconds, bool)
        or not isinstance(lease_seconds, int)
        or not 1 <= lease_seconds <= MAX_LEASE_SECONDS
    ):
        raise Invalid(
            f"lease_seconds must be an integer from 1 to {MAX_LEASE_SECONDS}", "lease_seconds"
        )
    try:
        wait = min(max(float(wait_seconds), 0.0), MAX_WAIT_SECONDS)
    except (TypeError, ValueError) as exc:
        raise Invalid("wait_seconds must be a number", "wait_seconds") from exc
    if wait != wait:  # NaN
        raise Invalid("wait_seconds must be a number", "wait_seconds")
    return wait


def _wake_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake_async(waiters: Sequence[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Resolve parked asyncio waiters from any thread (their loop runs the resolution).

    On the waiter's own loop thread (a send over the HTTP API) the future is resolved
    at once: no self-pipe write and wake-up of the loop, and the receiver's task is
    ready before the sender's handler goes on."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for loop, fut in waiters:
        if loop is here:
            _wake_future(fut)
            continue
        # a closed loop raises RuntimeError: nobody is waiting there any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_wake_future, fut)


async def _park_async(
    fut: asyncio.Future[None], timeout: float, abandoned: asyncio.Event | None
) -> None:
    """Wait until ``fut`` resolves, ``timeout`` seconds pass or ``abandoned`` is set.

    Awaits ``fut`` itself (the timeout and ``abandoned`` resolve it), so a wake costs the
    parked task one step of the loop, not the several of ``asyncio.wait``."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout, _wake_future, fut)
    watch: asyncio.Future[Any] | None = None
    if abandoned is not None:
        watch = asyncio.ensure_future(abandoned.wait())
        watch.add_done_callback(lambda _: _wake_future(fut))
    try:
        await fut
    finally:
        timer.cancel()
        if watch is not None:
            watch.cancel()


def _request_digest(*parts: object) -> str:
    """What an idempotency key stands for: a repeat must carry the same request."""
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class _RecvStep:
    """What one try of a receive decided: ``done`` (return ``msg``, None meaning nothing),
    or park until ``wake_at`` (monotonic seconds) unless the recipient's sequence moves
    past ``seq`` (the value read before the claim, so no change is missed)."""

    done: bool
    msg: Message | None = None
    seq: int = 0
    wake_at: float = 0.0


@dataclass(frozen=True)
class _Idem:
    """An idempotency key as stored: unique per ``owner`` (the caller), with the request digest."""

    owner: str
    key: str
    digest: str


def _choices(answer: str | Sequence[str], q: OperatorQuestion) -> str:
    """The canonical answer to question ``q`` (which has options), or ``Invalid`` naming ``answer``.

    Single choice: exactly one option. ``multi``: a non-empty set of distinct
    options, as a list or joined by ``", "`` (what the dashboard sends); the
    result is them joined by ``", "`` in the order given.
    """
    options = list(q.options)
    shown = ", ".join(repr(o) for o in options)
    if isinstance(answer, str):
        text = answer.strip()
        if text in options:
            return text
        picked = _split_options(text, options) if q.multi else None
    else:
        picked = [a.strip() for a in answer]
        if not picked or any(a not in options for a in picked):
            picked = None
    if picked and len(set(picked)) != len(picked):
        raise Invalid("answer names an option twice", "answer")
    if q.multi and picked:
        return ", ".join(picked)
    if not q.multi and picked is not None and len(picked) == 1:
        return picked[0]
    if q.multi:
        raise Invalid(f"answer must be one or more of the options: {shown}", "answer")
    raise Invalid(f"answer must be exactly one of the options: {shown}", "answer")


def _split_options(text: str, options: Sequence[str]) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]`` when it is options joined by ``", "`` (options may hold
    commas themselves: tries every split), else None."""
    best: dict[int, list[str]] = {0: []}
    for start in range(len(text) + 1):
        if start not in best:
            continue
        for o in options:
            if text.startswith(o, start):
                end = start + len(o)
                if end == len(text):
                    return [*best[start], o]
                if text.startswith(", ", end) and end + 2 not in best:
                    best[end + 2] = [*best[start], o]
    return None


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, add columns a version-1 file lacks, (re)build the indexes."""
    conn.executescript(_TABLES)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        for stmt in _INDEXES.split(";"):
            lines = [ln for ln in stmt.splitlines() if not ln.strip().startswith("--")]
            if "".join(lines).strip():
                conn.execute("\n".join(lines))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Broker:
    """Messages, threads, reminders and operator questions in one sqlite file.

    ``path`` is the database file (created with its parent directory);
    ``clock`` returns unix seconds and stamps every row (tests may pass a fake
    one; parked waits still use real time). ``max_deliveries`` is how often a
    leased message is delivered before it becomes a dead letter;
    ``dead_letter_to`` gets the ``DeadLetter`` events (None: nobody).
    Thread-safe. Raises
    ``controller.errors.Invalid`` / ``NotFound`` / ``Forbidden`` / ``Conflict``
    as documented per method, ``BrokerClosed`` after ``close()``.
    """

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
        max_deliveries: int = MAX_DELIVERIES,
        dead_letter_to: str | None = MANAGER,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        if isinstance(max_deliveries, bool) or not 1 <= int(max_deliveries) <= 1000:
            raise ValueError("max_deliveries must be between 1 and 1000")
        self.max_deliveries = int(max_deliveries)
        self.dead_letter_to = dead_letter_to
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise BrokerStorageError(f"cannot open the broker database {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=10000")
            # the WAL only shrinks on a TRUNCATE checkpoint (the hourly sweep); between sweeps
            # sqlite trims it to this size after each automatic checkpoint
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            _migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise BrokerStorageError(f"cannot open the broker database {self.path}: {exc}") from exc
        self._conn = conn
        self._db = threading.Lock()
        self._wait = threading.Lock()
        self._conds: dict[str, threading.Condition] = {}
        self._seq: dict[str, int] = {}
        self._any = threading.Condition(self._wait)
        # asyncio waiters (recv_async / wait_for_new_async), resolved by _notify from any thread
        self._parked: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self._parked_any: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        row = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        self._last_id: int = int(row[0])
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the database; every parked ``recv`` / ``wait_for_new`` returns empty."""
        with self._wait:
            self._closed = True
            for cond in self._conds.values():
                cond.notify_all()
            self._any.notify_all()
            woken = [w for ws in self._parked.values() for w in ws] + self._parked_any
            self._parked, self._parked_any = {}, []
        _wake_async(woken)
        with self._db:
            self._conn.close()

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            if self._closed:
                raise BrokerClosed("broker is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._rollback()
                if (err := _storage_error(exc, self.path)) is None:
                    raise
                raise err from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, else rolled back.

        A storage failure anywhere, the COMMIT included (disk full, read-only, I/O
        error), rolls back and raises ``BrokerStorageError`` / ``BrokerDiskFull``.
        """
        with self._db:
            if self._closed:
                raise BrokerClosed("broker is closed")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._rollback()
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if (err := _storage_error(exc, self.path)) is None:
                    raise
                raise err from exc

    def _rollback(self) -> None:
        """Roll back an open transaction (sqlite may already have, e.g. after SQLITE_FULL)."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _notify(self, recipients: Sequence[str], last_id: int | None = None) -> None:
        """After a commit: wake ``recipients``' parked recvs and, on a new id, every follower."""
        woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        with self._wait:
            for r in recipients:
                self._seq[r] = self._seq.get(r, 0) + 1
                cond = self._conds.get(r)
                if cond is not None:
                    cond.notify_all()
                woken += self._parked.pop(r, ())
            if last_id is not None and last_id > self._last_id:
                self._last_id = last_id
                self._any.notify_all()
                woken += self._parked_any
                self._parked_any = []
        if woken:
            _wake_async(woken)

    def _insert(
        self,
        conn: sqlite3.Connection,
        sender: str,
        recipient: str,
        body: str,
        kind: MessageKind,
        *,
        thread: int | None = None,
        event: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        now: float,
        due_at: float | None = None,
        idem: _Idem | None = None,
    ) -> Message:
        row = conn.execute(
            "INSERT INTO messages (sender, recipient, kind, body, thread, event, dedup_key, "
            "sent_at, due_at, idem_owner, idem_key, idem_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING " + _COLS,
            (
                sender,
                recipient,
                str(kind),
                body,
                thread,
                None if event is None else json.dumps(event, ensure_ascii=False),
                dedup_key,
                now,
                now if due_at is None else due_at,
                None if idem is None else idem.owner,
                None if idem is None else idem.key,
                None if idem is None else idem.digest,
            ),
        ).fetchall()[0]
        return _row_message(row)

    @staticmethod
    def _replay(conn: sqlite3.Connection, idem: _Idem | None) -> Message | None:
        """The message stored under ``idem`` (marked ``extra["duplicate"]``), or None.

        ``Conflict`` naming ``idempotency_key`` when the key was used for another request.
        """
        if idem is None:
            return None
        row = conn.execute(
            f"SELECT {_COLS}, idem_hash FROM messages INDEXED BY messages_idem "
            "WHERE idem_owner = ? AND idem_key = ? AND idem_key IS NOT NULL",
            (idem.owner, idem.key),
        ).fetchone()
        if row is None:
            return None
        if row["idem_hash"] != idem.digest:
            raise Conflict(
                f"idempotency_key {idem.key!r} was already used for a different request "
                f"(message {row['id']}); use a new key for a new message",
                "idempotency_key",
            )
        msg = _row_message(row)
        msg.extra["duplicate"] = True
        return msg

    def last_id(self) -> int:
        """The newest message id (0 when there is none); ids only grow, sweeps never reuse them."""
        with self._wait:
            return self._last_id

    # ------------------------------------------------------------------ messages

    def send(
        self,
        sender: str,
        recipient: str,
        body: str,
        *,
        kind: MessageKind = MessageKind.MESSAGE,
        thread: int | None = None,
        event: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_owner: str | None = None,
    ) -> Message:
        """Queue ``body`` from ``sender`` to ``recipient``; committed when this returns.

        Does not check that ``recipient`` exists or may be messaged (the API
        layer does). Wakes a ``recv`` parked for ``recipient`` at once.
        ``idempotency_key`` (unique per ``idempotency_owner``, default
        ``sender``): when a message was already queued under it for the same
        request, that message is returned (``extra["duplicate"]`` True) and
        nothing is queued. Raises ``Invalid`` for an empty name or body, a bad
        key or an ``event`` that is not a valid typed event; ``Conflict`` for a
        key already used for a different request.
        """
        _check_name(sender, "from")
        _check_name(recipient, "to")
        _check_body(body)
        kind = MessageKind(kind)
        key = _check_key(idempotency_key)
        if event is not None:
            self._validate_event(event)
        idem = None
        if key is not None:
            owner = _check_name(idempotency_owner or sender, "idempotency_owner")
            digest = _request_digest("send", sender, recipient, body, str(kind), thread, event)
            idem = _Idem(owner, key, digest)
        with self._write() as conn:
            dup = self._replay(conn, idem)
            if dup is not None:
                return dup
            msg = self._insert(
                conn,
                sender,
                recipient,
                body,
                kind,
                thread=thread,
                event=event,
                now=self._clock(),
                idem=idem,
            )
        self._notify([recipient], msg.id)
        return msg

    @staticmethod
    def _validate_event(event: dict[str, Any]) -> None:
        try:
            validate(event, "events")
        except ValidationFailed as exc:
            raise Invalid(f"event is not a valid typed event: {exc}", f"event.{exc.field}") from exc

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Message | None:
        """Queue a typed event (``events.schema.json``) for ``recipient`` (usually ``manager``).

        The body is ``summarize_event(event)``, the sender ``hyperhive``. If an
        identical event is still undelivered — same ``dedup_key``, or the same
        JSON when ``dedup_key`` is None — nothing is queued and None is
        returned (coalesced). Raises ``Invalid`` if the event fails the schema.
        """
        _check_name(recipient, "to")
        if not isinstance(event, dict):
            raise Invalid("event must be an object", "event")
        self._validate_event(event)
        token = _dedup_token(event, dedup_key)
        with self._write() as conn:
            dup = conn.execute(
                "SELECT id FROM messages WHERE recipient = ? AND dedup_key = ? "
                "AND delivered_at IS NULL AND acked_at IS NULL LIMIT 1",
                (recipient, token),
            ).fetchone()
            if dup is not None:
                return None
            msg = self._insert(
                conn,
                EVENT_SENDER,
                recipient,
                summarize_event(event),
                MessageKind.EVENT,
                event=event,
                dedup_key=token,
                now=self._clock(),
            )
        self._notify([recipient], msg.id)
        return msg

    def _claim(
        self, recipient: str, lease_seconds: int | None
    ) -> tuple[Message | None, float | None, list[Message]]:
        """Deliver the oldest deliverable message, else say when the next one will be.

        Marks the recipient's exhausted leases as dead letters first; the third
        value is the ``DeadLetter`` events that queued (to ``_notify`` after the
        lock is released).
        """
        now = self._clock()
        params = {
            "r": recipient,
            "now": now,
            "until": now + (lease_seconds or 0),
            "max": self.max_deliveries,
        }
        with self._locked() as conn:
            _, woken = self._reap(conn, recipient, now)
            if lease_seconds is None:
                sets = "delivered_at = :now, acked_at = :now, lease_until = NULL"
            else:
                sets = "delivered_at = :now, lease_until = :until"
            rows = conn.execute(
                f"UPDATE messages SET {sets}, attempts = attempts + 1 WHERE id = "
                f"(SELECT id FROM messages {_PENDING} WHERE {_DELIVERABLE} ORDER BY id LIMIT 1) "
                f"RETURNING {_COLS}",
                params,
            ).fetchall()
            if rows:
                return _row_message(rows[0]), None, woken
            nxt = conn.execute(
                f"SELECT min(max(due_at, coalesce(lease_until, 0))) FROM messages {_PENDING} "
                f"WHERE recipient = :r AND {_INBOX} "
                "AND (lease_until IS NULL OR lease_until > :now OR attempts < :max)",
                params,
            ).fetchone()[0]
        return None, nxt, woken

    def _reap(
        self, conn: sqlite3.Connection, recipient: str | None, now: float
    ) -> tuple[int, list[Message]]:
        """Mark exhausted leases (of ``recipient``, or everyone's) as dead letters and queue a
        ``DeadLetter`` event for each, in one transaction per recipient. Needs the db lock;
        returns how many died and the events queued (to ``_notify``)."""
        if recipient is None:
            names = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT recipient FROM messages {_LEASED} WHERE {_INBOX} "
                    "AND lease_until IS NOT NULL AND lease_until <= ? AND attempts >= ?",
                    (now, self.max_deliveries),
                )
            ]
        else:
            names = [recipient]
        count = 0
        events: list[Message] = []
        for name in names:
            params = {"r": name, "now": now, "max": self.max_deliveries}
            if (
                conn.execute(
                    f"SELECT 1 FROM messages {_LEASED} WHERE {_EXHAUSTED} LIMIT 1", params
                ).fetchone()
                is None
            ):
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                dead = conn.execute(
                    "UPDATE messages SET dead_at = :now, lease_until = NULL WHERE id IN "
                    f"(SELECT id FROM messages {_LEASED} WHERE {_EXHAUSTED}) RETURNING {_COLS}",
                    params,
                ).fetchall()
                count += len(dead)
                for row in sorted(dead, key=lambda r: int(r["id"])):
                    m = _row_message(row)
                    log.warning(
                        "dead letter: message %d from %s to %s was delivered %d times and "
                        "never acked; it will not be delivered again",
                        m.id,
                        m.sender,
                        m.recipient,
                        m.extra["attempts"],
                    )
                    event = self._announce_dead(conn, m, now)
                    if event is not None:
                        events.append(event)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return count, events

    def _announce_dead(self, conn: sqlite3.Connection, m: Message, now: float) -> Message | None:
        """Queue the ``DeadLetter`` event for ``m``; not for a dead ``DeadLetter`` event."""
        if self.dead_letter_to is None:
            return None
        if m.kind == MessageKind.EVENT and (m.event or {}).get("type") == EventType.DEAD_LETTER:
            return None
        event: dict[str, Any] = {
            "type": str(EventType.DEAD_LETTER),
            "agent": m.recipient,
            "id": m.id,
            "from": m.sender,
            "kind": str(m.kind),
            "attempts": int(m.extra["attempts"]),
        }
        return self._insert(
            conn,
            EVENT_SENDER,
            self.dead_letter_to,
            summarize_event(event),
            MessageKind.EVENT,
            event=event,
            dedup_key=f"key:dead-letter:{m.id}",
            now=now,
        )

    def _notify_events(self, events: Sequence[Message]) -> None:
        if events:
            self._notify(sorted({e.recipient for e in events}), max(e.id for e in events))

    def reap_dead_letters(self, now: float | None = None) -> int:
        """Mark every exhausted lease as a dead letter now; returns how many died.

        ``recv`` does this for its own inbox before each claim and ``sweep``
        for everyone, so calling it is only needed for a prompt ``DeadLetter``
        event when the recipient is not receiving at all.
        """
        with self._locked() as conn:
            count, events = self._reap(conn, None, self._clock() if now is None else now)
        self._notify_events(events)
        return count

    def dead_letters(self, recipient: str | None = None, limit: int = 200) -> list[Message]:
        """Dead letters (of ``recipient``, or everyone's), oldest first, at most ``limit``."""
        limit = min(max(int(limit), 1), 1000)
        where = "dead_at IS NOT NULL" + ("" if recipient is None else " AND recipient = ?")
        args: tuple[Any, ...] = () if recipient is None else (recipient,)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_COLS} FROM messages INDEXED BY messages_dead WHERE {where} "
                "ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_row_message(r) for r in rows]

    def requeue_dead_letters(self, ids: Sequence[int]) -> int:
        """Make dead letters deliverable again (attempts reset, original place in the order);
        returns how many were requeued. Ids that are not dead letters are ignored."""
        clean = sorted({_check_id(i, "ids") for i in ids})
        if not clean:
            return 0
        woken: set[str] = set()
        count = 0
        with self._write() as conn:
            for start in range(0, len(clean), 500):
                chunk = clean[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "UPDATE messages SET dead_at = NULL, attempts = 0, delivered_at = NULL, "
                    f"lease_until = NULL WHERE dead_at IS NOT NULL AND id IN ({marks}) "
                    "RETURNING recipient",
                    chunk,
                ).fetchall()
                count += len(rows)
                woken.update(r[0] for r in rows)
        self._notify(sorted(woken))
        return count

    def _recv_step(
        self,
        recipient: str,
        lease_seconds: int | None,
        deadline: float,
        abandoned: Callable[[], bool] | None,
    ) -> _RecvStep:
        """One try of ``recv`` and ``recv_async``: claim the oldest deliverable message of
        ``recipient``, or say until when (``deadline`` at the latest, monotonic seconds) to
        park. Blocks only for the claim's short sqlite statement, so ``recv_async`` runs it
        on the loop. ``abandoned()`` True ends the receive without taking a message."""
        with self._wait:
            if self._closed:
                return _RecvStep(done=True)
            seq = self._seq.get(recipient, 0)
        if abandoned is not None and abandoned():
            return _RecvStep(done=True)
        try:
            msg, next_due, events = self._claim(recipient, lease_seconds)
        except BrokerClosed:
            return _RecvStep(done=True)
        self._notify_events(events)
        if msg is not None:
            if lease_seconds is not None:
                # other parked receivers of this inbox must learn the lease's expiry
                self._notify([recipient])
            return _RecvStep(done=True, msg=msg)
        now = time.monotonic()
        if now >= deadline:
            return _RecvStep(done=True)
        wake_at = deadline
        if next_due is not None:  # a reminder falls due or a lease runs out
            wake_at = min(wake_at, now + max(next_due - self._clock(), 0.0) + 0.005)
        return _RecvStep(done=False, seq=seq, wake_at=wake_at)

    def recv(
        self,
        recipient: str,
        wait_seconds: float = 0,
        lease_seconds: int | None = None,
        *,
        abandoned: Callable[[], bool] | None = None,
    ) -> Message | None:
        """The oldest deliverable message for ``recipient``, or None.

        ``wait_seconds`` 0 peeks and returns at once; up to 180 (clamped) parks
        until a message arrives, a reminder falls due or a lease expires.
        ``lease_seconds`` None marks the message delivered and acked;
        otherwise it is leased for that many seconds (1..86400) and delivered
        again afterwards unless ``ack`` ed. ``abandoned`` (a callable, e.g. a
        thread-side check that the client hung up) is polled about once a second while parked:
        when it returns True, recv gives up without taking a message, so a
        client that went away does not swallow one. Returns None at the
        deadline or when the broker closes. Raises ``Invalid`` for a bad lease.
        """
        deadline = time.monotonic() + _recv_args(recipient, wait_seconds, lease_seconds)
        while True:
            step = self._recv_step(recipient, lease_seconds, deadline, abandoned)
            if step.done:
                return step.msg
            seq, wake_at = step.seq, step.wake_at
            # park until something changes for this recipient; only re-query then, so an
            # idle parked recv costs one wake-up per second (the abandoned check), no SQL
            while True:
                with self._wait:
                    cond = self._conds.get(recipient)
                    if cond is None:
                        cond = self._conds[recipient] = threading.Condition(self._wait)
                    left = wake_at - time.monotonic()
                    if self._seq.get(recipient, 0) == seq and not self._closed and left > 0:
                        cond.wait(left if abandoned is None else min(left, _ABANDON_POLL_SECONDS))
                    changed = self._seq.get(recipient, 0) != seq or self._closed
                if abandoned is not None and abandoned():
                    return None
                if changed or time.monotonic() >= wake_at:
                    break

    def ack(self, recipient: str, ids: Sequence[int]) -> int:
        """Acknowledge delivered messages of ``recipient``; returns how many were newly acked.

        Ids that are unknown, addressed to someone else, never delivered or
        already acked are ignored (so a repeated ack is harmless). A late ack
        of a message that became a dead letter meanwhile still counts: it is
        acked and no longer a dead letter.
        """
        _check_name(recipient, "recipient")
        clean = sorted({_check_id(i, "ids") for i in ids})
        if not clean:
            return 0
        acked = 0
        with self._write() as conn:
            now = self._clock()
            for start in range(0, len(clean), 500):
                chunk = clean[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur = conn.execute(
                    "UPDATE messages SET acked_at = ?, lease_until = NULL, dead_at = NULL "
                    "WHERE recipient = ? "
                    f"AND acked_at IS NULL AND delivered_at IS NOT NULL AND id IN ({marks})",
                    (now, recipient, *chunk),
                )
                acked += cur.rowcount
        return acked

    def release(self, recipient: str, ids: Sequence[int] | None = None) -> int:
        """End ``recipient``'s leases now, so those messages are delivered again at once.

        A harness that restarts (or stops mid-turn) gives back what it had leased instead of
        leaving it to wait out the lease. ``ids=None`` releases every live lease of
        ``recipient``; ids that are not its live leases (unknown, someone else's, acked,
        dead) are ignored. A release still counts as a delivery attempt, so a message that
        keeps killing its turn still ends as a dead letter. Returns how many were released.
        """
        _check_name(recipient, "recipient")
        clean = None if ids is None else sorted({_check_id(i, "ids") for i in ids})
        if clean == []:
            return 0
        released = 0
        with self._write() as conn:
            now = self._clock()
            where = (
                "recipient = ? AND acked_at IS NULL AND dead_at IS NULL "
                "AND lease_until IS NOT NULL AND lease_until > ?"
            )
            if clean is None:
                cur = conn.execute(
                    f"UPDATE messages SET lease_until = ? WHERE {where}", (now, recipient, now)
                )
                released = cur.rowcount
            else:
                for start in range(0, len(clean), 500):
                    chunk = clean[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    cur = conn.execute(
                        f"UPDATE messages SET lease_until = ? WHERE {where} AND id IN ({marks})",
                        (now, recipient, now, *chunk),
                    )
                    released += cur.rowcount
        if released:
            self._notify([recipient])
        return released

    def status(self, recipient: str) -> Status:
        """``unread`` (deliverable now, incl. expired leases and due reminders), ``open_threads``
        (questions asked by or of ``recipient`` not yet answered), ``pending_reminders``
        (not yet due), ``dead_letters`` (held dead letters, incl. exhausted leases not
        marked yet). Changes nothing."""
        params = {"r": recipient, "now": self._clock(), "max": self.max_deliveries}
        with self._locked() as conn:
            # unread = pending - reminders not due - leased rows not deliverable: only the
            # first count walks every pending row (the cheapest walk: a covering count)
            row = conn.execute(
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
                "  WHERE recipient = :r AND dead_at IS NOT NULL)",
                params,
            ).fetchone()
        pending, reminders, leased, exhausted, threads, dead = (int(v) for v in row)
        unread = pending - reminders - leased - exhausted
        dead += exhausted
        return Status(int(unread), int(threads), int(reminders), int(dead))

    def dead_letter_counts(self) -> dict[str, int]:
        """``{recipient: dead letters held}`` for every recipient that has any (for the
        swarm status and the dashboard)."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT recipient, count(*) FROM messages INDEXED BY messages_dead "
                "WHERE dead_at IS NOT NULL GROUP BY recipient"
            ).fetchall()
            out = {str(r[0]): int(r[1]) for r in rows}
            for r in conn.execute(
                f"SELECT recipient, count(*) FROM messages {_LEASED} WHERE {_INBOX} "
                "AND lease_until IS NOT NULL AND lease_until <= ? AND attempts >= ? "
                "GROUP BY recipient",
                (self._clock(), self.max_deliveries),
            ).fetchall():
                out[str(r[0])] = out.get(str(r[0]), 0) + int(r[1])
        return out

    def recent(self, recipient: str, limit: int = 20) -> list[Message]:
        """The last ``limit`` (1..1000) messages to or from ``recipient``, newest last.

        Reminders that are not due yet are left out. Changes nothing.
        """
        limit = min(max(int(limit), 1), 1000)
        with self._locked() as conn:
            # two index walks newest-first, each stopping after `limit`, instead of sorting
            # the recipient's whole history
            rows = conn.execute(
                f"SELECT * FROM (SELECT {_COLS} FROM messages INDEXED BY messages_to "
                "WHERE recipient = :r AND due_at <= :now ORDER BY id DESC LIMIT :limit) "
                f"UNION SELECT * FROM (SELECT {_COLS} FROM messages INDEXED BY messages_from "
                "WHERE sender = :r AND due_at <= :now ORDER BY id DESC LIMIT :limit) "
                "ORDER BY id DESC LIMIT :limit",
                {"r": recipient, "now": self._clock(), "limit": limit},
            ).fetchall()
        return [_row_message(r) for r in reversed(rows)]

    def messages(self, since_id: int = 0, limit: int = 200) -> list[Message]:
        """Every message with ``id > since_id``, oldest first, at most ``limit`` (1..1000)."""
        limit = min(max(int(limit), 1), 1000)
        since = min(max(int(since_id), 0), 2**63 - 1)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_COLS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (since, limit)
            ).fetchall()
        return [_row_message(r) for r in rows]

    def _fetch_new(self, since_id: int, limit: int) -> list[Message] | None:
        """What a wait for new messages returns once ids above ``since_id`` exist: those
        messages, ``[]`` when the broker closed meanwhile, or None when there are none after
        all (swept or rolled back: the caller waits for newer)."""
        try:
            rows = self.messages(since_id, limit)
        except BrokerClosed:
            return []
        return rows or None

    def wait_for_new(self, since_id: int, timeout: float, limit: int = 200) -> list[Message]:
        """``messages(since_id, limit)``, parking up to ``timeout`` seconds while there are none.

        Wakes on any new message (for SSE and ``hyperhive messages --follow``).
        Returns ``[]`` at the timeout or when the broker closes.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while True:
            with self._wait:
                while self._last_id <= since_id and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    self._any.wait(left)
                if self._closed:
                    return []
            rows = self._fetch_new(since_id, limit)
            if rows is not None:
                return rows
            with self._wait:  # ids above since_id were swept or rolled back: wait for newer
                since_id = max(since_id, self._last_id)

    # ------------------------------------------------------------------ asyncio waits

    def _park(self, recipient: str | None, seq: int) -> asyncio.Future[None] | None:
        """A future ``_notify`` resolves on the next change for ``recipient`` (None: any new
        message); None instead when that change already happened (``seq`` is stale: the
        recipient's sequence, or the last id for ``None``) or the broker is closed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._wait:
            if self._closed:
                return None
            if recipient is None:
                if self._last_id != seq:
                    return None
                self._parked_any.append((loop, fut))
            else:
                if self._seq.get(recipient, 0) != seq:
                    return None
                self._parked.setdefault(recipient, []).append((loop, fut))
        return fut

    def _unpark(self, recipient: str | None, fut: asyncio.Future[None]) -> None:
        with self._wait:
            waiters = self._parked_any if recipient is None else self._parked.get(recipient, [])
            for i, (_, f) in enumerate(waiters):
                if f is fut:
                    del waiters[i]
                    break
            if recipient is not None and not waiters:
                self._parked.pop(recipient, None)

    async def recv_async(
        self,
        recipient: str,
        wait_seconds: float = 0,
        lease_seconds: int | None = None,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> Message | None:
        """``recv`` for asyncio code: parks on the running loop, never on a thread.

        Same arguments, semantics and errors as ``recv``; ``abandoned`` (e.g.
        ``hivehttp.disconnected(scope)``) set while parked makes it give up at
        once without taking a message. The claim itself is one short sqlite
        statement run inline. A send from any thread wakes it through
        ``loop.call_soon_threadsafe``.
        """
        deadline = time.monotonic() + _recv_args(recipient, wait_seconds, lease_seconds)
        gone = None if abandoned is None else abandoned.is_set
        while True:
            step = self._recv_step(recipient, lease_seconds, deadline, gone)
            if step.done:
                return step.msg
            fut = self._park(recipient, step.seq)
            if fut is None:
                continue
            try:
                await _park_async(fut, max(step.wake_at - time.monotonic(), 0.0), abandoned)
            finally:
                self._unpark(recipient, fut)
            if abandoned is not None and abandoned.is_set():
                return None

    async def wait_for_new_async(
        self,
        since_id: int,
        timeout: float,
        limit: int = 200,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> list[Message]:
        """``wait_for_new`` for asyncio code: parks on the running loop, never on a thread.

        Returns the messages above ``since_id`` (oldest first, at most
        ``limit``), parking up to ``timeout`` seconds while there are none;
        ``[]`` at the timeout, when the broker closes or once ``abandoned`` is set.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while True:
            with self._wait:
                if self._closed:
                    return []
                last = self._last_id
            if last > since_id:
                rows = self._fetch_new(since_id, limit)
                if rows is not None:
                    return rows
                since_id = max(since_id, last)  # swept or rolled back: wait for newer
                continue
            left = deadline - time.monotonic()
            if left <= 0 or (abandoned is not None and abandoned.is_set()):
                return []
            fut = self._park(None, last)
            if fut is None:
                continue
            try:
                await _park_async(fut, left, abandoned)
            finally:
                self._unpark(None, fut)

    # ------------------------------------------------------------------ threads, reminders

    def ask(
        self, sender: str, to: str, question: str, *, idempotency_key: str | None = None
    ) -> Message:
        """Send ``question`` to ``to`` as a new thread; the returned message's ``thread`` is its id.

        The thread stays open (counted in both parties' ``open_threads``)
        until ``to`` answers it. ``idempotency_key`` as for ``send`` (a repeat
        returns the original question and thread).
        """
        _check_name(sender, "from")
        _check_name(to, "to")
        _check_body(question, "question")
        key = _check_key(idempotency_key)
        idem = None if key is None else _Idem(sender, key, _request_digest("ask", to, question))
        with self._write() as conn:
            dup = self._replay(conn, idem)
            if dup is not None:
                return dup
            now = self._clock()
            tid = conn.execute(
                "INSERT INTO threads (asker, asked, opened_at) VALUES (?, ?, ?) RETURNING id",
                (sender, to, now),
            ).fetchall()[0][0]
            msg = self._insert(
                conn, sender, to, question, MessageKind.QUESTION, thread=tid, now=now, idem=idem
            )
            conn.execute("UPDATE threads SET question_id = ? WHERE id = ?", (msg.id, tid))
        self._notify([to], msg.id)
        return msg

    def answer(self, sender: str, thread: int, body: str) -> Message:
        """Answer thread ``thread`` (sent to the asker, kind ``answer``) and close it.

        Raises ``NotFound`` for an unknown thread, ``Forbidden`` when ``sender``
        is not the one the question was asked of, ``Conflict`` when it is
        already answered or was closed (``close_threads``).
        """
        _check_name(sender, "from")
        _check_id(thread, "thread")
        _check_body(body)
        with self._write() as conn:
            row = conn.execute(
                "SELECT asker, asked, answered_at, closed_reason FROM threads WHERE id = ?",
                (thread,),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"no thread {thread}; answer a thread id from a question you received", "thread"
                )
            if row["asked"] != sender:
                raise Forbidden(
                    f"thread {thread} was asked of {row['asked']}, not {sender}; "
                    f"only {row['asked']} can answer it",
                    "thread",
                )
            if row["closed_reason"] is not None:
                raise Conflict(
                    f"thread {thread} was closed ({row['closed_reason']}); nobody waits for "
                    "an answer any more",
                    "thread",
                )
            if row["answered_at"] is not None:
                raise Conflict(
                    f"thread {thread} is already answered; use send for a follow-up", "thread"
                )
            now = self._clock()
            msg = self._insert(
                conn, sender, row["asker"], body, MessageKind.ANSWER, thread=thread, now=now
            )
            conn.execute(
                "UPDATE threads SET answered_at = ?, answer_id = ? WHERE id = ?",
                (now, msg.id, thread),
            )
        self._notify([row["asker"], sender], msg.id)
        return msg

    def remind(
        self,
        recipient: str,
        after_seconds: float,
        body: str,
        *,
        idempotency_key: str | None = None,
    ) -> Message:
        """Deliver ``body`` to ``recipient`` (from itself, kind ``reminder``) after a delay.

        ``recv`` does not return it before it is due; a parked ``recv`` wakes
        when it falls due. ``message.extra["due_at"]`` is the due time (unix
        seconds). Raises ``Invalid`` unless 0 < after_seconds <= 30 days.
        ``idempotency_key`` as for ``send`` (a repeat returns the original
        reminder with its original due time).
        """
        _check_name(recipient, "recipient")
        _check_body(body)
        key = _check_key(idempotency_key)
        if (
            isinstance(after_seconds, bool)
            or not isinstance(after_seconds, int | float)
            or not 0 < after_seconds <= MAX_REMIND_SECONDS
        ):
            raise Invalid(
                f"after_seconds must be between 0 and {MAX_REMIND_SECONDS}", "after_seconds"
            )
        idem = None
        if key is not None:
            idem = _Idem(recipient, key, _request_digest("remind", after_seconds, body))
        with self._write() as conn:
            dup = self._replay(conn, idem)
            if dup is not None:
                return dup
            now = self._clock()
            msg = self._insert(
                conn,
                recipient,
                recipient,
                body,
                MessageKind.REMINDER,
                now=now,
                due_at=now + after_seconds,
                idem=idem,
            )
        self._notify([recipient], msg.id)
        return msg

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        """Close every open thread ``agent`` asked or was asked (call it when ``agent`` is
        destroyed); returns how many were closed.

        An asker still waiting on ``agent`` gets an ``answer`` message on the
        thread from ``hyperhive`` saying it was closed, so the thread leaves
        its ``open_threads`` and it knows not to wait; answering a closed
        thread is a ``Conflict``. ``reason`` defaults to "<agent> no longer
        exists". Idempotent (a second call closes nothing).
        """
        _check_name(agent, "agent")
        why = reason or f"{agent} no longer exists"
        woken: set[str] = set()
        last = 0
        with self._write() as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT id, asker, asked FROM threads WHERE answered_at IS NULL "
                "AND (asker = ? OR asked = ?) ORDER BY id",
                (agent, agent),
            ).fetchall()
            for row in rows:
                answer_id = None
                if row["asked"] == agent and row["asker"] != agent:
                    msg = self._insert(
                        conn,
                        EVENT_SENDER,
                        row["asker"],
                        f"[closed] thread {row['id']} will not be answered: {why}",
                        MessageKind.ANSWER,
                        thread=row["id"],
                        now=now,
                    )
                    answer_id, last = msg.id, msg.id
                    woken.add(row["asker"])
                conn.execute(
                    "UPDATE threads SET answered_at = ?, answer_id = ?, closed_reason = ? "
                    "WHERE id = ?",
                    (now, answer_id, why, row["id"]),
                )
            woken.update(r["asked"] for r in rows)
        if rows:
            self._notify(sorted(woken), last or None)
            log.info("closed %d open thread(s) of %s: %s", len(rows), agent, why)
        return len(rows)

    # ------------------------------------------------------------------ operator questions

    def ask_operator(
        self,
        question: str,
        options: Sequence[str] = (),
        multi: bool = False,
        ttl_seconds: float | None = None,
        *,
        asker: str = MANAGER,
    ) -> int:
        """Queue a question for the operator (dashboard / admin socket); returns its id at once.

        ``options`` offers choices (``multi``: several may be picked; needs
        options); ``ttl_seconds`` resolves it as ``[expired]`` after that long
        (see ``expire_questions``). The answer reaches ``asker`` as an
        ``OperatorAnswered`` event. Raises ``Invalid`` for bad arguments.
        """
        _check_body(question, "question")
        _check_name(asker, "asker")
        opts = list(options)
        if any(not isinstance(o, str) or not o for o in opts):
            raise Invalid("options must be non-empty strings", "options")
        if multi and not opts:
            raise Invalid("multi needs options to choose from", "multi")
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool)
            or not isinstance(ttl_seconds, int | float)
            or not 0 < ttl_seconds <= MAX_REMIND_SECONDS
        ):
            raise Invalid(f"ttl_seconds must be between 0 and {MAX_REMIND_SECONDS}", "ttl_seconds")
        with self._write() as conn:
            now = self._clock()
            qid = conn.execute(
                "INSERT INTO operator_questions "
                "(asker, question, options, multi, asked_at, deadline_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    asker,
                    question,
                    json.dumps(opts, ensure_ascii=False),
                    int(bool(multi)),
                    now,
                    None if ttl_seconds is None else now + ttl_seconds,
                ),
            ).fetchall()[0][0]
        return int(qid)

    def question(self, id: int) -> OperatorQuestion:
        """One operator question; ``NotFound`` if there is none with that id."""
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_Q_COLS} FROM operator_questions WHERE id = ?", (id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no operator question {id}", "id")
        return _row_question(row)

    def questions(self, pending_only: bool = False) -> list[OperatorQuestion]:
        """Operator questions, oldest first (only unresolved ones if ``pending_only``)."""
        where = "WHERE answered_at IS NULL" if pending_only else ""
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_Q_COLS} FROM operator_questions {where} ORDER BY id"
            ).fetchall()
        return [_row_question(r) for r in rows]

    def _resolve(self, id: int, answer: str | Sequence[str], resolution: str) -> OperatorQuestion:
        if not isinstance(id, int) or isinstance(id, bool) or not 1 <= id < 2**63:
            raise NotFound(f"no operator question {id}", "id")
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_Q_COLS} FROM operator_questions WHERE id = ?", (id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no operator question {id}", "id")
            if row["answered_at"] is not None:
                raise Conflict(
                    f"operator question {id} is already resolved "
                    f"({row['resolution']}: {row['answer']})",
                    "id",
                )
            asked = _row_question(row)
            if resolution == "answered" and asked.options:
                answer = _choices(answer, asked)
            elif not isinstance(answer, str):
                raise Invalid("answer must be a string (this question has no options)", "answer")
            now = self._clock()
            row = conn.execute(
                f"UPDATE operator_questions SET answer = ?, answered_at = ?, resolution = ? "
                f"WHERE id = ? RETURNING {_Q_COLS}",
                (answer, now, resolution, id),
            ).fetchall()[0]
            q = _row_question(row)
            event = {
                "type": str(EventType.OPERATOR_ANSWERED),
                "id": q.id,
                "question": q.question,
                "answer": answer,
            }
            msg = self._insert(
                conn,
                EVENT_SENDER,
                q.asker,
                summarize_event(event),
                MessageKind.EVENT,
                event=event,
                dedup_key=f"key:operator-answered:{q.id}",
                now=now,
            )
        self._notify([q.asker], msg.id)
        return q

    def answer_question(self, id: int, answer: str | Sequence[str]) -> OperatorQuestion:
        """Resolve question ``id`` with ``answer``; emits ``OperatorAnswered`` to the asker.

        A question with options takes exactly one of them (``multi``: one or
        more, as a list or joined by ``", "``; stored joined by ``", "``).
        Raises ``NotFound`` (no such question), ``Conflict`` (already answered,
        cancelled or expired), ``Invalid`` naming ``answer`` (not a string, or
        not among the options).
        """
        if isinstance(answer, str):
            pass
        elif isinstance(answer, list | tuple) and all(isinstance(a, str) for a in answer):
            answer = list(answer)
        else:
            raise Invalid("answer must be a string or a list of strings", "answer")
        return self._resolve(id, answer, "answered")

    def cancel_question(self, id: int) -> OperatorQuestion:
        """Resolve question ``id`` as ``[cancelled]`` (what the asker sees). NotFound / Conflict."""
        return self._resolve(id, CANCELLED, "cancelled")

    def expire_questions(self, now: float | None = None) -> list[OperatorQuestion]:
        """Resolve every pending question whose deadline is at or before ``now`` as ``[expired]``.

        The serve loop calls this (see ``next_question_deadline``). Returns the
        questions it expired; a question resolved concurrently is skipped.
        """
        at = self._clock() if now is None else now
        with self._locked() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM operator_questions WHERE answered_at IS NULL "
                    "AND deadline_at IS NOT NULL AND deadline_at <= ? ORDER BY id",
                    (at,),
                )
            ]
        out: list[OperatorQuestion] = []
        for qid in ids:
            try:
                out.append(self._resolve(qid, EXPIRED, "expired"))
            except Conflict:
                continue
        return out

    def next_question_deadline(self) -> float | None:
        """The earliest deadline (unix seconds) of a pending operator question, or None."""
        with self._locked() as conn:
            value = conn.execute(
                "SELECT min(deadline_at) FROM operator_questions WHERE answered_at IS NULL"
            ).fetchone()[0]
        return None if value is None else float(value)

    # ------------------------------------------------------------------ retention

    def sweep(self, now: float | None = None, keep_seconds: float = RETENTION_SECONDS) -> int:
        """Delete acked messages, dead letters, answered threads and resolved operator questions
        older than ``keep_seconds`` (30 days); undelivered and leased messages are always kept.

        Marks exhausted leases as dead letters first (``reap_dead_letters``),
        then truncates the WAL (``wal_checkpoint(TRUNCATE)``). Returns the
        number of messages deleted. ``hyperhive serve`` calls it hourly.
        """
        at = self._clock() if now is None else now
        self.reap_dead_letters(at)
        cutoff = at - keep_seconds
        with self._write() as conn:
            deleted = conn.execute(
                "DELETE FROM messages WHERE acked_at IS NOT NULL AND acked_at < ?", (cutoff,)
            ).rowcount
            deleted += conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages INDEXED BY "
                "messages_dead WHERE dead_at IS NOT NULL AND dead_at < ?)",
                (cutoff,),
            ).rowcount
            conn.execute(
                "DELETE FROM threads WHERE answered_at IS NOT NULL AND answered_at < ?", (cutoff,)
            )
            conn.execute(
                "DELETE FROM operator_questions WHERE answered_at IS NOT NULL AND answered_at < ?",
                (cutoff,),
            )
        with self._locked() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if deleted:
            log.info("broker sweep: deleted %d message(s) acked before %s", deleted, cutoff)
        return int(deleted)
