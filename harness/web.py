"""The agent web UI: a ``falcon.asgi`` app, served by :mod:`hivehttp` (see harness.httpserve).

Paths are relative to wherever the UI is mounted: the harness serves it at ``/`` on its
unix socket (``HYPERHIVE_WEB_SOCKET``), the controller's dashboard at ``/agents/<name>/``
(it serves the page and ``static/*`` itself and forwards ``api/*`` and ``events/stream``),
so the page and app.js only use relative URLs.

=========================  =====================================================
``GET /``                  the static page (harness/assets/index.html)
``GET /static/{file}``     app.js, app.css
``GET /api/state``         snapshot: agent, flavor, model, turn state + since, last
                           turn, context tokens, needs_login, dashboard_url, inbox,
                           extra_files (``spec.frontend.extraFiles``: key, target)
``GET /events/stream``     SSE: backfill (``?backfill=N``, default 300) then live;
                           ``id:`` per event, ``Last-Event-ID`` / ``?after=ID``
                           resume, ``: heartbeat`` every 15 s
``GET /api/history``       ``?before=ID&limit=N`` → ``{"events": [...], "has_more"}``
``GET /api/turns``         ``?limit=N`` → ``{"turns": [turn-stats rows]}``
``POST /api/send``         ``{"body"}`` → the operator writes to this agent (POST /wake)
``POST /api/model``        ``{"model"}`` → override (``""`` clears it)
``POST /api/compact``      ``{}`` → ``{"result": "started" | "queued"}``
``POST /api/new``          ``{}`` → next turn starts a fresh session
``POST /api/cancel``       ``{}`` → cancel the running turn; 409 when idle
``POST /api/login/start``  ``{"method"?}`` → start ``claude auth login`` (URL follows)
``POST /api/login/code``   ``{"code"}`` → paste the sign-in page's ``CODE#STATE``
``POST /api/login/cancel`` ``{}`` → end the running login; 409 when none runs
``POST /api/login/key``    ``{"kind": "api_key" | "oauth_token", "value"}`` → store it
``POST /api/login/forget`` ``{}`` → remove a stored key / token
``GET /healthz``           ``{"ok": true}``
=========================  =====================================================

Bodies are JSON only (``Content-Type: application/json``; anything else is 415, so an
HTML form on another site cannot post here), parsed by ``hivehttp.parse_json_object``
(deep nesting, lone surrogates, non-UTF-8 → 400). Bad input gets a 4xx
``{"error": {"code", "message", "field"}}`` naming the field, never a 500. The body size
limit (413 before reading) is the listener's ``hivehttp.Policy``; the app repeats the
check on ``Content-Length`` so it holds under any server.

Every responder is ``async``; work that may block (the broker socket, the turn loop's
controls, sqlite pages) runs in ``asyncio.to_thread``. SSE streams are async generators
woken by the event log's listener hook (no thread per stream).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Protocol, TypeVar, cast

import falcon
import falcon.asgi

import hivehttp
from harness.config import HarnessEnv, Settings
from harness.events import Bus, Event, EventLog
from harness.login import InvalidCredential, LoginBusy, check_code, check_secret
from harness.model import InvalidModel, ModelStore
from harness.turnstats import TurnStats
from hivehttp.guard import ASGIApp
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import OPERATOR

log = logging.getLogger(__name__)

HEARTBEAT = 15.0
DEFAULT_BACKFILL = 300
MAX_BODY = 65536
"""Longest message the operator may send, in characters."""
MAX_REQUEST_BYTES = 1024 * 1024
"""Largest request body the app reads (the listener's policy normally refuses it first)."""
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}

T = TypeVar("T")


class Controls(Protocol):
    """What the UI asks of the turn loop (``harness.loop.TurnLoop`` implements it)."""

    def cancel_turn(self) -> bool: ...
    def request_compact(self) -> str: ...
    def request_new_session(self) -> None: ...
    def set_model(self, model: str) -> str: ...
    def login_state(self) -> dict[str, Any]: ...
    def start_login(self, method: str = "claudeai") -> dict[str, Any]: ...
    def submit_login_code(self, code: str) -> dict[str, Any]: ...
    def cancel_login(self) -> bool: ...
    def store_credential(self, kind: str, value: str) -> str: ...
    def forget_credential(self) -> bool: ...
    def plugin_state(self) -> list[dict[str, Any]] | None: ...
    @property
    def turn_timeout(self) -> float: ...


class BadInput(falcon.HTTPError):
    """A 4xx with the JSON error shape ``{"error": {"code", "message", "field"}}``."""

    def __init__(self, message: str, field: str | None = None, status: str = falcon.HTTP_400,
                 code: str = "invalid") -> None:  # fmt: skip
        super().__init__(status, title=code, description=message)
        self.payload = {"error": {"code": code, "message": message, "field": field}}


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    if isinstance(ex, BadInput):
        payload = ex.payload
    else:
        code = (ex.title or "error").lower().replace(" ", "_")
        payload = {
            "error": {"code": code, "message": ex.description or ex.title or "error", "field": None}
        }
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(payload)


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


async def _body(req: falcon.asgi.Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); 413 / 415 / 400 otherwise."""
    if (req.content_length or 0) > MAX_REQUEST_BYTES:
        raise BadInput(f"request body is over the limit of {MAX_REQUEST_BYTES} bytes", None,
                       falcon.HTTP_413, "too_large")  # fmt: skip
    # a form or text/plain body can be sent cross-site without a preflight: JSON only,
    # also for the body-less actions (a browser form always sends a Content-Type)
    if req.content_type is not None and not _is_json(req.content_type):
        raise BadInput("send the body as application/json", "(root)", falcon.HTTP_415,
                       "unsupported_media_type")  # fmt: skip
    raw = await req.stream.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadInput(f"request body is over the limit of {MAX_REQUEST_BYTES} bytes", None,
                       falcon.HTTP_413, "too_large")  # fmt: skip
    if raw.strip() and req.content_type is None:
        raise BadInput("send the body as application/json", "(root)", falcon.HTTP_415,
                       "unsupported_media_type")  # fmt: skip
    try:
        return hivehttp.parse_json_object(raw)
    except hivehttp.BadJson as exc:
        raise BadInput(exc.message, exc.field or "(root)") from None


def _int_param(req: falcon.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{name}: must be an integer", name) from None
    if not lo <= value <= hi:
        raise BadInput(f"{name}: must be between {lo} and {hi}", name)
    return value


def sse_frame(ev: Event) -> bytes:
    """One SSE frame: ``id: <id>\\nevent: <kind>\\ndata: <event JSON>\\n\\n``.

    A live-only event (``id`` 0: streaming text) has no ``id:`` line, so it does not
    move the client's ``Last-Event-ID``.
    """
    data = json.dumps(ev.to_json(), separators=(",", ":"))
    if not ev.id:
        return f"event: {ev.kind}\ndata: {data}\n\n".encode()
    return f"id: {ev.id}\nevent: {ev.kind}\ndata: {data}\n\n".encode()


class _Wakeup:
    """Hands the event log's wake-ups (any thread) to asyncio waiters on one loop.

    The log calls :meth:`poke` on its writer's thread; that schedules one
    :meth:`_fire` on the loop (coalesced: many appends between two loop turns
    cost one callback), which sets the current ``asyncio.Event`` and starts a
    new one. A waiter takes :meth:`current` *before* looking at the log, so an
    append that lands after its look always sets the event it waits on.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending = False

    def current(self) -> asyncio.Event:
        """The event the next wake-up sets; call on the loop that waits."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            self._loop, self._event, self._pending = loop, asyncio.Event(), False
        return self._event

    def poke(self) -> None:
        """Wake the waiters (thread-safe; never blocks)."""
        loop = self._loop
        if loop is None or self._pending or loop.is_closed():
            return
        self._pending = True
        try:
            loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting
            self._pending = False

    def _fire(self) -> None:
        self._pending = False  # first: a poke from now on schedules another fire
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set or ``timeout`` seconds passed."""
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _client_gone(req: falcon.asgi.Request) -> asyncio.Event:
    """Set when the client disconnects (never set outside a ``hivehttp`` listener)."""
    try:
        return hivehttp.disconnected(req.scope)
    except KeyError:  # not behind hivehttp (falcon's test client): nobody tells us
        return asyncio.Event()


class WebApp:
    """Builds the ``falcon.asgi`` app (:attr:`app`); ``stop()`` ends every open SSE stream.

    ``client`` is the agent's broker client (it carries the agent's credential).
    ``max_streams`` caps the open SSE streams of this UI (503 ``busy`` beyond it).
    """

    def __init__(
        self,
        env: HarnessEnv,
        settings: Settings,
        bus: Bus,
        stats: TurnStats,
        models: ModelStore,
        controls: Controls,
        environ: dict[str, str],
        client: UnixClient,
        max_streams: int = 12,
    ) -> None:
        self.env = env
        self.settings = settings
        self.bus = bus
        self.log: EventLog = bus.log
        self.stats = stats
        self.models = models
        self.controls = controls
        self.environ = environ
        self.client = client
        self.max_streams = max_streams
        self._streams = 0  # only touched on the event loop
        self._stopping = threading.Event()
        self._wakeup = _Wakeup()
        self.log.add_listener(self._wakeup.poke)
        self.assets = {
            name: resources.files("harness").joinpath(f"assets/{name}").read_bytes()
            for name in ASSETS
        }
        self.app = falcon.asgi.App(cors_enable=False)
        self.app.req_options.strip_url_path_trailing_slash = True
        self.app.add_error_handler(Exception, self._on_error)
        self.app.set_error_serializer(_serialize_error)
        r = self.app.add_route
        r("/", _Static(self, "index.html"))
        r("/static/{name}", _Static(self, None))
        r("/api/state", _State(self))
        r("/events/stream", _Stream(self))
        r("/api/history", _History(self))
        r("/api/turns", _Turns(self))
        r("/api/send", _Send(self))
        r("/api/model", _Model(self))
        r("/api/compact", _Action(self, "compact"))
        r("/api/new", _Action(self, "new"))
        r("/api/cancel", _Action(self, "cancel"))
        r("/api/login/{action}", _Login(self))
        r("/healthz", _Health())

    @property
    def asgi(self) -> ASGIApp:
        """:attr:`app` typed as the plain ASGI callable ``hivehttp`` serves."""
        return cast(ASGIApp, self.app)

    def stop(self) -> None:
        """End all SSE streams (they return at their next wake-up)."""
        self._stopping.set()
        self.log.notify()

    @property
    def open_streams(self) -> int:
        """SSE streams open right now."""
        return self._streams

    @staticmethod
    async def _on_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: dict[str, Any]
    ) -> None:
        if isinstance(ex, falcon.HTTPError):
            _serialize_error(req, resp, ex)
            resp.status = ex.status
            return
        log.exception("web UI handler failed: %s %s", req.method, req.path)
        resp.status = falcon.HTTP_500
        resp.media = {
            "error": {
                "code": "internal",
                "message": "internal error (see the agent log)",
                "field": None,
            }
        }

    # -- state

    def inbox(self) -> list[dict[str, Any]] | None:
        """The newest messages to/from this agent (``POST /recent``), ``None`` when unreachable.

        Blocks up to 2 s: call it from a worker thread."""
        try:
            data = self.client.post("/recent", {"limit": 20}, timeout=2.0)
        except (ApiError, Unreachable) as exc:
            log.debug("inbox fetch failed: %s", exc)
            return None
        msgs = data.get("messages") if isinstance(data, dict) else None
        return msgs if isinstance(msgs, list) else None

    def state(self) -> dict[str, Any]:
        """The ``GET /api/state`` document (blocking: the inbox is a broker call)."""
        snap = self.bus.snapshot()
        login = self.controls.login_state()
        return {
            "agent": self.env.agent,
            "flavor": self.env.flavor,
            "model": self.models.current(),
            "settings_model": self.models.settings_model,
            "model_override": self.models.override,
            "turn_state": snap["turn_state"],
            "turn_state_since": snap["turn_state_since"],
            "last_turn_ms": snap["last_turn_ms"],
            "usage": snap["usage"],
            "context_tokens": snap["usage"]["context_tokens"] if snap["usage"] else None,
            "status": snap["status"],
            "status_detail": snap["status_detail"],
            "needs_login": login["needs_login"],
            "login": login,
            "plugins": self.controls.plugin_state(),
            "turn_timeout_seconds": self.controls.turn_timeout,
            "partial": snap["partial"],
            "dashboard_url": self.settings.dashboard_url,
            "inbox": self.inbox(),
            "inbox_status": snap["inbox_status"],
            "last_event_id": snap["last_event_id"],
            "meta_commit": self.settings.meta_commit,
            "hyperhive_version": self.settings.hyperhive_version,
            "extra_files": [{"key": k, "target": t} for k, t in self.settings.frontend_extra],
        }

    # -- SSE

    async def stream(
        self, after: int | None, backfill: int, gone: asyncio.Event
    ) -> AsyncIterator[bytes]:
        """SSE body: backfill (or resume after ``after``), a ``ready`` marker, then live events.

        Ends when the client goes (``gone``), on :meth:`stop` or when the log closes.
        """
        self._streams += 1
        try:
            seq = self.log.live_seq  # live-only events from now on (the text so far is in ready)
            yield b"retry: 3000\n\n"
            if after is None:
                history = await asyncio.to_thread(self.log.page, None, backfill)
                for ev in history:
                    yield sse_frame(ev)
                last = history[-1].id if history else self.log.last_id
            else:
                last = after
                while True:  # resume: everything after the client's last id
                    batch = await asyncio.to_thread(self.log.since, last)
                    for ev in batch:
                        yield sse_frame(ev)
                        last = ev.id
                    if len(batch) < 500:
                        break
            ready = json.dumps({"last_event_id": last, "state": self.bus.snapshot()})
            yield f"event: ready\ndata: {ready}\n\n".encode()
            while not self._stopping.is_set() and not gone.is_set():
                woken = self._wakeup.current()  # before looking: see _Wakeup
                # a zero timeout never waits: one short sqlite read under the log's lock
                batch, seq = self.log.wait_any(last, seq, 0.0)
                if not batch:
                    if self.log.closed:
                        return
                    await _first(woken, gone, timeout=HEARTBEAT)
                    if not woken.is_set() and not gone.is_set():
                        yield b": heartbeat\n\n"
                    continue
                for ev in batch:
                    yield sse_frame(ev)
                    if ev.id:
                        last = ev.id
        finally:
            self._streams -= 1


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread (it may block on the broker or the loop's locks)."""
    return await asyncio.to_thread(fn, *args)


class _Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"ok": True}


class _Static:
    def __init__(self, web: WebApp, fixed: str | None) -> None:
        self.web = web
        self.fixed = fixed

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str | None = None
    ) -> None:
        fname = self.fixed or name or ""
        if fname not in ASSETS:
            raise BadInput(f"no such asset: {fname}", "name", falcon.HTTP_404, "not_found")
        resp.content_type = ASSETS[fname]
        resp.data = self.web.assets[fname]
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Content-Type-Options", "nosniff")


class _State:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = await _run(self.web.state)


class _Stream:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        after: int | None = None
        header = req.get_header("Last-Event-ID")
        if header:
            try:
                after = int(header)
            except ValueError:
                raise BadInput(
                    "Last-Event-ID: must be an integer event id", "Last-Event-ID"
                ) from None
            if not 0 <= after <= 2**62:
                raise BadInput("Last-Event-ID: out of range", "Last-Event-ID")
        else:
            after = _int_param(req, "after", None, 0, 2**62)
        backfill = _int_param(req, "backfill", DEFAULT_BACKFILL, 0, 5000) or 0
        if self.web.open_streams >= self.web.max_streams:
            raise BadInput("too many live streams open; close a tab", None, falcon.HTTP_503, "busy")
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self.web.stream(after, backfill, _client_gone(req))


class _History:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        before = _int_param(req, "before", None, 1, 2**62)
        limit = _int_param(req, "limit", 200, 1, 2000) or 200
        events = await _run(self.web.log.page, before, limit + 1)
        has_more = len(events) > limit
        events = events[-limit:]
        resp.media = {"events": [e.to_json() for e in events], "has_more": has_more}


class _Turns:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = _int_param(req, "limit", 20, 1, 500) or 20
        rows = await _run(self.web.stats.recent, limit)
        resp.media = {"turns": [r.to_json() for r in rows]}


class _Send:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        doc = await _body(req)
        extra = sorted(set(doc) - {"body"})
        if extra:
            raise BadInput(f"{extra[0]}: is not an allowed field", extra[0])
        body = doc.get("body")
        if not isinstance(body, str) or not body.strip():
            raise BadInput("body: is required (the message text)", "body")
        if len(body) > MAX_BODY:
            raise BadInput(f"body: is longer than {MAX_BODY} characters", "body")
        try:
            data = await _run(self._wake, body)
        except ApiError as exc:
            status = falcon.code_to_http_status(exc.status)
            raise BadInput(exc.message, exc.field, status, exc.code) from None
        except Unreachable:
            raise BadInput("the hyperhive controller is unreachable; try again shortly", None,
                           falcon.HTTP_503, "unreachable") from None  # fmt: skip
        resp.media = data

    def _wake(self, body: str) -> Any:
        return self.web.client.post("/wake", {"from": OPERATOR, "body": body}, timeout=10.0)


class _Model:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        doc = await _body(req)
        extra = sorted(set(doc) - {"model"})
        if extra:
            raise BadInput(f"{extra[0]}: is not an allowed field", extra[0])
        name = doc.get("model")
        if name is None:
            raise BadInput("model: is required ('' returns to the deployed model)", "model")
        if not isinstance(name, str):
            raise BadInput("model: must be a string", "model")
        if name == "":
            name = self.web.models.settings_model
        try:
            effective = await _run(self.web.controls.set_model, name)
        except InvalidModel as exc:
            raise BadInput(str(exc), "model") from None
        resp.media = {"model": effective, "override": self.web.models.override,
                      "settings_model": self.web.models.settings_model}  # fmt: skip


class _Action:
    def __init__(self, web: WebApp, action: str) -> None:
        self.web = web
        self.action = action

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        doc = await _body(req)
        if doc:
            field = sorted(doc)[0]
            raise BadInput(f"{field}: is not an allowed field (send {{}})", field)
        resp.media = await _run(self._act)

    def _act(self) -> dict[str, Any]:
        c = self.web.controls
        if self.action == "compact":
            return {"result": c.request_compact()}
        if self.action == "new":
            c.request_new_session()
            return {"result": "the next turn starts a fresh session"}
        if not c.cancel_turn():
            raise BadInput("no turn is running", None, falcon.HTTP_409, "conflict")
        return {"result": "cancelled"}


_LOGIN_FIELDS = {
    "start": {"method"},
    "code": {"code"},
    "cancel": set(),
    "key": {"kind", "value"},
    "forget": set(),
}


class _Login:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, action: str
    ) -> None:
        if action not in _LOGIN_FIELDS:
            raise BadInput(f"no such login action: {action}", "action", falcon.HTTP_404,
                           "not_found")  # fmt: skip
        doc = await _body(req)
        extra = sorted(set(doc) - _LOGIN_FIELDS[action])
        if extra:
            raise BadInput(f"{extra[0]}: is not an allowed field", extra[0])
        try:
            resp.media = await _run(self._act, action, doc)
        except InvalidCredential as exc:
            text = str(exc)
            field = text.split(":", 1)[0] if ":" in text else None
            raise BadInput(text, field) from None
        except LoginBusy as exc:
            raise BadInput(str(exc), None, falcon.HTTP_409, "conflict") from None
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise BadInput(f"cannot write the claude config dir: {exc.strerror or exc}", None,
                           falcon.HTTP_507 if full else falcon.HTTP_500,
                           "disk_full" if full else "io_error") from None  # fmt: skip

    def _act(self, action: str, doc: dict[str, Any]) -> dict[str, Any]:
        c = self.web.controls
        if action == "start":
            method = doc.get("method", "claudeai")
            if method not in ("claudeai", "console"):
                raise InvalidCredential(
                    "method: must be 'claudeai' (subscription) or 'console' (API billing)"
                )
            return {"result": "started", "login": c.start_login(method)}
        if action == "code":
            code = check_code(doc.get("code"))
            return {"result": "code sent", "login": c.submit_login_code(code)}
        if action == "cancel":
            if not c.cancel_login():
                raise BadInput("no login is running", None, falcon.HTTP_409, "conflict")
            return {"result": "cancelled"}
        if action == "key":
            kind, value = check_secret(doc.get("kind"), doc.get("value"))
            return {"result": "stored", "source": c.store_credential(kind, value)}
        return {"result": "removed" if c.forget_credential() else "nothing stored"}
