"""Agent series, read at scrape time from the swarm's cached status rows.

``Swarm.status()`` answers from the last observation and reuses each agent's row while
nothing it shows changed (docs/architecture.md, "Observed state"), so a scrape costs what
``hyperhive status`` costs: no probe of any agent, no git. Series:

- ``hyperhive_agents{phase}``: agents per phase (absent, stopped, running, failed; every
  phase, 0 included);
- ``hyperhive_agent_phase{agent,phase}``: 1 for each agent's current phase;
- ``hyperhive_agent_condition{agent,type,status,reason}``: 1 per condition (Ready,
  Reconciling, Stalled, UpToDate, LoggedIn, Degraded, Isolated) with its status and reason;
- ``hyperhive_agent_recent_crashes{agent}``: crashes in the crash window (a crash loop
  stalls the agent at 5);
- ``hyperhive_agent_dead_letters{agent}``: dead letters held for the agent;
- ``hyperhive_proposals_pending``: proposals waiting for the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.metrics.events import render
from controller.model import Phase

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    """What the collector reads: ``SwarmOps.status()`` and its cached JSON."""

    def status(self) -> dict[str, Any]:
        """``{"agents": [rows], "pending": n, ...}``."""

    def status_json(self) -> bytes:
        """``status()`` as JSON, the same object while nothing it shows changed."""


class SwarmCollector(Collector):
    """The agent series of one swarm (see the module docstring)."""

    def __init__(self, swarm: StatusSource) -> None:
        self.swarm = swarm
        self._rendered: tuple[bytes, bytes] | None = None

    def render(self) -> bytes:
        """The families in the text format; rendered again only when the swarm's status
        changed (``status_json`` hands back the very same bytes while it has not). The
        families come from ``status()``, whose rows ``status_json`` just made and keeps:
        parsing the body again would cost ~1.3 ms at 200 agents."""
        body = self.swarm.status_json()
        cached = self._rendered
        if cached is not None and cached[0] is body:
            return cached[1]
        text = render(self._families(self.swarm.status()))
        self._rendered = (body, text)  # holding ``body`` keeps the identity test sound
        return text

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return list(self._families({"agents": [], "pending": 0}))

    def collect(self) -> Iterable[Metric]:
        """The families from the swarm's status now; none when it cannot answer (logged)."""
        try:
            status = self.swarm.status()
        except Exception:
            log.exception("metrics: swarm status failed")
            return []
        return list(self._families(status))

    @staticmethod
    def _families(status: dict[str, Any]) -> Iterator[Metric]:
        agents = GaugeMetricFamily("hyperhive_agents", "Agents per phase.", labels=["phase"])
        phase = GaugeMetricFamily(
            "hyperhive_agent_phase", "1 for the agent's current phase.", labels=["agent", "phase"]
        )
        cond = GaugeMetricFamily(
            "hyperhive_agent_condition",
            "1 per condition of the agent, with its status (True, False, Unknown) and reason.",
            labels=["agent", "type", "status", "reason"],
        )
        crashes = GaugeMetricFamily(
            "hyperhive_agent_recent_crashes",
            "Crashes within the crash window (600 s); 5 stall the agent (CrashLoopBackOff).",
            labels=["agent"],
        )
        dead = GaugeMetricFamily(
            "hyperhive_agent_dead_letters", "Dead letters held for the agent.", labels=["agent"]
        )
        per_phase = {p.value: 0 for p in Phase}
        for row in status.get("agents", []):
            name = str(row.get("name", "?"))
            ph = str(row.get("phase", "?"))
            per_phase[ph] = per_phase.get(ph, 0) + 1
            phase.add_metric([name, ph], 1)
            for c in row.get("conditions", []):
                cond.add_metric(
                    [name, str(c.get("type")), str(c.get("status")), str(c.get("reason") or "")], 1
                )
            crashes.add_metric([name], float(row.get("crashes") or 0))
            dead.add_metric([name], float(row.get("dead_letters") or 0))
        for p in sorted(per_phase):
            agents.add_metric([p], per_phase[p])
        pending = GaugeMetricFamily(
            "hyperhive_proposals_pending", "Proposals waiting for the operator's decision."
        )
        pending.add_metric([], float(status.get("pending") or 0))
        yield from (agents, phase, cond, crashes, dead, pending)
