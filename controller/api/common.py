"""What every hyperhive socket API shares: JSON errors, body reading and validation, SSE.

Errors are always ``{"error": {"code", "message", "field"}}`` with a 4xx
status for anything the client can fix (``controller.errors`` and
``schemas.validate.ValidationFailed`` → 400/403/404/409, a body over 1 MiB →
413, unknown path → 404, wrong method → 405). An unexpected exception is
logged with its traceback and answered with a JSON 500; the worker thread
lives on.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import falcon

from controller.broker import BrokerClosed
from controller.errors import HyperhiveError, Invalid, TransientError
from schemas.validate import ValidationFailed, validate

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the APIs accept (1 MiB); larger → 413."""

MAX_JSON_INT = 2**63 - 1
"""Integers in a body must fit sqlite's signed 64 bits."""

HEARTBEAT_SECONDS = 15.0
"""SSE heartbeat comment interval."""

ID_MAX = MAX_JSON_INT
"""Upper bound for ``{id:int}`` path parameters."""


class TooLarge(HyperhiveError):
    """The request body is larger than ``MAX_BODY_BYTES`` (413)."""

    code = "too_large"
    status = 413


class Unavailable(HyperhiveError):
    """The server cannot take this request now (503): shutting down, too many streams."""

    code = "unavailable"
    status = 503


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The wire shape of every error: ``{"error": {"code", "message", "field"}}``."""
    return {"error": {"code": code, "message": message, "field": field}}


_HTTP_CODES = {
    400: "invalid",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def _handle_hyperhive(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    assert isinstance(ex, HyperhiveError)
    status = ex.status
    if isinstance(ex, TransientError):
        status = 503
    if status >= 500:
        log.warning("%s %s: %s: %s", req.method, req.path, type(ex).__name__, ex.message)
    resp.status = falcon.code_to_http_status(status)
    resp.media = error_body(ex.code, ex.message, ex.field)


def _handle_validation(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    assert isinstance(ex, ValidationFailed)
    resp.status = falcon.HTTP_400
    resp.media = error_body("invalid", str(ex), ex.field)


def _handle_closed(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    resp.status = falcon.HTTP_503
    resp.media = error_body("unavailable", "the controller is shutting down; retry shortly")


def _handle_http(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
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


def _handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    log.exception("unexpected error in %s %s", req.method, req.path, exc_info=ex)
    resp.status = falcon.HTTP_500
    resp.media = error_body(
        "internal", f"internal error ({type(ex).__name__}); the controller log has the traceback"
    )


def make_app() -> falcon.App[falcon.Request, falcon.Response]:
    """A ``falcon.App`` (WSGI) with hyperhive's JSON error handling installed."""
    app = falcon.App()
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(falcon.HTTPError, _handle_http)
    app.add_error_handler(HyperhiveError, _handle_hyperhive)
    app.add_error_handler(ValidationFailed, _handle_validation)
    app.add_error_handler(BrokerClosed, _handle_closed)
    return app


# ---------------------------------------------------------------------- bodies


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_ints(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_JSON_INT - 1 <= value <= MAX_JSON_INT:
            raise Invalid(f"{path}: integer is out of range (64-bit signed)", path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_ints(v, f"{path}.{k}" if path != "(root)" else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_ints(v, f"{path}.{i}" if path != "(root)" else str(i))


def read_json(req: falcon.Request) -> dict[str, Any]:
    """Read the request body as one JSON object; an empty body is ``{}``.

    Raises ``TooLarge`` (413) above ``MAX_BODY_BYTES``, ``Invalid`` (400) for
    a body that is not UTF-8, not JSON, not an object, nested too deeply, or
    holds a number outside 64-bit / finite range. The Content-Type is not
    checked, so ``curl -d '{...}'`` works.
    """
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise TooLarge(f"request body is {length} bytes; the limit is {MAX_BODY_BYTES} bytes")
    raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"request body is over the limit of {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"request body is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise Invalid(
            f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise Invalid("request body is nested too deeply") from exc
    except ValueError as exc:  # huge integer literals, NaN / Infinity, 1e999
        raise Invalid(f"request body has an invalid number: {exc}") from exc
    if not isinstance(doc, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(doc), "a number"
        )
        raise Invalid(f"request body must be a JSON object, not {kind}", "(root)")
    _check_ints(doc, "(root)")
    return doc


def body(req: falcon.Request, name: str) -> dict[str, Any]:
    """The request body validated against ``wire.schema.json#/$defs/<name>``.

    Raises what ``read_json`` raises, and ``ValidationFailed`` (→ 400 naming the
    field) when the object does not match the schema.
    """
    doc = read_json(req)
    validate(doc, f"wire#{name}")
    return doc


def query_int(req: falcon.Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an int in ``[lo, hi]`` (``default`` if absent), else Invalid."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.lstrip("-").isdigit():
        raise Invalid(f"query parameter {name} must be an integer", name)
    value = int(raw)
    if not lo <= value <= hi:
        raise Invalid(f"query parameter {name} must be between {lo} and {hi}", name)
    return value


def query_bool(req: falcon.Request, name: str, default: bool = False) -> bool:
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


def client_gone(req: falcon.Request) -> Callable[[], bool] | None:
    """waitress' ``client_disconnected`` check for this request, when the server provides one.

    ``controller.httpserve`` enables it (``channel_request_lookahead``); a
    long poll polls it so a vanished client does not take a message.
    """
    fn = req.env.get("waitress.client_disconnected")
    return fn if callable(fn) else None


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


def last_event_id(req: falcon.Request, default: int) -> int:
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
    """Caps concurrent SSE streams so they cannot take every worker thread of a server."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def acquire(self) -> Callable[[], None]:
        """Take a slot; returns its idempotent release. ``Unavailable`` (503) when all are taken."""
        if not self._sem.acquire(blocking=False):
            raise Unavailable(f"too many open streams (limit {self.limit}); close one and retry")
        done = threading.Lock()
        released = [False]

        def release() -> None:
            with done:
                if not released[0]:
                    released[0] = True
                    self._sem.release()

        return release


class _SseBody:
    """The WSGI iterable for a stream: runs ``release`` on close even if never iterated."""

    def __init__(self, gen: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._gen = gen
        self._release = release

    def __iter__(self) -> _SseBody:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def close(self) -> None:
        try:
            self._gen.close()
        finally:
            self._release()


def stream_sse(
    req: falcon.Request,
    resp: falcon.Response,
    fetch: Callable[[int, float], Sequence[SseEvent]],
    since: int,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
    stopped: Callable[[], bool] = lambda: False,
    slots: StreamSlots | None = None,
) -> None:
    """Answer ``req`` with a ``text/event-stream`` fed by ``fetch``.

    ``fetch(since_id, timeout)`` returns the events with ids above
    ``since_id`` (oldest first), parking up to ``timeout`` seconds when there
    are none. Every event carries ``id:``; a comment line goes out after
    ``heartbeat`` seconds without events (so proxies keep the stream open and
    a vanished client is noticed). The stream ends when the client goes
    away (noticed within a second under ``controller.httpserve``, else at the
    next heartbeat) or ``stopped()`` turns true. Uses ``resp.stream`` (WSGI);
    ``slots`` caps concurrent streams (503 when full).
    """
    release = slots.acquire() if slots is not None else (lambda: None)
    gone = client_gone(req)
    poll = 1.0 if gone is not None else heartbeat

    def events() -> Generator[bytes, None, None]:
        cursor = since
        yield b"retry: 3000\n: connected\n\n"
        quiet_since = time.monotonic()
        while not stopped() and not (gone is not None and gone()):
            batch = fetch(cursor, min(poll, heartbeat))
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
