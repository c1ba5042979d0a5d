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

from pathlib import Path

from prometheus_client import CollectorRegistry

from controller.metrics.brokerstate import BrokerCollector
from controller.metrics.events import EVENTS, REGISTRY, EventMetrics, new_registry, trigger_of
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
]


def install(
    swarm: StatusSource,
    layout: Layout,
    broker_db: Path | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> list[object]:
    """Register the scrape-time collectors of one controller in ``registry``; returns them
    (unregister them with ``registry.unregister`` when the controller stops)."""
    collectors: list[object] = [
        SwarmCollector(swarm),
        TurnCollector(layout),
        BrokerCollector(broker_db or layout.broker_db),
    ]
    for c in collectors:
        registry.register(c)  # type: ignore[arg-type]
    return collectors
