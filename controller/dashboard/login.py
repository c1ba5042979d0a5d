"""The dashboard's login: ``GET /login?token=…`` and the gate in front of every other route.

``hyperhive serve`` (at start) and ``hyperhive dashboard`` print a one-time
login URL. Opening it redeems the token (once, within 10 minutes) and sets the
``hyperhive_session`` cookie: a value signed with a key derived from the
operator key (``controller.auth.sessions``), HttpOnly, SameSite=Strict, Path=/.

Without a valid session every route answers 401: a JSON error for the API,
the streams and the agent proxy, and a short HTML page telling the operator
what to run for the pages. A forged, tampered or expired cookie is the same
as none.

API and stream requests a browser marks as coming from another site
(``Sec-Fetch-Site: cross-site`` / ``same-site``, e.g. a page on an agent's own
port of the same host) are refused with 403 even with the cookie: reading is
already blocked by CORS, but they could still hold streams open.
"""

from __future__ import annotations

import hashlib
import html
import re

import falcon
import falcon.asgi

from controller.auth.sessions import SESSION_COOKIE, LoginTokens, SessionSigner
from controller.dashboard.httputil import json_error

LOGIN_PATH = "/login"

_API_PATH = re.compile(r"^/(api|messages)(/|$)|^/agents/[^/]+/(api|events)(/|$)")
"""Routes answered with JSON (the API, the message flow, proxied agent API and events)."""

_CAP_PATH = re.compile(r"^/agents/[^/]+/files/[^/]+/")
"""Custom front-end files: sandboxed documents send no cookie; the path's capability
(``controller.frontend.files.Capabilities``) is checked by the route instead."""

_PAGE_STYLE = (
    "body{background:#0b0f14;color:#cfe3d6;font:15px/1.5 ui-monospace,monospace;"
    "max-width:40em;margin:12vh auto;padding:0 1em}code{color:#7ee787}h1{font-size:1.2em}"
)


def is_api_path(path: str) -> bool:
    """True for routes that answer JSON (and get a JSON 401), False for pages."""
    return _API_PATH.match(path) is not None


def session_key(value: str) -> str:
    """A short, stable key for one session value (stream caps count per key)."""
    return hashlib.sha256(value.encode("ascii", "replace")).hexdigest()[:16]


def _page(title: str, body_html: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )


LOGIN_NEEDED_PAGE = _page(
    "hyperhive: log in first",
    "<p>This dashboard needs a login. On the controller's host, run</p>"
    "<p><code>hyperhive dashboard</code></p>"
    "<p>and open the URL it prints (it works once, for 10 minutes). "
    "<code>hyperhive serve</code> also prints one when it starts.</p>",
)

LOGIN_FAILED_PAGE = _page(
    "hyperhive: this login link does not work",
    "<p>The link was already used, has expired (links work once, for 10 minutes), "
    "or was made by an earlier run of the controller.</p>"
    "<p>Run <code>hyperhive dashboard</code> for a new one and open the URL it prints.</p>",
)


def _html(resp: falcon.asgi.Response, status: int, page: str) -> None:
    resp.status = status
    resp.content_type = "text/html; charset=utf-8"
    resp.text = page
    resp.cache_control = ["no-store"]
    resp.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")


class LoginGate:
    """Middleware: every request but ``/login`` needs a valid session cookie.

    Sets ``req.context.session`` to the session's key (see ``session_key``).
    """

    def __init__(self, signer: SessionSigner) -> None:
        self.signer = signer

    def session_of(self, req: falcon.asgi.Request) -> str | None:
        """The session key of the request's valid cookie, or None."""
        # a page on another port of the same host can plant a second cookie of this
        # name (cookies ignore ports): any one valid value is enough
        for value in req.get_cookie_values(SESSION_COOKIE) or ():
            if self.signer.verify(value):
                return session_key(value)
        return None

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Refuse a request without a valid session (401), or a cross-site API call (403)."""
        if req.path == LOGIN_PATH or _CAP_PATH.match(req.path):
            return  # custom front-end files check their own capability (dashboard.custom)
        key = self.session_of(req)
        api = is_api_path(req.path)
        if key is None:
            if api:
                json_error(
                    resp,
                    401,
                    "unauthorized",
                    "log in first: open the URL that `hyperhive dashboard` prints",
                )
            else:
                _html(resp, 401, LOGIN_NEEDED_PAGE)
                resp.complete = True
            return
        site = (req.get_header("Sec-Fetch-Site") or "").lower()
        if api and site not in ("", "same-origin", "none"):
            json_error(resp, 403, "cross_site", f"cross-site request refused ({site})")
            return
        req.context.session = key


class Login:
    """``GET /login?token=…``: redeem a one-time token, set the session, 303 to ``/``."""

    def __init__(self, tokens: LoginTokens, signer: SessionSigner) -> None:
        self.tokens = tokens
        self.signer = signer

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Set ``hyperhive_session`` for a valid token; a 401 page otherwise."""
        if not self.tokens.redeem(req.get_param("token")):
            _html(resp, 401, LOGIN_FAILED_PAGE)
            return
        resp.set_cookie(
            SESSION_COOKIE,
            self.signer.issue(),
            max_age=int(self.signer.ttl),
            path="/",
            secure=req.scheme == "https",  # plain http on loopback is the usual case
            http_only=True,
            same_site="Strict",
        )
        resp.cache_control = ["no-store"]
        resp.set_header("Referrer-Policy", "no-referrer")  # the token is in this URL
        resp.status = falcon.HTTP_303
        resp.location = "/"


class Logout:
    """``POST /api/logout``: drop this browser's session cookie."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Expire the cookie; 204."""
        resp.unset_cookie(SESSION_COOKIE, path="/", same_site="Strict")
        resp.status = falcon.HTTP_204
