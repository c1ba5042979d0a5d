"""The checks every request passes before an app sees it: Host, origin, media type, body size.

``guarded(app, policy)`` wraps an ASGI app. In order, a request is refused with
a JSON error ``{"error": {"code", "message", "field": null}}`` when:

0. ``policy.admit(scope)`` returns a ``Refusal`` (a listener that authenticates every
   request checks the credential here, from the head alone: a stranger cannot make the
   server read, let alone buffer, a body);
1. its ``Host`` is not in ``policy.allowed_hosts`` (403 ``bad_host``): a page
   that rebinds its own DNS name to 127.0.0.1 still sends its own name, so
   this ends DNS rebinding (the browser cannot forge ``Host``);
2. it mutates (POST/PUT/PATCH/DELETE) and its ``Origin`` names another
   host:port, or ``Sec-Fetch-Site`` says ``cross-site`` / ``same-site``
   (403 ``cross_site``), when ``policy.same_origin``;
3. it mutates with a ``Content-Type`` other than ``application/json``
   (415), when ``policy.json_mutations``: an HTML form or a ``text/plain``
   fetch can be sent cross-site without a CORS preflight, a JSON body cannot;
4. its ``Content-Length`` is over ``policy.max_body`` (413, answered before
   one byte of the body is read), its chunked body grows past it (413), or
   the body takes longer than ``policy.body_timeout`` to arrive (408).

The body is read (within those bounds) before checks 1-3, so their refusals
leave the connection clean for the next request. The app then receives the
whole body as one ``http.request`` message. Later
``receive()`` calls go to the server, so ``http.disconnect`` still arrives;
``disconnected(scope)`` is an ``asyncio.Event`` set once the client is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
"""Host names a loopback-bound surface answers to by default."""

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_DISCONNECTED = "hivehttp.disconnected"

GONE = "hivehttp.gone"
"""Scope key: a ``Gone`` event the server sets when the connection is lost, so that
``disconnected`` needs no task of its own watching ``receive``."""

BODY_READ = "hivehttp.body_read"
"""Scope key: True when the whole body had arrived before the app started (the body read
needs no timeout then)."""


class Gone(asyncio.Event):
    """The event behind ``disconnected``: an ``asyncio.Event`` that also runs plain
    callbacks when set, so a parked long poll can be woken by its client leaving without
    a task of its own waiting on the event (a task per park was ~13 µs of every
    delivered message). Loop thread only, as any ``asyncio.Event``."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] | None = None

    def set(self) -> None:
        """Set the event, then run (and forget) the callbacks."""
        if self.is_set():
            return
        super().set()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when the event is set (at once when it already is)."""
        if self.is_set():
            callback()
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Forget ``callback`` (no-op when it is not registered)."""
        if self._callbacks is not None and callback in self._callbacks:
            self._callbacks.remove(callback)


@dataclass(frozen=True)
class Refusal:
    """How a request is refused (``Policy.admit`` and the checks below): ``status``, error
    ``code`` and ``message``, extra response ``headers`` (``WWW-Authenticate``, ...), and
    ``close``: True when the body may still be unread on the wire, so the connection is
    closed after the answer (``connection: close``)."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    close: bool = True

    def body(self) -> bytes:
        """The JSON error body: ``{"error": {"code", "message", "field": null}}``."""
        doc = {"error": {"code": self.code, "message": self.message, "field": None}}
        return json.dumps(doc).encode()


Admit = Callable[[Scope], Refusal | None]
"""A check of a request's head, before its body is read: None lets it in."""


@dataclass(frozen=True)
class Policy:
    """What ``guarded`` enforces on one listener.

    ``max_body`` bytes; ``body_timeout`` seconds for the whole body;
    ``allowed_hosts`` lower-case host names without port (None: no Host
    check, for unix sockets); ``json_mutations`` and ``same_origin`` as in
    the module doc; ``admit``, when set, sees every request's head first (it
    runs on the event loop: it must be quick).
    """

    max_body: int = 1 * MiB
    body_timeout: float = 30.0
    allowed_hosts: frozenset[str] | None = None
    json_mutations: bool = False
    same_origin: bool = False
    admit: Admit | None = None


def browser_policy(extra_hosts: frozenset[str] = frozenset(), max_body: int = 1 * MiB) -> Policy:
    """The policy for a surface a browser talks to: loopback names plus ``extra_hosts``."""
    return Policy(
        max_body=max_body,
        allowed_hosts=LOOPBACK_HOSTS | {h.lower() for h in extra_hosts},
        json_mutations=True,
        same_origin=True,
    )


def disconnected(scope: Scope) -> asyncio.Event:
    """An event set when this request's client has gone away (or its response is done).

    Only for requests that came through ``guarded`` or hivehttp's fast routes (whose scope
    holds the server's ``Gone`` event alone); raises ``KeyError`` otherwise. Long polls and
    streams wait on it to give up early.
    """
    watch = scope.get(_DISCONNECTED)
    if watch is None:
        gone = scope[GONE]
        assert isinstance(gone, Gone)
        return gone
    assert isinstance(watch, _DisconnectWatch)
    return watch.start()


class _DisconnectWatch:
    """Watches ``receive`` for ``http.disconnect``, started only when somebody asks.

    Most requests never wait on their client, so the watcher task is made lazily.
    """

    def __init__(self, receive: Receive, gone: asyncio.Event | None = None) -> None:
        self._receive = receive
        # the server's own event (set on connection loss) when it offers one: no task needed
        self._served = gone is not None
        self.gone = gone if gone is not None else asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Event:
        if self._task is None and not self._served and not self.gone.is_set():
            self._task = asyncio.get_running_loop().create_task(self._watch())
        return self.gone

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


Headers = list[tuple[bytes, bytes]]
"""A request's headers: lower-case names, as hivehttp's server hands them over."""


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in ``headers``, else None."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def split_host(value: str) -> tuple[str, str]:
    """``"Example.org:7000"`` → ``("example.org", "7000")``; IPv6 in brackets kept whole."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, ""
        host, rest = value[: end + 1], value[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else ""
    host, _, port = value.partition(":")
    return host, port


async def _refuse(send: Send, no: Refusal) -> None:
    body = no.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *no.headers,
    ]
    if no.close:
        # an unread body may still be on the wire: never reuse this connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": no.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _check_host(headers: Headers, policy: Policy) -> str | None:
    if policy.allowed_hosts is None:
        return None
    raw = header(headers, b"host")
    if raw is None:
        return "a Host header is required"
    host, _ = split_host(raw.decode("latin-1"))
    if host not in policy.allowed_hosts:
        return (
            f"Host {host!r} is not one this server answers to "
            f"(allowed: {', '.join(sorted(policy.allowed_hosts))})"
        )
    return None


def _check_origin(headers: Headers) -> str | None:
    site = header(headers, b"sec-fetch-site")
    if site is not None and site.lower() not in (b"same-origin", b"none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site.decode('latin-1')})"
    origin = header(headers, b"origin")
    if origin is None or origin == b"null":
        # browsers send Origin on every cross-origin POST; "null" comes from sandboxed
        # frames and file: pages, which are never the operator's own page
        return None if origin is None else "requests from an opaque origin are refused"
    host = header(headers, b"host") or b""
    parts = urlsplit(origin.decode("latin-1"))
    if parts.netloc.lower() != host.decode("latin-1").strip().lower():
        return f"cross-origin request refused (Origin: {origin.decode('latin-1')})"
    return None


def _is_json(headers: Headers) -> bool:
    ctype = header(headers, b"content-type")
    if ctype is None:
        return False
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


def check_length(headers: Headers, policy: Policy) -> Refusal | None:
    """Check 4's head half: a ``Content-Length`` that is not a number (400) or over
    ``policy.max_body`` (413), refused before one byte of the body is read."""
    length_raw = header(headers, b"content-length")
    if length_raw is None:
        return None
    if not length_raw.strip().isdigit():
        return Refusal(400, "invalid", "Content-Length is not a number")
    if int(length_raw) > policy.max_body:
        return Refusal(
            413,
            "too_large",
            f"request body is {int(length_raw)} bytes; the limit is {policy.max_body}",
        )
    return None


def body_too_large(policy: Policy) -> Refusal:
    """Check 4: a (chunked) body that grew past ``policy.max_body`` (413)."""
    return Refusal(413, "too_large", f"request body is over the limit of {policy.max_body} bytes")


def body_too_slow(policy: Policy) -> Refusal:
    """Check 4: a body that took longer than ``policy.body_timeout`` to arrive (408)."""
    return Refusal(408, "timeout", f"request body took longer than {policy.body_timeout:g} s")


def check_request(method: str, headers: Headers, policy: Policy) -> Refusal | None:
    """Checks 1-3, made once the body has been read (so a refusal leaves the connection
    usable): ``Host`` (403 ``bad_host``), then for a mutation the origin (403
    ``cross_site``) and the media type (415)."""
    problem = _check_host(headers, policy)
    if problem:
        return Refusal(403, "bad_host", problem, close=False)
    if method in MUTATING:
        if policy.same_origin and (problem := _check_origin(headers)):
            return Refusal(403, "cross_site", problem, close=False)
        if policy.json_mutations and not _is_json(headers):
            return Refusal(
                415, "unsupported_media_type", "send the body as application/json", close=False
            )
    return None


def guarded(app: Any, policy: Policy) -> ASGIApp:
    """``app`` (any ASGI 3 app, e.g. a ``falcon.asgi.App``) behind the checks of ``policy``
    (see the module doc)."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if GONE not in scope:
            # ASGI allows any iterable here; the checks below and the app both read it
            # (hivehttp's own server already hands over a list of bytes pairs)
            scope["headers"] = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        if policy.admit is not None and (no := policy.admit(scope)) is not None:
            # the body, if any, stays unread on the wire: the connection is closed
            await _refuse(send, no if no.close else _closing(no))
            return
        headers = scope["headers"]
        if (no := check_length(headers, policy)) is not None:
            await _refuse(send, no)
            return
        # the body (bounded in size and time) is read before the other checks, so that a
        # refusal leaves the connection clean: the client is never cut off mid-send
        try:
            if scope.get(BODY_READ):
                body = await _read_body(receive, policy.max_body)  # already here: no wait
            else:
                # asyncio.timeout, not wait_for: wait_for wraps the read in a task of its
                # own, a measurable cost on every request
                async with asyncio.timeout(policy.body_timeout):
                    body = await _read_body(receive, policy.max_body)
        except _TooLarge:
            await _refuse(send, body_too_large(policy))
            return
        except TimeoutError:
            await _refuse(send, body_too_slow(policy))
            return
        except _Gone:
            return
        if (no := check_request(scope["method"], headers, policy)) is not None:
            await _refuse(send, no)
            return

        gone = scope.get(GONE)
        watch = _DisconnectWatch(receive, gone if isinstance(gone, asyncio.Event) else None)
        scope[_DISCONNECTED] = watch
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect":
                watch.gone.set()
            return message

        try:
            await app(scope, replay, send)
        finally:
            await watch.close()

    guard.__wrapped__ = app  # type: ignore[attr-defined]  # the route lookup of observe.py
    guard.policy = policy  # type: ignore[attr-defined]  # the server's fast routes apply it too
    return guard


def _closing(no: Refusal) -> Refusal:
    return Refusal(no.status, no.code, no.message, no.headers, close=True)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        if chunk:
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
