"""The sqlite broker on a real file: delivery order, long polls, leases, events, threads,
reminders, operator questions, retention, durability across reopen and a kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.broker import CANCELLED, EXPIRED, Broker, summarize_event
from controller.errors import Conflict, Forbidden, Invalid, NotFound
from schemas.validate import validate
from schemas.wire import MessageKind, Status
from tests.brokerstore import is_pg

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """Settable unix-seconds clock."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker(where: Path | str) -> Iterator[Broker]:
    b = Broker(where)
    yield b
    b.close()


def _in_thread(fn: object, *args: object) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        out["value"] = fn(*args)  # type: ignore[operator]
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---------------------------------------------------------------------- send / recv


def test_send_recv_in_order_and_marks_delivered(broker: Broker) -> None:
    ids = [broker.send("alice", "bob", f"m{i}").id for i in range(5)]
    assert ids == sorted(ids)
    got = [broker.recv("bob") for _ in range(5)]
    assert [m.body for m in got if m] == [f"m{i}" for i in range(5)]
    assert all(m and m.delivered_at and m.acked_at for m in got)
    assert broker.recv("bob") is None
    assert broker.recv("alice") is None


def test_message_wire_shape_validates(broker: Broker) -> None:
    m = broker.send("alice", "bob", "hello ✓")
    validate(m.to_json(), "wire#Message")
    got = broker.recv("bob")
    assert got is not None
    validate(got.to_json(), "wire#Message")
    assert got.body == "hello ✓"


def test_recv_peek_returns_at_once(broker: Broker) -> None:
    t0 = time.monotonic()
    assert broker.recv("bob", 0) is None
    assert time.monotonic() - t0 < 0.2


def test_long_poll_wakes_on_send(broker: Broker) -> None:
    t, out = _in_thread(broker.recv, "bob", 10)
    time.sleep(0.2)
    t0 = time.monotonic()
    broker.send("alice", "bob", "wake up")
    t.join(5)
    assert out["value"] is not None and out["value"].body == "wake up"  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 0.5


def test_long_poll_times_out(broker: Broker) -> None:
    t0 = time.monotonic()
    assert broker.recv("bob", 0.4) is None
    assert 0.35 < time.monotonic() - t0 < 2


def test_send_to_other_recipient_does_not_satisfy_recv(broker: Broker) -> None:
    t, out = _in_thread(broker.recv, "bob", 0.6)
    time.sleep(0.1)
    broker.send("alice", "carol", "not for bob")
    t.join(5)
    assert out["value"] is None
    assert out["elapsed"] >= 0.5  # type: ignore[operator]
    assert broker.recv("carol") is not None


def test_wait_is_clamped_to_180(broker: Broker) -> None:
    # a huge wait is clamped, not an error; a send ends it at once
    t, out = _in_thread(broker.recv, "bob", 10**9)
    time.sleep(0.1)
    broker.send("alice", "bob", "x")
    t.join(5)
    assert out["value"] is not None


def test_abandoned_recv_does_not_take_a_message(broker: Broker) -> None:
    gone = threading.Event()
    t, out = _in_thread(
        lambda: broker.recv("bob", 30, abandoned=gone.is_set),
    )
    time.sleep(0.2)
    gone.set()
    t.join(5)
    assert not t.is_alive() and out["value"] is None
    broker.send("alice", "bob", "still here")
    m = broker.recv("bob")
    assert m is not None and m.body == "still here"


def test_close_wakes_parked_recv(where: Path | str) -> None:
    b = Broker(where)
    t, out = _in_thread(b.recv, "bob", 30)
    time.sleep(0.2)
    b.close()
    t.join(5)
    assert not t.is_alive() and out["value"] is None


def test_many_parked_receivers_each_get_their_own(broker: Broker) -> None:
    names = [f"a{i}" for i in range(50)]
    threads = [_in_thread(broker.recv, n, 20) for n in names]
    time.sleep(0.3)
    for n in reversed(names):
        broker.send("op", n, f"for {n}")
    for (t, out), n in zip(threads, names, strict=True):
        t.join(5)
        assert out["value"] is not None and out["value"].body == f"for {n}"  # type: ignore[attr-defined]


def test_concurrent_senders_exactly_once_in_order(broker: Broker) -> None:
    senders, per = 8, 100
    received: list[str] = []

    def receive() -> None:
        while len(received) < senders * per:
            m = broker.recv("sink", 5)
            if m is None:
                return
            received.append(m.body)

    rt = threading.Thread(target=receive)
    rt.start()

    def send(i: int) -> None:
        for k in range(per):
            broker.send(f"s{i}", "sink", f"{i}:{k}")

    ts = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rt.join(30)
    assert len(received) == senders * per == len(set(received))
    for i in range(senders):  # each sender's messages arrive in its send order
        mine = [int(b.split(":")[1]) for b in received if b.startswith(f"{i}:")]
        assert mine == sorted(mine)


def test_invalid_arguments(broker: Broker) -> None:
    with pytest.raises(Invalid):
        broker.send("alice", "bob", "")
    with pytest.raises(Invalid):
        broker.send("", "bob", "x")
    with pytest.raises(Invalid) as e:
        broker.recv("bob", 0, lease_seconds=0)
    assert e.value.field == "lease_seconds"
    with pytest.raises(Invalid):
        broker.remind("bob", -1, "x")
    with pytest.raises(Invalid):
        broker.ack("bob", [0])


# ---------------------------------------------------------------------- leases


def test_lease_redelivers_after_expiry_unless_acked(broker: Broker) -> None:
    first = broker.send("alice", "bob", "leased").id
    broker.send("alice", "bob", "second")
    m = broker.recv("bob", 0, lease_seconds=1)
    assert m is not None and m.id == first and m.acked_at is None and m.extra["attempts"] == 1
    # while leased, the next message is delivered instead, and the leased one is not unread
    assert broker.status("bob").unread == 1
    m2 = broker.recv("bob", 0, lease_seconds=1)
    assert m2 is not None and m2.body == "second"
    assert broker.ack("bob", [m2.id]) == 1
    # a parked recv wakes when the lease runs out and gets the same id again
    t0 = time.monotonic()
    again = broker.recv("bob", 5, lease_seconds=30)
    assert again is not None and again.id == first and again.extra["attempts"] == 2
    assert 0.5 < time.monotonic() - t0 < 3
    assert broker.ack("bob", [first]) == 1
    assert broker.ack("bob", [first]) == 0  # repeated ack is harmless
    time.sleep(0.1)
    assert broker.recv("bob", 0) is None
    assert broker.status("bob") == Status(0, 0, 0)


def test_ack_ignores_undelivered_and_foreign_ids(broker: Broker) -> None:
    a = broker.send("x", "bob", "one").id
    c = broker.send("x", "carol", "two").id
    assert broker.ack("bob", [a, c, 999_999]) == 0  # never delivered / not bob's / unknown
    assert broker.recv("bob") is not None


# ---------------------------------------------------------------------- status, recent


def test_status_is_non_mutating(broker: Broker) -> None:
    broker.send("alice", "bob", "1")
    broker.send("alice", "bob", "2")
    for _ in range(3):
        assert broker.status("bob").unread == 2
    assert broker.recv("bob") is not None
    assert broker.status("bob").unread == 1


def test_recent_newest_last_to_or_from(broker: Broker) -> None:
    broker.send("alice", "bob", "a→b")
    broker.send("bob", "alice", "b→a")
    broker.send("carol", "dave", "unrelated")
    broker.send("carol", "bob", "c→b")
    broker.remind("bob", 3600, "later")
    assert [m.body for m in broker.recent("bob", 10)] == ["a→b", "b→a", "c→b"]
    assert [m.body for m in broker.recent("bob", 2)] == ["b→a", "c→b"]
    assert broker.status("bob").unread == 2  # recent does not deliver


def test_recent_has_a_due_reminder_once(where: Path | str) -> None:
    clock = FakeClock()
    b = Broker(where, clock=clock)
    r = b.remind("bob", 10, "to myself")
    b.send("bob", "alice", "out")
    assert [m.body for m in b.recent("bob")] == ["out"]
    clock.now += 11
    assert [m.id for m in b.recent("bob")] == [r.id, r.id + 1]
    b.close()


def test_messages_and_wait_for_new(broker: Broker) -> None:
    a = broker.send("x", "y", "one").id
    assert [m.id for m in broker.messages(0)] == [a]
    assert broker.messages(a) == []
    assert broker.last_id() == a
    t, out = _in_thread(broker.wait_for_new, a, 5)
    time.sleep(0.2)
    b = broker.send("x", "z", "two").id
    t.join(5)
    assert [m.id for m in out["value"]] == [b]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    assert broker.wait_for_new(b, 0.3) == []
    assert time.monotonic() - t0 >= 0.25


# ---------------------------------------------------------------------- events


def test_emit_event_summary_validation_and_dedup(broker: Broker) -> None:
    ev = {"type": "ApprovalResolved", "id": 3, "decision": "deployed", "agents": ["alice"]}
    m = broker.emit_event("manager", ev)
    assert m is not None and m.kind is MessageKind.EVENT and m.event == ev
    assert m.body == "proposal 3 deployed (alice)" and m.sender == "hyperhive"
    assert broker.emit_event("manager", dict(ev)) is None  # same JSON, undelivered → coalesced
    assert broker.emit_event("manager", {**ev, "note": "x"}) is not None  # different JSON
    crash = {"type": "ContainerCrash", "agent": "bob", "restarts": 1}
    assert broker.emit_event("manager", crash, dedup_key="crash:bob") is not None
    assert broker.emit_event("manager", {**crash, "restarts": 2}, dedup_key="crash:bob") is None
    assert broker.emit_event("alice", crash, dedup_key="crash:bob") is not None  # per recipient
    assert broker.status("manager").unread == 3
    while broker.recv("manager", 0) is not None:
        pass
    # once delivered, the same event is news again
    assert broker.emit_event("manager", crash, dedup_key="crash:bob") is not None
    with pytest.raises(Invalid) as e:
        broker.emit_event("manager", {"type": "ContainerCrash"})
    assert e.value.field is not None and e.value.field.startswith("event")
    with pytest.raises(Invalid):
        broker.emit_event("manager", {"type": "Bogus", "agent": "x"})


@pytest.mark.parametrize(
    ("event", "summary"),
    [
        ({"type": "ContainerCrash", "agent": "bob", "restarts": 2}, "bob crashed (restarts: 2)"),
        (
            {"type": "NeedsLogin", "agent": "bob"},
            "bob needs login (only the operator can complete it)",
        ),
        ({"type": "LoggedIn", "agent": "bob"}, "bob logged in"),
        (
            {"type": "NeedsUpdate", "agent": "bob", "note": "new\nversion"},
            "bob needs update: new version",
        ),
        ({"type": "Rebuilt", "agent": "bob", "commit": "a" * 40}, "bob rebuilt at aaaaaaaaaaaa"),
        (
            {
                "type": "ApprovalResolved",
                "id": 4,
                "kind": "spawn",
                "decision": "denied",
                "note": "no",
            },
            "proposal 4 spawn denied: no",
        ),
        (
            {"type": "OperatorAnswered", "id": 2, "question": "q", "answer": "yes"},
            "operator answered question 2: yes",
        ),
    ],
)
def test_event_summaries(event: dict[str, object], summary: str) -> None:
    validate(event, "events")
    assert summarize_event(event) == summary


# ---------------------------------------------------------------------- reminders


def test_reminder_not_delivered_before_due_and_wakes_parked_recv(broker: Broker) -> None:
    r = broker.remind("bob", 0.8, "stand-up")
    assert r.kind is MessageKind.REMINDER and r.sender == "bob" and r.extra["due_at"] > r.sent_at
    assert broker.status("bob") == Status(0, 0, 1)
    assert broker.recv("bob", 0) is None
    t0 = time.monotonic()
    m = broker.recv("bob", 5)
    assert m is not None and m.id == r.id
    assert 0.5 < time.monotonic() - t0 < 2.5
    assert broker.status("bob") == Status(0, 0, 0)


def test_reminder_created_while_parked_wakes_at_due_time(broker: Broker) -> None:
    t, out = _in_thread(broker.recv, "bob", 10)
    time.sleep(0.2)
    broker.remind("bob", 0.5, "soon")
    t.join(5)
    assert out["value"] is not None and out["value"].body == "soon"  # type: ignore[attr-defined]
    assert out["elapsed"] < 3  # type: ignore[operator]


def test_due_reminder_counts_as_unread(where: Path | str) -> None:
    clock = FakeClock()
    b = Broker(where, clock=clock)
    b.remind("bob", 60, "later")
    assert b.status("bob") == Status(0, 0, 1)
    clock.now += 61
    assert b.status("bob") == Status(1, 0, 0)
    m = b.recv("bob")
    assert m is not None and m.body == "later"
    b.close()


# ---------------------------------------------------------------------- threads


def test_ask_answer_threads(broker: Broker) -> None:
    q = broker.ask("alice", "bob", "what is 2+2?")
    assert q.kind is MessageKind.QUESTION and q.thread is not None
    assert broker.status("alice").open_threads == 1
    assert broker.status("bob").open_threads == 1
    with pytest.raises(Forbidden):
        broker.answer("carol", q.thread, "5")
    with pytest.raises(NotFound):
        broker.answer("bob", q.thread + 1000, "4")
    a = broker.answer("bob", q.thread, "4")
    assert a.kind is MessageKind.ANSWER and a.recipient == "alice" and a.thread == q.thread
    with pytest.raises(Conflict):
        broker.answer("bob", q.thread, "four")
    assert broker.status("alice").open_threads == 0
    assert broker.status("bob").open_threads == 0
    got = broker.recv("alice")
    assert got is not None and got.body == "4" and got.thread == q.thread
    q2 = broker.ask("alice", "bob", "again?")
    assert q2.thread != q.thread


# ---------------------------------------------------------------------- operator questions


def test_operator_question_answer_emits_event(broker: Broker) -> None:
    qid = broker.ask_operator("deploy now?", ["yes", "no"])
    (q,) = broker.questions(pending_only=True)
    assert q.id == qid and q.options == ("yes", "no") and q.state == "pending"
    done = broker.answer_question(qid, "yes")
    assert done.answer == "yes" and done.state == "answered" and done.answered_at
    assert broker.questions(pending_only=True) == []
    assert [x.id for x in broker.questions()] == [qid]
    m = broker.recv("manager")
    assert m is not None and m.kind is MessageKind.EVENT
    assert m.event == {
        "type": "OperatorAnswered",
        "id": qid,
        "question": "deploy now?",
        "answer": "yes",
    }
    with pytest.raises(Conflict):
        broker.answer_question(qid, "no")
    with pytest.raises(Conflict):
        broker.cancel_question(qid)
    with pytest.raises(NotFound):
        broker.answer_question(qid + 100, "x")


def test_operator_question_cancel_and_expiry(where: Path | str) -> None:
    clock = FakeClock()
    b = Broker(where, clock=clock)
    c = b.ask_operator("cancel me")
    e = b.ask_operator("expire me", ttl_seconds=60)
    keep = b.ask_operator("keep me", ttl_seconds=3600)
    assert b.next_question_deadline() == clock.now + 60
    assert b.cancel_question(c).answer == CANCELLED
    assert b.expire_questions() == []
    clock.now += 61
    expired = b.expire_questions()
    assert [q.id for q in expired] == [e] and expired[0].answer == EXPIRED
    assert expired[0].state == "expired"
    assert [q.id for q in b.questions(pending_only=True)] == [keep]
    answers = []
    while (m := b.recv("manager")) is not None:
        assert m.event is not None
        answers.append((m.event["id"], m.event["answer"]))
    assert answers == [(c, CANCELLED), (e, EXPIRED)]
    with pytest.raises(Invalid):
        b.ask_operator("multi without options", multi=True)
    b.close()


def test_expiry_and_answer_race_resolves_once(broker: Broker) -> None:
    qid = broker.ask_operator("race", ttl_seconds=0.01)
    time.sleep(0.05)
    results: list[str] = []

    def answer() -> None:
        try:
            broker.answer_question(qid, "mine")
            results.append("answered")
        except Conflict:
            results.append("conflict")

    ts = [threading.Thread(target=answer) for _ in range(4)]
    for t in ts:
        t.start()
    expired = broker.expire_questions()
    for t in ts:
        t.join()
    assert results.count("answered") + len(expired) == 1
    events = [m for m in broker.messages(0) if m.kind is MessageKind.EVENT]
    assert len(events) == 1


# ---------------------------------------------------------------------- retention, persistence


def test_sweep_deletes_old_acked_keeps_undelivered(where: Path | str) -> None:
    clock = FakeClock()
    b = Broker(where, clock=clock)
    old = b.send("a", "bob", "old read")
    b.send("a", "bob", "old unread")
    assert b.recv("bob") is not None  # acks "old read"
    b.send("a", "carol", "old leased")
    assert b.recv("carol", 0, lease_seconds=10) is not None
    clock.now += 31 * 86400
    fresh = b.send("a", "bob", "fresh")
    assert b.sweep() == 1
    ids = [m.id for m in b.messages(0)]
    assert old.id not in ids and fresh.id in ids and len(ids) == 3
    # ids are never reused, even after the newest row is swept
    b.recv("bob")
    b.recv("bob")
    clock.now += 31 * 86400
    b.sweep()
    if not is_pg(where):
        wal = Path(f"{where}-wal")
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated
    nxt = b.send("a", "bob", "after sweep")
    assert nxt.id > fresh.id
    b.close()


def test_reopen_keeps_everything(where: Path | str) -> None:
    path = where
    b = Broker(path)
    b.send("a", "bob", "one")
    b.send("a", "bob", "two")
    leased = b.recv("bob", 0, lease_seconds=1)
    q = b.ask("a", "bob", "?")
    qid = b.ask_operator("op?")
    b.close()
    b = Broker(path)
    assert b.last_id() == q.id
    assert b.status("bob") == Status(2, 1, 0)  # "two" and the question; "one" is leased
    assert b.questions(pending_only=True)[0].id == qid
    time.sleep(1.1)
    again = b.recv("bob")
    assert leased is not None and again is not None and again.id == leased.id
    if not is_pg(path):
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    b.close()


_KILL_CHILD = """
import sys
from controller.broker import Broker
b = Broker(sys.argv[1])
i = 0
while True:
    m = b.send("writer", "bob", f"n{i}")
    sys.stdout.write(f"{m.id}\\n"); sys.stdout.flush()
    i += 1
"""


def test_kill9_loses_no_committed_send(where: Path | str) -> None:
    """Every send that returned (its id printed) is in the store after a kill -9."""
    path = where
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    seen: list[int] = []
    while len(seen) < 500:
        line = proc.stdout.readline()
        assert line, "writer died"
        seen.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen += [int(x) for x in proc.stdout.read().split()]
    b = Broker(path)
    got = []
    while (m := b.recv("bob")) is not None:
        got.append(m.id)
    assert set(seen) <= set(got)
    assert len(got) == len(set(got))
    b.close()


def test_event_json_roundtrip(broker: Broker) -> None:
    ev = {"type": "NeedsUpdate", "agent": "bob", "note": "ünïcode"}
    broker.emit_event("manager", ev)
    assert json.loads(_raw_event(broker)) == ev


def _raw_event(broker: Broker) -> str:
    """The event column as stored, read past the broker."""
    if broker.path is not None:
        return str(sqlite3.connect(broker.path).execute("SELECT event FROM messages").fetchone()[0])
    import psycopg

    with psycopg.connect(broker._store._url) as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT event FROM messages").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize(
    "text", ["nul \x00 inside", "\ue000", "\ue0000", "\ue000e\x00\ue000", "名字🐝\u202e\x00"]
)
def test_text_round_trips_exactly(broker: Broker, text: str) -> None:
    """Bodies, names, keys, questions and answers come back as sent (PostgreSQL cannot
    store NUL in text: its store escapes it, and its escape character, invisibly)."""
    m = broker.send(text, text, text, idempotency_key=text)
    assert broker.send(text, text, text, idempotency_key=text).id == m.id  # the key matches
    got = broker.recv(text)
    assert got is not None and (got.sender, got.recipient, got.body) == (text, text, text)
    assert [r.body for r in broker.recent(text)] == [text]
    q = broker.ask(text, "bob", text)
    assert broker.status(text).open_threads == 1
    a = broker.answer("bob", q.thread or 0, text)
    assert a.body == text and a.recipient == text
    qid = broker.ask_operator(text, asker=text)
    assert broker.question(qid).question == text
    assert broker.answer_question(qid, text).answer == text
    assert broker.close_threads("carol", reason=text) == 0
