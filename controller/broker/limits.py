"""The broker's limits and fixed names, shared by the semantics and every store."""

from __future__ import annotations

MAX_WAIT_SECONDS = 180.0
"""Longest a ``recv`` may park (docs/broker.md "Verbs")."""

MAX_LEASE_SECONDS = 86400
"""Longest lease ``recv`` accepts."""

MAX_REMIND_SECONDS = 30 * 86400
"""Longest ``remind`` delay (and operator question ttl)."""

RETENTION_SECONDS = 30 * 86400
"""``sweep`` deletes acked messages (and resolved threads/questions) older than this."""

MAX_DELIVERIES = 5
"""A leased message delivered this often and never acked becomes a dead letter."""

MAX_IDEMPOTENCY_KEY = 128
"""Longest ``idempotency_key``."""

EVENT_SENDER = "hyperhive"
"""``from`` of typed events the controller emits."""

CANCELLED = "[cancelled]"
"""The answer of an operator question the operator cancelled."""

EXPIRED = "[expired]"
"""The answer of an operator question whose ttl ran out."""

ABANDON_POLL_SECONDS = 1.0
"""How often a parked thread-side ``recv`` asks whether its client went away."""

DUE_SLACK_SECONDS = 0.005
"""A parked ``recv`` wakes this long after the next due time (a reminder falls due, a lease
runs out, or a row another process holds may be free), so the clock has surely passed it."""
