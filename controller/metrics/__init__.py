"""Prometheus metrics of the controller (docs/observability.md).

- ``events``: counters and histograms of what happens (passes, actions, crashes, broker
  message events, HTTP requests): :data:`EVENTS` in :data:`REGISTRY`;
- ``swarmstate``, ``turns``, ``brokerstate``: collectors that read state that already
  exists (status rows, turn-stats files, the broker's store) at scrape time;
- ``http``: the ``hivehttp`` request observer;
- ``endpoint``: ``GET /metrics`` on its own loopback (or token-guarded) TCP listener;
- :func:`install`: registers the collectors of one running controller.
"""

from __future__ import annotations

import contextlib
import threading

from controller.metrics.brokerstate import BrokerCollector, GaugeSource
from controller.metrics.events import (
    BEFORE_SCRAPE,
    EVENTS,
    REGISTRY,
    STATE,
    EventMetrics,
    Rendered,
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
    "GaugeSource",
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
    broker: GaugeSource | None = None,
) -> list[object]:
    """Add the scrape-time collectors of one controller to the scrape (``events.STATE``, each
    rendered on its own and cached while its source is unchanged) and the broker's one
    query per scrape to ``events.BEFORE_SCRAPE``; returns them for :func:`uninstall`.
    ``broker`` defaults to ``swarm.broker`` (whichever store it is on)."""
    if broker is None:
        broker = getattr(swarm, "broker", None)
    turns = TurnCollector(layout)
    brokers = BrokerCollector(broker)
    parts: list[Rendered] = [SwarmCollector(swarm), turns, brokers]
    STATE.extend(parts)
    # fold every agent's recorded turns now, not in the first scrape (a few hundred ms at
    # 200 agents with many turns)
    threading.Thread(target=turns.refresh, name="metrics-turns", daemon=True).start()
    BEFORE_SCRAPE.append(brokers.refresh)
    return list(parts)


def uninstall(collectors: list[object]) -> None:
    """Undo :func:`install`."""
    for c in collectors:
        with contextlib.suppress(ValueError):
            STATE.remove(c)  # type: ignore[arg-type]  # one of the parts
        if isinstance(c, BrokerCollector):
            with contextlib.suppress(ValueError):
                BEFORE_SCRAPE.remove(c.refresh)
            c.close()
