"""The sqlite store's schema and its in-place migration (``PRAGMA user_version``)."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3
"""``PRAGMA user_version``: 1 = first release; 2 adds idempotency keys, dead letters and
closed threads (columns added in place, the pending index rebuilt); 3 adds the messages'
``traceparent`` (nullable, added in place)."""

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
    dead_at      REAL,
    traceparent  TEXT
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

# columns added after version 1, for ALTER TABLE on an older file (version 2 added all but
# traceparent, version 3 traceparent)
_ADDED_COLUMNS = {
    "messages": (
        ("idem_owner", "TEXT"),
        ("idem_key", "TEXT"),
        ("idem_hash", "TEXT"),
        ("dead_at", "REAL"),
        ("traceparent", "TEXT"),  # version 3
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


def migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, add columns an older file lacks, (re)build the indexes."""
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
