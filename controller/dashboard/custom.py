"""Custom agent front-ends on the dashboard (``spec.frontend``; docs/web-ui.md).

The files come from the meta repo at main (``controller.frontend.files``), never from
the agent, and are served **sandboxed**: every answer carries
``Content-Security-Policy: sandbox allow-scripts …`` without ``allow-same-origin``, so a
custom page runs in an opaque origin. It cannot read the dashboard's cookie, storage or
pages, and the dashboard refuses its API calls (``Origin: null``, cross-site); operator
approval of the files is not trusted to cover arbitrary script on the operator's origin.

Routes (under ``/agents/<name>/``):

- ``<target>[/…]`` (an ``extraFiles`` prefix): needs the session; 303 to
  ``files/<cap>/<target>[/…]``;
- ``files/<cap>/<path>``: the file, no session needed (a sandboxed document sends no
  cookie), only a valid capability for this agent (``Capabilities``, 12 hours);
- ``/agents/<name>/`` with ``frontend.dist``: the controller's own shell page, which
  frames ``files/<cap>/ui/`` (sandboxed) and relays the custom UI's API calls and event
  stream to this agent's ``api/*`` and ``events/stream`` over ``postMessage``
  (``assets/agent-bridge.js``): a custom UI has exactly the built-in UI's powers over
  its own agent, and no more.
"""

from __future__ import annotations

import asyncio
import html
import re

import falcon
import falcon.asgi

from controller.dashboard.pages import PAGE_CSP
from controller.errors import NotFound
from controller.frontend.files import DIST_PREFIX, Capabilities, FrontendFiles, Missing

SANDBOX = "allow-scripts allow-forms allow-popups allow-modals allow-downloads"
"""The sandbox flags: the shell's iframe, and the CSP ``sandbox`` of every custom file."""

FILES_CSP = (
    f"sandbox {SANDBOX}; default-src 'self' data: blob:; "
    "script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-src 'self'; "
    "frame-ancestors 'self'; base-uri 'self'; form-action 'none'"
)
"""CSP of a custom file: an opaque origin (no ``allow-same-origin``), its own files only."""

SHELL_CSP = PAGE_CSP + "; frame-src 'self'"
"""CSP of the shell page: the dashboard's page policy, plus framing the sandboxed bundle."""

_CAP_RE = re.compile(r"^[0-9]{1,12}\.[0-9a-f]{32}$")

_SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} · hyperhive</title>
<style>html,body{{margin:0;height:100%;background:#0b0f14}}
iframe{{border:0;display:block;width:100%;height:100%}}</style>
</head><body>
<iframe id="hyperhive-ui" title="{name}'s custom UI" sandbox="{sandbox}"
 src="files/{cap}/{dist}/"></iframe>
<script src="/static/agent-bridge.js"></script>
</body></html>
"""


class CustomUi:
    """The custom-file routes of the agent UIs (mounted by ``proxy.AgentUi``)."""

    def __init__(self, files: FrontendFiles, caps: Capabilities) -> None:
        self.files = files
        self.caps = caps

    def has_dist(self, name: str) -> bool:
        """Does ``name``'s manifest replace its UI (``frontend.dist``)?"""
        fe = self.files.frontend(name)
        return fe is not None and fe.dist is not None

    def shell(self, resp: falcon.asgi.Response, name: str) -> None:
        """The controller's shell page framing ``name``'s dist bundle."""
        resp.content_type = "text/html; charset=utf-8"
        resp.text = _SHELL.format(name=html.escape(name), sandbox=SANDBOX,
                                  cap=self.caps.issue(name), dist=DIST_PREFIX)  # fmt: skip
        resp.cache_control = ["no-store"]
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Content-Security-Policy", SHELL_CSP)
        resp.set_header("Referrer-Policy", "no-referrer")

    async def entry(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, path: str
    ) -> None:
        """``GET /agents/<name>/<target>…`` (with the session): 303 to the capability URL."""
        prefixes = await asyncio.to_thread(self.files.prefixes, name)
        if path.split("/", 1)[0] not in prefixes:
            raise NotFound(f"no agent UI path {path[:80]!r}", "path")
        raw = str(req.scope.get("path", ""))
        if raw.endswith("/") and not path.endswith("/"):
            path += "/"
        else:
            try:
                found = await asyncio.to_thread(self.files.lookup, name, path)
            except Missing:
                found = None
            # a directory: end in / so the page's relative URLs resolve inside it
            if found is not None and found.source.endswith("/index.html"):
                path = path if path.endswith("index.html") else path + "/"
        resp.status = falcon.HTTP_303
        resp.location = f"/agents/{name}/files/{self.caps.issue(name)}/{path}"
        resp.cache_control = ["no-store"]

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, cap: str, rest: str
    ) -> None:
        """``GET /agents/<name>/files/<cap>/<rest>``: one custom file, sandboxed."""
        if not _CAP_RE.fullmatch(cap) or not self.caps.verify(name, cap):
            raise NotFound("this link to an agent's custom files has expired; open it again "
                           "from the agent UI", "cap")  # fmt: skip
        raw = str(req.scope.get("path", ""))
        path = rest + ("/" if raw.endswith("/") and rest else "")
        try:
            found = await asyncio.to_thread(self.files.lookup, name, path)
        except Missing as exc:
            raise NotFound(str(exc), "path") from None
        resp.data = found.data
        resp.content_type = found.content_type
        resp.cache_control = ["private", "no-cache"]
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Content-Security-Policy", FILES_CSP)
        resp.set_header("Referrer-Policy", "no-referrer")
