"""kill -9 the real ``hyperhive serve`` (its broker on sqlite, then on PostgreSQL) while 1,000
messages are being sent over the manager socket; restart it; every send answered with
success is there exactly once, in per-sender order, and so is every keyed send that was
retried until it succeeded.

The controller runs the local runtime with a stand-in harness (a ``harness`` package
earlier on PYTHONPATH whose ``serve`` only sleeps), so nothing drains the manager's inbox
but this test: four sender threads on the manager socket (with the manager's
credential, read from its state dir as the harness would), two to ``operator``
(checked through host.sock ``GET /messages``, with the operator key) and two to
``manager`` itself (drained with ``POST /recv`` afterwards, so delivery is checked
too). The restart must not rotate the manager's credential: a sender that got a 401
after it would fail the test. Threads 0 and 1 send with an
``idempotency_key`` and retry a failed send with the same key until it succeeds; threads
2 and 3 send without one and move on after a failure, as a client without keys must.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.client import ApiError, UnixClient, Unreachable
from tests.brokerserve import Controller, serve_controller, wait_for
from tests.brokerstore import STORES

PER_THREAD = 250
KILL_AFTER = 300
PREFIX = "bc:"


@pytest.fixture(params=STORES)
def controller(request: pytest.FixtureRequest) -> Iterator[Controller]:
    """A controller on a fresh state dir; its broker on sqlite, or on a fresh PostgreSQL
    database (``broker:`` in its config)."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    with serve_controller(url) as c:
        yield c


@dataclass
class Sender:
    """One sender thread's plan and outcome."""

    k: int
    to: str
    keyed: bool
    acked: dict[int, int] = field(default_factory=dict)  # n -> message id answered
    failed: list[int] = field(default_factory=list)  # n whose send got no success answer
    duplicates: int = 0  # keyed retries answered with "duplicate": true

    def body(self, n: int) -> str:
        return f"{PREFIX}t{self.k}:{n:04d}"


def _run_sender(
    client: UnixClient, s: Sender, acked_total: list[int], lock: threading.Lock
) -> None:
    for n in range(PER_THREAD):
        doc: dict[str, Any] = {"to": s.to, "body": s.body(n)}
        if s.keyed:
            doc["idempotency_key"] = f"crash-{s.k}-{n}"
        deadline = time.monotonic() + 90
        while True:
            try:
                r = client.post("/send", doc)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                if not s.keyed:
                    s.failed.append(n)  # unknown outcome: a client without a key moves on
                    time.sleep(0.02)
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the controller is restarting: same request, same key
                continue
            s.acked[n] = int(r["id"])
            s.duplicates += bool(r.get("duplicate"))
            with lock:
                acked_total[0] += 1
            break


def _all_messages(admin: UnixClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = admin.get(f"/messages?since={since}&limit=1000")["messages"]
        if not page:
            return out
        out += page
        since = page[-1]["id"]


def test_kill9_mid_stream_every_acknowledged_send_exactly_once(controller: Controller) -> None:
    controller.start()
    wait_for("the manager's (stand-in) harness", lambda: bool(controller.harness_pids()))
    senders = [
        Sender(0, "operator", keyed=True),
        Sender(1, "manager", keyed=True),
        Sender(2, "operator", keyed=False),
        Sender(3, "manager", keyed=False),
    ]
    acked_total = [0]
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=_run_sender,
            args=(controller.manager(timeout=10.0), s, acked_total, lock),
            daemon=True,
        )
        for s in senders
    ]
    for t in threads:
        t.start()
    wait_for("the first acknowledged sends", lambda: acked_total[0] >= KILL_AFTER, 60)
    controller.kill9()
    at_kill = acked_total[0]
    time.sleep(0.3)  # let every sender notice the outage
    controller.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a sender is stuck"
    # the store under test holds the messages: no sqlite file when PostgreSQL does
    assert (controller.state / "broker.sqlite").exists() != controller.on_postgres
    assert at_kill < 4 * PER_THREAD, "the kill came after the stream ended; nothing was tested"
    print(
        f"killed after {at_kill} acknowledged sends; unkeyed sends without an answer: "
        f"{sum(len(s.failed) for s in senders)}; keyed retries answered as duplicates: "
        f"{sum(s.duplicates for s in senders)}"
    )

    stored: dict[int, list[tuple[int, int]]] = {s.k: [] for s in senders}  # k -> [(id, n)]
    for m in _all_messages(controller.admin()):
        if m["from"] == "manager" and m["body"].startswith(PREFIX):
            k, n = m["body"][len(PREFIX) + 1 :].split(":")
            assert m["to"] == senders[int(k)].to
            stored[int(k)].append((int(m["id"]), int(n)))

    for s in senders:
        rows = stored[s.k]
        ns = [n for _, n in sorted(rows)]
        assert len(ns) == len(set(ns)), f"thread {s.k}: a message is stored twice"
        assert ns == sorted(ns), f"thread {s.k}: stored out of send order"
        ids = {n: i for i, n in rows}
        for n, mid in s.acked.items():
            assert ids.get(n) == mid, f"thread {s.k}: acknowledged send {n} (id {mid}) missing"
        if s.keyed:
            assert set(s.acked) == set(range(PER_THREAD)) == set(ids), f"thread {s.k}"
        else:
            assert set(s.acked) | set(s.failed) == set(range(PER_THREAD))
            # an unacknowledged send may or may not have been committed, but never twice
            assert set(ids) - set(s.acked) <= set(s.failed)

    # the manager's inbox: every message to it is delivered by recv exactly once, in order
    mgr = controller.manager()
    got: list[str] = []
    while (m := mgr.post("/recv", {})["message"]) is not None:
        if m["body"].startswith(PREFIX):
            got.append(m["body"])
    expected = [
        f"{PREFIX}t{k}:{n:04d}"
        for _, n, k in sorted((i, n, k) for k in (1, 3) for i, n in stored[k])
    ]
    assert got == expected
    assert mgr.post("/recv", {})["message"] is None
    status = mgr.get("/status")
    assert status["unread"] == 0 and status["dead_letters"] == 0
