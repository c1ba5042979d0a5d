"""The broker's asyncio waits (``recv_async``, ``wait_for_new_async``) on real stores (sqlite
and PostgreSQL).

Sends come from other threads, as they do in the controller (the reconcile
thread emits events, the dashboard may send), and must wake the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.broker import Broker
from controller.errors import Invalid
from hivehttp.guard import Gone


@pytest.fixture
def broker(where: Path | str) -> Iterator[Broker]:
    b = Broker(where)
    yield b
    b.close()


def _later(seconds: float, fn: Callable[..., object], *args: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        fn(*args)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_recv_async_wakes_on_a_send_from_another_thread(broker: Broker) -> None:
    async def main() -> tuple[str | None, float]:
        t0 = time.monotonic()
        sender = _later(0.2, broker.send, "alice", "bob", "ping")
        m = await broker.recv_async("bob", 20)
        sender.join()
        return (m.body if m else None), time.monotonic() - t0

    body, took = asyncio.run(main())
    assert body == "ping" and took < 5


def test_recv_async_times_out_and_peeks(broker: Broker) -> None:
    async def main() -> None:
        assert await broker.recv_async("bob", 0) is None
        t0 = time.monotonic()
        assert await broker.recv_async("bob", 0.3) is None
        assert time.monotonic() - t0 >= 0.25
        broker.send("alice", "bob", "there")
        m = await broker.recv_async("bob", 5, 60)
        assert m is not None and m.body == "there" and m.acked_at is None
        with pytest.raises(Invalid):
            await broker.recv_async("bob", 1, 0)

    asyncio.run(main())


def test_recv_async_parked_on_hivehttps_gone_event_needs_no_watcher_task(
    broker: Broker,
) -> None:
    """hivehttp's ``Gone`` (the event behind ``disconnected``) wakes a parked receive by
    its callback: no task waits on it, and the callback is removed when the park ends."""

    async def main() -> None:
        gone = Gone()
        task = asyncio.create_task(broker.recv_async("bob", 30, abandoned=gone))
        await asyncio.sleep(0.1)
        assert len(asyncio.all_tasks()) == 2  # main and the receive: no watcher task
        gone.set()
        assert await asyncio.wait_for(task, 5) is None
        broker.send("alice", "bob", "keep me")
        # a park that ends by a message leaves no callback behind
        other = Gone()
        parked = asyncio.create_task(broker.recv_async("carol", 30, abandoned=other))
        await asyncio.sleep(0.05)
        broker.send("alice", "carol", "for carol")
        got = await asyncio.wait_for(parked, 5)
        assert got is not None and got.body == "for carol"
        assert not other._callbacks
        m = await broker.recv_async("bob", 0)
        assert m is not None and m.body == "keep me"

    asyncio.run(main())


def test_recv_async_given_up_takes_nothing(broker: Broker) -> None:
    async def main() -> None:
        gone = asyncio.Event()
        task = asyncio.create_task(broker.recv_async("bob", 30, abandoned=gone))
        await asyncio.sleep(0.1)
        gone.set()
        assert await asyncio.wait_for(task, 5) is None
        broker.send("alice", "bob", "keep me")
        assert await broker.recv_async("bob", 0, abandoned=gone) is None  # gone before the claim
        m = await broker.recv_async("bob", 0)
        assert m is not None and m.body == "keep me"

    asyncio.run(main())


def test_recv_async_wakes_when_a_reminder_falls_due(broker: Broker) -> None:
    async def main() -> None:
        broker.remind("alice", 1, "later")
        t0 = time.monotonic()
        m = await broker.recv_async("alice", 10)
        assert m is not None and m.body == "later" and time.monotonic() - t0 < 5

    asyncio.run(main())


def test_parked_recvs_hold_no_threads(broker: Broker) -> None:
    """40 recvs parked on one loop add no thread; each wakes for its own message only."""

    async def main() -> None:
        before = threading.active_count()
        names = [f"a{i}" for i in range(40)]
        tasks = {n: asyncio.create_task(broker.recv_async(n, 30)) for n in names}
        await asyncio.sleep(0.2)
        assert threading.active_count() == before
        assert not any(t.done() for t in tasks.values())
        sender = _later(0.0, broker.send, "x", "a7", "for a7")
        await asyncio.wait_for(tasks["a7"], 5)
        sender.join()
        m = tasks.pop("a7").result()
        assert m is not None and m.body == "for a7"
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in tasks.values())
        broker.close()  # wakes every parked recv: they answer None
        results = await asyncio.wait_for(asyncio.gather(*tasks.values()), 5)
        assert results == [None] * 39

    asyncio.run(main())


def test_wait_for_new_async(broker: Broker) -> None:
    async def main() -> None:
        first = broker.send("a", "b", "one").id
        got = await broker.wait_for_new_async(0, 1)
        assert [m.id for m in got] == [first]
        t0 = time.monotonic()
        assert await broker.wait_for_new_async(first, 0.3) == []
        assert time.monotonic() - t0 >= 0.25
        sender = _later(0.2, broker.send, "a", "c", "two")
        got = await broker.wait_for_new_async(first, 20)
        sender.join()
        assert [m.body for m in got] == ["two"]
        gone = asyncio.Event()
        task = asyncio.create_task(broker.wait_for_new_async(got[-1].id, 30, abandoned=gone))
        await asyncio.sleep(0.1)
        gone.set()
        assert await asyncio.wait_for(task, 5) == []

    asyncio.run(main())


def test_lone_surrogates_are_refused_not_stored(broker: Broker) -> None:
    for call in (
        lambda: broker.send("alice", "bob", "bad \ud800"),
        lambda: broker.send("al\udc00", "bob", "x"),
        lambda: broker.send("alice", "bob", "x", idempotency_key="k\ud800"),
    ):
        with pytest.raises(Invalid) as err:
            call()
        assert "surrogate" in err.value.message
    assert broker.messages(0) == []
