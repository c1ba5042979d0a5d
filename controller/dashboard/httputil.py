"""Request parsing and JSON errors shared by the dashboard's responders.

Every error the dashboard answers is ``{"error": {"code", "message", "field"}}``
with a 4xx (or 503 for a transient swarm failure); bad input never reaches a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import falcon
import falcon.asgi

from controller.errors import HyperhiveError, Invalid, TransientError
from hivehttp import BadJson, disconnected, parse_json_object
from schemas.validate import ValidationFailed, validate

log = logging.getLogger("controller.dashboard")

MAX_BODY_BYTES = 1 << 20
"""Largest POST body the app reads (the listener's Policy refuses bigger ones first)."""


def error_body(code: str, message: str, field: str | None) -> dict[str, Any]:
    """The JSON error shape of every hyperhive surface."""
    return {"error": {"code": code, "message": message, "field": field}}


def parse_id(raw: str, field: str) -> int:
    """A positive integer path parameter, else Invalid naming ``field``."""
    if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise Invalid(f"{field} must be a positive integer, got {raw!r}", field)
    return int(raw)


def int_param(req: falcon.asgi.Request, name: str, lo: int, hi: int) -> int | None:
    """An optional integer query parameter in ``[lo, hi]``, else Invalid naming it."""
    raw = req.get_param(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}", name)
    return int(raw)


def truthy(value: Any, field: str) -> bool:
    """A JSON boolean (the page's checkboxes also send ``"1"``/``"0"``), else Invalid."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("", "0", "false", "off", "no"):
            return False
    raise Invalid(f"{field} must be a boolean", field)


async def read_body(req: falcon.asgi.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``.

    Raises Invalid naming the field (``(root)`` for the whole body) for a body
    ``hivehttp.parse_json_object`` refuses (not UTF-8, not JSON, too deep, a
    lone surrogate, ...), 415 for a non-empty body that is not
    ``application/json`` (forms and ``text/plain`` are what other sites can
    post without a preflight) and 413 over ``MAX_BODY_BYTES``.
    """
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await req.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"body larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    ctype = (req.content_type or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise falcon.HTTPUnsupportedMediaType(description="send the body as application/json")
    try:
        return parse_json_object(raw)
    except BadJson as e:
        raise Invalid(e.message, e.field or "(root)") from e


def checked(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    """``doc`` after validating it against the wire schema ``ref`` (ValidationFailed → 400)."""
    validate(doc, ref)
    return doc


def client_gone(req: falcon.asgi.Request) -> asyncio.Event:
    """Set once the client has gone away; never set outside a ``hivehttp`` listener."""
    try:
        return disconnected(req.scope)
    except KeyError:  # falcon.testing, or a server without the hivehttp guard
        return asyncio.Event()


def json_error(resp: falcon.asgi.Response, status: int, code: str, message: str) -> None:
    """Answer ``status`` with the JSON error body (field None) and stop processing."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(error_body(code, message, None)).encode()
    resp.complete = True


# --------------------------------------------------------------------------- error handlers


async def handle_hyperhive(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: HyperhiveError, params: Any
) -> None:
    """``HyperhiveError`` → its status (TransientError → 503) with the JSON error."""
    status = 503 if isinstance(ex, TransientError) else ex.status
    if status >= 500:
        log.warning("dashboard: %s %s: %s", req.method, req.path, ex.message)
    resp.status = status
    resp.media = error_body(ex.code, ex.message, ex.field)


async def handle_validation(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ValidationFailed, params: Any
) -> None:
    """A schema failure → 400 naming the field."""
    resp.status = 400
    resp.media = error_body("invalid", f"{ex.field}: {ex.reason}", ex.field)


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    """A bug: logged with its traceback, answered as a JSON 500."""
    if isinstance(ex, falcon.HTTPError):  # falcon's own 4xx (404 route, 405, 413, 415)
        resp.status = ex.status
        serialize_http_error(req, resp, ex)
        return
    log.exception("dashboard: %s %s failed", req.method, req.path)
    resp.status = 500
    resp.media = error_body("internal", f"internal error: {type(ex).__name__}: {ex}", None)


def serialize_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Falcon's own errors (404 route, 405, 413, 415) in the JSON error shape."""
    title = re.sub(r"^\d+\s*", "", ex.title or "error")
    code = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "error"
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(error_body(code, ex.description or ex.title or code, None)).encode()
