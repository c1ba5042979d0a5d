"""The agent web UI: a Falcon WSGI app (served by waitress on TCP, see harness.httpserve).

=========================  =====================================================
``GET /``                  the static page (harness/assets/index.html)
``GET /static/{file}``     app.js, app.css
``GET /api/state``         snapshot: agent, flavor, model, turn state + since, last
                           turn, context tokens, needs_login, dashboard_url, inbox
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
=========================  =====================================================

Bodies are JSON (form-encoded works too). Bad input gets a 4xx
``{"error": {"code", "message", "field"}}`` naming the field, never a 500.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from importlib import resources
from typing import Any, Protocol

import falcon

from harness.config import HarnessEnv, Settings
from harness.events import Bus, Event, EventLog
from harness.login import InvalidCredential, LoginBusy, check_code, check_secret
from harness.model import InvalidModel, ModelStore
from harness.turnstats import TurnStats
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import OPERATOR

log = logging.getLogger(__name__)

HEARTBEAT = 15.0
DEFAULT_BACKFILL = 300
MAX_BODY = 65536
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


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


def _media(req: falcon.Request) -> dict[str, Any]:
    if not req.content_length:
        return {}
    try:
        doc = req.get_media()
    except falcon.MediaMalformedError as exc:
        raise BadInput(
            f"request body is not valid: {exc.description or exc.title}", "(root)"
        ) from None
    except falcon.HTTPUnsupportedMediaType:
        raise BadInput(
            "send application/json", "(root)", falcon.HTTP_415, "unsupported_media_type"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput("body must be a JSON object", "(root)")
    return doc


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


class WebApp:
    """Builds the Falcon app; ``stop()`` ends every open SSE stream."""

    def __init__(
        self,
        env: HarnessEnv,
        settings: Settings,
        bus: Bus,
        stats: TurnStats,
        models: ModelStore,
        controls: Controls,
        environ: dict[str, str],
        client: UnixClient | None = None,
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
        self.client = client or UnixClient(env.socket)
        self.max_streams = max_streams
        self._streams = 0
        self._streams_lock = threading.Lock()
        self._stopping = threading.Event()
        self.app = falcon.App(cors_enable=False)
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

    def stop(self) -> None:
        """End all SSE streams (they return at their next wake-up)."""
        self._stopping.set()
        self.log.notify()

    @staticmethod
    def _on_error(
        req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
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
        """The newest messages to/from this agent (``POST /recent``), ``None`` when unreachable."""
        try:
            data = self.client.post("/recent", {"limit": 20}, timeout=2.0)
        except (ApiError, Unreachable) as exc:
            log.debug("inbox fetch failed: %s", exc)
            return None
        msgs = data.get("messages") if isinstance(data, dict) else None
        return msgs if isinstance(msgs, list) else None

    def state(self) -> dict[str, Any]:
        """The ``GET /api/state`` document."""
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
        }

    # -- SSE

    def stream(self, after: int | None, backfill: int) -> Iterator[bytes]:
        """SSE body: backfill (or resume after ``after``), a ``ready`` marker, then live events."""
        try:
            seq = self.log.live_seq  # live-only events from now on (the text so far is in ready)
            yield b"retry: 3000\n\n"
            if after is None:
                history = self.log.page(None, backfill)
                for ev in history:
                    yield sse_frame(ev)
                last = history[-1].id if history else self.log.last_id
            else:
                last = after
                while True:  # resume: everything after the client's last id
                    batch = self.log.since(last)
                    for ev in batch:
                        yield sse_frame(ev)
                        last = ev.id
                    if len(batch) < 500:
                        break
            ready = json.dumps({"last_event_id": last, "state": self.bus.snapshot()})
            yield f"event: ready\ndata: {ready}\n\n".encode()
            while not self._stopping.is_set():
                batch, seq = self.log.wait_any(last, seq, HEARTBEAT, stop=self._stopping.is_set)
                if not batch:
                    if self.log.closed or self._stopping.is_set():
                        return
                    yield b": heartbeat\n\n"
                    continue
                for ev in batch:
                    yield sse_frame(ev)
                    if ev.id:
                        last = ev.id
        finally:
            with self._streams_lock:
                self._streams -= 1

    def open_stream(self) -> bool:
        """Count a new SSE stream; False when the limit is reached."""
        with self._streams_lock:
            if self._streams >= self.max_streams:
                return False
            self._streams += 1
            return True


class _Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"ok": True}


class _Static:
    def __init__(self, web: WebApp, fixed: str | None) -> None:
        self.fixed = fixed

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str | None = None) -> None:
        fname = self.fixed or name or ""
        if fname not in ASSETS:
            raise BadInput(f"no such asset: {fname}", "name", falcon.HTTP_404, "not_found")
        resp.content_type = ASSETS[fname]
        resp.text = (
            resources.files("harness").joinpath(f"assets/{fname}").read_text(encoding="utf-8")
        )
        resp.cache_control = ["no-cache"]


class _State:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.web.state()


class _Stream:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        after: int | None = None
        header = req.get_header("Last-Event-ID")
        if header:
            try:
                after = int(header)
            except ValueError:
                raise BadInput(
                    "Last-Event-ID: must be an integer event id", "Last-Event-ID"
                ) from None
        else:
            after = _int_param(req, "after", None, 0, 2**62)
        backfill = _int_param(req, "backfill", DEFAULT_BACKFILL, 0, 5000) or 0
        if not self.web.open_stream():
            raise BadInput("too many live streams open; close a tab", None, falcon.HTTP_503, "busy")
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self.web.stream(after, backfill)


class _History:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        before = _int_param(req, "before", None, 1, 2**62)
        limit = _int_param(req, "limit", 200, 1, 2000) or 200
        events = self.web.log.page(before, limit + 1)
        has_more = len(events) > limit
        events = events[-limit:]
        resp.media = {"events": [e.to_json() for e in events], "has_more": has_more}


class _Turns:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = _int_param(req, "limit", 20, 1, 500) or 20
        resp.media = {"turns": [r.to_json() for r in self.web.stats.recent(limit)]}


class _Send:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = _media(req)
        body = doc.get("body")
        if not isinstance(body, str) or not body.strip():
            raise BadInput("body: is required (the message text)", "body")
        if len(body) > MAX_BODY:
            raise BadInput(f"body: is longer than {MAX_BODY} characters", "body")
        try:
            data = self.web.client.post("/wake", {"from": OPERATOR, "body": body}, timeout=10.0)
        except ApiError as exc:
            status = falcon.code_to_http_status(exc.status)
            raise BadInput(exc.message, exc.field, status, exc.code) from None
        except Unreachable:
            raise BadInput("the hyperhive controller is unreachable; try again shortly", None,
                           falcon.HTTP_503, "unreachable") from None  # fmt: skip
        resp.media = data


class _Model:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = _media(req)
        name = doc.get("model")
        if name is None:
            raise BadInput("model: is required ('' returns to the deployed model)", "model")
        if name == "":
            name = self.web.models.settings_model
        try:
            effective = self.web.controls.set_model(name)
        except InvalidModel as exc:
            raise BadInput(str(exc), "model") from None
        resp.media = {"model": effective, "override": self.web.models.override,
                      "settings_model": self.web.models.settings_model}  # fmt: skip


class _Action:
    def __init__(self, web: WebApp, action: str) -> None:
        self.web = web
        self.action = action

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        doc = _media(req)
        if doc:
            field = sorted(doc)[0]
            raise BadInput(f"{field}: is not an allowed field (send {{}})", field)
        c = self.web.controls
        if self.action == "compact":
            resp.media = {"result": c.request_compact()}
        elif self.action == "new":
            c.request_new_session()
            resp.media = {"result": "the next turn starts a fresh session"}
        elif not c.cancel_turn():
            raise BadInput("no turn is running", None, falcon.HTTP_409, "conflict")
        else:
            resp.media = {"result": "cancelled"}


class _Login:
    def __init__(self, web: WebApp) -> None:
        self.web = web

    def on_post(self, req: falcon.Request, resp: falcon.Response, action: str) -> None:
        doc = _media(req)
        c = self.web.controls
        allowed = {
            "start": {"method"},
            "code": {"code"},
            "cancel": set(),
            "key": {"kind", "value"},
            "forget": set(),
        }
        if action not in allowed:
            raise BadInput(f"no such login action: {action}", "action", falcon.HTTP_404,
                           "not_found")  # fmt: skip
        extra = sorted(set(doc) - allowed[action])
        if extra:
            raise BadInput(f"{extra[0]}: is not an allowed field", extra[0])
        try:
            if action == "start":
                method = doc.get("method", "claudeai")
                if method not in ("claudeai", "console"):
                    raise InvalidCredential(
                        "method: must be 'claudeai' (subscription) or 'console' (API billing)"
                    )
                resp.media = {"result": "started", "login": c.start_login(method)}
            elif action == "code":
                code = check_code(doc.get("code"))
                resp.media = {"result": "code sent", "login": c.submit_login_code(code)}
            elif action == "cancel":
                if not c.cancel_login():
                    raise BadInput("no login is running", None, falcon.HTTP_409, "conflict")
                resp.media = {"result": "cancelled"}
            elif action == "key":
                kind, value = check_secret(doc.get("kind"), doc.get("value"))
                source = c.store_credential(kind, value)
                resp.media = {"result": "stored", "source": source}
            else:
                resp.media = {"result": "removed" if c.forget_credential() else "nothing stored"}
        except InvalidCredential as exc:
            text = str(exc)
            field = text.split(":", 1)[0] if ":" in text else None
            raise BadInput(text, field) from None
        except LoginBusy as exc:
            raise BadInput(str(exc), None, falcon.HTTP_409, "conflict") from None
        except OSError as exc:
            raise BadInput(f"cannot write the claude config dir: {exc.strerror or exc}", None,
                           falcon.HTTP_500, "io_error") from None  # fmt: skip
