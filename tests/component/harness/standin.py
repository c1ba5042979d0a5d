"""A stand-in for one agent socket of the controller: falcon.asgi on a hivehttp unix socket.

Implements the agent-socket endpoints the harness calls (docs/architecture.md):
``/send /recv /ack /status /recent /wake /ask /answer /remind``, the proposed
``/release`` (``{"ids"?: [int]}`` → ``{"released": n}``: leased, unacked messages
become deliverable at once; no ``ids`` = all of them; ``supports_release=False``
answers 404 like a controller without the verb) and the manager
verbs ``/request_spawn /request_apply_commit /start /kill /restart /update
/ask_operator /list``, with a tiny in-memory inbox (leases, long polls).
Bodies are validated against ``schemas/json/wire.schema.json``; errors use the
controller's JSON shape ``{"error": {"code", "message", "field"}}``.

Like the controller, it requires ``Authorization: Bearer <the agent's credential>`` on
every request (``token``, default :data:`TOKEN`; 401 ``unauthorized`` otherwise, counted
in ``unauthorized``), so a test passing through it proves the harness sends it.
:func:`write_credential` writes the file ``HYPERHIVE_CREDENTIAL_FILE`` names.

Tests inspect ``calls`` (every request), ``sent`` (POST /send bodies),
``acked`` (acked ids) and put messages in with :meth:`StandIn.deliver`.
"""

from __future__ import annotations

import asyncio
import hmac
import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

import hivehttp
from schemas.names import InvalidName, check_agent_name
from schemas.validate import ValidationFailed, validate
from schemas.wire import MANAGER_ONLY_VERBS, Message, MessageKind, Status, rfc3339

TOKEN = "c3RhbmQtaW4tY3JlZGVudGlhbC1mb3ItdGVzdHMtMDAw"
"""The credential a stand-in expects unless told otherwise (urlsafe base64, like the real one)."""


def write_credential(path: Path, token: str = TOKEN) -> Path:
    """Write ``token`` to ``path`` (mode 0600) the way the controller does; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def harness_env(
    sock: str, credential: Path, state: Path, web: Path, home: Path, root: Path
) -> dict[str, str]:
    """The environment for ``python -m harness serve`` started by hand as agent ``alice``:
    the controller socket ``sock`` (a stand-in's path), its ``credential`` file, the state dir,
    the web UI socket ``web``, ``home``, and ``root`` (the tree to import) on PYTHONPATH; no
    claude is ever run (``/bin/false``)."""
    return {
        **os.environ,
        "HYPERHIVE_AGENT": "alice",
        "HYPERHIVE_FLAVOR": "agent",
        "HYPERHIVE_SOCKET": sock,
        "HYPERHIVE_CREDENTIAL_FILE": str(credential),
        "HYPERHIVE_STATE_DIR": str(state),
        "HYPERHIVE_WEB_SOCKET": str(web),
        "HYPERHIVE_CLAUDE_BIN": "/bin/false",
        "HOME": str(home),
        "PYTHONPATH": str(root),
    }


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket (what the dashboard's proxy does)."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; returns the status and the decoded JSON body (or the text)."""
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


@dataclass
class _Msg:
    msg: Message
    leased_until: float = 0.0
    acked: bool = False
    delivered: bool = False


class _Err(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


class StandIn:
    """One agent's socket. ``agent`` is the identity (``manager`` enables manager verbs)."""

    def __init__(self, path: Path | str, agent: str = "alice", token: str | None = TOKEN) -> None:
        self.path = str(path)
        self.agent = agent
        self.token = token
        self.unauthorized = 0  # requests refused for a missing or wrong bearer
        self.calls: list[tuple[str, str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.acked: list[int] = []
        self.released: list[list[int] | None] = []  # bodies' ids of every POST /release
        self.supports_release = True
        self.reports: list[dict[str, Any]] = []  # POST /report bodies (not in ``calls``)
        self.open_threads = 0
        self.pending_reminders = 0
        self._msgs: list[_Msg] = []
        self._next_id = 1
        self._lock = threading.Condition()
        self._server: hivehttp.Listener | None = None
        # recv long polls park a thread each: a pool of our own, not the loop's default one
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="standin")

    # ------------------------------------------------------------------ inbox

    def deliver(
        self,
        sender: str,
        body: str,
        kind: MessageKind = MessageKind.MESSAGE,
        thread: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> int:
        """Put a message into the agent's inbox; wakes a parked recv. Returns its id."""
        with self._lock:
            mid = self._next_id
            self._next_id += 1
            self._msgs.append(
                _Msg(
                    Message(mid, sender, self.agent, body, kind, thread, event, sent_at=time.time())
                )
            )
            self._lock.notify_all()
            return mid

    def status(self) -> Status:
        """Unread = not acked and not currently leased."""
        now = time.time()
        with self._lock:
            unread = sum(1 for m in self._msgs if not m.acked and m.leased_until <= now)
        return Status(unread, self.open_threads, self.pending_reminders)

    def _take(self, lease: int | None) -> Message | None:
        now = time.time()
        for m in self._msgs:
            if m.acked or m.leased_until > now:
                continue
            if lease is None:
                m.acked = True
            else:
                m.leased_until = now + lease
            m.delivered = True
            return m.msg
        return None

    def wait_for(self, pred: Any, timeout: float = 30.0) -> bool:
        """Poll ``pred()`` until true or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return bool(pred())

    # ------------------------------------------------------------------ HTTP

    def _body(self, raw: bytes, schema: str | None) -> dict[str, Any]:
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise _Err(400, "invalid_json", "request body is not valid JSON", "(root)") from None
        if schema is not None:
            try:
                validate(doc, f"wire#{schema}")
            except ValidationFailed as exc:
                raise _Err(400, "invalid", str(exc), exc.field) from None
        return doc if isinstance(doc, dict) else {}

    async def _handle(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, verb: str
    ) -> None:
        expected = f"Bearer {self.token}".encode()
        given = (req.get_header("Authorization") or "").encode()
        if self.token is not None and not hmac.compare_digest(given, expected):
            self.unauthorized += 1
            resp.status = falcon.HTTP_401
            resp.media = {"error": {"code": "unauthorized", "message": "bearer required",
                                    "field": None}}  # fmt: skip
            return
        raw = await req.stream.read()
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._pool, self._dispatch, req.method, raw, verb)
        except _Err as exc:
            resp.status = falcon.code_to_http_status(exc.status)
            resp.media = {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}
            return
        resp.media = data

    def _dispatch(self, method: str, raw: bytes, verb: str) -> Any:
        if verb in MANAGER_ONLY_VERBS and self.agent != "manager":
            raise _Err(403, "forbidden", f"{verb} is only available to the manager")
        schemas = {
            "send": "SendRequest",
            "recv": "RecvRequest",
            "ack": "AckRequest",
            "recent": "RecentRequest",
            "wake": "WakeRequest",
            "ask": "AskRequest",
            "answer": "AnswerRequest",
            "remind": "RemindRequest",
            "request_spawn": "SpawnRequest",
            "request_apply_commit": "ApplyCommitRequest",
            "start": "NameRequest",
            "kill": "NameRequest",
            "restart": "NameRequest",
            "update": "NameRequest",
            "ask_operator": "AskOperatorRequest",
        }
        if verb == "report":  # the harness's own report: kept apart from the verbs it calls
            self.reports.append(self._body(raw, "AgentReport"))
            return {"ok": True, "status": self.status().to_json()}
        body = self._body(raw, schemas.get(verb)) if method == "POST" else {}
        self.calls.append((method, "/" + verb, body))
        st = lambda: self.status().to_json()  # noqa: E731
        if verb == "status":
            return st()
        if verb == "send":
            self.sent.append(body)
            with self._lock:
                mid = self._next_id
                self._next_id += 1
            return {"id": mid, "status": st()}
        if verb == "recv":
            wait = float(body.get("wait_seconds", 0))
            lease = body.get("lease_seconds")
            deadline = time.monotonic() + wait
            with self._lock:
                while True:
                    msg = self._take(lease)
                    remaining = deadline - time.monotonic()
                    if msg is not None or remaining <= 0 or self._server is None:
                        break
                    self._lock.wait(min(remaining, 0.5))
            return {"message": msg.to_json() if msg else None, "status": st()}
        if verb == "ack":
            n = 0
            with self._lock:
                for m in self._msgs:
                    if m.msg.id in body["ids"] and not m.acked:
                        m.acked = True
                        n += 1
                self.acked.extend(body["ids"])
            return {"acked": n}
        if verb == "release":
            if not self.supports_release:
                raise _Err(404, "not_found", "no such endpoint: /release")
            ids = body.get("ids")
            if ids is not None and (
                not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)
            ):
                raise _Err(400, "invalid", "ids: must be a list of message ids", "ids")
            n = 0
            with self._lock:
                now = time.time()
                for m in self._msgs:
                    if m.acked or m.leased_until <= now:
                        continue
                    if ids is None or m.msg.id in ids:
                        m.leased_until = 0.0
                        n += 1
                self.released.append(ids)
                self._lock.notify_all()
            return {"released": n}
        if verb == "recent":
            with self._lock:
                msgs = [m.msg.to_json() for m in self._msgs if m.delivered][
                    -int(body.get("limit", 20)) :
                ]
            return {"messages": msgs, "status": st()}
        if verb == "wake":
            mid = self.deliver(body["from"], body["body"], MessageKind.WAKE)
            return {"id": mid, "status": st()}
        if verb == "ask":
            with self._lock:
                mid = self._next_id
                self._next_id += 1
            return {"id": mid, "thread": mid, "status": st()}
        if verb == "answer":
            return {"id": 99, "status": st()}
        if verb == "remind":
            due = rfc3339(time.time() + int(body["after_seconds"]))
            return {"id": 77, "due_at": due, "status": st()}
        if verb == "request_spawn":
            try:
                check_agent_name(body["name"])
            except InvalidName as exc:
                raise _Err(400, "invalid", str(exc), "name") from None
            return {"id": 1, "ref": "refs/tags/proposal/1", "status": st()}
        if verb == "request_apply_commit":
            return {"id": 2, "ref": "refs/tags/proposal/2", "status": st()}
        if verb in ("start", "kill", "restart", "update"):
            return {"result": f"{verb} requested for {body['name']}"}
        if verb == "ask_operator":
            return {"id": 5}
        if verb == "list":
            return {"agents": [{"name": "alice", "phase": "Running"}]}
        raise _Err(404, "not_found", f"no such endpoint: /{verb}")

    def app(self) -> falcon.asgi.App:
        """The falcon.asgi app (every verb is one route)."""
        outer = self

        class Route:
            def __init__(self, verb: str) -> None:
                self.verb = verb

            async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
                await outer._handle(req, resp, self.verb)

            on_post = on_get

        app = falcon.asgi.App()
        for verb in (
            "send",
            "recv",
            "ack",
            "release",
            "status",
            "recent",
            "wake",
            "ask",
            "answer",
            "remind",
            "request_spawn",
            "request_apply_commit",
            "start",
            "kill",
            "restart",
            "update",
            "ask_operator",
            "list",
            "report",
        ):
            app.add_route("/" + verb, Route(verb))
        return app

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> StandIn:
        """Listen on the unix socket (removing a stale one) on the hivehttp loop."""
        self._server = hivehttp.serve_unix(self.app(), Path(self.path), name="standin")  # type: ignore[arg-type]
        return self

    def stop(self) -> None:
        """Stop listening and remove the socket file (parked recvs return empty)."""
        server, self._server = self._server, None
        with self._lock:
            self._lock.notify_all()
        if server is not None:
            server.stop(2.0)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
