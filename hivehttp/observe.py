"""A process-wide request observer: one callback per finished HTTP request, off by default.

Why here: every listener of a process runs on ``hivehttp``, so one hook sees every surface
(host.sock, the agent sockets, the dashboard, an agent's web UI) without touching each app.
The controller's metrics (``controller.metrics``) register the observer before the
listeners open; a listener opened while none is registered serves its app unwrapped, at no
cost.

The route is the app's route template (falcon's router, ``/proposals/{id:int}``), never the
raw path, so a label made from it stays bounded; a path no route matches is
``UNMATCHED``. The wrapper sits outside the listener's guard, so what the guard refuses
(403 ``bad_host``, 408, 413, 415) is counted too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UNMATCHED = "(unmatched)"


@dataclass(frozen=True)
class RequestSeen:
    """One request as the observer sees it: ``listener`` is the listener's name (``host.sock``,
    ``dashboard``, an agent's name), ``route`` the route template, ``status`` the response
    status (0 when the app sent none), ``seconds`` from the app's call to its return."""

    listener: str
    method: str
    route: str
    status: int
    seconds: float


class RequestObserver(Protocol):
    """What ``set_request_observer`` takes."""

    def started(self, listener: str, route: str) -> None:
        """A request entered the app (``in flight`` goes up)."""

    def finished(self, seen: RequestSeen) -> None:
        """The app returned (or raised) for that request. Must not raise."""


_observer: RequestObserver | None = None


def set_request_observer(observer: RequestObserver | None) -> None:
    """Register ``observer`` for listeners opened from now on (``None`` stops wrapping)."""
    global _observer
    _observer = observer


def current_observer() -> RequestObserver | None:
    """The observer registered now (a listener opened now reports to it), if any."""
    return _observer


def route_of(app: Any, path: str) -> str:
    """The route template ``app``'s falcon router matches ``path`` with, else ``UNMATCHED``."""
    for _ in range(8):  # the guard and other wrappers around the falcon app
        if getattr(app, "_router", None) is not None:
            break
        inner = getattr(app, "__wrapped__", None) or getattr(app, "app", None)
        if inner is None:
            break
        app = inner
    router = getattr(app, "_router", None)
    find = getattr(router, "find", None)
    if find is None:
        return UNMATCHED
    try:
        found = find(path)
    except Exception:
        return UNMATCHED
    if not found:
        return UNMATCHED
    template = found[3] if len(found) > 3 else None
    return template if isinstance(template, str) and template else UNMATCHED


def observed(app: Any, listener: str) -> Any:
    """``app`` wrapped so the registered observer sees each HTTP request; ``app`` itself when
    no observer is registered."""
    observer = _observer
    if observer is None:
        return app
    routes: dict[str, str] = {}

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        route = routes.get(path)
        if route is None:
            route = route_of(app, path)
            # remember exact paths of templates without parameters only: bounded memory
            if "{" not in route and len(routes) < 1024:
                routes[path] = route
        status = 0

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        observer.started(listener, route)
        t0 = time.perf_counter()
        try:
            await app(scope, receive, send_seen)
        finally:
            observer.finished(
                RequestSeen(
                    listener,
                    str(scope.get("method", "")),
                    route,
                    status,
                    time.perf_counter() - t0,
                )
            )

    return wrapped
