"""The web UI's front while the harness starts: answer at once, hand over when ready.

``hyperhive-agent serve`` binds its web UI socket before it imports the turn loop
and opens its sqlite files (most of its start-up CPU), so the dashboard and the
operator's browser get an answer right after the process starts. Until
:meth:`LateApp.ready` hands it the real app (:class:`harness.web.WebApp`):

- ``GET /api/state`` answers the state document of ``docs/web-ui.md`` with
  ``"status": "starting"`` (``turn_state`` ``idle``, no model, usage, inbox or
  login yet);
- ``GET /`` and ``GET /static/<asset>`` answer as the real app does;
- every other request (``/healthz``, the event stream, history, the actions) waits for
  the real app, up to ``wait`` seconds (then 503 ``starting``): a health check says ok
  only once the harness is built, and the page's stream opens then instead of failing
  (an ``EventSource`` does not reconnect after a non-200 answer).

From :meth:`LateApp.ready` on, every request goes to the real app. This module
imports only the standard library: it is on the start path.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

STARTING = "starting"
"""The ``status`` of ``GET /api/state`` before the turn loop is built."""
ASSETS = {
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
    "index.html": b"text/html; charset=utf-8",
}  # the same types as harness.web.ASSETS (a test checks they agree)


def starting_state(agent: str, flavor: str, since: float) -> dict[str, Any]:
    """The ``GET /api/state`` document while starting: every key of the contract, no data.

    ``since`` (unix seconds) is when the harness started."""
    return {
        "agent": agent,
        "flavor": flavor,
        "model": None,
        "settings_model": None,
        "model_override": None,
        "turn_state": "idle",
        "turn_state_since": since,
        "last_turn_ms": None,
        "usage": None,
        "context_tokens": None,
        "status": STARTING,
        "status_detail": "the harness is starting",
        "needs_login": False,
        "login": {
            "needs_login": False,
            "reason": None,
            "source": None,
            "stored": None,
            "session": None,
        },
        "plugins": None,
        "turn_timeout_seconds": None,
        "partial": None,
        "dashboard_url": None,
        "inbox": None,
        "inbox_status": None,
        "last_event_id": 0,
        "meta_commit": None,
        "hyperhive_version": None,
        "extra_files": [],
    }


class LateApp:
    """An ASGI app that answers "starting" until :meth:`ready` gives it the real one.

    ``agent`` / ``flavor`` name the agent in the starting state; ``wait`` (seconds) bounds
    how long a request for the real app is held before a 503.
    """

    def __init__(self, agent: str, flavor: str, wait: float = 30.0) -> None:
        self.agent = agent
        self.flavor = flavor
        self.wait = wait
        self.since = time.time()
        self._app: App | None = None
        self._ready = threading.Event()
        self._assets: dict[str, bytes] = {}

    def ready(self, app: App) -> None:
        """Serve every request from now on with ``app`` (thread-safe)."""
        self._app = app
        self._ready.set()

    @property
    def is_ready(self) -> bool:
        """True once :meth:`ready` was called."""
        return self._ready.is_set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is None and scope.get("type") == "http" and await self._answer_early(scope, send):
            return
        if app is None:
            app = await self._wait_ready()
        if app is None:
            await _respond(send, 503, b"application/json", _error("starting",
                           "the harness is still starting; try again"))  # fmt: skip
            return
        await app(scope, receive, send)

    async def _wait_ready(self) -> App | None:
        # polled: at most a few hundred milliseconds once per process, no thread held
        deadline = time.monotonic() + self.wait
        while self._app is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._app

    async def _answer_early(self, scope: Scope, send: Send) -> bool:
        """Answer what needs no turn loop; False for anything else."""
        if scope.get("method") not in ("GET", "HEAD"):
            return False
        path = str(scope.get("path", "/")).rstrip("/") or "/"
        if path == "/api/state":
            body = json.dumps(starting_state(self.agent, self.flavor, self.since)).encode()
            await _respond(send, 200, b"application/json", body)
            return True
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        if name in ASSETS and (path == "/" or path.startswith("/static/")):
            if name not in self._assets:
                ref = resources.files("harness").joinpath(f"assets/{name}")
                self._assets[name] = ref.read_bytes()
            await _respond(send, 200, ASSETS[name], self._assets[name],
                           ((b"cache-control", b"no-cache"),
                            (b"x-content-type-options", b"nosniff")))  # fmt: skip
            return True
        return False


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


async def _respond(
    send: Send, status: int, ctype: bytes, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
