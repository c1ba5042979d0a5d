"""Static files: the dashboard page and its assets, and the agent UI's page and assets.

The agent UI is served from the controller's own copy of the harness assets
(``harness/assets``), never from the agent: an agent runs arbitrary commands,
and HTML it served on the dashboard's origin could act as the operator.
"""

from __future__ import annotations

import re
from importlib import resources

import falcon
import falcon.asgi

from controller.errors import NotFound

_STATIC_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\.(css|js|svg|png|ico|html)$")
CONTENT_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
    "html": "text/html; charset=utf-8",
}

AGENT_UI_ASSETS = frozenset({"app.js", "app.css"})
"""Files of the agent UI served under ``/agents/<name>/static/`` (plus its index.html)."""

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""The pages' Content-Security-Policy: only our own scripts run, even if some text
an agent wrote slipped into the markup unescaped."""


def _send(resp: falcon.asgi.Response, data: bytes, name: str) -> None:
    resp.data = data
    resp.content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
    resp.cache_control = ["no-cache"]
    resp.set_header("X-Content-Type-Options", "nosniff")
    if name.endswith(".html"):
        resp.set_header("Content-Security-Policy", PAGE_CSP)
        resp.set_header("Referrer-Policy", "no-referrer")


def dashboard_asset(resp: falcon.asgi.Response, name: str) -> None:
    """Answer with ``controller/dashboard/assets/<name>``; NotFound (field ``file``) otherwise."""
    if not _STATIC_RE.match(name):
        raise NotFound(f"no static file {name!r}", "file")
    asset = resources.files("controller.dashboard").joinpath("assets", name)
    if not asset.is_file():
        raise NotFound(f"no static file {name!r}", "file")
    _send(resp, asset.read_bytes(), name)


def agent_ui_asset(resp: falcon.asgi.Response, name: str) -> None:
    """Answer with the harness's ``assets/<name>`` (index.html, app.js, app.css only)."""
    if name != "index.html" and name not in AGENT_UI_ASSETS:
        raise NotFound(f"no agent UI file {name!r}", "file")
    asset = resources.files("harness").joinpath("assets", name)
    if not asset.is_file():
        raise NotFound(f"no agent UI file {name!r}", "file")
    _send(resp, asset.read_bytes(), name)
