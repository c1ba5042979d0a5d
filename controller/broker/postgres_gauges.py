"""``Tx.gauges`` on the PostgreSQL store: aggregate queries over the broker's partial indexes
(``messages_inbox``, ``messages_leased``, ``messages_reminders``, ``threads_open_asker``,
``questions_pending``), so a scrape costs O(pending), not O(messages kept); the sent counts
are a primary-key range (``id > sent_after``: ids commit in id order, ``postgres_tx``).
Agent names are stored NUL-escaped and decoded here."""

from __future__ import annotations

from typing import Any

import psycopg

from controller.broker.model import BrokerGauges
from controller.broker.postgres_tx import dec

_INBOX = "acked_at IS NULL AND dead_at IS NULL"
_SQL = {
    "inbox": (
        "SELECT recipient AS k, count(*) AS n, min(id) AS first FROM messages "
        f"WHERE {_INBOX} AND due_at <= %(now)s "
        "AND (lease_until IS NULL OR lease_until <= %(now)s) GROUP BY recipient"
    ),
    "leased": (
        "SELECT recipient AS k, count(*) AS n FROM messages "
        f"WHERE lease_until IS NOT NULL AND {_INBOX} AND lease_until > %(now)s "
        "GROUP BY recipient"
    ),
    "reminders": (
        "SELECT recipient AS k, count(*) AS n FROM messages "
        f"WHERE kind = 'reminder' AND {_INBOX} AND due_at > %(now)s GROUP BY recipient"
    ),
    "threads": (
        "SELECT asker AS k, count(*) AS n FROM threads WHERE answered_at IS NULL GROUP BY asker"
    ),
}


def gauges(
    conn: psycopg.Connection[dict[str, Any]], now: float, sent_after: int | None
) -> BrokerGauges:
    """The ``BrokerGauges`` of the database on ``conn`` at ``now`` (unix seconds)."""
    rows = {name: conn.execute(sql.encode(), {"now": now}).fetchall() for name, sql in _SQL.items()}
    firsts = [int(r["first"]) for r in rows["inbox"]]
    at: dict[int, float] = {}
    if firsts:
        for r in conn.execute(
            "SELECT id, greatest(sent_at, due_at) AS at FROM messages WHERE id = ANY(%s)",
            (firsts,),
        ):
            at[int(r["id"])] = float(r["at"])
    q = conn.execute(
        "SELECT count(*) AS n FROM operator_questions WHERE answered_at IS NULL"
    ).fetchone()
    top = conn.execute("SELECT coalesce(max(id), 0) AS n FROM messages").fetchone()
    last_id = int(top["n"]) if top else 0
    sent: dict[str, int] = {}
    if sent_after is not None:
        for r in conn.execute(
            "SELECT sender AS k, count(*) AS n FROM messages WHERE id > %s AND id <= %s "
            "GROUP BY sender",
            (sent_after, last_id),
        ):
            sent[dec(r["k"])] = int(r["n"])

    def counts(name: str) -> dict[str, int]:
        return {dec(r["k"]): int(r["n"]) for r in rows[name]}

    return BrokerGauges(
        inbox={dec(r["k"]): (int(r["n"]), at.get(int(r["first"]), now)) for r in rows["inbox"]},
        leased=counts("leased"),
        reminders=counts("reminders"),
        open_threads=counts("threads"),
        questions_pending=int(q["n"]) if q else 0,
        sent=sent,
        last_id=last_id,
    )
