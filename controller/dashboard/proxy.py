"""Each agent's web UI behind the dashboard, at ``/agents/<name>/``.

The page and its script and style come from the controller's own copy of the
harness assets (``pages.agent_ui_asset``): an agent runs arbitrary commands,
so nothing it serves may become HTML on the dashboard's origin. Only the
agent UI's JSON API and its event stream are forwarded, to the agent's unix
socket (``web_sock(name)``), which only the controller can open:

- ``GET``/``POST /agents/<name>/api/<path>`` → ``/api/<path>``;
- ``GET /agents/<name>/events/stream`` → ``/events/stream``, streamed through
  chunk by chunk, holding one of the session's stream slots.

Custom front-ends (``spec.frontend``) are not the agent's either: the controller serves
them from the meta repo at main, sandboxed (``controller.dashboard.custom``).

On the way in only a few harmless headers pass (never ``Cookie`` or
``Authorization``: the operator's session must never reach an agent). On the
way back only ``application/json`` and ``text/event-stream`` bodies pass
(anything else is a 502), with ``X-Content-Type-Options: nosniff`` and
``Content-Security-Policy: default-src 'none'; sandbox`` so that even a
response opened directly in a tab cannot run script.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

import falcon
import falcon.asgi

from controller.dashboard import upstream
from controller.dashboard.api import check_agent_name
from controller.dashboard.custom import CustomUi
from controller.dashboard.httputil import MAX_BODY_BYTES, client_gone, json_error
from controller.dashboard.pages import agent_ui_asset
from controller.dashboard.streams import SlotStream, StreamSlots, sse_headers, too_many_streams
from controller.errors import NotFound
from controller.ops import SwarmOps

log = logging.getLogger("controller.dashboard")

FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "last-event-id", "if-none-match")
"""The only request headers an agent UI gets from the operator's browser."""

PASSED_RESPONSE_HEADERS = ("cache-control", "etag", "retry-after")
"""Response headers passed back besides the (checked) Content-Type."""

ALLOWED_MEDIA = frozenset({"application/json", "text/event-stream"})
"""Content types an agent UI may answer with through the proxy."""

PROXY_CSP = "default-src 'none'; sandbox"
"""CSP on every proxied response: no script, no subresources, an opaque origin."""

HEAD_TIMEOUT = 30.0
"""Seconds an agent UI has to start answering (and, outside streams, between body pieces)."""

_API_PATH_RE = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")
_QUERY_RE = re.compile(r"^[\x21-\x7e]*$")


def _proxy_headers(resp: falcon.asgi.Response) -> None:
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Content-Security-Policy", PROXY_CSP)


async def _body(
    reply: upstream.Response, gone: asyncio.Event, idle: float | None, name: str
) -> AsyncIterator[bytes]:
    """The upstream body, piece by piece, until it ends, the client leaves or it stalls."""
    pieces = reply.chunks()
    try:
        while (piece := await upstream.next_piece(pieces, gone, idle)) is not None:
            yield piece
    except upstream.BadUpstream as e:
        log.warning("dashboard: %s's UI: %s", name, e)
    finally:
        reply.close()


class AgentUi:
    """The ``/agents/{name}/…`` routes; ``add_routes(app)`` mounts them."""

    def __init__(
        self,
        ops: SwarmOps,
        web_sock: Callable[[str], upstream.Upstream],
        slots: StreamSlots,
        head_timeout: float = HEAD_TIMEOUT,
        custom: CustomUi | None = None,
    ) -> None:
        self.ops = ops
        self.web_sock = web_sock
        self.slots = slots
        self.head_timeout = head_timeout
        self.custom = custom  # spec.frontend files (controller.dashboard.custom), if served

    def add_routes(self, app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
        """Mount the page, its assets, the forwarded API and the event stream."""
        app.add_route("/agents/{name}", self, suffix="page")
        app.add_route("/agents/{name}/static/{file}", self, suffix="static")
        app.add_route("/agents/{name}/api/{rest:path}", self, suffix="api")
        app.add_route("/agents/{name}/events/stream", self, suffix="events")
        if self.custom is not None:
            # custom files (sandboxed, from the meta repo): literal routes above win
            app.add_route("/agents/{name}/files/{cap}/{rest:path}", self.custom)
            app.add_route("/agents/{name}/{prefix}", self, suffix="custom")
            app.add_route("/agents/{name}/{prefix}/{rest:path}", self, suffix="custom")

    async def _known(self, name: str) -> None:
        check_agent_name(name)
        names = await asyncio.to_thread(self.ops.agent_names)
        if name not in names:
            raise NotFound(f"no agent named {name!r}", "name")

    # ----------------------------------------------------------------- static

    async def on_get_page(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """The agent UI page; ``/agents/<name>`` redirects to ``/agents/<name>/``
        (its script and API calls are relative to that)."""
        await self._known(name)
        if not str(req.scope.get("path", "")).endswith("/"):
            resp.status = falcon.HTTP_308
            resp.location = f"/agents/{name}/"
            return
        if self.custom is not None and await asyncio.to_thread(self.custom.has_dist, name):
            self.custom.shell(resp, name)  # frontend.dist replaces the built-in page
            return
        agent_ui_asset(resp, "index.html")

    async def on_get_custom(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        name: str,
        prefix: str,
        rest: str = "",
    ) -> None:
        """``GET /agents/<name>/<target>…``: an ``extraFiles`` entry (see ``custom``)."""
        await self._known(name)
        assert self.custom is not None
        await self.custom.entry(req, resp, name, f"{prefix}/{rest}" if rest else prefix)

    async def on_get_static(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, file: str
    ) -> None:
        """The agent UI's ``app.js`` / ``app.css``."""
        await self._known(name)
        if file == "index.html":  # the page lives at /agents/<name>/ only
            raise NotFound(f"no agent UI file {file!r}", "file")
        agent_ui_asset(resp, file)

    # ----------------------------------------------------------------- forwarded

    async def on_get_api(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, rest: str
    ) -> None:
        """``GET /agents/<name>/api/<rest>`` → the agent's ``GET /api/<rest>``."""
        await self._forward(req, resp, name, f"/api/{self._check_rest(rest)}", b"")

    async def on_post_api(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, rest: str
    ) -> None:
        """``POST /agents/<name>/api/<rest>`` → the agent's ``POST /api/<rest>`` (JSON body)."""
        target = f"/api/{self._check_rest(rest)}"
        body = await req.stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise falcon.HTTPContentTooLarge(description=f"body larger than {MAX_BODY_BYTES} bytes")
        await self._forward(req, resp, name, target, body)

    async def on_get_events(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``GET /agents/<name>/events/stream`` → the agent's event stream, live."""
        await self._forward(req, resp, name, "/events/stream", b"", stream=True)

    @staticmethod
    def _check_rest(rest: str) -> str:
        if not _API_PATH_RE.fullmatch(rest) or ".." in rest.split("/"):
            raise NotFound(f"no agent UI path {rest[:80]!r}", "path")
        return rest

    async def _forward(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        name: str,
        target: str,
        body: bytes,
        stream: bool = False,
    ) -> None:
        await self._known(name)
        query = req.query_string
        if query:
            if not _QUERY_RE.fullmatch(query):
                json_error(resp, 400, "invalid", "the query string holds spaces or controls")
                return
            target = f"{target}?{query}"
        slot = None
        if stream:
            slot = self.slots.take(getattr(req.context, "session", "") or "")
            if slot is None:
                too_many_streams(resp, self.slots)
                return
        headers = [(h, v) for h in FORWARDED_REQUEST_HEADERS if (v := req.get_header(h))]
        try:
            reply = await upstream.request(
                self.web_sock(name),
                req.method,
                target,
                headers,
                body,
                timeout=self.head_timeout,
            )
        except upstream.UpstreamDown:
            if slot:
                slot.release()
            json_error(
                resp,
                503,
                "agent_ui_down",
                f"{name}'s web UI is not running (nothing on its socket)",
            )
            resp.set_header("Retry-After", "5")
            return
        except upstream.BadUpstream as e:
            if slot:
                slot.release()
            json_error(resp, 502, "bad_gateway", f"{name}'s web UI failed: {e}")
            return
        ctype = reply.head.get("content-type") or ""
        media = ctype.split(";", 1)[0].strip().lower()
        if reply.head.status not in (204, 304) and media not in ALLOWED_MEDIA:
            reply.close()
            if slot:
                slot.release()
            log.warning("dashboard: %s's UI answered %s with %r", name, target, ctype[:80])
            json_error(
                resp,
                502,
                "bad_gateway",
                f"{name}'s web UI answered with Content-Type {media[:60] or 'none'!r}; "
                "only JSON and event streams pass the dashboard",
            )
            _proxy_headers(resp)
            return
        resp.status = reply.head.status
        _proxy_headers(resp)
        for h in PASSED_RESPONSE_HEADERS:
            if (v := reply.head.get(h)) is not None:
                resp.set_header(h, v)
        gone = client_gone(req)
        if media == "text/event-stream":
            sse_headers(resp)
        elif media:
            resp.content_type = ctype
        idle = None if media == "text/event-stream" else self.head_timeout
        resp.stream = SlotStream(_body(reply, gone, idle, name), slot, gone.set)
