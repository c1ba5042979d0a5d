"""HTTP + JSON over a unix socket or TCP: the client every hyperhive side uses.

``ApiClient(target)`` speaks to a unix socket (``target`` is its path:
``curl --unix-socket PATH http://localhost/status`` speaks to the same servers)
or to a TCP listener (``target`` is a URL, ``http://host:port`` or
``https://host:port``, optionally with a path prefix such as
``https://hive.example/api``): the agent API served on TCP for agents on other
machines (``HYPERHIVE_API_URL`` in the harness). Over ``https`` the server's
certificate is checked against the system's CAs, or against ``ca_file`` when
given (a self-signed or private CA); the host name must match. Everything
else (keep-alive, retries, long polls, streams, errors) is the same on both.
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
import ssl
import threading
import time
import urllib.parse
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


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: a unix socket ``path``, or TCP ``host``:``port`` (``tls``
    for https) with request paths under ``prefix``. ``host_header`` is what the requests
    name in ``Host`` (the TCP listeners check it against their allow-list); ``name`` is
    how errors name the endpoint (the path or the URL)."""

    name: str
    path: str | None = None
    host: str = ""
    port: int = 0
    tls: bool = False
    prefix: str = ""
    host_header: str = "localhost"


def parse_target(target: str) -> Endpoint:
    """``target`` as an ``Endpoint``: an ``http://`` / ``https://`` URL, else a socket path.

    Raises ``ValueError`` for a URL without a host, with a user name, query or
    fragment, or with a port out of range.
    """
    lowered = target[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        return Endpoint(name=target, path=target)
    parts = urllib.parse.urlsplit(target)
    if not parts.hostname:
        raise ValueError(f"{target!r}: the URL names no host")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{target!r}: the URL may not carry a user, a query or a fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{target!r}: the port is not a number from 1 to 65535") from None
    tls = parts.scheme.lower() == "https"
    port = port or (443 if tls else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    default = 443 if tls else 80
    return Endpoint(
        name=target,
        host=host,
        port=port,
        tls=tls,
        prefix=parts.path.rstrip("/"),
        host_header=shown if port == default else f"{shown}:{port}",
    )


class _Connection(http.client.HTTPConnection):
    """One connection to an ``Endpoint`` (unix socket, TCP, or TLS over TCP)."""

    def __init__(self, ep: Endpoint, timeout: float, context: ssl.SSLContext | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._ep = ep
        self._context = context

    def connect(self) -> None:
        ep = self._ep
        if ep.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(ep.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
            return
        tcp = socket.create_connection((ep.host, ep.port), timeout=self.timeout)
        try:
            # a request goes out as one write and waits for its answer: never hold it back
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.tls:
                assert self._context is not None
                tcp = self._context.wrap_socket(tcp, server_hostname=ep.host)
        except BaseException:
            tcp.close()
            raise
        self.sock = tcp

    def set_timeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def dropped(self) -> bool:
        """True when the server closed this idle connection (or sent something unasked)."""
        sock = self.sock
        if sock is None:
            return True
        try:
            poller = select.poll()  # not select(): no limit on the descriptor number
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            if not poller.poll(0):
                return False
        except (OSError, ValueError):
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return True
        # over TLS a readable socket may hold only protocol records (a TLS 1.3 session
        # ticket sent after the handshake): read them; only EOF or data means "do not reuse"
        try:
            sock.setblocking(False)
            try:
                sock.recv(1)
            finally:
                sock.settimeout(self.timeout)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
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


class ApiClient:
    """JSON client for one unix socket or one TCP listener (see the module doc).

    ``path`` is the socket path or the ``http(s)://`` URL (``ValueError`` for a
    malformed URL). ``timeout`` (seconds) bounds one request; long polls pass a
    larger one. ``sleep`` is injectable so tests of the backoff do not wait.
    ``token`` is the bearer credential sent with every request (None: none is
    sent, and the server answers 401). ``ca_file``: the CA bundle an ``https``
    server's certificate must chain to (default: the system's); ignored for
    other targets.
    """

    def __init__(
        self,
        path: str,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        keepalive: bool = True,
        token: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.path = path
        self.endpoint = parse_target(path)
        self.timeout = timeout
        self.keepalive = keepalive
        self.token = token
        self._sleep = sleep
        self._context: ssl.SSLContext | None = None
        if self.endpoint.tls:
            # made once: loading the CA bundle costs milliseconds
            self._context = ssl.create_default_context(cafile=ca_file)
        self._pool: list[tuple[_Connection, float]] = []
        self._pool_lock = threading.Lock()
        self.connections_opened = 0
        """How many connections this client opened (for tests and the benchmark)."""

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the idle connections (the client stays usable; it reconnects)."""
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn, _ in pool:
            conn.close()

    def _new(self, timeout: float) -> _Connection:
        self.connections_opened += 1
        return _Connection(self.endpoint, timeout, self._context)

    def _take(self, timeout: float) -> tuple[_Connection, bool]:
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
        return self._new(timeout), False

    def _give_back(self, conn: _Connection) -> None:
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
        ep = self.endpoint
        head = [
            f"{method} {ep.prefix}{url} HTTP/1.1",
            f"Host: {ep.host_header}",
            "Accept: application/json",
        ]
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
                conn, reused = self._new(timeout), False
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
        conn = _Connection(self.endpoint, timeout, self._context)
        try:
            headers = self._headers("text/event-stream")
            headers["Host"] = self.endpoint.host_header
            conn.request("GET", self.endpoint.prefix + url, headers=headers)
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


UnixClient = ApiClient
"""The name ``ApiClient`` had when it spoke only to unix sockets; both name the same class."""
