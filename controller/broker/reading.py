"""Reading without taking: an inbox's status, recent history, and following every message
(the dashboard's stream, ``hyperhive messages --follow``)."""

from __future__ import annotations

import asyncio
import time

from controller.broker.core import BrokerCore
from controller.broker.errors import BrokerClosed
from controller.broker.model import BrokerGauges
from controller.broker.statuscache import StatusCache, StatusReading
from controller.broker.wakeups import park_async
from schemas.wire import Message, Status


class Reading(BrokerCore):
    """``status``, ``recent``, ``messages``, ``last_id``, ``wait_for_new`` (and async)."""

    def status(self, recipient: str) -> Status:
        """``unread`` (deliverable now, incl. expired leases and due reminders), ``open_threads``
        (questions asked by or of ``recipient`` not yet answered), ``pending_reminders``
        (not yet due), ``dead_letters`` (held dead letters, incl. exhausted leases not
        marked yet). Changes nothing."""
        cache = self._status_cache
        if cache is None:
            with self._store.read() as tx:
                return tx.status(recipient, self._clock(), self.max_deliveries)
        return self._status_reading(cache, recipient).status

    def _status_reading(self, cache: StatusCache, recipient: str) -> StatusReading:
        """``recipient``'s reading from ``cache``, read from the store when it has none."""
        now = self._clock()
        kept = cache.get(recipient, now)
        if kept is not None:
            return kept
        generation = cache.generation(recipient)
        with self._store.read() as tx:
            reading = tx.status_reading(recipient, now, self.max_deliveries)
        cache.put(recipient, generation, reading)
        return reading

    def recent(self, recipient: str, limit: int = 20) -> list[Message]:
        """The last ``limit`` (1..1000) messages to or from ``recipient``, newest last.

        Reminders that are not due yet are left out. Changes nothing.
        """
        limit = min(max(int(limit), 1), 1000)
        with self._store.read() as tx:
            rows = tx.recent(recipient, self._clock(), limit)
        return list(reversed(rows))

    def messages(self, since_id: int = 0, limit: int = 200) -> list[Message]:
        """Every message with ``id > since_id``, oldest first, at most ``limit`` (1..1000)."""
        limit = min(max(int(limit), 1), 1000)
        since = min(max(int(since_id), 0), 2**63 - 1)
        with self._store.read() as tx:
            return tx.messages(since, limit)

    def gauges(self, sent_after: int | None = None) -> BrokerGauges:
        """The metrics scrape's figures now (``controller.broker.model.BrokerGauges``):
        inbox depth and oldest time, leases, reminders and open threads per agent, pending
        operator questions, and the messages sent after id ``sent_after`` per sender.
        Changes nothing."""
        with self._store.read() as tx:
            return tx.gauges(self._clock(), sent_after)

    def last_id(self) -> int:
        """The newest message id (0 when there is none); ids only grow, sweeps never reuse them."""
        return self._wake.last_id()

    def _fetch_new(self, since_id: int, limit: int) -> list[Message] | None:
        """What a wait for new messages returns once ids above ``since_id`` exist: those
        messages, ``[]`` when the broker closed meanwhile, or None when there are none after
        all (swept or rolled back: the caller waits for newer)."""
        try:
            rows = self.messages(since_id, limit)
        except BrokerClosed:
            return []
        return rows or None

    def wait_for_new(self, since_id: int, timeout: float, limit: int = 200) -> list[Message]:
        """``messages(since_id, limit)``, parking up to ``timeout`` seconds while there are none.

        Wakes on any new message (for SSE and ``hyperhive messages --follow``).
        Returns ``[]`` at the timeout or when the broker closes.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while True:
            if not self._wake.wait_new(since_id, deadline - time.monotonic()):
                return []
            rows = self._fetch_new(since_id, limit)
            if rows is not None:
                return rows
            # ids above since_id were swept or rolled back: wait for newer
            since_id = max(since_id, self._wake.last_id())

    async def wait_for_new_async(
        self,
        since_id: int,
        timeout: float,
        limit: int = 200,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> list[Message]:
        """``wait_for_new`` for asyncio code: parks on the running loop, never on a thread.

        Returns the messages above ``since_id`` (oldest first, at most
        ``limit``), parking up to ``timeout`` seconds while there are none;
        ``[]`` at the timeout, when the broker closes or once ``abandoned`` is set.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while True:
            if self._wake.closed:
                return []
            last = self._wake.last_id()
            if last > since_id:
                rows = self._fetch_new(since_id, limit)
                if rows is not None:
                    return rows
                since_id = max(since_id, last)  # swept or rolled back: wait for newer
                continue
            left = deadline - time.monotonic()
            if left <= 0 or (abandoned is not None and abandoned.is_set()):
                return []
            fut = self._wake.park(None, last)
            if fut is None:
                continue
            try:
                await park_async(fut, left, abandoned)
            finally:
                self._wake.unpark(None, fut)
