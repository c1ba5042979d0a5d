"""Counters and histograms of things that happen (passes, actions, crashes, messages, requests).

State that already exists somewhere (agents' phases, conditions, inbox depth, turn stats) is
read at scrape time by the collectors in this package; only events that leave no state
behind are counted here, as they happen. One :class:`EventMetrics` per process
(:data:`EVENTS`), registered in :data:`REGISTRY`; the hooks the swarm, the broker and the
serve loop call are the methods below, each a few label look-ups and an add (about a
microsecond), and none raises.

Units: seconds; labels: agent names, action kinds, outcomes, triggers, surfaces and route
templates: bounded sets, never message ids or free text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from schemas.wire import Message

PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)
"""A no-op pass takes well under a millisecond; a pass that builds containers, minutes."""
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
"""send → recv: a parked receiver takes a message within a millisecond; a busy agent reads
its inbox after its turn, minutes later."""
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 180.0)
"""Most requests take a millisecond; a parked ``recv`` up to 180 s."""

PARKING = frozenset({"agent", "manager", "agent_api"})
"""Surfaces whose ``/recv`` parks until mail arrives."""


def trigger_of(reason: str) -> str:
    """The bounded trigger label of a pass request's free-text reason: ``crash: alice`` →
    ``crash``, ``hook`` (the meta.git push hook), ``approved/3`` → ``approval``, ``start
    alice`` → ``lifecycle``, an explicit ``POST /reconcile`` → ``request``; several reasons
    coalesced into one pass count as the first."""
    head = re.split(r"[:,/ ]", reason.strip().lower(), maxsplit=1)[0]
    if head in ("startup", "resync", "hook", "crash", "request"):
        return head
    if head == "requested":  # a pass asked for without a reason
        return "request"
    if head in ("approved", "denied"):
        return "approval"
    if head in ("start", "kill", "restart", "update"):
        return "lifecycle"
    if head in ("due", "watch"):
        return "watch"
    return "other"


def status_class(status: int) -> str:
    """``2xx`` … ``5xx``; ``none`` when no response was sent (the client left first)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


class EventMetrics:
    """The event series of one registry (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.passes = Counter(
            "hyperhive_reconcile_passes",
            "Reconcile passes, by what asked for them and how they ended (ok, error, crashed).",
            ["trigger", "outcome"],
            registry=registry,
        )
        self.pass_seconds = Histogram(
            "hyperhive_reconcile_pass_duration_seconds",
            "Wall-clock duration of a reconcile pass.",
            buckets=PASS_BUCKETS,
            registry=registry,
        )
        self.actions = Counter(
            "hyperhive_reconcile_actions",
            "Actions a pass executed, by kind (create, start, rebuild, ...) and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.last_success = Gauge(
            "hyperhive_reconcile_last_success_timestamp_seconds",
            "Unix time the last pass without errors ended (0: none yet).",
            registry=registry,
        )
        self._started = time.time()
        self._last_ok: float | None = None
        self.last_success_age = Gauge(
            "hyperhive_reconcile_last_success_age_seconds",
            "Seconds since the last pass without errors ended (since the controller started "
            "while there was none).",
            registry=registry,
        )
        self.last_success_age.set_function(
            lambda: time.time() - (self._last_ok if self._last_ok is not None else self._started)
        )
        self.crashes = Counter(
            "hyperhive_agent_crash_restarts",
            "Crashes the crash watch found, per agent (each one restarts the agent, at once or "
            "after a backoff, until the agent is Stalled in a crash loop).",
            ["agent"],
            registry=registry,
        )
        self.messages = Counter(
            "hyperhive_broker_messages",
            "Broker message events per agent: sent (by the sender), delivered, acked, "
            "released and dead_lettered (by the recipient).",
            ["agent", "event"],
            registry=registry,
        )
        self.latency = Histogram(
            "hyperhive_broker_send_to_recv_seconds",
            "Time from a message's send (or its due time, for a reminder) to its first delivery.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_requests = Counter(
            "hyperhive_http_requests",
            "HTTP requests answered, by surface (admin, agent, manager, dashboard, metrics), "
            "route template, method and status class.",
            ["surface", "route", "method", "code"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "hyperhive_http_request_duration_seconds",
            "Time from a request reaching its app to the app's return (a long poll or a "
            "stream counts its whole life).",
            ["surface"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self._parked = 0
        self._in_flight: dict[tuple[str, str], Gauge] = {}
        self._finished: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        # (agent, event) → its ``messages`` child: ``labels()`` on every send and claim cost
        # more than the increment (children are never removed, so one kept stays valid)
        self._message_children: dict[tuple[str, str], Counter] = {}
        self.parked = Gauge(
            "hyperhive_broker_parked_long_polls",
            "recv requests inside an agent or manager socket now: parked long polls (a recv "
            "that finds mail returns at once).",
            registry=registry,
        )
        self.parked.set_function(lambda: float(self._parked))
        self.http_in_flight = Gauge(
            "hyperhive_http_requests_in_flight",
            "Requests inside their app now (parked long polls and open streams included).",
            ["surface", "route"],
            registry=registry,
        )

    # ---------------------------------------------------------------- reconcile

    def pass_done(
        self,
        reason: str,
        seconds: float,
        actions: list[tuple[str, str]] | None = None,
        errors: int = 0,
        crashed: bool = False,
    ) -> None:
        """A pass ended after ``seconds``: ``actions`` as ``(kind, "ok" | "error")``;
        ``errors`` counts every error it reported; ``crashed`` when it raised."""
        outcome = "crashed" if crashed else ("error" if errors else "ok")
        self.passes.labels(trigger_of(reason), outcome).inc()
        self.pass_seconds.observe(max(0.0, seconds))
        for kind, result in actions or ():
            self.actions.labels(kind, result).inc()
        if outcome == "ok":
            self._last_ok = time.time()
            self.last_success.set(self._last_ok)

    def crashed(self, agent: str) -> None:
        """The crash watch found ``agent`` dead (it will be restarted, or is Stalled)."""
        self.crashes.labels(agent).inc()

    # ---------------------------------------------------------------- broker

    def message(self, agent: str, event: str, n: int = 1) -> None:
        """``n`` messages of ``agent`` went through ``event`` (``sent``, ``delivered``,
        ``acked``, ``released``, ``dead_lettered``)."""
        if n > 0:
            self._message_child(agent, event).inc(n)

    def _message_child(self, agent: str, event: str) -> Counter:
        child = self._message_children.get((agent, event))
        if child is None:
            child = self._message_children[(agent, event)] = self.messages.labels(agent, event)
        return child

    def claimed(self, msg: Message, now: float) -> None:
        """The broker handed ``msg`` to its recipient at ``now``: counted as delivered, and
        on its first delivery the time since it was sent (or fell due, for a reminder)
        goes to the send → recv histogram."""
        latency = None
        if int(msg.extra.get("attempts", 1)) <= 1:
            due = msg.extra.get("due_at")
            start = max(msg.sent_at, float(due)) if isinstance(due, int | float) else msg.sent_at
            latency = now - start
        self.delivered(msg.recipient, latency)

    def delivered(self, recipient: str, latency_seconds: float | None) -> None:
        """A message reached ``recipient``; ``latency_seconds`` since it was sent (or became
        due) when this is its first delivery, else ``None``."""
        self._message_child(recipient, "delivered").inc()
        if latency_seconds is not None:
            self.latency.observe(max(0.0, latency_seconds))

    # ---------------------------------------------------------------- http

    def request_started(self, surface: str, route: str) -> None:
        """A request entered ``surface``'s app."""
        self._in_flight_child(surface, route).inc()
        if route == "/recv" and surface in PARKING:
            self._parked += 1  # only the loop thread of hivehttp calls this

    def _in_flight_child(self, surface: str, route: str) -> Gauge:
        # the labelled children are looked up once per label set: ``labels()`` costs
        # microseconds per call, on every request of every socket
        gauge = self._in_flight.get((surface, route))
        if gauge is None:
            gauge = self._in_flight[(surface, route)] = self.http_in_flight.labels(surface, route)
        return gauge

    def request_finished(
        self, surface: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        """That request's app returned with ``status`` after ``seconds``."""
        self._in_flight_child(surface, route).dec()
        if route == "/recv" and surface in PARKING:
            self._parked -= 1
        key = (surface, route, method or "?", status)
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = (
                self.http_requests.labels(surface, route, method or "?", status_class(status)),
                self.http_seconds.labels(surface),
            )
        children[0].inc()
        children[1].observe(max(0.0, seconds))


# ``_created`` samples double every counter's lines and no query here uses them
disable_created_metrics()  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    """A registry with the process and platform collectors (CPU seconds, resident memory,
    open descriptors, Python version) and nothing else."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(families: Iterable[Metric]) -> bytes:
    """``families`` in the Prometheus text format (0.0.4), by ``prometheus_client``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families)))
    return generate_latest(registry)


class Rendered(Protocol):
    """A part of the scrape rendered on its own, and cached while its source is unchanged."""

    def render(self) -> bytes:
        """Its families in the text format."""


STATE: list[Rendered] = []
"""The state collectors of the running controller (``controller.metrics.install``)."""


def scrape(registry: CollectorRegistry | None = None) -> bytes:
    """One whole scrape: the hooks of ``BEFORE_SCRAPE``, the event series of ``registry``
    (default :data:`REGISTRY`), then every part of :data:`STATE`."""
    before_scrape()
    parts = [generate_latest(registry or REGISTRY)]
    for part in list(STATE):
        try:
            parts.append(part.render())
        except Exception:
            logging.getLogger(__name__).exception("metrics: a state collector failed")
    return b"".join(parts)


BEFORE_SCRAPE: list[Callable[[], None]] = []
"""Called (in order) before each scrape is encoded: they fold state into the counters."""


def before_scrape() -> None:
    """Run every ``BEFORE_SCRAPE`` hook; one that raises is skipped (a scrape never fails)."""
    for hook in list(BEFORE_SCRAPE):
        try:
            hook()
        except Exception:
            logging.getLogger(__name__).exception("metrics: a scrape hook failed")


REGISTRY = new_registry()
"""The controller's registry: what ``/metrics`` serves."""
EVENTS = EventMetrics(REGISTRY)
"""The controller's event series (the hooks call its methods)."""
