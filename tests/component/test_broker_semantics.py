"""Broker semantics added after the first slice: idempotency keys, dead letters, closing
threads of a gone agent, operator answers restricted to the options, on both stores; the
sqlite version-1 file migration and retention with a fake clock (the WAL shrinks after the
checkpoint); the PostgreSQL schema versions."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from controller.broker import MAX_DELIVERIES, SCHEMA_VERSION, Broker
from controller.errors import Conflict, Invalid
from schemas.validate import validate
from schemas.wire import EventType, MessageKind, Status
from tests.brokerstore import FakeClock


def _drain(b: Broker, who: str) -> list[str]:
    out = []
    while (m := b.recv(who)) is not None:
        out.append(m.body)
    return out


# ---------------------------------------------------------------------- idempotency keys


def test_send_repeat_with_key_returns_the_original(broker: Broker) -> None:
    first = broker.send("alice", "bob", "hi", idempotency_key="k1")
    again = broker.send("alice", "bob", "hi", idempotency_key="k1")
    assert again.id == first.id and again.extra["duplicate"] is True
    assert "duplicate" not in first.extra
    assert _drain(broker, "bob") == ["hi"]
    # after delivery a repeat still answers the original (delivered) message
    late = broker.send("alice", "bob", "hi", idempotency_key="k1")
    assert late.id == first.id and late.delivered_at is not None
    assert broker.recv("bob") is None


def test_key_is_per_sender_and_must_match_the_request(broker: Broker) -> None:
    a = broker.send("alice", "bob", "hi", idempotency_key="same")
    c = broker.send("carol", "bob", "hi", idempotency_key="same")
    assert a.id != c.id
    with pytest.raises(Conflict) as exc:
        broker.send("alice", "bob", "something else", idempotency_key="same")
    assert exc.value.field == "idempotency_key" and str(a.id) in exc.value.message
    with pytest.raises(Conflict):
        broker.send("alice", "carol", "hi", idempotency_key="same")
    # no key: never deduplicated
    assert broker.send("alice", "bob", "hi").id != broker.send("alice", "bob", "hi").id


@pytest.mark.parametrize("bad", ["", "x" * 129, 7, b"k"])
def test_bad_keys_are_invalid(broker: Broker, bad: object) -> None:
    with pytest.raises(Invalid) as exc:
        broker.send("alice", "bob", "hi", idempotency_key=bad)  # type: ignore[arg-type]
    assert exc.value.field == "idempotency_key"
    broker.send("alice", "bob", "hi", idempotency_key="x" * 128)


def test_ask_and_remind_repeat(broker: Broker, clock: FakeClock) -> None:
    q1 = broker.ask("alice", "bob", "lunch?", idempotency_key="q")
    q2 = broker.ask("alice", "bob", "lunch?", idempotency_key="q")
    assert (q2.id, q2.thread) == (q1.id, q1.thread) and q2.extra["duplicate"]
    assert broker.status("alice").open_threads == 1
    r1 = broker.remind("alice", 60, "stretch", idempotency_key="r")
    clock.now += 5
    r2 = broker.remind("alice", 60, "stretch", idempotency_key="r")
    assert r2.id == r1.id and r2.extra["due_at"] == r1.extra["due_at"]
    with pytest.raises(Conflict):
        broker.remind("alice", 61, "stretch", idempotency_key="r")
    # the same key on another verb of the same caller is a different request
    with pytest.raises(Conflict):
        broker.send("alice", "bob", "lunch?", idempotency_key="q")


def test_wake_keys_belong_to_the_inbox_owner(broker: Broker) -> None:
    w1 = broker.send(
        "cron", "bob", "tick", kind=MessageKind.WAKE, idempotency_key="t", idempotency_owner="bob"
    )
    w2 = broker.send(
        "cron", "bob", "tick", kind=MessageKind.WAKE, idempotency_key="t", idempotency_owner="bob"
    )
    assert w1.id == w2.id
    assert broker.send("cron", "carol", "tick", kind=MessageKind.WAKE, idempotency_key="t").id


def test_concurrent_repeats_queue_one_message(broker: Broker) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def go() -> None:
        m = broker.send("alice", "bob", "once", idempotency_key="race")
        with lock:
            ids.append(m.id)

    ts = [threading.Thread(target=go) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(ids)) == 1 and _drain(broker, "bob") == ["once"]


def test_keys_survive_a_reopen(where: Path | str) -> None:
    b = Broker(where)
    m = b.send("alice", "bob", "hi", idempotency_key="persist")
    b.close()
    b = Broker(where)
    assert b.send("alice", "bob", "hi", idempotency_key="persist").id == m.id
    b.close()


# ---------------------------------------------------------------------- dead letters


def _lease_until_dead(b: Broker, clock: FakeClock, who: str, n: int) -> list[int]:
    ids = []
    for _ in range(n):
        m = b.recv(who, 0, lease_seconds=10)
        assert m is not None
        ids.append(m.id)
        clock.now += 11  # the turn "crashed": never acked, the lease runs out
    return ids


def test_poison_message_becomes_a_dead_letter(broker: Broker, clock: FakeClock) -> None:
    poison = broker.send("alice", "bob", "poison")
    fine = broker.send("alice", "bob", "fine")
    # the poison message is redelivered at its place in the order each time its lease ends
    for attempt in range(1, MAX_DELIVERIES + 1):
        m = broker.recv("bob", 0, lease_seconds=10)
        assert m is not None and m.id == poison.id and m.extra["attempts"] == attempt
        clock.now += 11
    assert broker.status("bob") == Status(unread=1, dead_letters=1)
    m = broker.recv("bob", 0, lease_seconds=10)
    assert m is not None and m.id == fine.id  # the poison one is skipped for good
    broker.ack("bob", [fine.id])
    clock.now += 3600
    assert broker.recv("bob", 0, lease_seconds=10) is None
    assert broker.status("bob") == Status(dead_letters=1)
    dead = broker.dead_letters("bob")
    assert [d.id for d in dead] == [poison.id] and dead[0].dead_at is not None
    assert dead[0].acked_at is None and "dead_at" in dead[0].to_json()
    validate(dead[0].to_json(), "wire#Message")
    assert broker.dead_letter_counts() == {"bob": 1}
    # the manager hears about it once, as a typed event
    events = [m for m in broker.recent("manager", 50) if m.kind is MessageKind.EVENT]
    assert len(events) == 1
    ev = events[0].event
    assert ev is not None
    validate(ev, "events")
    assert ev["type"] == EventType.DEAD_LETTER and ev["id"] == poison.id
    assert ev["agent"] == "bob" and ev["from"] == "alice" and ev["attempts"] == MAX_DELIVERIES
    assert "dead" in events[0].body and "bob" in events[0].body
    assert broker.status("manager").unread == 1


def test_plain_recv_never_dead_letters(broker: Broker, clock: FakeClock) -> None:
    broker.send("alice", "bob", "x")
    assert broker.recv("bob") is not None
    clock.now += 10**6
    assert broker.status("bob") == Status()


def test_ack_before_the_last_lease_ends_saves_it(broker: Broker, clock: FakeClock) -> None:
    m = broker.send("alice", "bob", "slow but fine")
    _lease_until_dead(broker, clock, "bob", MAX_DELIVERIES - 1)
    last = broker.recv("bob", 0, lease_seconds=10)
    assert last is not None and last.id == m.id
    assert broker.ack("bob", [m.id]) == 1
    clock.now += 100
    assert broker.status("bob") == Status() and broker.dead_letters() == []


def test_late_ack_of_a_dead_letter_counts(broker: Broker, clock: FakeClock) -> None:
    m = broker.send("alice", "bob", "x")
    _lease_until_dead(broker, clock, "bob", MAX_DELIVERIES)
    assert broker.reap_dead_letters() == 1
    assert broker.ack("bob", [m.id]) == 1
    assert broker.status("bob") == Status() and broker.dead_letters() == []


def test_requeue_dead_letters(broker: Broker, clock: FakeClock) -> None:
    m = broker.send("alice", "bob", "x")
    _lease_until_dead(broker, clock, "bob", MAX_DELIVERIES)
    broker.reap_dead_letters()
    assert broker.requeue_dead_letters([m.id, 999]) == 1
    again = broker.recv("bob", 0, lease_seconds=10)
    assert again is not None and again.id == m.id and again.extra["attempts"] == 1
    assert broker.status("bob").dead_letters == 0


def test_dead_dead_letter_events_do_not_chain(where: Path | str, clock: FakeClock) -> None:
    b = Broker(where, clock=clock, max_deliveries=1)
    b.send("alice", "bob", "x")
    _lease_until_dead(b, clock, "bob", 1)
    assert b.reap_dead_letters() == 1
    # the manager's harness also dies on the DeadLetter event itself
    _lease_until_dead(b, clock, "manager", 1)
    assert b.reap_dead_letters() == 1
    assert len(b.messages(0)) == 2  # the message and one event: no event about the event
    assert b.dead_letter_counts() == {"bob": 1, "manager": 1}
    b.close()


def test_parked_recv_turns_an_expiring_lease_into_a_dead_letter(where: Path | str) -> None:
    """Real clock: a parked recv wakes when the last lease ends, marks the dead letter (the
    manager's parked recv gets the event at once) and goes back to waiting, not spinning."""
    b = Broker(where, max_deliveries=1)
    try:
        b.send("alice", "bob", "poison")
        assert b.recv("bob", 0, lease_seconds=1) is not None
        got: dict[str, object] = {}

        def manager() -> None:
            got["m"] = b.recv("manager", 10)
            got["t"] = time.monotonic()

        t_mgr = threading.Thread(target=manager)
        t_mgr.start()
        t0 = time.monotonic()
        assert b.recv("bob", 2.5, lease_seconds=1) is None
        waited = time.monotonic() - t0
        t_mgr.join(5)
        ev = got["m"]
        assert ev is not None and ev.event["type"] == "DeadLetter"  # type: ignore[attr-defined]
        assert float(got["t"]) - t0 < 1.8  # type: ignore[arg-type]
        assert 2.4 < waited < 4
        assert b.status("bob") == Status(dead_letters=1)
    finally:
        b.close()


def test_sweep_drops_dead_letters_after_retention(broker: Broker, clock: FakeClock) -> None:
    broker.send("alice", "bob", "x")
    _lease_until_dead(broker, clock, "bob", MAX_DELIVERIES)
    broker.sweep()  # marks it dead (and keeps it)
    assert broker.status("bob").dead_letters == 1
    clock.now += 31 * 86400
    broker.sweep()
    assert broker.status("bob").dead_letters == 0 and broker.dead_letters() == []


# ---------------------------------------------------------------------- threads


def test_close_threads_of_a_destroyed_agent(broker: Broker) -> None:
    to_gone = broker.ask("alice", "zed", "are you there?")
    from_gone = broker.ask("zed", "bob", "help me?")
    unrelated = broker.ask("alice", "bob", "other")
    assert broker.status("alice").open_threads == 2
    assert broker.close_threads("zed") == 2
    assert broker.close_threads("zed") == 0
    # alice's question to zed is closed with a notice on the thread
    assert broker.status("alice").open_threads == 1
    notice = [m for m in broker.recent("alice") if m.kind is MessageKind.ANSWER]
    assert len(notice) == 1 and notice[0].thread == to_gone.thread
    assert notice[0].sender == "hyperhive" and "zed no longer exists" in notice[0].body
    # bob need not answer zed any more, and cannot
    assert broker.status("bob").open_threads == 1
    assert from_gone.thread is not None
    with pytest.raises(Conflict) as exc:
        broker.answer("bob", from_gone.thread, "too late")
    assert exc.value.field == "thread" and "closed" in exc.value.message
    assert unrelated.thread is not None
    broker.answer("bob", unrelated.thread, "fine")
    assert broker.status("alice").open_threads == 0


def test_close_threads_wakes_a_parked_asker(where: Path | str) -> None:
    b = Broker(where)
    try:
        b.ask("alice", "zed", "q")
        assert b.recv("zed") is not None
        got: dict[str, object] = {}
        t = threading.Thread(target=lambda: got.setdefault("m", b.recv("alice", 10)))
        t.start()
        time.sleep(0.2)
        b.close_threads("zed")
        t.join(5)
        assert got["m"] is not None
    finally:
        b.close()


# ---------------------------------------------------------------------- operator answers


def test_operator_answer_must_be_an_option(broker: Broker) -> None:
    qid = broker.ask_operator("deploy?", ["yes", "no"])
    with pytest.raises(Invalid) as exc:
        broker.answer_question(qid, "maybe")
    assert exc.value.field == "answer" and "'yes'" in exc.value.message
    with pytest.raises(Invalid):
        broker.answer_question(qid, ["yes", "no"])  # single choice
    with pytest.raises(Invalid):
        broker.answer_question(qid, "yes, no")
    q = broker.answer_question(qid, " yes ")
    assert q.answer == "yes" and q.state == "answered"
    ev = next(m.event for m in broker.recent("manager") if m.event)
    assert ev["answer"] == "yes"


def test_multi_answers_are_subsets(broker: Broker) -> None:
    opts = ["red", "green, dark", "blue"]
    qid = broker.ask_operator("colours?", opts, multi=True)
    for bad in (["red", "red"], ["pink"], [], "red, pink", "", "red,blue"):
        with pytest.raises(Invalid) as exc:
            broker.answer_question(qid, bad)
        assert exc.value.field == "answer"
    assert broker.answer_question(qid, "blue, green, dark").answer == "blue, green, dark"
    q2 = broker.ask_operator("again?", opts, multi=True)
    assert broker.answer_question(q2, ["green, dark", "red"]).answer == "green, dark, red"
    q3 = broker.ask_operator("one?", opts, multi=True)
    assert broker.answer_question(q3, "red").answer == "red"


def test_free_text_questions_take_any_string(broker: Broker) -> None:
    qid = broker.ask_operator("why?")
    with pytest.raises(Invalid):
        broker.answer_question(qid, ["a"])
    assert broker.answer_question(qid, "because").answer == "because"
    # cancel and expiry of a question with options are not answers: no option check
    q2 = broker.ask_operator("x?", ["a"])
    assert broker.cancel_question(q2).answer == "[cancelled]"


# ---------------------------------------------------------------------- migration, retention

_V1 = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL, thread INTEGER, event TEXT, dedup_key TEXT,
    sent_at REAL NOT NULL, due_at REAL NOT NULL, delivered_at REAL, lease_until REAL,
    acked_at REAL, attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX messages_pending
    ON messages(recipient, id, due_at, lease_until, kind, acked_at) WHERE acked_at IS NULL;
CREATE TABLE threads (id INTEGER PRIMARY KEY AUTOINCREMENT, asker TEXT NOT NULL,
    asked TEXT NOT NULL, question_id INTEGER, opened_at REAL NOT NULL, answered_at REAL,
    answer_id INTEGER);
CREATE TABLE operator_questions (id INTEGER PRIMARY KEY AUTOINCREMENT, asker TEXT NOT NULL,
    question TEXT NOT NULL, options TEXT NOT NULL, multi INTEGER NOT NULL,
    asked_at REAL NOT NULL, deadline_at REAL, answer TEXT, answered_at REAL, resolution TEXT);
INSERT INTO messages (sender, recipient, kind, body, sent_at, due_at)
    VALUES ('alice', 'bob', 'message', 'from v1', 1, 1);
INSERT INTO threads (asker, asked, opened_at) VALUES ('alice', 'bob', 1);
PRAGMA user_version=1;
"""


def test_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1)
    conn.close()
    b = Broker(path)
    try:
        assert b.status("bob") == Status(unread=1, open_threads=1)
        m = b.recv("bob")
        assert m is not None and m.body == "from v1"
        assert (
            b.send("a", "b", "x", idempotency_key="k").id
            == b.send("a", "b", "x", idempotency_key="k").id
        )
        assert b.close_threads("bob") == 1
    finally:
        b.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "messages_pending" not in names and "messages_inbox" in names
    conn.close()
    Broker(path).close()  # opening again changes nothing


def test_retention_with_a_fake_clock_and_the_wal_shrinks(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "b.sqlite"
    b = Broker(path, clock=clock)
    try:
        body = "x" * 2000
        for i in range(600):
            b.send("alice", "bob", f"{i}:{body}")
        for _ in range(500):
            assert b.recv("bob") is not None  # 500 delivered (acked), 100 still unread
        leased = b.recv("bob", 0, lease_seconds=86400)
        assert leased is not None
        wal = Path(f"{path}-wal")
        before = wal.stat().st_size
        assert before > 1_000_000
        clock.now += 29 * 86400
        assert b.sweep() == 0  # nothing is 30 days old yet
        clock.now += 2 * 86400
        fresh = b.send("alice", "bob", "fresh")
        assert b.recv("carol") is None
        assert b.sweep() == 500
        assert wal.stat().st_size < before and wal.stat().st_size == 0
        left = b.messages(0, 1000)
        assert len(left) == 101  # 99 undelivered + the leased one + fresh
        assert leased.id in {m.id for m in left} and fresh.id in {m.id for m in left}
        assert all(m.acked_at is None for m in left)
        assert b.status("bob").unread == 101  # the lease ran out meanwhile
    finally:
        b.close()
