"""meta.git over git's smart HTTP protocol, behind the operator key.

``git push`` approvals (``git tag approved/3 proposal/3 && git push``) need a
path to ``meta.git``; on one machine it is the file system, from another
machine it is this listener (config ``git: {listen: HOST:PORT}``, off by
default). ``make_git_app(layout, operator_key)`` is an ASGI app that runs
``git http-backend`` (git's own CGI program) for each request, so clone,
fetch and push behave exactly as over ``file://``: receive-pack runs the
repository's ``pre-receive`` hook (all-or-nothing refusal of forged refs)
and ``post-receive`` hook (the poke that starts a pass), and their output
reaches the pusher's terminal.

Who may: the operator, and the manager in its own namespace. Every request needs
a credential, as ``Authorization: Bearer <key>`` (``git -c http.extraHeader=
"Authorization: Bearer $(cat operator.key)" push``) or as the password of HTTP
Basic auth (any user name; what git's credential helpers store):

- the operator key: everything the hooks allow (approvals, main);
- the manager's own agent credential (``AgentCredentials``): fetch, and push to
  ``refs/hyperhive/manager/*`` only. The hooks are told who pushes
  (``HYPERHIVE_PUSHER``) and ``controller.hooks.pre_receive`` refuses any other
  ref in a manager's push. This is how a manager that is not on the controller's
  disk (the kubernetes runtime) hands over the commit ``request_apply_commit``
  proposes (docs/approvals.md "A remote manager's commits").

Anything else (no credential, a wrong one, any other agent's) is 401 with
``WWW-Authenticate: Basic`` (so git asks its credential helper), before git runs.
The compares are constant-time. Refusals are logged at most once per 10 s
(``controller.auth.refusals``).

What is served: only the three smart-protocol endpoints of ``/meta.git``
(``GET /meta.git/info/refs?service=git-upload-pack|git-receive-pack``,
``POST /meta.git/git-upload-pack``, ``POST /meta.git/git-receive-pack``); the
dumb protocol's file paths, other repositories and anything else are 404.
The body (at most ``MAX_PUSH_BYTES``) is read by ``hivehttp`` before the app
runs, and the pack it carries is held to the same size once inflated
(``receive.maxInputSize``: a gzip body is inflated by ``git http-backend``);
git's answer is read whole, then sent (meta.git holds manifests: small).

The manager's pushes are held to a quota (:class:`PushQuota`): at most
``MANAGER_PUSHES_PER_HOUR`` pushes and ``MANAGER_PUSH_BYTES_PER_HOUR`` bytes of body
(a gzip body counts as ``MAX_PUSH_BYTES``: it may inflate to that) in any hour; over
it, a push is 429 with ``Retry-After`` before its body is read. The hook caps its refs
(``MAX_MANAGER_REFS``) but not the objects a dropped or handed-over ref leaves behind,
so after a manager's push, at most once per ``GC_EVERY`` seconds, ``git gc
--prune=<GC_PRUNE_AGE> ago`` runs in the background (objects younger than that stay:
a push in flight is never pruned from under its ref update).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from controller.auth.agents import AgentCredentials
from controller.auth.bearer import bearer_token
from controller.auth.refusals import RefusalLog
from controller.paths import Layout
from hivehttp import LOOPBACK_HOSTS, Limits, Policy, Refusal
from hivehttp.guard import Admit, MiB, Receive, Scope, Send
from schemas.names import MANAGER

log = logging.getLogger(__name__)

REPO = "meta.git"
"""The one repository served, as its URL path names it (``http://HOST:PORT/meta.git``)."""

MAX_PUSH_BYTES = 64 * MiB
"""Largest request body (a push's pack); larger is 413 before it is read."""

BACKEND_TIMEOUT = 300.0
"""Seconds ``git http-backend`` (with the push hooks) may run for one request."""

GIT_LIMITS = Limits(max_connections=64, per_client=16)
"""Connection caps of the git listener: the operator's git, a few requests at a time."""

MANAGER_PUSHES_PER_HOUR = 60
"""Pushes the manager's credential may make in any hour (a hand-over is one push)."""
MANAGER_PUSH_BYTES_PER_HOUR = 2 * MAX_PUSH_BYTES
"""Bytes of push bodies the manager's credential may send in any hour (manifests are KiB)."""
GC_EVERY = 3600.0
"""Seconds between two ``git gc --prune`` runs started by the manager's pushes."""
GC_PRUNE_AGE = "1.hour.ago"
"""Unreachable objects younger than this survive a gc (``git gc --prune=<date>``)."""
HOUR = 3600.0


class PushQuota:
    """A sliding hour of ``(time, bytes)`` pushes: ``refuse()`` says how many seconds until
    one more push fits (None: it does now), ``charge(n)`` counts one push of ``n`` bytes.
    ``clock`` is monotonic seconds. Thread-safe."""

    def __init__(
        self,
        pushes: int = MANAGER_PUSHES_PER_HOUR,
        size: int = MANAGER_PUSH_BYTES_PER_HOUR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pushes = pushes
        self.size = size
        self.clock = clock
        self._log: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - HOUR:
            self._log.popleft()

    def refuse(self) -> float | None:
        """Seconds until the quota lets one more push in, or None when it does now."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            used = sum(n for _, n in self._log)
            if len(self._log) < self.pushes and used < self.size:
                return None
            # the oldest pushes must leave the hour until both counts are under their cap
            freed, wait = used, 0.0
            for i, (at, n) in enumerate(self._log):
                freed -= n
                wait = at + HOUR - now
                if len(self._log) - i - 1 < self.pushes and freed < self.size:
                    break
            return max(1.0, wait)

    def charge(self, size: int) -> None:
        """Count one push of ``size`` bytes now."""
        with self._lock:
            self._log.append((self.clock(), size))


_SERVICES = frozenset({"git-upload-pack", "git-receive-pack"})
_UNAUTHORIZED = (
    "meta.git needs the operator key (or the manager's own credential, for its "
    "refs/hyperhive/manager/* namespace): 'Authorization: Bearer <key>' "
    "(git -c http.extraHeader=...) or HTTP Basic auth with the key as password"
)
PUSHER = "hyperhive.pusher"
"""Scope key: who ``GitHttp.admit`` found the request's credential to be (``operator`` or
``manager``); handed to the hooks as ``HYPERHIVE_PUSHER``."""
_CHALLENGE = ((b"www-authenticate", b'Basic realm="hyperhive meta.git"'),)


def git_policy(extra_hosts: frozenset[str] = frozenset(), admit: Admit | None = None) -> Policy:
    """The ``hivehttp`` policy of the git listener: ``admit`` (``GitHttp.admit``: the
    operator key, checked before a byte of the body is read, so that nobody else can make
    the controller buffer a 64 MiB push), the ``Host`` allow-list (loopback names plus
    ``extra_hosts``), ``MAX_PUSH_BYTES`` bodies, and same-origin mutations.

    Git's bodies are not JSON, so mutations are not held to JSON. git sends no
    ``Origin`` and no ``Sec-Fetch-Site``; a browser does, so a cross-site form that
    rides on Basic credentials a browser remembered is refused (403).
    """
    return Policy(
        max_body=MAX_PUSH_BYTES,
        body_timeout=120.0,
        allowed_hosts=LOOPBACK_HOSTS | {h.lower() for h in extra_hosts},
        same_origin=True,
        admit=admit,
    )


@dataclass(frozen=True)
class _Cgi:
    """What ``git http-backend`` answered: ``status``, ``headers`` and ``body``."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def presented_key(authorization: str | None) -> str | None:
    """The secret an ``Authorization`` header presents: a bearer token, or the password of
    HTTP Basic auth (any user name); None for anything else or a malformed header."""
    token = bearer_token(authorization)
    if token is not None or not authorization:
        return token
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not rest.strip() or len(rest) > 1024:
        return None
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


def route(method: str, path: str, query: str) -> str | None:
    """The ``PATH_INFO`` to hand ``git http-backend`` for a request, or None (404).

    Only the smart protocol's endpoints of ``/meta.git`` pass: ``GET
    /meta.git/info/refs`` with ``service=git-upload-pack|git-receive-pack``, ``POST
    /meta.git/git-upload-pack`` and ``POST /meta.git/git-receive-pack``.
    """
    if method == "GET" and path == f"/{REPO}/info/refs":
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        return path if params.get("service") in _SERVICES else None
    if method == "POST" and path.startswith(f"/{REPO}/"):
        service = path[len(REPO) + 2 :]
        return path if service in _SERVICES else None
    return None


def parse_cgi(raw: bytes) -> _Cgi:
    """A CGI program's output (headers, a blank line, the body) as a response; ``Status:``
    gives the status (200 without it). Raises ``ValueError`` when there is no header end."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            head, body = raw[:end], raw[end + len(sep) :]
            break
    else:
        raise ValueError("git http-backend wrote no end of headers")
    status = 200
    headers: list[tuple[bytes, bytes]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if not name:
            continue
        if name == b"status":
            status = int(value.split(b" ", 1)[0])
        else:
            headers.append((name, value))
    return _Cgi(status, headers, body)


class GitHttp:
    """The ASGI app (see the module doc). ``backend`` is the ``git http-backend`` command."""

    def __init__(
        self,
        layout: Layout,
        operator_key: str,
        backend: tuple[str, ...] = ("git", "http-backend"),
        credentials: AgentCredentials | None = None,
    ) -> None:
        self.layout = layout
        self._key = operator_key.encode()
        self.backend = backend
        self.credentials = credentials
        self.refusals = RefusalLog("meta.git over HTTP")
        self.manager_quota = PushQuota()
        self._gc_at = -GC_EVERY
        self._gc_lock = threading.Lock()

    def who(self, authorization: str | None) -> str | None:
        """``"operator"`` for the operator key, ``"manager"`` for the manager's own
        credential (when ``credentials`` is given), else None (constant-time compares)."""
        key = presented_key(authorization)
        if key is None:
            return None
        if hmac.compare_digest(key.encode("utf-8", "replace"), self._key):
            return "operator"
        if self.credentials is not None and self.credentials.verify(MANAGER, key):
            return "manager"
        return None

    def authorized(self, authorization: str | None) -> bool:
        """True when the header presents the operator key (constant-time compare)."""
        return self.who(authorization) == "operator"

    def cgi_env(
        self, scope: Scope, path_info: str, body_len: int, pusher: str = "operator"
    ) -> dict[str, str]:
        """The CGI environment of one request: the controller's own environment (the hooks
        run ``python -m controller.hook`` with it) plus the request's variables."""
        client = scope.get("client")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_PROJECT_ROOT=str(self.layout.meta_git.parent),
            GIT_HTTP_EXPORT_ALL="1",
            # http-backend inflates a gzip body before receive-pack reads it: without a cap
            # on the pack itself, 64 MiB of gzip can land as gigabytes in meta.git
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="receive.maxInputSize",
            GIT_CONFIG_VALUE_0=str(MAX_PUSH_BYTES),
            PATH_INFO=path_info,
            REQUEST_METHOD=scope["method"],
            QUERY_STRING=bytes(scope.get("query_string", b"")).decode("latin-1"),
            REMOTE_USER=pusher,
            HYPERHIVE_PUSHER=pusher,
            REMOTE_ADDR=str(client[0]) if client else "",
            CONTENT_TYPE=_header(scope, b"content-type") or "",
            SERVER_PROTOCOL="HTTP/1.1",
            GATEWAY_INTERFACE="CGI/1.1",
        )
        if scope["method"] == "POST":
            env["CONTENT_LENGTH"] = str(body_len)
        for name, var in ((b"content-encoding", "HTTP_CONTENT_ENCODING"),
                          (b"git-protocol", "GIT_PROTOCOL")):  # fmt: skip
            value = _header(scope, name)
            if value:
                env[var] = value
        return env

    def run_backend(self, env: dict[str, str], body: bytes) -> _Cgi:
        """Run ``git http-backend`` once (blocking: call it off the loop); its answer, or a
        502 when it fails or writes no headers."""
        try:
            proc = subprocess.run(
                self.backend,
                input=body,
                env=env,
                cwd=str(self.layout.meta_git),
                capture_output=True,
                timeout=BACKEND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("git http-backend failed: %s", exc)
            return _Cgi(502, [], b"")
        if proc.stderr:
            log.info("git http-backend: %s", proc.stderr.decode(errors="replace").strip()[:2000])
        try:
            return parse_cgi(proc.stdout)
        except ValueError as exc:
            log.error("git http-backend (exit %d): %s", proc.returncode, exc)
            return _Cgi(502, [], b"")

    def admit(self, scope: Scope) -> Refusal | None:
        """The listener policy's check of a request's head: 401 (with a Basic challenge, so
        git asks its credential helper) unless it presents the operator key or the
        manager's credential; who it is goes in the scope for ``__call__``."""
        who = self.who(_header(scope, b"authorization"))
        if who == "manager" and _is_push(scope):
            wait = self.manager_quota.refuse()
            if wait is not None:
                client = scope.get("client")
                self.refusals.note(str(client[0]) if client else "?", "manager push quota")
                return Refusal(
                    429,
                    "too_many_requests",
                    f"the manager may push {self.manager_quota.pushes} times and "
                    f"{self.manager_quota.size >> 20} MiB an hour to meta.git; "
                    f"try again in {wait:.0f} s",
                    ((b"retry-after", str(int(wait + 0.999)).encode()),),
                )
        if who is not None:
            scope[PUSHER] = who
            return None
        client = scope.get("client")
        self.refusals.note(str(client[0]) if client else "?", "not the operator key")
        return Refusal(401, "unauthorized", _UNAUTHORIZED, _CHALLENGE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        no = self.admit(scope)  # again: the app may be served without the policy's admit
        if no is not None:
            await _json(send, no.status, no.code, no.message, list(no.headers))
            return
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        path_info = route(scope["method"], scope["path"], query)
        if path_info is None:
            await _json(
                send,
                404,
                "not_found",
                f"only git's smart HTTP protocol on /{REPO} is served here "
                f"(git clone http://HOST:PORT/{REPO})",
            )
            return
        body = await _read(receive)
        pusher = str(scope.get(PUSHER, "operator"))
        manager_push = pusher == "manager" and _is_push(scope)
        if manager_push:  # a gzip body may inflate to the whole pack cap: counted as that
            encoding = (_header(scope, b"content-encoding") or "").strip().lower()
            gzip = encoding not in ("", "identity")
            self.manager_quota.charge(MAX_PUSH_BYTES if gzip else len(body))
        cgi = await asyncio.to_thread(
            self.run_backend, self.cgi_env(scope, path_info, len(body), pusher), body
        )
        if cgi.status == 502 and not cgi.headers:
            await _json(send, 502, "bad_gateway", "git http-backend failed; see the log")
            return
        headers = [(k, v) for k, v in cgi.headers if k != b"content-length"]
        headers.append((b"content-length", str(len(cgi.body)).encode()))
        await send({"type": "http.response.start", "status": cgi.status, "headers": headers})
        await send({"type": "http.response.body", "body": cgi.body, "more_body": False})
        if manager_push:
            self._gc_soon()

    def _gc_soon(self) -> None:
        """Start ``git gc --prune`` in a thread unless one ran in the last ``GC_EVERY`` s."""
        with self._gc_lock:
            now = time.monotonic()
            if now - self._gc_at < GC_EVERY:
                return
            self._gc_at = now
        threading.Thread(target=self.gc, name="meta-git-gc", daemon=True).start()

    def gc(self) -> bool:
        """Run ``git gc --quiet --prune=<GC_PRUNE_AGE>`` on meta.git (blocking): the objects
        of the manager's dropped and handed-over refs go. It takes no ref's lock: no ref
        packing here, no reflog expiry by meta.git's config (``metarepo.GIT_CONFIG``), so
        the controller's ref writes meanwhile never wait on it. True when git succeeded."""
        try:
            proc = subprocess.run(
                ["git", "--git-dir", str(self.layout.meta_git), "-c", "gc.packRefs=false",
                 "gc", "--quiet",
                 f"--prune={GC_PRUNE_AGE}"],
                capture_output=True, timeout=BACKEND_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("meta.git: git gc failed: %s", exc)
            return False
        if proc.returncode != 0:
            log.warning("meta.git: git gc: %s", proc.stderr.decode(errors="replace")[:500])
        return proc.returncode == 0


def _is_push(scope: Scope) -> bool:
    """True for the request that carries a push (``POST /meta.git/git-receive-pack``)."""
    return bool(scope["method"] == "POST" and scope["path"] == f"/{REPO}/git-receive-pack")


async def _read(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _json(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def make_git_app(
    layout: Layout, operator_key: str, credentials: AgentCredentials | None = None
) -> GitHttp:
    """The meta.git smart-HTTP app for the git listener (see the module doc); with
    ``credentials`` the manager's own credential is let in for its namespace."""
    return GitHttp(layout, operator_key, credentials=credentials)
