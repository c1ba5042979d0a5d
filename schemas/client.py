"""HTTP + JSON over a unix socket: the client every hyperhive side uses.

``curl --unix-socket PATH http://localhost/status`` speaks to the same servers.
Transport failures (connect refused, socket missing, connection reset) are
retried with backoff 2-4-8-16-30 s within a 60 s budget when ``retry=True``;
HTTP error statuses are never retried and raise ``ApiError``.

Connections are persistent (HTTP/1.1 keep-alive): a ``UnixClient`` keeps up
to ``POOL_SIZE`` idle connections and reuses one per request (each thread
takes its own, so a parked long poll never blocks another call). Before reuse
a connection is checked the way urllib3 does: one idle longer than
``MAX_IDLE_SECONDS`` or that the server closed (readable at EOF) is dropped
and a new one opened. A request that fails while being written on a reused
connection (the server closed it at that instant) is sent once more on a new
connection, which is safe: the server never read it. Any other failure is a
transport failure as above. Measured with ``bench/broker.py``: see
docs/broker.md.

Non-idempotent verbs (``send``, ``ask``, ``remind``, ``wake``) are only safe
to retry with an ``idempotency_key`` in the body: the controller may have
committed a request whose answer was lost.

Every hyperhive socket requires a credential: ``token`` is sent as
``Authorization: Bearer <token>`` on every request (the operator key for
``host.sock``, the agent's credential for its own socket). A 401 raises
``ApiError`` (status 401, code ``unauthorized``) whose message says which
credential the socket wants, and whether this client sent none.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0, 30.0)
RETRY_BUDGET = 60.0
POOL_SIZE = 4
"""Idle connections a ``UnixClient`` keeps for reuse."""
MAX_IDLE_SECONDS = 60.0
"""An idle connection older than this is not reused (the server closes them after 75 s)."""


class ApiError(Exception):
    """The server answered with an HTTP error status.

    ``status`` is the HTTP status (400, 403, 404, 409, ...), ``code`` the
    machine-readable error code from the JSON body, ``field`` the offending
    field when the server named one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Unreachable(ConnectionError):
    """The socket could not be reached (after retries, if any)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def set_timeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def dropped(self) -> bool:
        """True when the server closed this idle connection (or sent something unasked)."""
        if self.sock is None:
            return True
        try:
            poller = select.poll()  # not select(): no limit on the descriptor number
            poller.register(self.sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


_MAX_HEAD = 64 * 1024
"""Longest response head accepted (status line + headers)."""


@dataclass(frozen=True)
class _Response:
    """One parsed response: ``status``, lower-cased ``headers``, the whole ``body`` and
    whether the server will close the connection (``will_close``)."""

    status: int
    headers: dict[str, str]
    body: bytes
    will_close: bool


def _read_more(sock: socket.socket, buf: bytearray, got_any: bool) -> None:
    chunk = sock.recv(65536)
    if not chunk:
        if not got_any:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        raise http.client.IncompleteRead(bytes(buf))
    buf += chunk


def _read_response(sock: socket.socket, *, head: bool = False) -> _Response:
    """Read one whole response from ``sock``.

    The request went out as one write (``UnixClient._request_bytes``): http.client
    writes the head and the body in two ``send`` calls (two reads and two wake-ups
    for the server) and parses headers with the email package; this exchange costs
    about half the client CPU. Raises what http.client raises: ``RemoteDisconnected``
    (closed before any answer), ``IncompleteRead``, ``BadStatusLine``,
    ``LineTooLong``, and ``OSError`` / ``TimeoutError`` from the socket.
    """
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > _MAX_HEAD:
                raise http.client.LineTooLong("response head")
            _read_more(sock, buf, bool(buf))
            end = buf.find(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(lines[0])
        status = int(parts[1])
        if 100 <= status < 200:
            continue  # an interim answer (100 Continue): the real one follows
        break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    will_close = "close" in conn_tokens or (
        parts[0] == "HTTP/1.0" and "keep-alive" not in conn_tokens
    )
    if head or status in (204, 304):  # no body, whatever the headers say
        return _Response(status, headers, b"", will_close)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n")
            while eol < 0:
                _read_more(sock, buf, True)
                eol = buf.find(b"\r\n")
            size_text = bytes(buf[:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.IncompleteRead(bytes(body)) from None
            while len(buf) < eol + 2 + size + 2:
                _read_more(sock, buf, True)
            body += buf[eol + 2 : eol + 2 + size]
            del buf[: eol + 2 + size + 2]
            if size == 0:
                break  # trailers are not used by any hyperhive server
        return _Response(status, headers, bytes(body), will_close)
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        n = int(length)
        while len(buf) < n:
            _read_more(sock, buf, True)
        return _Response(status, headers, bytes(buf[:n]), will_close)
    while True:  # no length: the body runs to the end of the connection
        chunk = sock.recv(65536)
        if not chunk:
            return _Response(status, headers, bytes(buf), True)
        buf += chunk


@dataclass(frozen=True)
class Result:
    """A decoded response: ``data`` is the JSON body, ``retries`` the transport retries it took."""

    data: Any
    retries: int


class UnixClient:
    """JSON client for one unix socket.

    ``timeout`` (seconds) bounds one request; long polls pass a larger one.
    ``sleep`` is injectable so tests of the backoff do not wait. ``token`` is
    the bearer credential sent with every request (None: none is sent, and
    the socket answers 401).
    """

    def __init__(
        self,
        path: str,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        keepalive: bool = True,
        token: str | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.keepalive = keepalive
        self.token = token
        self._sleep = sleep
        self._pool: list[tuple[_UnixConnection, float]] = []
        self._pool_lock = threading.Lock()
        self.connections_opened = 0
        """How many connections this client opened (for tests and the benchmark)."""

    def __enter__(self) -> UnixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections (the client stays usable; it reconnects)."""
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn, _ in pool:
            conn.close()

    def _take(self, timeout: float) -> tuple[_UnixConnection, bool]:
        """A connection for one request and whether it is a reused one."""
        now = time.monotonic()
        while self.keepalive:
            with self._pool_lock:
                if not self._pool:
                    break
                conn, since = self._pool.pop()
            if now - since > MAX_IDLE_SECONDS or conn.dropped():
                conn.close()
                continue
            conn.set_timeout(timeout)
            return conn, True
        self.connections_opened += 1
        return _UnixConnection(self.path, timeout), False

    def _give_back(self, conn: _UnixConnection) -> None:
        with self._pool_lock:
            if len(self._pool) < POOL_SIZE:
                self._pool.append((conn, time.monotonic()))
                return
        conn.close()

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _error(self, status: int, raw: bytes, data: Any) -> ApiError:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        message = str(err.get("message", raw[:500].decode(errors="replace")))
        if status == 401 and self.token is None:
            message = f"no credential was sent to {self.path}: {message}"
        elif status == 401:
            message = f"the credential sent to {self.path} was refused: {message}"
        return ApiError(status, str(err.get("code", "error")), message, err.get("field"))

    def _request_bytes(self, method: str, url: str, payload: bytes | None) -> bytes:
        if any(c in url for c in " \r\n") or not url.isascii():
            raise ValueError(f"not a request path: {url!r}")
        head = [f"{method} {url} HTTP/1.1", "Host: localhost", "Accept: application/json"]
        if self.token is not None:
            head.append(f"Authorization: Bearer {self.token}")
        if payload is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if not self.keepalive:
            head.append("Connection: close")
        return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (payload or b"")

    def _once(self, method: str, url: str, body: Any, timeout: float) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        request = self._request_bytes(method, url, payload)
        conn, reused = self._take(timeout)
        keep = False
        try:
            if conn.sock is None:
                conn.connect()
            try:
                conn.sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the server closed the idle connection as we wrote: it never read this
                conn.close()
                conn, reused = _UnixConnection(self.path, timeout), False
                self.connections_opened += 1
                conn.connect()
                conn.sock.sendall(request)
            resp = _read_response(conn.sock, head=method == "HEAD")
            raw = resp.body
            keep = self.keepalive and not resp.will_close
        finally:
            if keep:
                self._give_back(conn)
            else:
                conn.close()
        if resp.status >= 400:
            try:
                err_doc: Any = json.loads(raw) if raw else None
            except ValueError:
                err_doc = None
            raise self._error(resp.status, raw, err_doc)
        data: Any = json.loads(raw) if raw else None
        return data

    def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        retry: bool = False,
    ) -> Result:
        """Send one request; return the decoded JSON body and the retry count.

        Raises ``ApiError`` on an HTTP error status and ``Unreachable`` when the
        socket cannot be reached (after the retry budget, if ``retry``).
        """
        t = self.timeout if timeout is None else timeout
        retries = 0
        deadline = time.monotonic() + RETRY_BUDGET
        while True:
            try:
                return Result(self._once(method, url, body, t), retries)
            except ApiError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                if not retry or retries >= len(RETRY_DELAYS):
                    raise Unreachable(f"{self.path}: {exc}") from exc
                delay = RETRY_DELAYS[retries]
                if time.monotonic() + delay > deadline:
                    raise Unreachable(
                        f"{self.path}: {exc} (gave up after {retries} retries)"
                    ) from exc
                self._sleep(delay)
                retries += 1

    def get(self, url: str, **kw: Any) -> Any:
        """GET ``url`` and return the decoded JSON body."""
        return self.call("GET", url, **kw).data

    def post(self, url: str, body: Any = None, **kw: Any) -> Any:
        """POST a JSON ``body`` to ``url`` and return the decoded JSON body."""
        return self.call("POST", url, {} if body is None else body, **kw).data

    def stream(self, url: str, timeout: float = 3600.0) -> Iterator[tuple[str, str]]:
        """Follow a ``text/event-stream`` at ``url``; yields ``(event, data)`` pairs.

        Heartbeat comments are skipped. Ends when the server closes the stream.
        """
        conn = _UnixConnection(self.path, timeout)
        try:
            conn.request("GET", url, headers=self._headers("text/event-stream"))
            resp = conn.getresponse()
            if resp.status >= 400:
                raw = resp.read()
                try:
                    err_doc: Any = json.loads(raw) if raw else None
                except ValueError:
                    err_doc = None
                raise self._error(resp.status, raw, err_doc)
            event, data = "message", list[str]()
            while True:
                line = resp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\r\n")
                if not text:
                    if data:
                        yield event, "\n".join(data)
                    event, data = "message", list[str]()
                elif text.startswith(":"):
                    continue
                elif text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("data:"):
                    data.append(text[5:].removeprefix(" "))
        finally:
            conn.close()
