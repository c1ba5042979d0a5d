"""The hyperhive MCP tools served by the running harness (MCP Streamable HTTP on loopback).

Why: with a stdio server claude starts one process per turn and waits for it before its
first request, and at exit it signals it and polls its pid every 50 ms; even a server that
starts in tens of milliseconds and exits on SIGINT at once cost +86-190 ms a turn. Served
from the harness, which is already running, the tools cost claude three loopback requests
(``initialize``, ``notifications/initialized``, ``tools/list``): +0-15 ms over no MCP at
all (bench/turn.py; docs/turn-loop.md has the figures).

The tools, their schemas and their behaviour are those of ``hyperhive-agent mcp``
(:class:`harness.mcp_server.McpHandler`, shared). The transport is the stateless subset
of Streamable HTTP: every JSON-RPC message is one ``POST /mcp`` answered with
``application/json`` (a notification gets 202, no body); ``GET`` and ``DELETE`` get 405,
so the client opens no server-to-client stream and keeps no session.

Who may call it: agents share the host network, so a loopback port is reachable by every
agent and local process. Each claude run gets a fresh random credential
(:meth:`McpEndpoint.issue`) in its ``--mcp-config`` headers (a 0600 file in the agent's
own state dir); the endpoint accepts only the current one (constant-time compare, 401
otherwise), only ``Host: 127.0.0.1`` (403 — ends DNS rebinding), JSON bodies of at most
1 MiB (415 / 413), and no cross-site browser requests (403): the ``hivehttp`` policy,
enforced before this app runs. :meth:`McpEndpoint.revoke` ends a credential.

A ``tools/call`` runs the blocking socket call on a daemon worker thread (a parked ``recv``
may last 180 s; the event loop never waits on it, and shutdown never joins it). Workers are
reused (:class:`Workers`): an idle one takes the next call, a new one starts only while all
are busy, so a call costs a queue hand-off (~15 µs) rather than a thread start (~55 µs). When the
controller is unreachable the socket client retries within its budget and the call then
ends with a tool error saying nothing was done and to try again — never a hang.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from typing import Any

import hivehttp
from harness.mcp_server import INVALID_REQUEST, PARSE_ERROR, McpHandler
from hivehttp.guard import Receive, Scope, Send
from schemas.client import UnixClient

log = logging.getLogger(__name__)

PATH = "/mcp"
HOST = "127.0.0.1"
POLICY = hivehttp.Policy(
    max_body=1024 * 1024,
    allowed_hosts=frozenset({HOST}),
    json_mutations=True,
    same_origin=True,
)
"""Only ``Host: 127.0.0.1`` (the URL the config names), JSON bodies, no cross-site callers."""


async def _respond(
    send: Send, status: int, body: bytes = b"", extra: list[Any] | None = None
) -> None:
    headers: list[tuple[bytes, bytes]] = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _error_doc(code: str, message: str) -> bytes:
    return _json({"error": {"code": code, "message": message, "field": None}})


IDLE_WORKERS = 4
"""Idle worker threads kept for the next calls; one past that ends when its call does."""


class Workers:
    """Daemon threads that run blocking calls, reused from one call to the next.

    :meth:`submit` hands ``(work, done)`` to an idle worker, or starts one when none is idle
    (calls never wait for each other: a parked ``recv`` holds its worker for up to 180 s).
    The worker runs ``work()``, goes back to the idle list (or ends, when ``idle_max``
    already wait), then calls ``done(result)``: whoever ``done`` wakes finds it idle for
    the next call. Daemon threads: process exit never joins them. ``work`` must not raise;
    a ``done`` that raises is logged. Thread-safe.
    """

    def __init__(self, name: str, idle_max: int = IDLE_WORKERS) -> None:
        self.name = name
        self.idle_max = idle_max
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], Any], done: Callable[[Any], object]) -> None:
        """Run ``work`` then ``done(its result)`` on an idle worker, else on a new one;
        returns at once."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._run, args=(inbox,), name=self.name, daemon=True).start()
        inbox.put((work, done))

    def close(self) -> None:
        """End the idle workers (a busy one ends when its call returns); idempotent."""
        with self._lock:
            idle, self._idle = self._idle, []
            self.idle_max = 0
        for inbox in idle:
            inbox.put(None)

    def _run(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while (job := inbox.get()) is not None:
            work, done = job
            out = work()
            with self._lock:
                keep = len(self._idle) < self.idle_max
                if keep:
                    self._idle.append(inbox)
            try:
                done(out)
            except Exception:
                log.exception("%s: could not hand back a result", self.name)
            if not keep:
                return


_Job = tuple[Callable[[], Any], Callable[[Any], object]]


class McpEndpoint:
    """``flavor``'s hyperhive MCP tools on ``http://127.0.0.1:<port>/mcp`` over ``client``.

    :meth:`start` binds an ephemeral loopback port on the process' hivehttp core (raises
    ``OSError``); :attr:`url` is then set. :meth:`issue` makes the credential for the next
    claude run (the previous one stops working); :meth:`revoke` ends it. Thread-safe.
    """

    def __init__(self, flavor: str, client: UnixClient, host: str = HOST) -> None:
        self.handler = McpHandler(flavor, client)
        self.host = host
        self._token: bytes | None = None
        self._lock = threading.Lock()
        self._listener: hivehttp.Listener | None = None
        self._workers = Workers("mcp-tool")

    @property
    def url(self) -> str:
        """The endpoint's URL (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("McpEndpoint.url before start()")
        return f"http://{self.host}:{self._listener.port}{PATH}"

    @property
    def alive(self) -> bool:
        """True while the listener is serving."""
        return self._listener is not None and self._listener.alive

    def start(self) -> McpEndpoint:
        """Listen on an ephemeral port of ``host``; returns ``self``. Raises ``OSError``."""
        self._workers = Workers("mcp-tool")  # a fresh set: stop() ended the last one's
        self._listener = hivehttp.serve_tcp(self.asgi, self.host, 0, policy=POLICY, name="mcp")
        log.info("hyperhive MCP tools on %s", self.url)
        return self

    def stop(self) -> None:
        """Close the listener and forget the credential (idempotent)."""
        self.revoke()
        if self._listener is not None:
            self._listener.stop()
        self._workers.close()

    def issue(self) -> str:
        """A fresh credential for the next claude run; the previous one no longer works."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._token = token.encode()
        return token

    def revoke(self) -> None:
        """No credential works until the next :meth:`issue`."""
        with self._lock:
            self._token = None

    def mcp_config(self, token: str) -> dict[str, Any]:
        """The ``mcpServers`` entry claude needs: ``{"type": "http", "url", "headers"}``."""
        return {"type": "http", "url": self.url, "headers": {"Authorization": f"Bearer {token}"}}

    def _authorized(self, scope: Scope) -> bool:
        with self._lock:
            token = self._token
        if token is None:
            return False
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = bytes(value)
        return hmac.compare_digest(given, b"Bearer " + token)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app behind :data:`POLICY` (the Host, size and JSON checks ran already)."""
        if scope["type"] != "http":
            return
        if scope["path"] != PATH:
            await _respond(send, 404, _error_doc("not_found", f"only {PATH} is served here"))
            return
        if not self._authorized(scope):
            # no WWW-Authenticate: that would send claude looking for an OAuth server
            why = "this MCP endpoint needs the Bearer credential of the running claude turn"
            await _respond(send, 401, _error_doc("unauthorized", why))
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b"", [(b"allow", b"POST")])
            return
        raw = b""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            raw += event.get("body", b"")
            if not event.get("more_body"):
                break
        try:
            msg = hivehttp.parse_json_object(raw)
        except hivehttp.BadJson as exc:
            err = {"code": PARSE_ERROR, "message": f"not a JSON-RPC message: {exc}"}
            await _respond(send, 400, _json({"jsonrpc": "2.0", "id": None, "error": err}))
            return
        reply: Any
        if msg.get("method") == "tools/call" and "id" in msg:
            reply = await self._call_off_loop(msg, scope)
            if reply is _GONE:
                return
        else:
            reply = self.handler.handle(msg)  # no I/O: answered on the loop
        if reply is None:
            await _respond(send, 202)
            return
        status = 400 if reply.get("error", {}).get("code") == INVALID_REQUEST else 200
        await _respond(send, status, _json(reply))

    async def _call_off_loop(self, msg: dict[str, Any], scope: Scope) -> Any:
        """``handler.handle(msg)`` on a worker thread; :data:`_GONE` when the client left first."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def work() -> Any:
            try:
                return self.handler.handle(msg)
            except BaseException as exc:  # handle() turns tool failures into results already
                log.exception("tools/call failed")
                return {"jsonrpc": "2.0", "id": msg.get("id"),
                        "error": {"code": -32603, "message": str(exc)}}  # fmt: skip

        def finish(out: Any) -> None:
            if not done.done():
                done.set_result(out)

        # a loop closed meanwhile (shutdown) raises here: logged by the worker
        self._workers.submit(work, lambda out: loop.call_soon_threadsafe(finish, out))
        gone = asyncio.ensure_future(hivehttp.disconnected(scope).wait())
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        return done.result() if done.done() else _GONE


_GONE = object()
"""The client went away before the tool call finished (claude was cancelled)."""
