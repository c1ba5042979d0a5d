"""Broker gauges, read at scrape time from ``broker.sqlite`` on a read-only connection of
their own (WAL: readers never block the broker's writer, and the broker's lock is not taken).

Every query walks one of the broker's partial indexes (pending rows, reminders, open
threads, pending questions), so a scrape costs O(pending), not O(messages kept). Series:

- ``hyperhive_broker_inbox_depth{agent}``: messages the agent could be handed now (due,
  not leased, not acked, not dead);
- ``hyperhive_broker_inbox_oldest_timestamp_seconds{agent}``: when the oldest of them was
  sent (or fell due, for a reminder), unix seconds: its age is ``time() - …`` in PromQL,
  and a timestamp, unlike an age, stays the same between scrapes, so the rendered text is
  kept while the inbox does not change;
- ``hyperhive_broker_leased{agent}``: messages handed out and not acked yet (a turn is on them);
- ``hyperhive_broker_reminders_pending{agent}``: reminders not due yet;
- ``hyperhive_broker_open_threads{agent}``: questions the agent asked that wait for an answer;
- ``hyperhive_broker_operator_questions_pending``: questions waiting for the operator.

The counters of message events (delivered, acked, released, dead-lettered) and the
send → recv latency are counted as they happen (``controller.metrics.events``, hooks in
``controller.broker``); ``sent`` is folded in before each scrape from the rows added since
the last one (:class:`SentCounter`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.metrics.events import EVENTS, EventMetrics, render

log = logging.getLogger(__name__)

_INBOX = "acked_at IS NULL AND dead_at IS NULL"
_QUERIES = {
    # the covering pending index: count and oldest id per recipient, no table lookups
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
    "questions": "SELECT count(*) FROM operator_questions WHERE answered_at IS NULL",
}


class SentCounter:
    """Folds the messages sent since the last scrape into
    ``hyperhive_broker_messages_total{event="sent"}``, per sender, from the broker's rows
    (``id`` above the last one seen: a primary-key range, however many rows are kept).
    Counts from the controller's start, like any counter; the first call sees every row
    sent since this object was made."""

    def __init__(self, path: Path, events: EventMetrics = EVENTS) -> None:
        self.path = path
        self.events = events
        self._lock = threading.Lock()
        self._last: int | None = None
        self._last = self._top()

    def _top(self) -> int | None:
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2.0)
        except sqlite3.Error:
            return None
        try:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            con.close()

    def refresh(self) -> None:
        """Count what was sent since the last call (a failure is logged and retried later)."""
        with self._lock:
            if self._last is None:
                self._last = self._top()
                if self._last is None:
                    return
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2.0)
                try:
                    rows = con.execute(
                        "SELECT sender, count(*), max(id) FROM messages WHERE id > ? "
                        "GROUP BY sender",
                        (self._last,),
                    ).fetchall()
                finally:
                    con.close()
            except sqlite3.Error as exc:
                log.warning("metrics: cannot count sent messages in %s: %s", self.path, exc)
                return
            for sender, n, top in rows:
                self.events.message(str(sender), "sent", int(n))
                self._last = max(self._last, int(top))


class BrokerCollector(Collector):
    """The broker gauges of the sqlite broker at ``path`` (see the module docstring).

    The connection is opened on first scrape and again after an error; a missing or
    unreadable database gives no samples (logged), never a failed scrape.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._missing_logged = False
        self._rendered: tuple[object, bytes] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=2.0, check_same_thread=False
            )
        return self._con

    def close(self) -> None:
        """Close the connection (the next scrape opens it again)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return list(self._families(None, 0.0))

    def render(self) -> bytes:
        """:meth:`collect` in the text format, rendered again only when the figures moved."""
        families = list(self.collect())
        key = [(f.name, [(s.labels, s.value) for s in f.samples]) for f in families]
        cached = self._rendered
        if cached is not None and cached[0] == key:
            return cached[1]
        text = render(families)
        self._rendered = (key, text)
        return text

    def collect(self) -> Iterable[Metric]:
        """The gauges now."""
        now = self.clock()
        if not self.path.exists():  # a broker that is not this sqlite file: no gauges
            if not self._missing_logged:
                log.warning("metrics: no sqlite broker at %s: no inbox gauges", self.path)
                self._missing_logged = True
            return []
        with self._lock:
            try:
                con = self._connect()
                rows = {
                    name: con.execute(sql, {"now": now}).fetchall()
                    for name, sql in _QUERIES.items()
                }
                oldest_ids = [int(r[2]) for r in rows["inbox"]]
                sent: dict[int, float] = {}
                for i in range(0, len(oldest_ids), 500):
                    chunk = oldest_ids[i : i + 500]
                    marks = ",".join("?" for _ in chunk)
                    for id_, at in con.execute(
                        f"SELECT id, max(sent_at, due_at) FROM messages WHERE id IN ({marks})",
                        chunk,
                    ):
                        sent[int(id_)] = float(at)
                # end the read transaction so the broker's checkpoints are never held back
                con.rollback()
            except sqlite3.Error as exc:
                log.warning("metrics: cannot read the broker database %s: %s", self.path, exc)
                if self._con is not None:
                    self._con.close()
                    self._con = None
                return []
        return list(self._families((rows, sent), now))

    @staticmethod
    def _families(
        data: tuple[dict[str, list[tuple[object, ...]]], dict[int, float]] | None, now: float
    ) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "hyperhive_broker_inbox_depth",
            "Messages the agent could be handed now (due, not leased, not acked, not dead).",
            labels=["agent"],
        )
        age = GaugeMetricFamily(
            "hyperhive_broker_inbox_oldest_timestamp_seconds",
            "Unix time the oldest message waiting in the agent's inbox was sent (or fell due).",
            labels=["agent"],
        )
        leased = GaugeMetricFamily(
            "hyperhive_broker_leased",
            "Messages handed to the agent and not acked yet.",
            labels=["agent"],
        )
        reminders = GaugeMetricFamily(
            "hyperhive_broker_reminders_pending", "Reminders not due yet.", labels=["agent"]
        )
        threads = GaugeMetricFamily(
            "hyperhive_broker_open_threads",
            "Questions the agent asked that wait for an answer.",
            labels=["agent"],
        )
        questions = GaugeMetricFamily(
            "hyperhive_broker_operator_questions_pending", "Questions waiting for the operator."
        )
        if data is not None:
            rows, sent = data
            for recipient, n, oldest in rows["inbox"]:
                depth.add_metric([str(recipient)], float(n))  # type: ignore[arg-type]
                at = sent.get(int(oldest))  # type: ignore[call-overload]
                if at is not None:
                    age.add_metric([str(recipient)], at)
            for recipient, n in rows["leased"]:
                leased.add_metric([str(recipient)], float(n))  # type: ignore[arg-type]
            for recipient, n in rows["reminders"]:
                reminders.add_metric([str(recipient)], float(n))  # type: ignore[arg-type]
            for asker, n in rows["threads"]:
                threads.add_metric([str(asker)], float(n))  # type: ignore[arg-type]
            questions.add_metric([], float(rows["questions"][0][0]))  # type: ignore[arg-type]
        yield from (depth, age, leased, reminders, threads, questions)
