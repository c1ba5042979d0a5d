"""Broker gauges and the ``sent`` counter, read once per scrape through the broker's store
(``Broker.gauges``: sqlite or PostgreSQL alike, read-only aggregate queries over the
store's partial indexes, so a scrape costs O(pending), not O(messages kept)). Series:

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
the last one (ids above the last one seen: a primary-key range), by the same query.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.broker.model import BrokerGauges
from controller.metrics.events import EVENTS, EventMetrics, render

log = logging.getLogger(__name__)


class GaugeSource(Protocol):
    """What the collector reads: ``controller.broker.Broker.gauges``."""

    def gauges(self, sent_after: int | None = None) -> BrokerGauges:
        """The broker's figures now (see ``BrokerGauges``); raises on a storage failure."""
        ...


class BrokerCollector(Collector):
    """The broker gauges and ``sent`` counter of ``broker`` (see the module docstring).

    :meth:`refresh` (a ``BEFORE_SCRAPE`` hook) runs the one query of a scrape, folds the
    sent messages into ``events`` and keeps the gauges for :meth:`collect`. Counts sent
    messages from this object's first refresh (made at install), like any counter. No
    broker, or a failed query (logged), gives no gauge samples, never a failed scrape.
    """

    def __init__(self, broker: GaugeSource | None, events: EventMetrics = EVENTS) -> None:
        self.broker = broker
        self.events = events
        self._lock = threading.Lock()
        self._last: int | None = None
        self._gauges: BrokerGauges | None = None
        self._rendered: tuple[object, bytes] | None = None
        self.refresh()  # the baseline: only what is sent from now on is counted

    def refresh(self) -> None:
        """Read the broker's figures now (a failure is logged; the next scrape retries)."""
        if self.broker is None:
            return
        with self._lock:
            try:
                g = self.broker.gauges(self._last)
            except Exception as exc:  # a scrape never fails: no broker gauges this time
                log.warning("metrics: cannot read the broker's gauges: %s", exc)
                self._gauges = None
                return
            if self._last is not None:
                for sender, n in g.sent.items():
                    self.events.message(sender, "sent", n)
            self._last = max(self._last or 0, g.last_id)
            self._gauges = g

    def close(self) -> None:
        """Forget the broker (the collector gives no samples after)."""
        with self._lock:
            self.broker = None
            self._gauges = None

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return list(self._families(None))

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
        """The gauges of the last :meth:`refresh` (none when it failed or there is no broker)."""
        g = self._gauges
        if g is None:
            return []
        return list(self._families(g))

    @staticmethod
    def _families(g: BrokerGauges | None) -> Iterator[Metric]:
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
        if g is not None:
            for agent, (n, at) in sorted(g.inbox.items()):
                depth.add_metric([agent], float(n))
                age.add_metric([agent], at)
            for family, counts in (
                (leased, g.leased),
                (reminders, g.reminders),
                (threads, g.open_threads),
            ):
                for agent, n in sorted(counts.items()):
                    family.add_metric([agent], float(n))
            questions.add_metric([], float(g.questions_pending))
        yield from (depth, age, leased, reminders, threads, questions)
