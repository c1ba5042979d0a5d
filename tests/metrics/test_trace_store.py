"""A message's trace context is stored with it, on sqlite and on a real PostgreSQL server
(``where``): send / ask / answer keep the W3C ``traceparent``, ``recv`` hands it back after
the broker is reopened, a controller restart included; the broker takes nothing but a W3C
``traceparent``; a database of the previous schema version upgrades in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from controller.broker import SCHEMA_VERSION, Broker
from controller.broker.checks import check_traceparent
from controller.broker.postgres_schema import MIGRATIONS, SCHEMA_TABLE, applied_versions
from controller.errors import Invalid
from schemas.client import ApiError
from tests.brokerserve import Controller, serve_controller
from tests.brokerstore import STORES

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TP2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"

BAD = [
    "",
    TP + "\n",  # a trailing newline passes a ``$``-anchored pattern
    TP.upper(),
    "ff" + TP[2:],  # version ff is invalid
    "00-" + "0" * 32 + TP[35:],  # all-zero trace id
    TP[:36] + "0" * 16 + "-01",  # all-zero parent id
    TP + "-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01;rm -rf /",
    "x" * 55,
]


def test_only_a_w3c_traceparent_is_taken() -> None:
    assert check_traceparent(TP) == TP
    assert check_traceparent(None) is None
    for bad in BAD:
        with pytest.raises(Invalid) as refused:
            check_traceparent(bad)
        assert refused.value.field == "traceparent", bad
    with pytest.raises(Invalid):
        check_traceparent(42)


def test_send_ask_answer_keep_the_traceparent(where: Path | str) -> None:
    b = Broker(where)
    try:
        sent = b.send("alice", "bob", "traced", traceparent=TP)
        assert sent.traceparent == TP
        b.send("alice", "bob", "untraced")
        q = b.ask("alice", "bob", "why?", traceparent=TP2)
        for bad in BAD[:3]:
            with pytest.raises(Invalid):
                b.send("alice", "bob", "x", traceparent=bad)
            with pytest.raises(Invalid):
                b.ask("alice", "bob", "x", traceparent=bad)
        # a retry under the same key replays the first message, its trace context included
        first = b.send("alice", "bob", "keyed", idempotency_key="k", traceparent=TP)
        again = b.send("alice", "bob", "keyed", idempotency_key="k", traceparent=TP2)
        assert again.id == first.id and again.traceparent == TP
    finally:
        b.close()
    b = Broker(where)  # reopened: the trace context was stored, not remembered
    try:
        got = [b.recv("bob") for _ in range(4)]
        assert [(m.body, m.traceparent) for m in got if m is not None] == [
            ("traced", TP),
            ("untraced", None),
            ("why?", TP2),
            ("keyed", TP),
        ]
        assert got[0] is not None and got[0].to_json()["traceparent"] == TP
        assert "traceparent" not in got[1].to_json()  # type: ignore[union-attr]
        with pytest.raises(Invalid):
            b.answer("bob", q.thread or 0, "x", traceparent=BAD[1])
        a = b.answer("bob", q.thread or 0, "because", traceparent=TP)
        m = b.recv("alice")
        assert m is not None and m.id == a.id and m.traceparent == TP
        assert [x.traceparent for x in b.messages(0)][:2] == [TP, None]
    finally:
        b.close()


def test_a_version_2_sqlite_file_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    Broker(path).close()
    conn = sqlite3.connect(path)  # the previous version: no traceparent column
    conn.execute("ALTER TABLE messages DROP COLUMN traceparent")
    conn.execute(
        "INSERT INTO messages (sender, recipient, kind, body, sent_at, due_at) "
        "VALUES ('alice', 'bob', 'message', 'from v2', 1, 1)"
    )
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    b = Broker(path)
    try:
        b.send("alice", "bob", "from v3", traceparent=TP)
        old, new = b.recv("bob"), b.recv("bob")
        assert old is not None and (old.body, old.traceparent) == ("from v2", None)
        assert new is not None and (new.body, new.traceparent) == ("from v3", TP)
    finally:
        b.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()
    Broker(path).close()  # opening again changes nothing


def test_a_version_1_postgresql_database_upgrades_in_place(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the previous version, by hand
        conn.execute(
            f"CREATE TABLE {SCHEMA_TABLE} (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at double precision NOT NULL)"
        )
        first = MIGRATIONS[0]
        assert first.version == 1
        for stmt in first.statements:
            conn.execute(stmt.encode())
        conn.execute(f"INSERT INTO {SCHEMA_TABLE} VALUES (1, %s, 0)", (first.description,))
        conn.execute(
            "INSERT INTO messages (sender, recipient, kind, body, sent_at, due_at) "
            "VALUES ('alice', 'bob', 'message', 'from v1', 1, 1)"
        )
    b = Broker(pg_url)
    try:
        b.send("alice", "bob", "from v2", traceparent=TP)
        old, new = b.recv("bob"), b.recv("bob")
        assert old is not None and (old.body, old.traceparent) == ("from v1", None)
        assert new is not None and (new.body, new.traceparent) == ("from v2", TP)
    finally:
        b.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert applied_versions(conn) == [1, 2]
    Broker(pg_url).close()  # opening again changes nothing


@pytest.fixture(params=STORES)
def controller(request: pytest.FixtureRequest) -> Iterator[Controller]:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    with serve_controller(url) as c:
        yield c


def test_a_traced_message_survives_a_controller_restart(controller: Controller) -> None:
    """Through the agent API of a real ``hyperhive serve`` (its harnesses stand-ins that
    never read the inbox): sent with a traceparent, the controller killed and started
    again, received with it."""
    c = controller
    c.start()
    mgr = c.manager()
    for bad in BAD:
        with pytest.raises(ApiError) as refused:
            mgr.post("/send", {"to": "manager", "body": "x", "traceparent": bad})
        assert refused.value.status == 400, bad
        assert refused.value.field == "traceparent", (bad, refused.value)
    sent = mgr.post("/send", {"to": "manager", "body": "traced", "traceparent": TP})
    c.kill9()
    c.start()
    got = c.manager().post("/recv", {})["message"]
    assert got["id"] == sent["id"] and got["traceparent"] == TP
