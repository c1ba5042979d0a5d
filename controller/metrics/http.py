"""The controller's HTTP request series: the ``hivehttp`` observer that feeds them.

``hivehttp`` names each listener (``host.sock``, ``dashboard``, ``metrics``, and an agent's
name for its API socket); the surface label maps them onto a bounded set: ``admin``,
``dashboard``, ``metrics``, ``manager``, ``agent_api`` (the agent API on TCP), ``git``
(meta.git over HTTP) and ``agent`` (every agent socket: the agent is not a label here,
its traffic is in the broker series).
"""

from __future__ import annotations

from controller.metrics.events import EVENTS, EventMetrics
from hivehttp import RequestSeen, set_request_observer

_SURFACES = {
    "host.sock": "admin",
    "dashboard": "dashboard",
    "metrics": "metrics",
    "manager": "manager",
    "agent-api": "agent_api",
    "git-http": "git",
}


def surface_of(listener: str) -> str:
    """The bounded surface label of a listener name."""
    return _SURFACES.get(listener, "agent")


class HttpObserver:
    """Counts every request of every controller listener into ``events``."""

    def __init__(self, events: EventMetrics = EVENTS) -> None:
        self.events = events

    def started(self, listener: str, route: str) -> None:
        """A request entered its app."""
        self.events.request_started(surface_of(listener), route)

    def finished(self, seen: RequestSeen) -> None:
        """Its app returned."""
        self.events.request_finished(
            surface_of(seen.listener), seen.route, seen.method, seen.status, seen.seconds
        )


def observe_http(events: EventMetrics = EVENTS) -> None:
    """Count the requests of every listener opened from now on."""
    set_request_observer(HttpObserver(events))
