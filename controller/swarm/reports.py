"""Agent reports: what each agent's harness says it has (``POST /report`` on its socket).

The agent API hands every report in under the identity of the socket it arrived on,
so an agent speaks only for itself. A report is kept in memory (the harness sends
one at start, on every change and every 30 s, so a restarted controller has them
again within that); ``rev`` moves when one changes, which moves the swarm's
``version()`` and the rows built from it. What the controller would pass through to
an agent now (``passed``) is compared with the digests the agent reports
(``controller.status.env_drift``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from controller.status import HarnessReport
from schemas.wire import reported_env

log = logging.getLogger("hyperhive.swarm")


class Reports:
    """The latest ``HarnessReport`` per agent (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[str, HarnessReport] = {}
        self._awaited: set[str] = set()  # dropped with their process; the new one reports soon
        self.rev = 0

    def put(self, agent: str, doc: Mapping[str, Any]) -> bool:
        """Keep ``doc`` (a validated wire ``AgentReport``) as ``agent``'s report; True when
        it differs from the one kept before."""
        report = HarnessReport.from_json(doc)
        with self._lock:
            self._awaited.discard(agent)
            if self._reports.get(agent) == report:
                return False
            self._reports[agent] = report
            self.rev += 1
        log.debug("%s reported %s", agent, report)
        return True

    def get(self, agent: str) -> HarnessReport | None:
        """``agent``'s latest report, or None."""
        with self._lock:
            return self._reports.get(agent)

    def forget(self, agent: str) -> None:
        """Drop ``agent``'s report (its process stopped or was destroyed)."""
        with self._lock:
            if self._reports.pop(agent, None) is not None:
                self._awaited.add(agent)
                self.rev += 1

    def awaited(self, agent: str) -> bool:
        """True between ``forget`` (a reporting agent's process was replaced) and the new
        process's first report."""
        with self._lock:
            return agent in self._awaited


def passed_env(driver: object) -> dict[str, str] | None:
    """What ``driver`` passes to the agents it starts now, as ``reported_env`` digests; None
    when the driver does not say (only the local runtime keeps an ``env``)."""
    env = getattr(driver, "env", None)
    if not isinstance(env, Mapping):
        return None
    return reported_env(env)
