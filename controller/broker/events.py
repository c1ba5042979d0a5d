"""Typed events as messages: the one-line body an agent reads, and the coalescing token."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas.wire import EventType


def summarize_event(event: dict[str, Any]) -> str:
    """A one-line human summary of a typed event (the message body an agent reads).

    ``{"type": "ApprovalResolved", "id": 3, "decision": "deployed", "agents": ["alice"]}``
    → ``"proposal 3 deployed (alice)"``. Unknown shapes fall back to the type name.
    """
    t = event.get("type")
    agent = str(event.get("agent", "?"))
    note = str(event.get("note") or "")
    tail = f": {note}" if note else ""
    if t == EventType.APPROVAL_RESOLVED:
        agents = ", ".join(str(a) for a in event.get("agents") or [])
        kind = f" {event['kind']}" if event.get("kind") else ""
        who = f" ({agents})" if agents else ""
        text = f"proposal {event.get('id')}{kind} {event.get('decision')}{who}{tail}"
    elif t == EventType.CONTAINER_CRASH:
        restarts = f" (restarts: {event['restarts']})" if "restarts" in event else ""
        text = f"{agent} crashed{restarts}{tail}"
    elif t == EventType.NEEDS_LOGIN:
        text = f"{agent} needs login (only the operator can complete it)"
    elif t == EventType.LOGGED_IN:
        text = f"{agent} logged in"
    elif t == EventType.NEEDS_UPDATE:
        text = f"{agent} needs update{tail}"
    elif t == EventType.REBUILT:
        commit = f" at {str(event['commit'])[:12]}" if event.get("commit") else ""
        text = f"{agent} rebuilt{commit}"
    elif t == EventType.OPERATOR_ANSWERED:
        text = f"operator answered question {event.get('id')}: {event.get('answer')}"
    elif t == EventType.DEAD_LETTER:
        text = (
            f"message {event.get('id')} from {event.get('from')} to {agent} is a dead letter: "
            f"delivered {event.get('attempts')} times, never acked; it will not be delivered "
            "again"
        )
    elif t in (EventType.BUDGET_WARNING, EventType.BUDGET_EXCEEDED):
        text = f"{t}{tail}"  # the note names who, spend, limit and window (controller.budget)
    elif t == EventType.BUDGET_EXTENDED:
        who = "the swarm" if event.get("scope") == "swarm" else agent
        text = (
            f"budget extension #{event.get('grant')} for {who} by {event.get('by')}: "
            f"+${float(event.get('usd') or 0):.4f}"
            + (f" +{event.get('tokens')} tokens" if event.get("tokens") else "")
            + tail
        )
    else:
        text = str(t or "event")
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:499] + "…"


def dedup_token(event: dict[str, Any], dedup_key: str | None) -> str:
    """What coalesces an undelivered event: ``key:<dedup_key>``, else a hash of its JSON."""
    if dedup_key is not None:
        return "key:" + dedup_key
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "json:" + hashlib.sha256(canonical.encode()).hexdigest()
