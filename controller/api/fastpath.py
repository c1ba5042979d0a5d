"""The agent socket's JSON verbs answered without falcon: about a fifth of the server's
time per broker message went to falcon's request and response objects.

``FastVerbs(app, auth, routes)`` is an ASGI app. A request whose exact method and
path are in ``routes`` is served here: the bearer credential is checked first
(``auth``, the same check ``BearerAuth`` makes), the body parsed by
``common.parse_body`` and validated against the route's schema, the handler
awaited, and its dict answered as JSON; an exception is answered through
``common.error_answer``, the mapping the falcon apps use, so statuses and error
bodies are the same. Anything else (other paths, other methods, ``HEAD``) goes
to ``app``, the falcon app with every route, untouched.

The same verbs are offered to hivehttp's server as ``fast_routes``
(``hivehttp.fastroute``): served from the parsed head and the whole body, after the
guard's checks, without an ASGI scope or messages. Both ways go through ``respond``:
one credential check, one parser, one schema, one error mapping.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from controller.api.common import HasScope, Unauthorized, error_answer, parse_body
from controller.auth.bearer import bearer_token
from hivehttp.fastroute import FastAnswer
from hivehttp.fastroute import FastHandler as ServedHandler
from hivehttp.guard import Headers, Receive, Scope, Send
from schemas.validate import checker

FastHandler = Callable[[dict[str, Any], HasScope], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class FastRoute:
    """One verb: ``schema`` (a ``wire.schema.json`` ``$defs`` name; None: no body is read)
    and its ``handler``."""

    schema: str | None
    handler: FastHandler


class _Call:
    """The request as a handler sees it here: its scope (a plain slotted object: a frozen
    dataclass's ``__init__`` cost more than the rest of this)."""

    __slots__ = ("scope",)

    def __init__(self, scope: Any) -> None:
        self.scope = scope


@dataclass(frozen=True)
class BearerCheck:
    """``check(token)`` true lets a request in; else 401 with ``message``.

    ``check_header`` (optional) gives the same verdict from the raw ``Authorization``
    value (None: no header), as ``check(bearer_token(value.decode("latin-1")))`` would,
    but may be quicker (``AgentCredentials.header_check``); the fast routes use it."""

    check: Callable[[str | None], bool]
    message: str
    check_header: Callable[[bytes | None], bool] | None = None


@dataclass(frozen=True)
class _Served:
    """A route as served: the handler and the body check, both looked up once."""

    handler: FastHandler
    validate: Callable[[Any], None] | None


_JSON = (b"content-type", b"application/json")

# falcon's JSON media handler writes non-ASCII as UTF-8, not as \u escapes: the same here,
# byte for byte what ``json.JSONEncoder(ensure_ascii=False).encode`` writes. Its C encoder is
# built once: ``JSONEncoder.encode`` builds one per call, ~40 % of an answer's encoding.
# No circular-reference markers: a shared markers dict is not safe across threads nor
# after an error mid-answer; an answer is a tree our handlers build (a cycle would end in
# RecursionError, answered 500 as any exception).
if c_make_encoder is not None:
    _C_ENCODE: Any = c_make_encoder(
        None, None, encode_basestring, None, ": ", ", ", False, False, True
    )

    def _encode(doc: dict[str, Any]) -> bytes:
        """``doc`` as the JSON of ``json.JSONEncoder(ensure_ascii=False)``, UTF-8 encoded."""
        return "".join(_C_ENCODE(doc, 0)).encode()

else:  # a Python without the json module's C accelerator
    _PY_ENCODE = json.JSONEncoder(ensure_ascii=False).encode

    def _encode(doc: dict[str, Any]) -> bytes:
        """``doc`` as the JSON of ``json.JSONEncoder(ensure_ascii=False)``, UTF-8 encoded."""
        return _PY_ENCODE(doc).encode()


def _header_check(check: Callable[[str | None], bool]) -> Callable[[bytes | None], bool]:
    def check_header(value: bytes | None) -> bool:
        return check(None if value is None else bearer_token(value.decode("latin-1")))

    return check_header


class FastVerbs:
    """ASGI app serving ``routes`` ((method, path) → ``FastRoute``) itself and the rest
    through ``app`` (see the module doc)."""

    def __init__(
        self, app: Any, auth: BearerCheck, routes: Mapping[tuple[str, str], FastRoute]
    ) -> None:
        self.app = app
        self._auth = auth
        self._check_header = auth.check_header or _header_check(auth.check)
        self._routes = {
            key: _Served(
                route.handler, None if route.schema is None else checker(f"wire#{route.schema}")
            )
            for key, route in routes.items()
        }
        self.fast_routes: dict[tuple[bytes, bytes], ServedHandler] = {
            (method.encode("ascii"), path.encode("ascii")): partial(
                self.respond, route, method, path
            )
            for (method, path), route in self._routes.items()
        }
        """The same verbs for hivehttp's server (``hivehttp.fastroute``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        # the guard has the whole body already: reading it first changes nothing on the wire
        body = await _read(receive) if route.validate is not None else b""
        status, answer, extra = await self.respond(
            route, scope["method"], scope["path"], body, scope["headers"], scope
        )
        headers = [_JSON, (b"content-length", b"%d" % len(answer)), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer, "more_body": False})

    async def respond(
        self,
        route: _Served,
        method: str,
        path: str,
        body: bytes,
        headers: Headers,
        scope: dict[str, Any] | Scope,
    ) -> FastAnswer:
        """Serve one request of ``route``: the credential (``Unauthorized``, 401), the body
        (``parse_body``, then the route's schema), the handler; every error answered through
        ``common.error_answer``. Returns ``(status, JSON body, extra headers)``."""
        try:
            header = None
            for name, value in headers:
                if name == b"authorization":
                    header = value
                    break
            if not self._check_header(header):
                raise Unauthorized(self._auth.message)
            doc: dict[str, Any] = {}
            if route.validate is not None:
                doc = parse_body(body)
                route.validate(doc)
            result = await route.handler(doc, _Call(scope))
        except Exception as exc:  # every error is answered, as falcon's handlers do
            answer = error_answer(exc, method, path)
            extra = tuple((k.lower().encode(), v.encode("latin-1")) for k, v in answer.headers)
            return answer.status, _encode(answer.body), extra
        return 200, _encode(result), ()


async def _read(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # the client left; the handler will not run far
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
