"""Fast routes: a listener's hottest JSON verbs served without the ASGI machinery.

An app may offer ``fast_routes``: a mapping ``(method, path) -> FastHandler`` (both
``bytes``, the exact request-target, no query). hivehttp's server recognises such a
request once llhttp has parsed its head and serves it here instead of building an ASGI
scope, ``receive``/``send`` closures, message dicts and the guard's replay: about half
of what a request cost the server on top of parsing (docs/broker.md, "a leaner path").

Nothing is checked less. The handler gets the whole body only after the same checks the
ASGI guard makes, in the same order and with the same functions (``hivehttp.guard``:
``check_length`` before a byte of the body is waited for, the body bounded in size and
time, then ``check_request``: Host, origin, media type), and it checks the credential
itself as its ASGI twin does (``controller.api.fastpath``). A listener whose policy has
an ``admit`` check (it needs a scope) and a request that asks for ``100-continue`` or an
upgrade go the ASGI way. Pipelined requests are answered in order (a fast request waits
in uvicorn's pipeline like any other), and every deadline, cap and shedding rule of the
connection is the protocol's, unchanged.

A ``FastHandler`` is ``await handler(body, headers, scope) -> (status, json_body,
extra_headers)``: ``headers`` as the server parsed them (lower-case names), ``scope`` a
small dict with ``type``, ``method``, ``path``, ``headers`` and the connection's ``Gone``
event (``hivehttp.disconnected(scope)`` works on it). It must answer every error itself
(a 4xx JSON body); an exception escaping it is logged and answered 500, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from hivehttp.guard import (
    GONE,
    Gone,
    Headers,
    Policy,
    Refusal,
    body_too_large,
    body_too_slow,
    check_length,
    check_request,
)
from hivehttp.observe import RequestObserver, RequestSeen

if TYPE_CHECKING:
    from hivehttp.server import _Guarded

log = logging.getLogger(__name__)

FastAnswer = tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]
"""``(status, JSON body, extra headers)``."""

FastHandler = Callable[[bytes, Headers, dict[str, Any]], Awaitable[FastAnswer]]
"""``await handler(body, headers, scope)`` (see the module doc)."""

FastRoutes = Mapping[tuple[bytes, bytes], FastHandler]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_HEADS = {
    status: _status_line(status) + b"content-type: application/json\r\ncontent-length: "
    for status in range(100, 600)
}
"""Each status' response head up to the content length: prebuilt, not formatted per answer."""

_INTERNAL = (
    b'{"error": {"code": "internal", "message": "internal error; the server log has the '
    b'traceback", "field": null}}'
)


class _NoEvent:
    """``cycle.message_event`` for uvicorn's ``connection_lost``: the fast cycle wakes its
    own waiter instead (see ``FastCycle.lost``)."""

    @staticmethod
    def set() -> None:
        return None


NO_EVENT = _NoEvent()


class FastCycle:
    """One request on a fast route: its head, its body as it arrives, its answer.

    Carries the attributes hivehttp's protocol (and uvicorn's) reads of a request cycle:
    ``more_body``, ``response_started``, ``response_complete``, ``disconnected``,
    ``keep_alive``, ``scope``, ``message_event``.
    """

    __slots__ = (
        "_limit",
        "_waiter",
        "body",
        "disconnected",
        "handler",
        "headers",
        "keep_alive",
        "method",
        "more_body",
        "path",
        "response_complete",
        "response_started",
        "route",
        "scope",
        "too_large",
    )

    message_event = NO_EVENT

    def __init__(
        self,
        method: str,
        path: str,
        headers: Headers,
        keep_alive: bool,
        handler: FastHandler,
        route: str,
        gone: Gone,
        limit: int,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive
        self.handler = handler
        self.route = route
        self.scope: dict[str, Any] = {
            "type": "http",
            "method": method,
            "path": path,
            "headers": headers,
            GONE: gone,
        }
        self.body = b""
        self.more_body = True
        self.too_large = False
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self._waiter: asyncio.Future[None] | None = None
        self._limit = limit

    # -- fed by the protocol
    def feed(self, chunk: bytes) -> None:
        """A piece of the body; past the policy's limit nothing more is kept."""
        if self.too_large or self.response_complete:
            return
        self.body += chunk
        if len(self.body) > self._limit:
            self.too_large = True
            self.body = b""
            self._wake()

    def complete(self) -> None:
        """The whole body has arrived."""
        self.more_body = False
        self._wake()

    def lost(self) -> None:
        """The connection is gone."""
        if not self.response_complete:
            self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _body(self, policy: Policy) -> Refusal | None:
        """Wait for the rest of the body (bounded in time); a refusal, or None."""
        if self.more_body and not self.too_large and not self.disconnected:
            try:
                async with asyncio.timeout(policy.body_timeout):
                    while self.more_body and not self.too_large and not self.disconnected:
                        self._waiter = asyncio.get_running_loop().create_future()
                        await self._waiter
            except TimeoutError:
                return body_too_slow(policy)
            finally:
                self._waiter = None
        return body_too_large(policy) if self.too_large else None

    # -- the request
    async def run(
        self, proto: _Guarded, policy: Policy, observer: RequestObserver | None, name: str
    ) -> None:
        """Check, call the handler, answer (see the module doc)."""
        status = 0
        if observer is not None:
            observer.started(name, self.route)
            t0 = time.perf_counter()
        try:
            no = check_length(self.headers, policy)
            if no is None:
                no = await self._body(policy)
                if self.disconnected:
                    return  # as the guard: the client left while sending, nobody to answer
                if no is None:
                    no = check_request(self.method, self.headers, policy)
            if no is not None:
                status = no.status
                await self._answer(proto, no.status, no.body(), no.headers, no.close)
                return
            status, body, extra = await self.handler(self.body, self.headers, self.scope)
            await self._answer(proto, status, body, extra, False)
        except Exception as exc:
            log.error("%s %s: unexpected error", self.method, self.path, exc_info=exc)
            if not self.response_started:
                status = 500
                await self._answer(proto, 500, _INTERNAL, (), True)
            else:
                proto.transport.close()
        finally:
            if observer is not None:
                seen = RequestSeen(name, self.method, self.route, status, time.perf_counter() - t0)
                observer.finished(seen)

    async def _answer(
        self,
        proto: _Guarded,
        status: int,
        body: bytes,
        extra: tuple[tuple[bytes, bytes], ...],
        close: bool,
    ) -> None:
        if proto.flow.write_paused and not self.disconnected:
            await proto.flow.drain()  # a client that does not read its answers: wait for it
        self.response_started = True
        if self.disconnected or proto.transport.is_closing():
            self.response_complete = True
            return
        parts = [_HEADS[status], b"%d\r\n" % len(body)]
        for name, value in extra:
            parts += [name, b": ", value, b"\r\n"]
        keep = self.keep_alive and not close
        if not keep:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        proto.write_now(b"".join(parts))
        self.response_complete = True
        if not keep:
            proto.transport.close()
        proto.on_response_complete()
