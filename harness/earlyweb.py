"""The web UI's unix socket from the first milliseconds of ``hyperhive-agent serve``.

Importing :mod:`hivehttp` (uvicorn, falcon, asyncio) costs ~100 ms of CPU, and on a
loaded host most of an approval's push → web UI answering was that import. So
``python -m harness serve`` (``harness/__main__.py``; ``hyperhive-agent serve`` in
``harness.cli.main``) opens the web UI's unix socket here first, with the standard
library only (``socket``, ``threading``, ``json``), and answers in a thread:

- ``GET`` / ``HEAD`` ``/api/state``: the starting document (``"status": "starting"``,
  every key of ``docs/web-ui.md``'s state document, :func:`starting_state`);
- ``GET`` / ``HEAD`` ``/`` and ``/static/<asset>``: the page and its assets;

each with ``Connection: close`` (:func:`early_answer`, shared with
:class:`harness.webstart.LateApp`, which answers the same once ``hivehttp`` serves).
Any other request — another method or path, a body, an ``Upgrade``, bytes pipelined
after the head — is held with the bytes read so far until the real server listens on
this same socket (:meth:`EarlyWeb.handover` gives it the listening socket, which
``hivehttp.adopt_unix`` serves without refusing anyone in between;
:meth:`EarlyWeb.served` says it does). Then it is relayed byte for byte over a new
connection to the socket, so hivehttp's guards, the ``LateApp`` and the real app
judge it as if it had come a moment later. Held longer than ``WAIT`` seconds, or
when the real server could not listen: 503 ``starting``.

Bounds (the socket is mode 0600: only the agent's own user and the controller's
dashboard proxy can connect; still, nothing here may stop the harness): a request
head must arrive within ``HEAD_DEADLINE`` seconds and fit in ``MAX_HEAD`` bytes
(else 408 / 431, then closed), at most ``MAX_CONNS`` connections are handled at once
(more: 503, closed).

When the socket cannot be taken here (a live server answers on it — the previous
harness during a restart — the path is not a socket, too long, or any ``OSError``),
nothing is opened and :class:`harness.httpserve.WebServer` binds it as before
(retrying while the old process holds it).
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Mapping
from typing import Any

STARTING = "starting"
"""The ``status`` of ``GET /api/state`` before the turn loop is built."""
ASSETS = {
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
    "index.html": b"text/html; charset=utf-8",
}  # the same types as harness.web.ASSETS (a test checks they agree)
HEAD_DEADLINE = 10.0
"""Seconds a client has to send its whole request head."""
MAX_HEAD = 16 * 1024
"""Bytes a request head may have (more: 431)."""
MAX_CONNS = 64
"""Connections handled (answered, held or relayed) at once; more get a 503."""
WAIT = 30.0
"""Seconds a request is held for the real server before a 503 ``starting``."""
SUN_PATH_MAX = 107
"""Longest unix socket path the kernel accepts (as ``hivehttp.server.SUN_PATH_MAX``)."""
_ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
_REASONS = {200: "OK", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}  # fmt: skip

Answer = tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]
"""``(status, content type, body, extra headers)`` of an early answer."""


def starting_state(agent: str, flavor: str, since: float) -> dict[str, Any]:
    """The ``GET /api/state`` document while starting: every key of the contract, no data.

    ``since`` (unix seconds) is when the harness started."""
    return {
        "agent": agent,
        "flavor": flavor,
        "model": None,
        "settings_model": None,
        "model_override": None,
        "turn_state": "idle",
        "turn_state_since": since,
        "last_turn_ms": None,
        "usage": None,
        "context_tokens": None,
        "status": STARTING,
        "status_detail": "the harness is starting",
        "needs_login": False,
        "login": {
            "needs_login": False,
            "reason": None,
            "source": None,
            "stored": None,
            "session": None,
        },
        "plugins": None,
        "turn_timeout_seconds": None,
        "partial": None,
        "dashboard_url": None,
        "inbox": None,
        "inbox_status": None,
        "last_event_id": 0,
        "meta_commit": None,
        "hyperhive_version": None,
        "extra_files": [],
    }


_asset_cache: dict[str, bytes] = {}


def asset(name: str) -> bytes:
    """The bytes of ``harness/assets/<name>`` (one of ``ASSETS``), read once."""
    data = _asset_cache.get(name)
    if data is None:
        with open(os.path.join(_ASSET_DIR, name), "rb") as fh:
            data = _asset_cache[name] = fh.read()
    return data


def early_answer(method: str, path: str, agent: str, flavor: str, since: float) -> Answer | None:
    """What a harness still starting answers to ``method path`` (the path without its
    query), or None when the request must wait for the real app."""
    if method not in ("GET", "HEAD"):
        return None
    path = path.rstrip("/") or "/"
    if path == "/api/state":
        body = json.dumps(starting_state(agent, flavor, since)).encode()
        return 200, b"application/json", body, ()
    name = "index.html" if path == "/" else path.removeprefix("/static/")
    if name in ASSETS and (path == "/" or path.startswith("/static/")):
        extra = ((b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff"))
        return 200, ASSETS[name], asset(name), extra
    return None


def error_body(code: str, message: str) -> bytes:
    """The JSON error document every hyperhive surface answers (``field`` null)."""
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


def _response(answer: Answer, head_only: bool = False) -> bytes:
    status, ctype, body, extra = answer
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}".encode(),
             b"content-type: " + ctype, b"content-length: " + str(len(body)).encode()]  # fmt: skip
    lines += [k + b": " + v for k, v in extra]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


def _starting_503() -> bytes:
    body = error_body(STARTING, "the harness is still starting; try again")
    return _response((503, b"application/json", body, ()))


_BODY_HEADERS = (b"content-length", b"transfer-encoding", b"upgrade", b"expect")


def parse_head(head: bytes) -> tuple[str, str] | None:
    """``(method, path)`` of a request head this module may answer itself, or None
    (malformed, not HTTP/1.x, an absolute-form target, a body or an upgrade announced)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if not parts[1].startswith(b"/"):
        return None
    for line in lines[1:]:
        if line.partition(b":")[0].strip().lower() in _BODY_HEADERS:
            return None
    try:
        return parts[0].decode("ascii"), parts[1].partition(b"?")[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def socket_path(environ: Mapping[str, str]) -> str:
    """The web UI's unix socket, as ``harness.config.web_socket`` names it: absolute
    ``HYPERHIVE_WEB_SOCKET``, else ``web.sock`` beside ``HYPERHIVE_SOCKET``."""
    given = environ.get("HYPERHIVE_WEB_SOCKET") or os.path.join(
        os.path.dirname(environ.get("HYPERHIVE_SOCKET", "/run/hive/mcp.sock")), "web.sock"
    )
    return os.path.abspath(given)


def _take_path(path: str) -> bool:
    """True when ``path`` is free to bind (a stale socket file nobody answers on is removed);
    False when a live server answers there or the path is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISSOCK(st.st_mode):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # refused: stale
        return True
    finally:
        probe.close()
    return False


class EarlyWeb:
    """The web UI's listening unix socket, answered here until :meth:`handover`.

    Built by :meth:`open`; :meth:`start` runs the accept thread. ``agent`` / ``flavor``
    name the agent in the starting state."""

    def __init__(self, sock: socket.socket, path: str, agent: str, flavor: str) -> None:
        self.sock = sock
        self.path = path
        self.agent = agent
        self.flavor = flavor
        self.since = time.time()
        self._inode = os.stat(path).st_ino
        self._stop_r, self._stop_w = os.pipe()
        self._served = threading.Event()
        self._target_ok = False
        self._slots = threading.BoundedSemaphore(MAX_CONNS)
        self._thread = threading.Thread(target=self._accept_loop, name="web-ui-early", daemon=True)
        self._handed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, environ: Mapping[str, str]) -> EarlyWeb | None:
        """Bind the web UI's socket named by ``environ`` (mode 0600, parent made 0700);
        None when it cannot be taken here (see the module docstring) or ``environ``
        does not name an agent (``serve`` then reports that)."""
        flavor = environ.get("HYPERHIVE_FLAVOR", "agent")
        agent = environ.get("HYPERHIVE_AGENT") or ("manager" if flavor == "manager" else "")
        if flavor not in ("agent", "manager") or not agent:
            return None
        path = socket_path(environ)
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            if not _take_path(path):
                sock.close()
                return None
            # bound under a umask that already leaves 0600: never open to others, not even
            # before the chmod (as hivehttp.serve_unix binds it)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            sock.listen(128)
            sock.setblocking(False)
            return cls(sock, path, agent, flavor)
        except OSError:
            sock.close()
            return None

    def start(self) -> EarlyWeb:
        """Start answering (a daemon thread); returns ``self``."""
        self._thread.start()
        return self

    def handover(self) -> socket.socket:
        """Stop accepting and return the listening socket (still bound and listening:
        connections arriving now wait in its backlog). Call once, then :meth:`served`."""
        with self._lock:
            if self._handed:
                raise RuntimeError("the early web UI socket was already handed over")
            self._handed = True
        self._stop_accepting()
        return self.sock

    def served(self, ok: bool) -> None:
        """The real server listens on the socket (``ok``) or will not: held requests are
        relayed to it now, or answered 503."""
        self._target_ok = ok
        self._served.set()

    def close(self) -> None:
        """Give up the socket without handing it over (``serve`` could not start): close
        it, remove its file, answer held requests 503. Idempotent."""
        with self._lock:
            handed, self._handed = self._handed, True
        if handed:
            return
        self._stop_accepting()
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.served(False)

    def _stop_accepting(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread.ident is not None:
            self._thread.join()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # out of descriptors: let the backlog wait a little
                time.sleep(0.05)
                continue
            if not self._slots.acquire(blocking=False):
                try:
                    conn.settimeout(1.0)
                    conn.sendall(_starting_503())
                except OSError:
                    pass
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            buf = self._read_head(conn)
            if buf is None:
                return
            head, _, rest = buf.partition(b"\r\n\r\n")
            req = None if rest else parse_head(head)
            answer = early_answer(*req, self.agent, self.flavor, self.since) if req else None
            if answer is not None and req is not None:
                conn.sendall(_response(answer, head_only=req[0] == "HEAD"))
                return
            self._relay(conn, buf)
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()

    @staticmethod
    def _read_head(conn: socket.socket) -> bytes | None:
        """The bytes up to the end of the head (and any after it), or None (answered or gone)."""
        deadline = time.monotonic() + HEAD_DEADLINE
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                body = error_body("head_too_large", f"request head over {MAX_HEAD} bytes")
                conn.sendall(_response((431, b"application/json", body, ())))
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                body = error_body("head_timeout", "the request head took too long")
                conn.sendall(_response((408, b"application/json", body, ())))
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return None
            buf += chunk
        return buf

    def _relay(self, conn: socket.socket, buf: bytes) -> None:
        """Hand the request to the real server: wait for it, then copy both ways."""
        if not self._served.wait(WAIT) or not self._target_ok:
            conn.settimeout(5.0)
            conn.sendall(_starting_503())
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
            up.settimeout(5.0)
            up.connect(self.path)
            up.sendall(buf)
            _pump(conn, up)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions ended (EOF or an error)."""
    a.settimeout(None)
    b.settimeout(None)
    peer = {a.fileno(): b, b.fileno(): a}
    src = {a.fileno(): a, b.fileno(): b}
    poller = select.poll()
    for fd in peer:
        poller.register(fd, select.POLLIN)
    open_ = set(peer)
    while open_:
        for fd, _ in poller.poll():
            data = src[fd].recv(65536)
            if data:
                peer[fd].sendall(data)
                continue
            poller.unregister(fd)
            open_.discard(fd)
            try:
                peer[fd].shutdown(socket.SHUT_WR)
            except OSError:
                return


_started: EarlyWeb | None = None


def start(environ: Mapping[str, str]) -> EarlyWeb | None:
    """Open and start this process's early web UI (once; see :meth:`EarlyWeb.open`).
    :func:`take` hands it to ``harness.serve.main``."""
    global _started
    if _started is None:
        _started = EarlyWeb.open(environ)
        if _started is not None:
            _started.start()
    return _started


def take() -> EarlyWeb | None:
    """The early web UI :func:`start` opened, if any; it is the caller's from now on."""
    global _started
    early, _started = _started, None
    return early
