"""Sending: plain messages (with idempotency keys) and typed events (coalesced)."""

from __future__ import annotations

from typing import Any

from controller.broker.checks import (
    check_body,
    check_key,
    check_name,
    check_traceparent,
    request_digest,
)
from controller.broker.core import BrokerCore
from controller.broker.events import dedup_token, summarize_event
from controller.broker.limits import EVENT_SENDER
from controller.broker.model import Claim, Idem, NewMessage
from controller.broker.wakeups import Taker
from controller.errors import Invalid
from controller.metrics.events import EVENTS
from schemas.wire import Message, MessageKind


class Sending(BrokerCore):
    """``send`` and ``emit_event``."""

    def send(
        self,
        sender: str,
        recipient: str,
        body: str,
        *,
        kind: MessageKind = MessageKind.MESSAGE,
        thread: int | None = None,
        event: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_owner: str | None = None,
        traceparent: str | None = None,
    ) -> Message:
        """Queue ``body`` from ``sender`` to ``recipient``; committed when this returns.

        Does not check that ``recipient`` exists or may be messaged (the API
        layer does). Wakes a ``recv`` parked for ``recipient`` at once.
        ``idempotency_key`` (unique per ``idempotency_owner``, default
        ``sender``): when a message was already queued under it for the same
        request, that message is returned (``extra["duplicate"]`` True) and
        nothing is queued. Raises ``Invalid`` for an empty name or body, a bad
        key or an ``event`` that is not a valid typed event; ``Conflict`` for a
        key already used for a different request. ``traceparent``: the sender's W3C
        trace context, stored with the message and handed back by ``recv`` (not part of
        the idempotent request: a retry from another span replays the first); ``Invalid``
        unless W3C-shaped.

        Into an empty inbox with a coroutine receive parked on this thread's loop, the
        message is stored already delivered to that receive and handed to it after the
        commit (one transaction per message instead of two; ``_taker``).
        """
        check_name(sender, "from")
        check_name(recipient, "to")
        check_body(body)
        check_traceparent(traceparent)
        kind = MessageKind(kind)
        key = check_key(idempotency_key)
        if event is not None:
            self._validate_event(event)
        idem = None
        if key is not None:
            owner = check_name(idempotency_owner or sender, "idempotency_owner")
            digest = request_digest("send", sender, recipient, body, str(kind), thread, event)
            idem = Idem(owner, key, digest)
        taker: Taker | None = None
        try:
            with self._store.write() as tx:
                tx.only([recipient])  # the sender's own status is unchanged
                dup = self._replay(tx, idem)
                if dup is not None:
                    return dup
                now = self._clock()
                if kind != MessageKind.REMINDER:
                    taker = self._taker(recipient, now)
                claimed = None
                if taker is not None:
                    lease = taker.lease_seconds
                    claimed = Claim(now, None if lease is None else now + lease)
                msg = tx.insert(
                    NewMessage(
                        sender,
                        recipient,
                        body,
                        kind,
                        sent_at=now,
                        thread=thread,
                        event=event,
                        idem=idem,
                        traceparent=traceparent,
                        claimed=claimed,
                    )
                )
                if claimed is None:
                    tx.changed([recipient], msg.id)
                    if kind != MessageKind.REMINDER:
                        tx.adjust(recipient, 1, 1)  # one more unread message, nothing else
                elif claimed.lease_until is None:
                    # sent and acked at once: the inbox's counts are as they were; only the
                    # followers of new messages are woken
                    tx.adjust(recipient, 0, 0)
                    tx.changed([], msg.id)
                else:
                    # other receivers parked on this inbox must learn the lease's expiry
                    tx.changed([recipient], msg.id)
        except BaseException:
            if taker is not None:
                taker.give_back()  # nothing was stored: it looks at its inbox again
            raise
        if taker is not None:
            EVENTS.claimed(msg, now)  # delivered + send → recv latency (controller.metrics)
            taker.hand(msg)
        return msg

    def _taker(self, recipient: str, now: float) -> Taker | None:
        """A coroutine receive parked on ``recipient`` to hand the message being sent to
        (``wakeups.Taker``), or None. Only into an inbox the status cache knows is empty
        (read inside the send's transaction, so no commit intervenes): the new message is
        then the oldest deliverable one and nothing is left to reap, as a claim would find.
        Without a cache (a store other processes write) nothing is handed off."""
        cache = self._status_cache
        if cache is None:
            return None
        kept = cache.get(recipient, now)
        if kept is None or kept.pending != 0:
            return None
        return self._wake.take(recipient)

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Message | None:
        """Queue a typed event (``events.schema.json``) for ``recipient`` (usually ``manager``).

        The body is ``summarize_event(event)``, the sender ``hyperhive``. If an
        identical event is still undelivered — same ``dedup_key``, or the same
        JSON when ``dedup_key`` is None — nothing is queued and None is
        returned (coalesced). Raises ``Invalid`` if the event fails the schema.
        """
        check_name(recipient, "to")
        if not isinstance(event, dict):
            raise Invalid("event must be an object", "event")
        self._validate_event(event)
        token = dedup_token(event, dedup_key)
        with self._store.write() as tx:
            tx.only([recipient])
            if tx.has_undelivered(recipient, token):
                return None
            msg = tx.insert(
                NewMessage(
                    EVENT_SENDER,
                    recipient,
                    summarize_event(event),
                    MessageKind.EVENT,
                    sent_at=self._clock(),
                    event=event,
                    dedup_key=token,
                )
            )
            tx.changed([recipient], msg.id)
        return msg
