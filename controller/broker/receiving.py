"""Receiving: the leased (or at-most-once) claim, long polls on a thread or a coroutine,
``ack`` and ``release``.

``recv(lease_seconds=None)`` marks the message delivered *and* acked in the claim that
selects it: at-most-once. ``recv(lease_seconds=L)`` only leases it; unless ``ack`` ed within
``L`` seconds it becomes deliverable again, at its original place in the order:
at-least-once, and the message id lets the receiver drop a duplicate. A leased message
delivered ``max_deliveries`` times whose lease runs out again is a dead letter
(``controller.broker.deadletters``). A parked receive computes the next due time (reminder
or lease expiry) of its own recipient and wakes then, so no timer thread is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.broker.checks import check_id, check_name, recv_args
from controller.broker.core import BrokerCore
from controller.broker.errors import BrokerClosed
from controller.broker.limits import ABANDON_POLL_SECONDS, DUE_SLACK_SECONDS
from controller.broker.wakeups import Taker, park_async
from controller.metrics.events import EVENTS
from schemas.wire import Message


@dataclass(frozen=True)
class RecvStep:
    """What one try of a receive decided: ``done`` (return ``msg``, None meaning nothing),
    or park until ``wake_at`` (monotonic seconds) unless the recipient's sequence moves
    past ``seq`` (the value read before the claim, so no change is missed)."""

    done: bool
    msg: Message | None = None
    seq: int = 0
    wake_at: float = 0.0


class Receiving(BrokerCore):
    """``recv``, ``recv_async``, ``ack`` and ``release``."""

    def _claim(
        self, recipient: str, lease_seconds: int | None
    ) -> tuple[Message | None, float | None]:
        """Deliver the oldest deliverable message, else say when the next one will be
        (unix seconds, or None). Marks the recipient's exhausted leases as dead letters
        first, in the same transaction."""
        now = self._clock()
        until = None if lease_seconds is None else now + lease_seconds
        with self._store.write() as tx:
            tx.only([recipient])  # and the dead-letter events' recipient, through changed
            died = self._reap(tx, recipient, now) if self._may_hold_leases(recipient, now) else 0
            msg = tx.claim(recipient, now, until, self.max_deliveries)
            if lease_seconds is None and died == 0:
                # a plain claim acks the one message it takes: one unread fewer, nothing else
                taken = 0 if msg is None else 1
                tx.adjust(recipient, -taken, -taken)
            if msg is not None:
                EVENTS.claimed(msg, now)  # delivered + send → recv latency (controller.metrics)
                if lease_seconds is not None:
                    # other parked receivers of this inbox must learn the lease's expiry
                    tx.changed([recipient])
                return msg, None
            return None, tx.next_due(recipient, now, self.max_deliveries)

    def _may_hold_leases(self, recipient: str, now: float) -> bool:
        """False when the status cache knows ``recipient`` has no leased message, live or
        run out (pending = unread + reminders): the dead-letter check has nothing to look
        at. Called inside the claim's transaction, where no other commit can intervene."""
        cache = self._status_cache
        kept = None if cache is None else cache.get(recipient, now)
        return kept is None or kept.pending != kept.status.unread + kept.status.pending_reminders

    def _inbox_empty(self, recipient: str) -> bool:
        """True when the status cache knows ``recipient`` has no pending message at all (no
        claim would deliver or reap one, nothing falls due): its empty claim transaction
        is skipped. Read after the recipient's wake-up sequence, and the cache forgets an
        inbox at the commit, before any wake-up: a send in between is never missed."""
        cache = self._status_cache
        if cache is None:
            return False
        kept = cache.get(recipient, self._clock())
        return kept is not None and kept.pending == 0

    def _recv_step(
        self,
        recipient: str,
        lease_seconds: int | None,
        deadline: float,
        abandoned: Callable[[], bool] | None,
    ) -> RecvStep:
        """One try of ``recv`` and ``recv_async``: claim the oldest deliverable message of
        ``recipient``, or say until when (``deadline`` at the latest, monotonic seconds) to
        park. Blocks only for the claim's short transaction, so ``recv_async`` runs it
        on the loop. ``abandoned()`` True ends the receive without taking a message."""
        seq = self._wake.seq(recipient)
        if seq is None:
            return RecvStep(done=True)
        if abandoned is not None and abandoned():
            return RecvStep(done=True)
        try:
            if self._inbox_empty(recipient):  # nothing to claim, reap or wait for: park
                msg, next_due = None, None
            else:
                msg, next_due = self._claim(recipient, lease_seconds)
        except BrokerClosed:
            return RecvStep(done=True)
        if msg is not None:
            return RecvStep(done=True, msg=msg)
        now = time.monotonic()
        if now >= deadline:
            return RecvStep(done=True)
        wake_at = deadline
        if next_due is not None:  # a reminder falls due or a lease runs out
            wake_at = min(wake_at, now + max(next_due - self._clock(), 0.0) + DUE_SLACK_SECONDS)
        return RecvStep(done=False, seq=seq, wake_at=wake_at)

    def recv(
        self,
        recipient: str,
        wait_seconds: float = 0,
        lease_seconds: int | None = None,
        *,
        abandoned: Callable[[], bool] | None = None,
    ) -> Message | None:
        """The oldest deliverable message for ``recipient``, or None.

        ``wait_seconds`` 0 peeks and returns at once; up to 180 (clamped) parks
        until a message arrives, a reminder falls due or a lease expires.
        ``lease_seconds`` None marks the message delivered and acked;
        otherwise it is leased for that many seconds (1..86400) and delivered
        again afterwards unless ``ack`` ed. ``abandoned`` (a callable, e.g. a
        thread-side check that the client hung up) is polled about once a second while parked:
        when it returns True, recv gives up without taking a message, so a
        client that went away does not swallow one. Returns None at the
        deadline or when the broker closes. Raises ``Invalid`` for a bad lease.
        """
        deadline = time.monotonic() + recv_args(recipient, wait_seconds, lease_seconds)
        while True:
            step = self._recv_step(recipient, lease_seconds, deadline, abandoned)
            if step.done:
                return step.msg
            # park until something changes for this recipient; only re-query then, so an
            # idle parked recv costs one wake-up per second (the abandoned check), no SQL
            while True:
                left = step.wake_at - time.monotonic()
                if abandoned is not None:
                    left = min(left, ABANDON_POLL_SECONDS)
                changed = self._wake.wait(recipient, step.seq, left)
                if abandoned is not None and abandoned():
                    return None
                if changed or time.monotonic() >= step.wake_at:
                    break

    async def recv_async(
        self,
        recipient: str,
        wait_seconds: float = 0,
        lease_seconds: int | None = None,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> Message | None:
        """``recv`` for asyncio code: parks on the running loop, never on a thread.

        Same arguments, semantics and errors as ``recv``; ``abandoned`` (e.g.
        ``hivehttp.disconnected(scope)``) set while parked makes it give up at
        once without taking a message. The claim itself is one short transaction
        run inline (also on PostgreSQL: a parked receive holds no thread). A send from any
        thread (or, on a shared store, any process) wakes it through
        ``loop.call_soon_threadsafe``; a send on its own loop into its empty inbox hands it
        the message directly (``Sending.send``), stored as this receive would have claimed
        it.
        """
        deadline = time.monotonic() + recv_args(recipient, wait_seconds, lease_seconds)
        gone = None if abandoned is None else abandoned.is_set
        while True:
            step = self._recv_step(recipient, lease_seconds, deadline, gone)
            if step.done:
                return step.msg
            taker = Taker(lease_seconds, abandoned)
            fut = self._wake.park(recipient, step.seq, taker)
            if fut is None:
                continue
            try:
                await park_async(fut, max(step.wake_at - time.monotonic(), 0.0), abandoned)
            finally:
                self._wake.unpark(recipient, fut)
            if taker.msg is not None:  # a send handed it over: already stored as delivered
                return taker.msg
            if abandoned is not None and abandoned.is_set():
                return None

    def ack(self, recipient: str, ids: Sequence[int]) -> int:
        """Acknowledge delivered messages of ``recipient``; returns how many were newly acked.

        Ids that are unknown, addressed to someone else, never delivered or
        already acked are ignored (so a repeated ack is harmless). A late ack
        of a message that became a dead letter meanwhile still counts: it is
        acked and no longer a dead letter.
        """
        check_name(recipient, "recipient")
        clean = sorted({check_id(i, "ids") for i in ids})
        if not clean:
            return 0
        with self._store.write() as tx:
            tx.only([recipient])
            acked = tx.ack(recipient, clean, self._clock())
        EVENTS.message(recipient, "acked", acked)  # controller.metrics
        return acked

    def release(self, recipient: str, ids: Sequence[int] | None = None) -> int:
        """End ``recipient``'s leases now, so those messages are delivered again at once.

        A harness that restarts (or stops mid-turn) gives back what it had leased instead of
        leaving it to wait out the lease. ``ids=None`` releases every live lease of
        ``recipient``; ids that are not its live leases (unknown, someone else's, acked,
        dead) are ignored. A release still counts as a delivery attempt, so a message that
        keeps killing its turn still ends as a dead letter. Returns how many were released.
        """
        check_name(recipient, "recipient")
        clean = None if ids is None else sorted({check_id(i, "ids") for i in ids})
        if clean == []:
            return 0
        with self._store.write() as tx:
            tx.only([recipient])
            released = tx.release(recipient, clean, self._clock())
            if released:
                tx.changed([recipient])
        EVENTS.message(recipient, "released", released)  # controller.metrics
        return released
