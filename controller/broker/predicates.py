"""The SQL text both stores' transactions share: column lists and the inbox predicates.

sqlite (``sqlite_tx``) and PostgreSQL (``postgres_tx``) select the same columns and find
pending rows with the same conditions; only their bind syntax differs (``:r`` against
``%(r)s``), so the predicates are built from the store's named placeholders.
"""

from __future__ import annotations

from controller.broker.model import MESSAGE_COLUMNS, QUESTION_COLUMNS

COLS = ", ".join(MESSAGE_COLUMNS)
"""The ``messages`` columns a :class:`~schemas.wire.Message` is read from, in order."""
Q_COLS = ", ".join(QUESTION_COLUMNS)
"""The ``operator_questions`` columns an ``OperatorQuestion`` is read from, in order."""
INBOX = "acked_at IS NULL AND dead_at IS NULL"
"""A message still in its recipient's inbox: neither acked nor dead."""


def deliverable(r: str, now: str, limit: str) -> str:
    """A message the recipient may be handed now, with the recipient, the time and the
    delivery limit bound at the placeholders ``r``, ``now`` and ``limit``: due, not leased (or
    the lease ran out) and, if it was leased, not delivered ``limit`` times already."""
    return (
        f"recipient = {r} AND {INBOX} AND due_at <= {now} "
        f"AND (lease_until IS NULL OR (lease_until <= {now} AND attempts < {limit}))"
    )


def exhausted(r: str, now: str, limit: str) -> str:
    """Leased ``limit`` times and the last lease ran out: a dead letter not yet marked as one
    (placeholders as for :func:`deliverable`)."""
    return (
        f"recipient = {r} AND {INBOX} AND lease_until IS NOT NULL AND lease_until <= {now} "
        f"AND attempts >= {limit}"
    )
