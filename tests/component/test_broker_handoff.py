"""A send handing its message straight to a coroutine receive parked on the same loop
(``Sending.send``, ``wakeups.Taker``), on real stores.

Whether the hand-off happened is seen from outside: a handed message is stored delivered
by the time ``send`` returns, before the receiving task has run again. Everything a
receiver can see must be as if it had claimed the message itself: the row (delivered,
acked or leased, one attempt), the inbox's counts, the order, the followers. PostgreSQL
keeps no status cache, so it never hands off: the same tests hold there on the claim path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.broker import Broker
from hivehttp.guard import Gone
from schemas.wire import Message
from tests.brokerstore import FakeClock, is_pg


@pytest.fixture
def broker(where: Path | str, clock: FakeClock) -> Iterator[Broker]:
    b = Broker(where, clock=clock)
    yield b
    b.close()


def _row(broker: Broker, id: int) -> Message:
    (m,) = [m for m in broker.messages(id - 1, 1) if m.id == id]
    return m


async def _parked(broker: Broker, recipient: str, **kwargs: object) -> asyncio.Task[Message | None]:
    """A receive of ``recipient`` parked on this loop (its inbox's status read first, as
    every answer of an agent socket does)."""
    broker.status(recipient)
    task = asyncio.create_task(broker.recv_async(recipient, 30, **kwargs))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not task.done()
    return task


def test_a_send_hands_its_message_to_the_parked_receive(
    broker: Broker, where: Path | str, clock: FakeClock
) -> None:
    async def main() -> None:
        since = broker.last_id()
        follower = asyncio.create_task(broker.wait_for_new_async(since, 30))
        task = await _parked(broker, "bob")
        sent = broker.send("alice", "bob", "ping")
        handed = _row(broker, sent.id).delivered_at is not None
        assert handed is not is_pg(where)  # sqlite: stored delivered before the task ran
        got = await asyncio.wait_for(task, 5)
        assert got is not None and (got.id, got.body) == (sent.id, "ping")
        assert got.delivered_at == got.acked_at == clock.now and got.extra["attempts"] == 1
        stored = _row(broker, sent.id)
        assert (stored.delivered_at, stored.acked_at) == (clock.now, clock.now)
        assert broker.status("bob").unread == 0
        assert await broker.recv_async("bob", 0) is None  # taken once, not twice
        new = await asyncio.wait_for(follower, 5)
        assert [m.id for m in new] == [sent.id]  # followers of new messages still woken

    asyncio.run(main())


def test_a_leased_receive_is_handed_a_lease_that_runs_out(broker: Broker, clock: FakeClock) -> None:
    async def main() -> None:
        task = await _parked(broker, "bob", lease_seconds=60)
        sent = broker.send("alice", "bob", "work")
        got = await asyncio.wait_for(task, 5)
        assert got is not None and got.id == sent.id and got.acked_at is None
        assert got.extra["lease_until"] == clock.now + 60 and got.extra["attempts"] == 1
        assert await broker.recv_async("bob", 0, 60) is None  # leased: not deliverable now
        clock.now += 61
        again = await broker.recv_async("bob", 0, 60)
        assert again is not None and again.id == sent.id and again.extra["attempts"] == 2
        assert broker.ack("bob", [sent.id]) == 1

    asyncio.run(main())


def test_a_receive_whose_client_left_is_not_handed_anything(broker: Broker) -> None:
    async def main() -> None:
        gone = Gone()
        task = await _parked(broker, "bob", abandoned=gone)
        gone.set()  # the client left; its task has not run since
        sent = broker.send("alice", "bob", "keep me")
        assert _row(broker, sent.id).delivered_at is None
        assert await asyncio.wait_for(task, 5) is None
        m = await broker.recv_async("bob", 0)
        assert m is not None and m.id == sent.id

    asyncio.run(main())


def test_only_the_longest_parked_receive_is_handed_the_message(broker: Broker) -> None:
    async def main() -> None:
        first = await _parked(broker, "bob")
        second = await _parked(broker, "bob")
        sent = broker.send("alice", "bob", "one")
        got = await asyncio.wait_for(first, 5)
        assert got is not None and got.id == sent.id
        await asyncio.sleep(0.05)
        assert not second.done()  # nothing more to deliver: it stays parked
        later = broker.send("alice", "bob", "two")
        got2 = await asyncio.wait_for(second, 5)
        assert got2 is not None and got2.id == later.id

    asyncio.run(main())


def test_a_send_into_a_non_empty_inbox_keeps_the_order(broker: Broker, clock: FakeClock) -> None:
    """A reminder not yet due sits in the inbox: the next send is not handed over (the
    inbox is not known empty) and the receive takes the oldest deliverable message."""

    async def main() -> None:
        broker.remind("bob", 600, "later")
        task = await _parked(broker, "bob")
        sent = broker.send("alice", "bob", "now")
        assert _row(broker, sent.id).delivered_at is None
        got = await asyncio.wait_for(task, 5)
        assert got is not None and got.id == sent.id
        clock.now += 601
        due = await broker.recv_async("bob", 0)
        assert due is not None and due.body == "later"

    asyncio.run(main())


def test_a_send_from_another_thread_wakes_the_receive_to_claim(broker: Broker) -> None:
    """A thread's send cannot resolve a future of the loop's: the receive is woken and
    claims the message itself."""

    async def main() -> None:
        task = await _parked(broker, "bob")
        out: list[Message] = []
        t = threading.Thread(target=lambda: out.append(broker.send("alice", "bob", "x")))
        t.start()
        got = await asyncio.wait_for(task, 5)
        t.join()
        assert got is not None and got.id == out[0].id and got.extra["attempts"] == 1

    asyncio.run(main())


def test_a_failed_send_gives_the_receive_back(tmp_path: Path, clock: FakeClock) -> None:
    """The insert fails inside the send's transaction (a trigger refuses it): nothing is
    stored, the receive taken for the hand-off looks at its inbox again and stays parked,
    and the next send reaches it."""
    path = tmp_path / "broker.sqlite"
    broker = Broker(path, clock=clock)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.body = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    db.commit()
    db.close()

    async def main() -> None:
        task = await _parked(broker, "bob")
        with pytest.raises(sqlite3.Error, match="refused by the test"):
            broker.send("alice", "bob", "boom")
        await asyncio.sleep(0.05)
        assert not task.done()
        sent = broker.send("alice", "bob", "fine")
        got = await asyncio.wait_for(task, 5)
        assert got is not None and got.id == sent.id

    try:
        asyncio.run(main())
    finally:
        broker.close()
