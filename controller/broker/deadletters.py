"""Dead letters: a leased message delivered ``max_deliveries`` (5) times whose lease runs out
again without an ``ack`` is never delivered again, counted in ``Status.dead_letters``,
announced to ``dead_letter_to`` (the manager) as a ``DeadLetter`` event and kept 30 days,
unless requeued."""

from __future__ import annotations

from collections.abc import Sequence

from controller.broker.checks import check_id
from controller.broker.core import BrokerCore
from schemas.wire import Message


class DeadLetters(BrokerCore):
    """``reap_dead_letters``, ``dead_letters``, ``requeue_dead_letters``, ``dead_letter_counts``."""

    def reap_dead_letters(self, now: float | None = None) -> int:
        """Mark every exhausted lease as a dead letter now; returns how many died.

        ``recv`` does this for its own inbox before each claim and ``sweep``
        for everyone, so calling it is only needed for a prompt ``DeadLetter``
        event when the recipient is not receiving at all. One transaction per recipient.
        """
        at = self._clock() if now is None else now
        with self._store.read() as tx:
            names = tx.exhausted_recipients(at, self.max_deliveries)
        count = 0
        for name in names:
            with self._store.write() as tx:
                count += self._reap(tx, name, at)
        return count

    def dead_letters(self, recipient: str | None = None, limit: int = 200) -> list[Message]:
        """Dead letters (of ``recipient``, or everyone's), oldest first, at most ``limit``."""
        limit = min(max(int(limit), 1), 1000)
        with self._store.read() as tx:
            return tx.dead_letters(recipient, limit)

    def requeue_dead_letters(self, ids: Sequence[int]) -> int:
        """Make dead letters deliverable again (attempts reset, original place in the order);
        returns how many were requeued. Ids that are not dead letters are ignored."""
        clean = sorted({check_id(i, "ids") for i in ids})
        if not clean:
            return 0
        with self._store.write() as tx:
            woken = tx.requeue(clean)
            tx.changed(sorted(set(woken)))
        return len(woken)

    def dead_letter_counts(self) -> dict[str, int]:
        """``{recipient: dead letters held}`` for every recipient that has any (for the
        swarm status and the dashboard); exhausted leases not marked yet count."""
        with self._store.read() as tx:
            return tx.dead_letter_counts(self._clock(), self.max_deliveries)
