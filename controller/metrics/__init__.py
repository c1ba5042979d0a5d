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
import threading
from pathlib import Path

from controller.metrics.brokerstate import BrokerCollector, SentCounter
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
) -> list[object]:
    """Add the scrape-time collectors of one controller to the scrape (``events.STATE``, each
    rendered on its own and cached while its source is unchanged) and the sent-message
    counter to ``events.BEFORE_SCRAPE``; returns them for :func:`uninstall`."""
    db = broker_db or layout.broker_db
    turns = TurnCollector(layout)
    parts: list[Rendered] = [SwarmCollector(swarm), turns, BrokerCollector(db)]
    STATE.extend(parts)
    # fold every agent's recorded turns now, not in the first scrape (a few hundred ms at
    # 200 agents with many turns)
    threading.Thread(target=turns.refresh, name="metrics-turns", daemon=True).start()
    sent = SentCounter(db)
    BEFORE_SCRAPE.append(sent.refresh)
    return [*parts, sent]


def uninstall(collectors: list[object]) -> None:
    """Undo :func:`install`."""
    for c in collectors:
        if isinstance(c, SentCounter):
            with contextlib.suppress(ValueError):
                BEFORE_SCRAPE.remove(c.refresh)
        else:
            with contextlib.suppress(ValueError):
                STATE.remove(c)  # type: ignore[arg-type]  # one of the parts
        if isinstance(c, BrokerCollector):
            c.close()
