"""Retention: what the hourly sweep deletes (acked messages, dead letters, answered threads,
resolved operator questions older than 30 days; never undelivered or leased messages)."""

from __future__ import annotations

from controller.broker.core import log
from controller.broker.deadletters import DeadLetters
from controller.broker.limits import RETENTION_SECONDS


class Retention(DeadLetters):
    """``sweep``."""

    def sweep(self, now: float | None = None, keep_seconds: float = RETENTION_SECONDS) -> int:
        """Delete acked messages, dead letters, answered threads and resolved operator questions
        older than ``keep_seconds`` (30 days); undelivered and leased messages are always kept.

        Marks exhausted leases as dead letters first (``reap_dead_letters``),
        then gives space back (sqlite: ``wal_checkpoint(TRUNCATE)``). Returns the
        number of messages deleted. ``hyperhive serve`` calls it hourly.
        """
        at = self._clock() if now is None else now
        self.reap_dead_letters(at)
        cutoff = at - keep_seconds
        with self._store.write() as tx:
            deleted = tx.sweep(cutoff)
        self._store.compact()
        if deleted:
            log.info("broker sweep: deleted %d message(s) acked before %s", deleted, cutoff)
        return deleted
