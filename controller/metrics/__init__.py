"""Prometheus metrics of the controller (docs/observability.md).

- ``events``: counters and histograms of what happens (passes, actions, crashes, broker
  message events, HTTP requests): :data:`EVENTS` in :data:`REGISTRY`;
- ``swarmstate``, ``turns``, ``brokerstate``: collectors that read state that already
  exists (status rows, turn-stats files, the broker database) at scrape time;
- ``http``: the ``hivehttp`` request observer;
- ``endpoint``: ``GET /metrics`` on its own loopback (or token-guarded) TCP listener;
- :func:`install`: registers the collectors of one running controller.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry

from controller.metrics.brokerstate import BrokerCollector, SentCounter
from controller.metrics.events import (
    BEFORE_SCRAPE,
    EVENTS,
    REGISTRY,
    EventMetrics,
    new_registry,
    trigger_of,
)
from controller.metrics.swarmstate import StatusSource, SwarmCollector
from controller.metrics.turns import TurnCollector
from controller.paths import Layout

__all__ = [
    "EVENTS",
    "REGISTRY",
    "BrokerCollector",
    "EventMetrics",
    "SwarmCollector",
    "TurnCollector",
    "install",
    "new_registry",
    "trigger_of",
    "uninstall",
]


def install(
    swarm: StatusSource,
    layout: Layout,
    broker_db: Path | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> list[object]:
    """Register the scrape-time collectors of one controller in ``registry``; returns them
    (unregister them with ``registry.unregister`` when the controller stops)."""
    db = broker_db or layout.broker_db
    collectors: list[object] = [SwarmCollector(swarm), TurnCollector(layout), BrokerCollector(db)]
    for c in collectors:
        registry.register(c)  # type: ignore[arg-type]
    sent = SentCounter(db)
    BEFORE_SCRAPE.append(sent.refresh)
    collectors.append(sent)
    return collectors


def uninstall(collectors: list[object], registry: CollectorRegistry = REGISTRY) -> None:
    """Undo :func:`install`."""
    for c in collectors:
        if isinstance(c, SentCounter):
            with contextlib.suppress(ValueError):
                BEFORE_SCRAPE.remove(c.refresh)
        else:
            registry.unregister(c)  # type: ignore[arg-type]
        if isinstance(c, BrokerCollector):
            c.close()
