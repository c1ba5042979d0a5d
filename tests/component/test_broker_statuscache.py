"""Status readings kept between writes (``controller.broker.statuscache``, sqlite): every
``status`` the broker answers equals what a broker opened afresh on the same data reads,
after writes of every kind, writes from another thread, time moving (reminders falling
due, leases running out, the clock set back), on both stores; and a ``recv`` that skips its
claim because the inbox was known empty still gets a message sent meanwhile."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from controller.broker import Broker
from controller.broker.statuscache import StatusCache, StatusReading
from schemas.wire import Status
from tests.brokerstore import FakeClock


def _same(b: Broker, where: Path | str, clock: FakeClock, *names: str) -> None:
    """``b``'s answers (cached or not) match a broker with nothing cached."""
    fresh = Broker(where, clock=clock)
    try:
        for name in names:
            assert b.status(name) == fresh.status(name), name
    finally:
        fresh.close()


def test_status_follows_every_write_and_time(
    broker: Broker, where: Path | str, clock: FakeClock
) -> None:
    b = broker
    assert b.status("alice") == Status() and b.status("bob") == Status()  # read, kept
    b.send("bob", "alice", "one")
    assert b.status("alice") == Status(unread=1)
    assert b.status("bob") == Status()  # the sender's reading still holds
    _same(b, where, clock, "alice", "bob")

    b.remind("alice", 60, "later")
    assert b.status("alice") == Status(unread=1, pending_reminders=1)
    clock.now += 61  # the reminder falls due: no write, the reading ends by time
    assert b.status("alice") == Status(unread=2)
    _same(b, where, clock, "alice")

    m = b.recv("alice", lease_seconds=30)
    assert m is not None and b.status("alice") == Status(unread=1)
    clock.now += 31  # the lease runs out
    assert b.status("alice") == Status(unread=2)
    clock.now -= 20  # a clock set back: the lease is live again
    assert b.status("alice") == Status(unread=1)
    _same(b, where, clock, "alice")
    clock.now += 20

    b.ask("bob", "alice", "why?")  # a write that declares nothing: every reading goes
    assert b.status("bob").open_threads == 1 and b.status("alice").open_threads == 1
    assert b.ack("alice", [m.id]) == 1
    while b.recv("alice") is not None:
        pass
    assert b.status("alice") == Status(open_threads=1)
    _same(b, where, clock, "alice", "bob")

    done = threading.Thread(target=b.send, args=("carol", "alice", "from a thread"))
    done.start()
    done.join()
    assert b.status("alice") == Status(unread=1, open_threads=1)
    _same(b, where, clock, "alice", "bob", "carol")


def test_recv_of_a_known_empty_inbox_still_gets_a_send(broker: Broker) -> None:
    b = broker
    assert b.status("alice").unread == 0  # known empty now
    assert b.recv("alice") is None

    async def main() -> str | None:
        task = asyncio.create_task(b.recv_async("alice", 10))
        await asyncio.sleep(0.05)
        sender = threading.Thread(target=b.send, args=("bob", "alice", "hi"))
        sender.start()
        m = await asyncio.wait_for(task, 5)
        sender.join()
        return None if m is None else m.body

    assert asyncio.run(main()) == "hi"
    b.send("bob", "alice", "again")
    assert b.status("alice").unread == 1
    got = b.recv("alice")
    assert got is not None and got.body == "again"


def test_a_reading_taken_across_a_commit_is_not_kept() -> None:
    cache = StatusCache()
    reading = StatusReading(Status(unread=1), 1, 10.0, float("inf"))
    gen = cache.generation("alice")
    cache.forget(["alice"])  # a commit while the reading was being taken
    cache.put("alice", gen, reading)
    assert cache.get("alice", 10.0) is None
    gen = cache.generation("alice")
    cache.put("alice", gen, reading)
    assert cache.get("alice", 10.0) == reading
    assert cache.get("alice", 9.0) is None  # clock set back
    cache.forget(None)
    assert cache.get("alice", 10.0) is None
    cache.put("alice", gen, reading)  # taken before forget(None): dropped too
    assert cache.get("alice", 10.0) is None


def test_a_declared_change_moves_the_reading() -> None:
    cache = StatusCache()
    reading = StatusReading(Status(unread=1, open_threads=2), 1, 10.0, float("inf"))
    cache.put("alice", cache.generation("alice"), reading)
    before = cache.generation("bob")
    cache.forget(set(), {"alice": (1, 1)})  # a send to alice committed
    assert cache.get("alice", 10.0) == StatusReading(
        Status(unread=2, open_threads=2), 2, 10.0, float("inf")
    )
    cache.forget(set(), {"bob": (1, 1)})  # bob had no reading: still none
    assert cache.get("bob", 10.0) is None
    cache.put("bob", before, reading)  # taken before that commit: dropped
    assert cache.get("bob", 10.0) is None
