"""The broker gauges and the ``sent`` counter through the broker's store, on sqlite and on a
real PostgreSQL server alike (``where``): a few sends, a lease, a reminder, an open thread
and an operator question, read by the collector the controller installs, rendered to the
text a scrape serves (checked by ``promtool``)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from controller.broker import Broker
from controller.metrics import BrokerCollector, new_registry
from controller.metrics.events import EventMetrics
from tests.metrics.promserver import promtool


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_gauges_and_sent_on_either_store(where: Path | str) -> None:
    clock = Clock()
    broker = Broker(where, clock)
    try:
        broker.send("alice", "bob", "before the scrape began")  # not counted: before install
        registry = new_registry()
        events = EventMetrics(registry)
        collector = BrokerCollector(broker, events)

        clock.now += 10
        broker.send("alice", "bob", "one")
        clock.now += 10
        broker.send("carol", "bob", "two")
        broker.send("bob", "alice", "three")
        leased = broker.recv("alice", lease_seconds=300)  # a turn is on it
        assert leased is not None
        broker.remind("carol", 3600, "later")
        broker.ask("carol", "alice", "why?")  # carol's thread, alice's inbox
        broker.ask_operator("ok?")
        clock.now += 5

        collector.refresh()
        text = collector.render()
        checked = promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
        got = samples(text)
        assert got['hyperhive_broker_inbox_depth{agent="bob"}'] == 3
        # bob's oldest unread message was sent before the collector began
        assert got['hyperhive_broker_inbox_oldest_timestamp_seconds{agent="bob"}'] == 1_000_000
        assert got['hyperhive_broker_inbox_depth{agent="alice"}'] == 1  # carol's question
        assert got['hyperhive_broker_inbox_oldest_timestamp_seconds{agent="alice"}'] == (1_000_020)
        assert got['hyperhive_broker_leased{agent="alice"}'] == 1
        assert got['hyperhive_broker_reminders_pending{agent="carol"}'] == 1
        assert got['hyperhive_broker_open_threads{agent="carol"}'] == 1
        assert got["hyperhive_broker_operator_questions_pending"] == 1
        assert 'hyperhive_broker_inbox_depth{agent="carol"}' not in got  # nothing: no series

        sent = samples(generate_latest(registry))
        key = 'hyperhive_broker_messages_total{agent="%s",event="sent"}'
        # from the collector's start: alice's first message is not counted
        assert sent[key % "alice"] == 1 and sent[key % "carol"] == 3 and sent[key % "bob"] == 1

        # bob reads and acks his inbox: his series go, and nothing is counted twice
        while (m := broker.recv("bob")) is not None:
            assert m.acked_at is not None
        collector.refresh()
        got = samples(collector.render())
        assert 'hyperhive_broker_inbox_depth{agent="bob"}' not in got
        assert samples(generate_latest(registry))[key % "carol"] == 3
    finally:
        broker.close()
    collector.refresh()  # a closed broker: no gauges, no failed scrape
    assert list(collector.collect()) == []
