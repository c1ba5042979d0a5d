"""Two real ``hyperhive serve`` processes, each on its own state dir, their brokers on one
PostgreSQL database (``broker:`` in both configs): the ``manager`` inbox is the same row set
for both, so the two manager sockets compete for it. Every message is delivered exactly once
across the two controllers (leased receives, acked), and a receive parked on one controller
wakes on a send through the other (``LISTEN`` / ``NOTIFY``)."""

from __future__ import annotations

import threading
from collections import Counter

from schemas.client import UnixClient
from tests.brokerserve import serve_controller, wait_for

PREFIX = "two:"
COUNT = 600


def _drain(client: UnixClient, got: list[tuple[int, str]], stop: threading.Event) -> None:
    """Receive (leased), record and ack until ``stop`` is set and the inbox is empty."""
    while True:
        m = client.post("/recv", {"wait_seconds": 1, "lease_seconds": 60})["message"]
        if m is None:
            if stop.is_set():
                return
            continue
        got.append((int(m["id"]), str(m["body"])))
        assert client.post("/ack", {"ids": [m["id"]]})["acked"] == 1


def test_two_controllers_on_one_database_deliver_each_message_once(pg_url: str) -> None:
    with serve_controller(pg_url) as a, serve_controller(pg_url) as b:
        a.start()
        b.start()
        for c in (a, b):
            wait_for("the manager's (stand-in) harness", lambda c=c: bool(c.harness_pids()))

        # a receive parked on b's manager socket wakes on a send through a's
        woke: list[str] = []

        def park_on_b() -> None:
            client = b.manager()
            while True:  # skip what the controllers themselves queued (typed events)
                m = client.post("/recv", {"wait_seconds": 60})["message"]
                if m is not None and m["from"] == "manager":
                    woke.append(m["body"])
                    return

        parked = threading.Thread(target=park_on_b)
        parked.start()
        parked.join(1)  # let it park: its 60 s wait ends early only on the NOTIFY
        # should a send still beat the park, send again until it took one (the extra ones
        # are drained with the rest below)
        sender = a.manager()
        while parked.is_alive():
            sender.post("/send", {"to": "manager", "body": "wake across controllers"})
            parked.join(2)
        assert woke == ["wake across controllers"]

        # both manager sockets drain the one inbox while a and b both send to it
        stop = threading.Event()
        got = {"a": [], "b": []}  # type: dict[str, list[tuple[int, str]]]
        drains = [
            threading.Thread(target=_drain, args=(c.manager(), got[k], stop))
            for k, c in (("a", a), ("b", b))
            for _ in range(2)
        ]
        for t in drains:
            t.start()
        sent: dict[int, str] = {}
        senders = (a.manager(), b.manager())
        for i in range(COUNT):
            body = f"{PREFIX}{i}"
            r = senders[i % 2].post("/send", {"to": "manager", "body": body})
            sent[int(r["id"])] = body
        stop.set()
        for t in drains:
            t.join(60)
            assert not t.is_alive(), "a receiver is stuck"

        every = [row for rows in got.values() for row in rows if row[1].startswith(PREFIX)]
        twice = [i for i, n in Counter(i for i, _ in every).items() if n > 1]
        assert twice == [], "a message was delivered twice"
        assert dict(every) == sent, "a message was never delivered"
        # both controllers really took part
        assert all(any(b.startswith(PREFIX) for _, b in rows) for rows in got.values())
