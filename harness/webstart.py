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

From :meth:`LateApp.ready` on, every request goes to the real app. Before ``hivehttp``
is even imported, :mod:`harness.earlyweb` answers the same on the same socket (the
answers themselves live there).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from harness.earlyweb import ASSETS, STARTING, early_answer, error_body, starting_state

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# the starting state and the page's assets: shared with the stdlib server that answers
# before hivehttp is imported (harness.earlyweb)
__all__ = ["ASSETS", "STARTING", "LateApp", "starting_state"]


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
            await _respond(send, 503, b"application/json", error_body("starting",
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
        path = str(scope.get("path", "/"))
        got = early_answer(str(scope.get("method")), path, self.agent, self.flavor, self.since)
        if got is None:
            return False
        status, ctype, body, extra = got
        await _respond(send, status, ctype, body, extra)
        return True


async def _respond(
    send: Send, status: int, ctype: bytes, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
