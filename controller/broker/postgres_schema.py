"""The PostgreSQL store's schema, as numbered migrations.

``hyperhive_broker_schema`` holds one row per applied version. ``migrate`` takes an advisory
lock (several controllers may start at once), applies the missing versions, each with its
row, in one transaction (all or nothing), and refuses a database that a newer hyperhive migrated
(``SchemaTooNew``). A migration is never edited once released: add the next version.

Times are unix seconds in ``double precision`` (the semantics' clock, as in the sqlite
store); ``event`` and ``options`` are JSON text (key order kept, as stored by sqlite).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

SCHEMA_TABLE = "hyperhive_broker_schema"

_MIGRATE_LOCK = (0x6868, 0)
"""``pg_advisory_xact_lock(classid, objid)`` key held while migrating."""


@dataclass(frozen=True)
class Migration:
    """Version ``version``: ``description`` and the statements that make it."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages, threads and operator questions, with the broker's partial indexes",
        (
            """CREATE TABLE messages (
                id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                sender       text             NOT NULL,
                recipient    text             NOT NULL,
                kind         text             NOT NULL,
                body         text             NOT NULL,
                thread       bigint,
                event        text,
                dedup_key    text,
                sent_at      double precision NOT NULL,
                due_at       double precision NOT NULL,
                delivered_at double precision,
                lease_until  double precision,
                acked_at     double precision,
                attempts     integer          NOT NULL DEFAULT 0,
                idem_owner   text,
                idem_key     text,
                idem_hash    text,
                dead_at      double precision
            )""",
            """CREATE TABLE threads (
                id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                asker         text             NOT NULL,
                asked         text             NOT NULL,
                question_id   bigint,
                opened_at     double precision NOT NULL,
                answered_at   double precision,
                answer_id     bigint,
                closed_reason text
            )""",
            """CREATE TABLE operator_questions (
                id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                asker       text             NOT NULL,
                question    text             NOT NULL,
                options     text             NOT NULL,
                multi       boolean          NOT NULL,
                asked_at    double precision NOT NULL,
                deadline_at double precision,
                answer      text,
                answered_at double precision,
                resolution  text
            )""",
            # every pending row in delivery order: the claim stops at the first deliverable one
            "CREATE INDEX messages_inbox ON messages (recipient, id) "
            "WHERE acked_at IS NULL AND dead_at IS NULL",
            # the few pending rows that are leased, or reminders
            "CREATE INDEX messages_leased ON messages (recipient, lease_until) "
            "WHERE lease_until IS NOT NULL AND acked_at IS NULL AND dead_at IS NULL",
            "CREATE INDEX messages_reminders ON messages (recipient, due_at) "
            "WHERE kind = 'reminder' AND acked_at IS NULL AND dead_at IS NULL",
            "CREATE INDEX messages_to ON messages (recipient, id)",
            "CREATE INDEX messages_from ON messages (sender, id)",
            "CREATE INDEX messages_acked ON messages (acked_at) WHERE acked_at IS NOT NULL",
            "CREATE INDEX messages_dedup ON messages (recipient, dedup_key) "
            "WHERE dedup_key IS NOT NULL AND delivered_at IS NULL",
            "CREATE UNIQUE INDEX messages_idem ON messages (idem_owner, idem_key) "
            "WHERE idem_key IS NOT NULL",
            "CREATE INDEX messages_dead ON messages (recipient, dead_at) WHERE dead_at IS NOT NULL",
            "CREATE INDEX threads_open_asker ON threads (asker) WHERE answered_at IS NULL",
            "CREATE INDEX threads_open_asked ON threads (asked) WHERE answered_at IS NULL",
            "CREATE INDEX questions_pending ON operator_questions (deadline_at) "
            "WHERE answered_at IS NULL",
        ),
    ),
    Migration(
        2,
        "the trace context (W3C traceparent) a message carries from its sender's span",
        ("ALTER TABLE messages ADD COLUMN traceparent text",),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The newest schema version this hyperhive knows."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer hyperhive (``version`` > ``SCHEMA_VERSION``)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the broker database has schema version {version}, newer than this hyperhive's "
            f"{SCHEMA_VERSION}; run the newer hyperhive, or restore a backup"
        )
        self.version = version


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    """The versions recorded in ``hyperhive_broker_schema`` (none when it does not exist)."""
    row = conn.execute("SELECT to_regclass(%s)", (SCHEMA_TABLE,)).fetchone()
    if row is None or _first(row) is None:
        return []
    rows = conn.execute(f"SELECT version FROM {SCHEMA_TABLE} ORDER BY version").fetchall()
    return [int(_first(r)) for r in rows]


def _first(row: Any) -> Any:
    """The first column of a tuple row or a dict row."""
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def migrate(conn: psycopg.Connection[Any], now: float | None = None) -> list[int]:
    """Apply the missing migrations on ``conn`` (autocommit); the versions applied.

    Raises ``SchemaTooNew`` and what PostgreSQL raises (nothing of a failed version stays).
    """
    done: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATE_LOCK)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
            "version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at double precision NOT NULL)"
        )
        have = set(applied_versions(conn))
        newest = max(have, default=0)
        if newest > SCHEMA_VERSION:
            raise SchemaTooNew(newest)
        for m in MIGRATIONS:
            if m.version in have:
                continue
            with conn.transaction():
                for stmt in m.statements:
                    conn.execute(stmt.encode())
                conn.execute(
                    f"INSERT INTO {SCHEMA_TABLE} (version, description, applied_at) "
                    "VALUES (%s, %s, %s)",
                    (m.version, m.description, time.time() if now is None else now),
                )
            done.append(m.version)
    return done
