"""What every part of the broker's semantics shares: the store, the wake-ups, the clock,
the dead-letter policy, and the few steps several verbs take (idempotent replay, typed
event checks, reaping exhausted leases)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from controller.broker.events import summarize_event
from controller.broker.limits import EVENT_SENDER
from controller.broker.model import Idem, NewMessage
from controller.broker.statuscache import StatusCache
from controller.broker.store import Store, Tx
from controller.broker.wakeups import Wakeups
from controller.errors import Conflict, Invalid
from controller.metrics.events import EVENTS
from schemas.validate import ValidationFailed, validate
from schemas.wire import EventType, Message, MessageKind

log = logging.getLogger("controller.broker")


class BrokerCore:
    """The state the broker's parts share (``controller.broker.Broker`` sets it up).

    ``_clock`` returns unix seconds and stamps every row; ``max_deliveries`` is how often a
    leased message is delivered before it becomes a dead letter; ``dead_letter_to`` gets
    the ``DeadLetter`` events (None: nobody).
    """

    _store: Store
    _wake: Wakeups
    _status_cache: StatusCache | None
    _blocking: bool  # calls wait on a database server's round trips (``Broker.blocking``)
    _clock: Callable[[], float]
    max_deliveries: int
    dead_letter_to: str | None

    def _on_change(self, recipients: Sequence[str] | None, last_id: int | None) -> None:
        """The store's ``on_change``: a commit (here or in another process) changed these
        inboxes."""
        if recipients is None:
            self._wake.notify_everyone(last_id)
        else:
            self._wake.notify(recipients, last_id)

    @staticmethod
    def _replay(tx: Tx, idem: Idem | None) -> Message | None:
        """The message stored under ``idem`` (marked ``extra["duplicate"]``), or None.

        ``Conflict`` naming ``idempotency_key`` when the key was used for another request.
        """
        if idem is None:
            return None
        found = tx.by_idempotency_key(idem.owner, idem.key)
        if found is None:
            return None
        msg, digest = found
        if digest != idem.digest:
            raise Conflict(
                f"idempotency_key {idem.key!r} was already used for a different request "
                f"(message {msg.id}); use a new key for a new message",
                "idempotency_key",
            )
        msg.extra["duplicate"] = True
        return msg

    @staticmethod
    def _validate_event(event: dict[str, Any]) -> None:
        """``Invalid`` naming the field unless ``event`` is a valid typed event."""
        try:
            validate(event, "events")
        except ValidationFailed as exc:
            raise Invalid(f"event is not a valid typed event: {exc}", f"event.{exc.field}") from exc

    def _reap(self, tx: Tx, recipient: str, now: float) -> int:
        """Mark ``recipient``'s exhausted leases as dead letters in ``tx`` and queue a
        ``DeadLetter`` event for each; how many died."""
        dead = tx.mark_dead(recipient, now, self.max_deliveries)
        EVENTS.message(recipient, "dead_lettered", len(dead))  # controller.metrics
        for m in dead:
            log.warning(
                "dead letter: message %d from %s to %s was delivered %d times and "
                "never acked; it will not be delivered again",
                m.id,
                m.sender,
                m.recipient,
                m.extra["attempts"],
            )
            event = self._announce_dead(tx, m, now)
            if event is not None:
                tx.changed([event.recipient], event.id)
        return len(dead)

    def _announce_dead(self, tx: Tx, m: Message, now: float) -> Message | None:
        """Queue the ``DeadLetter`` event for ``m``; not for a dead ``DeadLetter`` event."""
        if self.dead_letter_to is None:
            return None
        if m.kind == MessageKind.EVENT and (m.event or {}).get("type") == EventType.DEAD_LETTER:
            return None
        event: dict[str, Any] = {
            "type": str(EventType.DEAD_LETTER),
            "agent": m.recipient,
            "id": m.id,
            "from": m.sender,
            "kind": str(m.kind),
            "attempts": int(m.extra["attempts"]),
        }
        return tx.insert(
            NewMessage(
                EVENT_SENDER,
                self.dead_letter_to,
                summarize_event(event),
                MessageKind.EVENT,
                sent_at=now,
                event=event,
                dedup_key=f"key:dead-letter:{m.id}",
            )
        )
