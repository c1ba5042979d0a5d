"""Events: typed events to the manager's inbox and the per-agent recent lifecycle events.

The manager's events go through the broker (``EventSink.emit_event``), coalesced by a
dedup key; a delivery failure is logged, never raised (a pass must not fail on it).
Per-agent events (``describe``, the dashboard) are kept in ``SwarmCore.recent_events``
(the last ``EVENTS_KEEP`` per agent) and persisted with status.json.
"""

from __future__ import annotations

import logging
from typing import Any

from controller.swarm.core import EVENTS_KEEP, SwarmCore
from schemas.names import MANAGER
from schemas.wire import EventType

log = logging.getLogger("hyperhive.swarm")


class Events:
    """Emit manager events and record agent events over ``core``."""

    def __init__(self, core: SwarmCore) -> None:
        self.core = core

    def emit(self, event: dict[str, Any], dedup_key: str) -> bool:
        """Deliver ``event`` to the manager (coalesced by ``dedup_key``); False if it failed."""
        try:
            self.core.broker.emit_event(MANAGER, event, dedup_key)
        except Exception:
            log.exception("could not deliver %s to the manager", event.get("type"))
            return False
        return True

    def approval(
        self, id: int, kind: str, agents: tuple[str, ...], decision: str, note: str
    ) -> bool:
        """``ApprovalResolved`` for proposal ``id`` (``decision``: deployed, failed, denied)."""
        return self.emit(
            {
                "type": EventType.APPROVAL_RESOLVED.value,
                "id": id,
                "kind": kind,
                "agents": list(agents),
                "decision": decision,
                "note": note,
            },
            f"approval:{id}:{decision}",
        )

    def record(self, agent: str, type_: str, message: str) -> None:
        """Append a lifecycle event to ``agent``'s recent events (``describe``)."""
        rows = self.core.recent_events.setdefault(agent, [])
        rows.append({"at": self.core.clock(), "type": type_, "message": message})
        del rows[:-EVENTS_KEEP]
        self.core.rev += 1
