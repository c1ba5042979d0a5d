"""Server-sent event streams: the slots that cap them, and the live message flow.

Each open stream (the dashboard's ``/messages/stream`` and every proxied agent
``/events/stream``) holds one slot of ``StreamSlots``: at most ``per_session``
per login session and ``total`` overall, so a page cannot pile streams up
until the dashboard stops answering. A stream parks on the event loop (never
on a thread) and ends when its client goes away, the broker closes, or the
``stop`` event is set (within one heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import falcon.asgi

from controller.dashboard.httputil import client_gone, int_param, json_error
from controller.dashboard.views import message_view
from controller.errors import Invalid
from schemas.wire import Message

log = logging.getLogger("controller.dashboard")

PER_SESSION_STREAMS = 8
"""Open SSE streams one login session may hold (a 9th gets 503)."""

TOTAL_STREAMS = 64
"""Open SSE streams the dashboard holds at once, all sessions together."""


class StreamBroker(Protocol):
    """The broker methods the message flow reads."""

    def last_id(self) -> int:
        """The newest message id (0 when there is none); ids only grow."""
        ...

    def messages(self, since_id: int, limit: int) -> list[Message]:
        """Every message with ``id > since_id``, oldest first, at most ``limit``."""
        ...

    async def wait_for_new_async(
        self,
        since_id: int,
        timeout: float,
        limit: int = 200,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> list[Message]:
        """Messages above ``since_id``; parks on the loop up to ``timeout`` s if none."""
        ...


class StreamSlots:
    """Counts open streams per session key and overall; thread-safe.

    ``take(key)`` returns a ``Slot`` or None when the session or the whole
    dashboard is at its cap. A slot is given back by ``Slot.release()``, and
    in any case when it is garbage-collected (a response whose body is never
    iterated must not leak its slot).
    """

    def __init__(self, per_session: int = PER_SESSION_STREAMS, total: int = TOTAL_STREAMS) -> None:
        self.per_session = per_session
        self.total = total
        self._lock = threading.Lock()
        self._by_key: dict[str, int] = {}
        self._open = 0

    def take(self, key: str) -> Slot | None:
        """One slot for ``key``, or None when a cap is reached."""
        with self._lock:
            mine = self._by_key.get(key, 0)
            if mine >= self.per_session or self._open >= self.total:
                return None
            self._by_key[key] = mine + 1
            self._open += 1
        return Slot(self, key)

    def _give_back(self, key: str) -> None:
        with self._lock:
            left = self._by_key.get(key, 0) - 1
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)
            self._open = max(0, self._open - 1)

    def open_count(self, key: str | None = None) -> int:
        """Open streams of ``key``, or of everyone when None."""
        with self._lock:
            return self._open if key is None else self._by_key.get(key, 0)


class Slot:
    """One taken stream slot; ``release()`` is idempotent and also runs on collection."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._finalizer = weakref.finalize(self, slots._give_back, key)

    def release(self) -> None:
        """Give the slot back (once)."""
        self._finalizer()


class SlotStream:
    """An async byte iterator that holds a ``Slot`` (if any) until it ends or is closed.

    Falcon's ASGI app calls ``close()`` after the last chunk or when sending
    fails; collection releases the slot as a last resort.
    """

    def __init__(
        self, chunks: AsyncIterator[bytes], slot: Slot | None, on_close: Callable[[], None]
    ) -> None:
        self._chunks = chunks
        self._slot = slot
        self._on_close = on_close

    def __aiter__(self) -> SlotStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """End the stream: close the producer and give the slot back."""
        if self._slot is not None:
            self._slot.release()
        self._on_close()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(frozen=True)
class FlowOptions:
    """How a message flow runs: ``heartbeat`` seconds between comments, ``stop`` ends it."""

    heartbeat: float
    stop: threading.Event


def sse_frame(m: Message) -> bytes:
    """One SSE event: ``id: <message id>``, ``event: message``, the wire JSON as data."""
    data = json.dumps(message_view(m), separators=(",", ":"), default=str)
    return f"id: {m.id}\nevent: message\ndata: {data}\n\n".encode()


async def message_flow(
    broker: StreamBroker, since: int, opts: FlowOptions, gone: asyncio.Event
) -> AsyncIterator[bytes]:
    """Every broker message above ``since`` as SSE: history in pages, then live.

    A heartbeat comment goes out after ``opts.heartbeat`` quiet seconds. Ends
    when ``gone`` is set (client left), the broker closes or ``opts.stop`` is
    set; a broker failure ends it with a comment (the browser reconnects with
    ``Last-Event-ID``).
    """
    last = since
    yield f"retry: 3000\n: hyperhive message flow from id {since}\n\n".encode()
    try:
        while True:  # catch up with pages of history first
            page = broker.messages(last, 200)
            for m in page:
                if m.id > last:
                    last = m.id
                    yield sse_frame(m)
            if len(page) < 200:
                break
        while not opts.stop.is_set() and not gone.is_set():
            started = time.monotonic()
            fresh = [
                m
                for m in await broker.wait_for_new_async(last, opts.heartbeat, abandoned=gone)
                if m.id > last
            ]
            if gone.is_set():
                return
            if not fresh:
                if getattr(broker, "closed", False) is True:
                    return  # shutting down; the browser reconnects to the next controller
                # a broker that returns early must not turn this into a busy loop
                await _sleep_unless(gone, opts.heartbeat - (time.monotonic() - started))
                yield b": heartbeat\n\n"
                continue
            for m in fresh:
                last = m.id
                yield sse_frame(m)
    except Exception as e:  # broker trouble: end the stream, the browser reconnects
        log.exception("dashboard: message stream failed")
        yield f": stream error: {type(e).__name__}\n\n".encode()


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` (nothing when <= 0), waking early once ``event`` is set."""
    if seconds > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


BACKLOG_MAX = 500
"""Most messages a new SSE connection may ask to be replayed (``?backlog=N``)."""


def too_many_streams(resp: falcon.asgi.Response, slots: StreamSlots) -> None:
    """Answer 503 (JSON, ``Retry-After``) for a stream over its session's or the total cap."""
    json_error(
        resp,
        503,
        "too_many_streams",
        f"too many open event streams (at most {slots.per_session} per login, "
        f"{slots.total} in all); close a tab and retry",
    )
    resp.set_header("Retry-After", "5")


def sse_headers(resp: falcon.asgi.Response) -> None:
    """The headers of an event stream."""
    resp.content_type = "text/event-stream; charset=utf-8"
    resp.cache_control = ["no-cache"]
    resp.set_header("X-Accel-Buffering", "no")


class MessageStream:
    """``GET /messages/stream``: every broker message as SSE, live.

    Start point: ``Last-Event-ID`` (browser reconnect) or ``?since=ID`` →
    everything after it; else ``?backlog=N`` (≤ 500) most recent, then live.
    """

    def __init__(self, broker: StreamBroker, slots: StreamSlots, opts: FlowOptions) -> None:
        self.broker = broker
        self.slots = slots
        self.opts = opts

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Open the stream (400 for a bad start point, 503 over the stream caps)."""
        header = req.get_header("Last-Event-ID")
        since: int | None = None
        if header is not None and header.strip():
            if not header.strip().isdigit() or len(header.strip()) > 18:
                raise Invalid("Last-Event-ID must be a message id", "Last-Event-ID")
            since = int(header.strip())
        elif req.get_param("since") is not None:
            since = int_param(req, "since", 0, 2**62)
        backlog = int_param(req, "backlog", 0, BACKLOG_MAX) or 0
        if since is None:
            latest = int(self.broker.last_id())
            since = max(0, latest - backlog) if backlog else latest
        slot = self.slots.take(getattr(req.context, "session", "") or "")
        if slot is None:
            too_many_streams(resp, self.slots)
            return
        sse_headers(resp)
        gone = client_gone(req)
        resp.stream = SlotStream(message_flow(self.broker, since, self.opts, gone), slot, gone.set)
