"""The agent web UI's listeners on :mod:`hivehttp`: its unix socket, and TCP when opted in.

:class:`WebServer` opens one listener in a background thread and keeps trying
while the address is held by a live process (the old harness not gone yet
during a restart: ``hivehttp.SocketInUse`` on the unix socket, ``EADDRINUSE``
on TCP), every ``retry_interval`` seconds until it frees up or
:meth:`WebServer.stop` is called — logged once, not per attempt. A stale
socket file (nobody answers) is replaced at once by ``hivehttp.serve_unix``.

The unix socket (mode 0600) needs no credential: only the agent's own user (in
its sandbox) and the controller's dashboard proxy can open it. The TCP listener
is a surface a browser can reach, so it gets :func:`tcp_app`: every request must
carry ``Authorization: Bearer <the agent's credential>`` (401 otherwise), its
``Host`` must be a loopback name or one the operator allowed (403), and mutations
are same-origin JSON only (``hivehttp.browser_policy``).
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import hivehttp
from harness.earlyweb import EarlyWeb
from hivehttp.guard import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

RETRY_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
"""TCP bind failures worth waiting out (the previous process still holds the port)."""


@dataclass(frozen=True)
class UnixEndpoint:
    """Listen on the unix socket ``path`` (mode 0600)."""

    path: Path

    def describe(self) -> str:
        """``unix:<path>`` for logs and systemd status lines."""
        return f"unix:{self.path}"


@dataclass(frozen=True)
class TcpEndpoint:
    """Listen on ``host:port`` (``port`` 0: an ephemeral port, see ``WebServer.port``)."""

    host: str
    port: int

    def describe(self) -> str:
        """``host:port`` for logs and systemd status lines."""
        return f"{self.host}:{self.port}"


Endpoint = UnixEndpoint | TcpEndpoint


def _unauthorized(message: str) -> bytes:
    doc = {"error": {"code": "unauthorized", "message": message, "field": None}}
    return json.dumps(doc).encode()


def require_bearer(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` behind ``Authorization: Bearer <token>``: anything else is a 401 JSON error.

    The comparison is constant-time. ``WWW-Authenticate: Bearer`` tells a client what to send.
    """
    expected = f"Bearer {token}".encode()

    async def check(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = bytes(value)
                break
        if hmac.compare_digest(given, expected):
            await app(scope, receive, send)
            return
        body = _unauthorized(
            "send Authorization: Bearer <the agent's credential> (the TCP port of an agent UI "
            "is for tools that hold it; the operator uses the dashboard)"
            if not given
            else "the bearer token is not this agent's credential"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="hyperhive-agent"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return check


def tcp_app(app: ASGIApp, token: str) -> ASGIApp:
    """What the opt-in TCP listener serves: ``app`` behind :func:`require_bearer`."""
    return require_bearer(app, token)


def tcp_policy(endpoint: TcpEndpoint, extra_hosts: tuple[str, ...] = ()) -> hivehttp.Policy:
    """The TCP listener's policy: loopback ``Host`` names, the bind host when it is a name or
    a specific address, ``extra_hosts``; same-origin JSON-only mutations."""
    hosts = set(extra_hosts)
    if endpoint.host not in ("", "0.0.0.0", "::"):
        hosts.add(endpoint.host.lower() if ":" not in endpoint.host else f"[{endpoint.host}]")
    return hivehttp.browser_policy(frozenset(hosts))


UNIX_POLICY = hivehttp.Policy(json_mutations=True)
"""The unix listener: no Host check (no browser reaches it directly), JSON-only mutations."""


class WebServer:
    """Serve the ASGI ``app`` on ``endpoint`` with ``policy``, binding (with retry) in a thread.

    ``start()`` returns at once; ``wait_bound()`` says when it listens; ``port`` /
    ``path`` tell where. ``stop()`` closes it and every connection.

    ``early``: the unix socket, already bound and answered by :mod:`harness.earlyweb`
    since the process started; it is taken over (``hivehttp.adopt_unix``) instead of
    bound, and the requests it held are then relayed here.
    """

    def __init__(
        self,
        app: ASGIApp,
        endpoint: Endpoint,
        *,
        policy: hivehttp.Policy | None = None,
        retry_interval: float = 1.0,
        name: str = "web-ui",
        early: EarlyWeb | None = None,
    ) -> None:
        self.app = app
        self._early = early if isinstance(endpoint, UnixEndpoint) else None
        self.endpoint = endpoint
        self.policy = policy or (
            UNIX_POLICY if isinstance(endpoint, UnixEndpoint) else tcp_policy(endpoint)
        )
        self.retry_interval = retry_interval
        self.name = name
        self._listener: hivehttp.Listener | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int | None:
        """The bound TCP port (``None`` for a unix socket or before binding)."""
        return self._listener.port if self._listener is not None else None

    @property
    def path(self) -> Path | None:
        """The unix socket path (``None`` for TCP)."""
        return self.endpoint.path if isinstance(self.endpoint, UnixEndpoint) else None

    @property
    def listener(self) -> hivehttp.Listener | None:
        """The open listener, once bound."""
        return self._listener

    def describe(self) -> str:
        """Where it listens (the bound port once known)."""
        if isinstance(self.endpoint, TcpEndpoint) and self.port is not None:
            return f"{self.endpoint.host}:{self.port}"
        return self.endpoint.describe()

    def _open(self) -> hivehttp.Listener:
        ep = self.endpoint
        with self._lock:
            early, self._early = self._early, None
        if early is not None and isinstance(ep, UnixEndpoint):
            try:
                listener = hivehttp.adopt_unix(
                    self.app, early.handover(), ep.path, policy=self.policy, name=self.name
                )
            except BaseException:
                early.served(False)
                raise
            early.served(True)
            return listener
        if isinstance(ep, UnixEndpoint):
            return hivehttp.serve_unix(
                self.app, ep.path, perms=0o600, policy=self.policy, name=self.name
            )
        return hivehttp.serve_tcp(self.app, ep.host, ep.port, policy=self.policy, name=self.name)

    def _bind(self) -> hivehttp.Listener | None:
        announced = False
        while not self._stop.is_set():
            try:
                return self._open()
            except hivehttp.SocketInUse as exc:
                why = str(exc)
            except OSError as exc:
                if isinstance(exc, FileExistsError) or exc.errno not in RETRY_ERRNOS:
                    raise
                why = exc.strerror or str(exc)
            if not announced:
                log.warning("web UI: cannot listen on %s (%s); retrying every %.0f s",
                            self.endpoint.describe(), why, self.retry_interval)  # fmt: skip
                announced = True
            self._stop.wait(self.retry_interval)
        return None

    def _run(self) -> None:
        try:
            listener = self._bind()
        except Exception:
            log.exception("web UI: cannot listen on %s", self.endpoint.describe())
            self._bound.set()
            return
        with self._lock:
            if listener is not None and self._stop.is_set():  # stopped while binding
                listener.stop()
                listener = None
            self._listener = listener
        if listener is not None:
            log.info("web UI on %s", self.describe())
        self._bound.set()

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._thread is not None

    def start(self) -> None:
        """Start binding in a daemon thread (serving itself runs on the hivehttp loop)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wait_bound(self, timeout: float | None = None) -> bool:
        """Block until bound (or given up); True when serving."""
        self._bound.wait(timeout)
        return self._listener is not None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop retrying, close the listener and all its connections (open streams end)."""
        self._stop.set()
        with self._lock:
            listener, self._listener = self._listener, None
            early, self._early = self._early, None
        if early is not None:
            early.close()
        if listener is not None:
            listener.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
