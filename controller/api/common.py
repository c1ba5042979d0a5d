"""What every hyperhive socket API shares: JSON errors, auth, body reading and validation, SSE.

The apps are ``falcon.asgi.App`` s served by ``hivehttp`` (one event loop for
every socket of the process): every responder is ``async``; anything that
may block (git, swarm operations) runs off the loop via ``asyncio.to_thread``,
quick sqlite broker calls run inline.

Errors are always ``{"error": {"code", "message", "field"}}`` with a 4xx
status for anything the client can fix (``controller.errors`` and
``schemas.validate.ValidationFailed`` → 400/403/404/409, a missing or wrong
credential → 401, a body over 1 MiB → 413, unknown path → 404, wrong method
→ 405). An unexpected exception is logged with its traceback and answered
with a JSON 500; the server lives on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import falcon
import falcon.asgi

from controller.auth.bearer import bearer_token
from controller.broker import BrokerClosed
from controller.errors import HyperhiveError, Invalid, TransientError
from hivehttp import BadJson, disconnected, parse_json_object
from schemas.validate import ValidationFailed, validate

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the APIs accept (1 MiB); larger → 413 (``hivehttp.Policy`` refuses
it before the app runs; this is the app's own backstop)."""

MAX_JSON_INT = 2**63 - 1
"""Integers in a body must fit sqlite's signed 64 bits."""

HEARTBEAT_SECONDS = 15.0
"""SSE heartbeat comment interval."""

ID_MAX = MAX_JSON_INT
"""Upper bound for ``{id:int}`` path parameters."""

Request = falcon.asgi.Request
Response = falcon.asgi.Response
App = falcon.asgi.App[Request, Response]


class TooLarge(HyperhiveError):
    """The request body is larger than ``MAX_BODY_BYTES`` (413)."""

    code = "too_large"
    status = 413


class Unavailable(HyperhiveError):
    """The server cannot take this request now (503): shutting down, too many streams."""

    code = "unavailable"
    status = 503


class Unauthorized(HyperhiveError):
    """The request lacks the credential this socket requires (401)."""

    code = "unauthorized"
    status = 401


def _printable(text: str) -> str:
    # a lone surrogate from the request echoed into an error would fail to encode (a 500)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The wire shape of every error: ``{"error": {"code", "message", "field"}}``.

    Lone surrogates echoed from the request are written as ``\\udXXX`` escapes.
    """
    return {
        "error": {
            "code": code,
            "message": _printable(message),
            "field": None if field is None else _printable(field),
        }
    }


_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


@dataclass(frozen=True)
class ErrorAnswer:
    """How an exception raised by a handler is answered: ``status``, JSON ``body`` and
    extra ``headers`` (name, value)."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def error_answer(ex: Exception, method: str, path: str) -> ErrorAnswer:
    """The answer to ``ex`` raised while serving ``method path`` (one mapping for the falcon
    apps and ``controller.api.fastpath``): ``HyperhiveError`` → its status (a
    ``TransientError`` 503; ``Unauthorized`` with ``WWW-Authenticate``),
    ``ValidationFailed`` → 400, ``BrokerClosed`` → 503, anything else → 500 (logged with
    its traceback)."""
    if isinstance(ex, HyperhiveError):
        status = 503 if isinstance(ex, TransientError) else ex.status
        if status >= 500:
            log.warning("%s %s: %s: %s", method, path, type(ex).__name__, ex.message)
        headers = (("WWW-Authenticate", 'Bearer realm="hyperhive"'),)
        return ErrorAnswer(
            status,
            error_body(ex.code, ex.message, ex.field),
            headers if isinstance(ex, Unauthorized) else (),
        )
    if isinstance(ex, ValidationFailed):
        return ErrorAnswer(400, error_body("invalid", str(ex), ex.field))
    if isinstance(ex, BrokerClosed):
        return ErrorAnswer(
            503, error_body("unavailable", "the controller is shutting down; retry shortly")
        )
    log.error("unexpected error in %s %s", method, path, exc_info=ex)
    return ErrorAnswer(
        500,
        error_body(
            "internal",
            f"internal error ({type(ex).__name__}); the controller log has the traceback",
        ),
    )


async def _handle_error(req: Request, resp: Response, ex: Exception, params: Any) -> None:
    answer = error_answer(ex, req.method, req.path)
    resp.status = falcon.code_to_http_status(answer.status)
    for name, value in answer.headers:
        resp.set_header(name, value)
    resp.media = answer.body


async def _handle_http(req: Request, resp: Response, ex: Exception, params: Any) -> None:
    assert isinstance(ex, falcon.HTTPError)
    code = ex.status_code
    if isinstance(ex, falcon.HTTPRouteNotFound) or (code == 404 and not ex.description):
        message = f"no such endpoint: {req.method} {req.path}"
    elif isinstance(ex, falcon.HTTPMethodNotAllowed):
        allowed = dict(ex.headers or {}).get("Allow", "")
        message = f"{req.method} is not allowed on {req.path} (allowed: {allowed})"
    else:
        message = ex.description or ex.title or str(ex.status)
    resp.status = ex.status
    if ex.headers:
        resp.set_headers(ex.headers)
    resp.media = error_body(_HTTP_CODES.get(code, "error"), message)


class BearerAuth:
    """Falcon ASGI middleware: every request needs ``Authorization: Bearer <token>`` with
    ``check(token)`` true, else ``Unauthorized`` (401, before routing, so an unknown path
    tells a stranger nothing). ``message`` says which credential is missing."""

    def __init__(self, check: Callable[[str | None], bool], message: str) -> None:
        self._check = check
        self._message = message

    async def process_request(self, req: Request, resp: Response) -> None:
        """Refuse the request unless it carries the right bearer token."""
        if not self._check(bearer_token(req.get_header("Authorization"))):
            raise Unauthorized(self._message)


def make_app(auth: BearerAuth | None = None) -> App:
    """A ``falcon.asgi.App`` with hyperhive's JSON error handling (and ``auth``) installed."""
    app = falcon.asgi.App(middleware=[auth] if auth is not None else [])
    app.add_error_handler(Exception, _handle_error)
    app.add_error_handler(falcon.HTTPError, _handle_http)
    app.add_error_handler(HyperhiveError, _handle_error)
    app.add_error_handler(ValidationFailed, _handle_error)
    app.add_error_handler(BrokerClosed, _handle_error)
    return app


# ---------------------------------------------------------------------- bodies


def parse_body(raw: bytes) -> dict[str, Any]:
    """``raw`` as one JSON object (``{}`` when empty); ``TooLarge`` above ``MAX_BODY_BYTES``,
    ``Invalid`` naming the field for what ``hivehttp.parse_json_object`` refuses."""
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"request body is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        return parse_json_object(raw)
    except BadJson as exc:
        raise Invalid(f"request {exc.message}", exc.field) from None


async def read_json(req: Request) -> dict[str, Any]:
    """Read the request body as one JSON object; an empty body is ``{}``.

    Raises ``TooLarge`` (413) above ``MAX_BODY_BYTES`` and ``Invalid`` (400,
    naming the field where there is one) for what ``hivehttp.parse_json_object``
    refuses: not UTF-8, not JSON, not an object, nested too deeply, a lone
    surrogate, NaN / Infinity, an integer outside 64 bits. The Content-Type
    is not checked, so ``curl -d '{...}'`` works.
    """
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise TooLarge(f"request body is {length} bytes; the limit is {MAX_BODY_BYTES} bytes")
    return parse_body(await req.stream.read(MAX_BODY_BYTES + 1))


async def body(req: Request, name: str) -> dict[str, Any]:
    """The request body validated against ``wire.schema.json#/$defs/<name>``.

    Raises what ``read_json`` raises, and ``ValidationFailed`` (→ 400 naming the
    field) when the object does not match the schema.
    """
    doc = await read_json(req)
    validate(doc, f"wire#{name}")
    return doc


def query_int(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an int in ``[lo, hi]`` (``default`` if absent), else Invalid."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.lstrip("-").isdigit() or not raw.isascii():
        raise Invalid(f"query parameter {name} must be an integer", name)
    value = int(raw)
    if not lo <= value <= hi:
        raise Invalid(f"query parameter {name} must be between {lo} and {hi}", name)
    return value


def query_bool(req: Request, name: str, default: bool = False) -> bool:
    """Boolean query parameter: ``1/true/yes/on`` or ``0/false/no/off``; else ``Invalid``."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Invalid(f"query parameter {name} must be 1 or 0", name)


class HasScope(Protocol):
    """What a handler needs of its request: the ASGI ``scope`` (a falcon ``Request`` has it)."""

    @property
    def scope(self) -> Any:
        """The ASGI scope of the request."""


def client_gone(req: HasScope) -> asyncio.Event | None:
    """An event set when this request's client goes away (``hivehttp.disconnected``), or
    None when the app runs outside ``hivehttp`` (e.g. ``falcon.testing``).

    A long poll or stream waits on it, so a vanished client does not take a
    message nor hold a stream slot.
    """
    try:
        return disconnected(req.scope)
    except KeyError:
        return None


# ---------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: ``id`` (for ``Last-Event-ID``), ``event`` name and ``data`` text."""

    id: int
    event: str
    data: str

    def encode(self) -> bytes:
        """``id: ..\\nevent: ..\\ndata: ..\\n\\n`` (multi-line data as several ``data:`` lines)."""
        lines = [f"id: {self.id}", f"event: {self.event}"]
        lines += [f"data: {part}" for part in self.data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


def last_event_id(req: Request, default: int) -> int:
    """Where a stream resumes: the ``Last-Event-ID`` header, else ``?since=``, else ``default``."""
    header = req.get_header("Last-Event-ID")
    if header:
        header = header.strip()
        if len(header) > 20 or not header.isdigit() or int(header) > MAX_JSON_INT:
            raise Invalid(
                "Last-Event-ID must be a message id (a non-negative integer)", "Last-Event-ID"
            )
        return int(header)
    return query_int(req, "since", default, 0, MAX_JSON_INT)


class StreamSlots:
    """Caps concurrent SSE streams of one app (503 beyond), so streams cannot exhaust the
    listener's connection cap and lock out ordinary requests. Used on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def acquire(self) -> Callable[[], None]:
        """Take a slot; returns its idempotent release. ``Unavailable`` (503) when all are taken."""
        if self.open >= self.limit:
            raise Unavailable(f"too many open streams (limit {self.limit}); close one and retry")
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1

        return release


Fetch = Callable[[int, float], Awaitable[Sequence[SseEvent]]]
"""``await fetch(since_id, timeout)``: events with ids above ``since_id`` (oldest first),
parking up to ``timeout`` seconds while there are none."""


class _SseBody:
    """The async iterator behind a stream; releases its slot on close, or when collected if
    the server never iterated it (a response that failed before its first byte)."""

    def __init__(self, gen: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        self._gen = gen
        self._release = release
        self._finalizer = weakref.finalize(self, release)

    def __aiter__(self) -> _SseBody:
        return self

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    async def close(self) -> None:
        """End the stream (falcon calls this once iteration stops, for whatever reason)."""
        try:
            aclose = getattr(self._gen, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._finalizer()


def stream_sse(
    req: Request,
    resp: Response,
    fetch: Fetch,
    since: int,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
    stopped: Callable[[], bool] = lambda: False,
    slots: StreamSlots | None = None,
) -> None:
    """Answer ``req`` with a ``text/event-stream`` fed by ``fetch`` (see ``Fetch``).

    Every event carries ``id:``; a comment line goes out after ``heartbeat``
    seconds without events (so proxies keep the stream open). The stream
    ends when the client goes away (``hivehttp.disconnected``: at once, no
    thread is held meanwhile), or ``stopped()`` turns true (checked at least
    every ``heartbeat`` seconds). ``slots`` caps concurrent streams
    (``Unavailable``, 503, when full).
    """
    release = slots.acquire() if slots is not None else (lambda: None)
    gone = client_gone(req)

    async def next_batch(cursor: int, timeout: float) -> Sequence[SseEvent]:
        if gone is None:
            return await fetch(cursor, timeout)
        task = asyncio.ensure_future(fetch(cursor, timeout))
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait([task, left], return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if not task.done():
            task.cancel()
            return []
        return task.result()

    async def events() -> AsyncIterator[bytes]:
        cursor = since
        yield b"retry: 3000\n: connected\n\n"
        quiet_since = time.monotonic()
        while not stopped() and not (gone is not None and gone.is_set()):
            batch = await next_batch(cursor, heartbeat)
            if batch:
                cursor = batch[-1].id
                quiet_since = time.monotonic()
                yield b"".join(e.encode() for e in batch)
            elif time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield b": heartbeat\n\n"

    resp.status = falcon.HTTP_200
    resp.content_type = "text/event-stream; charset=utf-8"
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = _SseBody(events(), release)
