"""``Tx.gauges`` on the sqlite store: aggregate queries over the broker's partial indexes.

Each query walks one partial index (pending rows, leased rows, reminders, open threads,
pending questions), so a scrape costs O(pending), not O(messages kept); the sent counts are
a primary-key range (``id > sent_after``). Runs under the store's lock, like every read.
"""

from __future__ import annotations

import sqlite3

from controller.broker.model import BrokerGauges

_INBOX = "acked_at IS NULL AND dead_at IS NULL"
_QUERIES = {
    # the covering pending index: count and first id per recipient, no table lookups
    "inbox": (
        "SELECT recipient, count(*), min(id) FROM messages INDEXED BY messages_inbox "
        f"WHERE {_INBOX} AND due_at <= :now AND (lease_until IS NULL OR lease_until <= :now) "
        "GROUP BY recipient"
    ),
    "leased": (
        "SELECT recipient, count(*) FROM messages INDEXED BY messages_leased "
        f"WHERE lease_until IS NOT NULL AND {_INBOX} AND lease_until > :now GROUP BY recipient"
    ),
    "reminders": (
        "SELECT recipient, count(*) FROM messages INDEXED BY messages_reminders "
        f"WHERE kind = 'reminder' AND {_INBOX} AND due_at > :now GROUP BY recipient"
    ),
    "threads": (
        "SELECT asker, count(*) FROM threads INDEXED BY threads_open_asker "
        "WHERE answered_at IS NULL GROUP BY asker"
    ),
}


def gauges(conn: sqlite3.Connection, now: float, sent_after: int | None) -> BrokerGauges:
    """The ``BrokerGauges`` of the database on ``conn`` at ``now`` (unix seconds)."""
    rows = {name: conn.execute(sql, {"now": now}).fetchall() for name, sql in _QUERIES.items()}
    first = {int(r[2]): str(r[0]) for r in rows["inbox"]}
    at: dict[int, float] = {}
    ids = list(first)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" for _ in chunk)
        for id_, when in conn.execute(
            f"SELECT id, max(sent_at, due_at) FROM messages WHERE id IN ({marks})", chunk
        ):
            at[int(id_)] = float(when)
    questions = conn.execute(
        "SELECT count(*) FROM operator_questions WHERE answered_at IS NULL"
    ).fetchone()[0]
    last_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
    sent: dict[str, int] = {}
    if sent_after is not None:
        for sender, n in conn.execute(
            "SELECT sender, count(*) FROM messages WHERE id > ? AND id <= ? GROUP BY sender",
            (sent_after, last_id),
        ):
            sent[str(sender)] = int(n)
    return BrokerGauges(
        inbox={str(r[0]): (int(r[1]), at.get(int(r[2]), now)) for r in rows["inbox"]},
        leased={str(r[0]): int(r[1]) for r in rows["leased"]},
        reminders={str(r[0]): int(r[1]) for r in rows["reminders"]},
        open_threads={str(r[0]): int(r[1]) for r in rows["threads"]},
        questions_pending=int(questions),
        sent=sent,
        last_id=last_id,
    )
