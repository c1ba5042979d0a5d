"""What the security tests share: a raw HTTP client, the running hive, and the tally.

- ``http(...)``: one HTTP/1.1 request over TCP or a unix socket, with every header
  under the caller's control (``Host``, ``Origin``, a lying ``Content-Length``), read
  back without trusting the server (a stream's head only, a bounded body).
- ``Hive``: the e2e story's ``Swarm`` (``tests/e2e/swarm.py``: a real
  ``hyperhive serve`` on a temp state dir, driven through the CLI) with the
  operator's credentials: host.sock needs the operator key, the agent sockets
  their agent's credential, the dashboard a session cookie.
- ``Tally``: every attack tried and whether it was refused; the conftest prints it
  at the end of the session (the figures for the issue's note).

Imported as ``tests.security.support`` everywhere (the conftest too), so there is
one tally per session.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from controller.paths import Layout
from schemas.client import UnixClient
from tests.e2e.swarm import Swarm
from tests.fakeapi import find_claude_cli
from tests.realserve import ROOT, kill_agents, stop, wait_for

CLAUDE = find_claude_cli(ROOT)
if CLAUDE is None:  # every security module skips at import without the CLI
    pytest.skip(
        "the claude CLI is not installed (./hh test installs it, or set HYPERHIVE_CLAUDE_BIN)",
        allow_module_level=True,
    )

__all__ = [
    "CLAUDE",
    "ROOT",
    "Hive",
    "Reply",
    "Tally",
    "http",
    "kill_agents",
    "wait_for",
]

Target = tuple[str, int] | Path | str
"""``(host, port)`` for TCP, a path for a unix socket."""

SESSION_COOKIE = "hyperhive_session"

COLLECTOR_SECRET = "collector-" + os.urandom(8).hex()
"""The operator's OpenTelemetry collector credential in the session controller's environment."""

OPERATOR_OTEL = {
    "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {COLLECTOR_SECRET}",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-api-key={COLLECTOR_SECRET}",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": f"/etc/otel/{COLLECTOR_SECRET}.key",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE": f"/etc/otel/{COLLECTOR_SECRET}.crt",
    "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=sec-replay",
}
"""OTEL settings of the operator's own shell, given to the session's ``hyperhive serve``: no
endpoint (the controller exports nothing), but the collector's headers and mTLS client
files, which must never reach an agent (``test_otel_credentials.py``)."""


# --- a raw HTTP/1.1 client ----------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One response: ``status`` (0 when the server closed without answering), header
    pairs (lower-case names, in order) and the body read (bounded)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        found = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def error(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object of a JSON error reply, else ``{}``."""
        doc = self.json()
        err = doc.get("error") if isinstance(doc, dict) else None
        return err if isinstance(err, dict) else {}

    def brief(self) -> str:
        """``status code field: message`` in one line, for reports."""
        err = self.error
        if err:
            return (
                f"{self.status} {err.get('code')} field={err.get('field')!r}: {err.get('message')}"[
                    :300
                ]
            )
        return f"{self.status} {self.body[:160]!r}"


def connect(target: Target, timeout: float) -> socket.socket:
    """An open socket to ``target`` (TCP ``(host, port)`` or a unix socket path)."""
    if isinstance(target, tuple):
        return socket.create_connection(target, timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(target))
    except OSError:
        s.close()
        raise
    return s


def request_bytes(
    method: str,
    path: str,
    *,
    host: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_length: int | None = None,
) -> bytes:
    """The request head (and ``body``); ``content_length`` may lie about the body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    length = len(body) if content_length is None else content_length
    if length or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_reply(s: socket.socket, max_body: int = 1 << 20) -> Reply:
    """Read one response from ``s``: the head, then the body (not for event streams)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            piece = s.recv(65536)
        except ConnectionResetError:
            piece = b""
        if not piece:
            return Reply(0, (), buf)
        buf += piece
    raw_head, _, rest = buf.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = tuple(
        (k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])
    )
    reply = Reply(status, headers, b"")
    ctype = (reply.header("content-type") or "").lower()
    if "text/event-stream" in ctype:
        return Reply(status, headers, rest)
    length = reply.header("content-length")
    chunked = "chunked" in (reply.header("transfer-encoding") or "").lower()
    body = rest
    while True:
        if length is not None and len(body) >= int(length):
            body = body[: int(length)]
            break
        if chunked and body.endswith(b"0\r\n\r\n"):
            break
        if len(body) > max_body:
            break
        try:
            piece = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not piece:
            break
        body += piece
    if chunked:
        body = _dechunk(body)
    return Reply(status, headers, body)


def _dechunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size_line, _, raw = raw.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return out + raw
        if size == 0:
            return out
        out += raw[:size]
        raw = raw[size + 2 :]
    return out


def http(
    target: Target,
    method: str,
    path: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | str | dict[str, Any] = b"",
    host: str | None = None,
    timeout: float = 15.0,
) -> Reply:
    """Send one request (``Connection: close``) and read the reply.

    A dict ``body`` is sent as JSON with ``Content-Type: application/json`` (unless
    ``headers`` names a Content-Type). ``host`` defaults to ``127.0.0.1:<port>`` for TCP
    and ``localhost`` for a unix socket.
    """
    hdrs = list(headers)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k, _ in hdrs):
            hdrs.append(("Content-Type", "application/json"))
    elif isinstance(body, str):
        body = body.encode()
    if host is None:
        host = f"{target[0]}:{target[1]}" if isinstance(target, tuple) else "localhost"
    with connect(target, timeout) as s:
        s.sendall(request_bytes(method, path, host=host, headers=hdrs, body=body))
        return read_reply(s)


def cookie_of(reply: Reply) -> str | None:
    """The session cookie value a ``Set-Cookie`` of ``reply`` sets, or None."""
    for k, v in reply.headers:
        if k == "set-cookie" and v.startswith(SESSION_COOKIE + "="):
            value = v.split(";", 1)[0].split("=", 1)[1]
            return value or None
    return None


# --- the tally ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One attack: its category (the issue's bullet), what was sent, and the outcome."""

    category: str
    what: str
    refused: bool
    detail: str


@dataclass
class Tally:
    """Every attack tried in the session, and the figures for the note."""

    attacks: list[Attack] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def record(self, category: str, what: str, refused: bool, detail: str = "") -> bool:
        """Count one attack; returns ``refused``."""
        self.attacks.append(Attack(category, what, bool(refused), detail))
        return bool(refused)

    def got_through(self, category: str) -> list[Attack]:
        """The attacks of ``category`` that were not refused."""
        return [a for a in self.attacks if a.category == category and not a.refused]

    def assert_refused(self, category: str) -> None:
        """Fail listing every attack of ``category`` that got through (route, request, reply)."""
        leaks = self.got_through(category)
        tried = sum(1 for a in self.attacks if a.category == category)
        assert not leaks, f"{len(leaks)} of {tried} {category} attacks got through:\n" + "\n".join(
            f"  - {a.what}: {a.detail}" for a in leaks
        )

    def figure(self, name: str, value: str) -> None:
        """A figure for the note (printed in the summary)."""
        self.figures[name] = value

    def summary(self) -> str:
        """The report: per category tried / refused, the figures, what got through."""
        cats: dict[str, list[Attack]] = {}
        for a in self.attacks:
            cats.setdefault(a.category, []).append(a)
        total = len(self.attacks)
        refused = sum(a.refused for a in self.attacks)
        out = ["", "==== hyperhive security replay (tests/security) ===="]
        for cat, items in cats.items():
            n = sum(a.refused for a in items)
            out.append(f"  {cat:<34} {n:>4} refused of {len(items):>4} tried")
        out.append(f"  {'attacks refused out of tried':<34} {refused:>4} of {total:>4}")
        for name, value in self.figures.items():
            out.append(f"  {name}: {value}")
        leaks = [a for a in self.attacks if not a.refused]
        if leaks:
            out.append("  GOT THROUGH:")
            out += [f"    [{a.category}] {a.what}: {a.detail}" for a in leaks]
        return "\n".join(out)


TALLY = Tally()
"""The session's tally (the ``tally`` fixture hands it out)."""


# --- the hive ----------------------------------------------------------------------


@dataclass
class Hive(Swarm):
    """A real ``hyperhive serve`` (the e2e ``Swarm``), seen with the operator's credentials.

    Also holds what the session set up: ``cookie`` (the operator's dashboard session,
    from the URL ``hyperhive dashboard`` printed), ``carol`` (a pending proposal id) and
    ``question`` (a pending operator question id).
    """

    cookie: str = ""
    carol: int = 0
    question: int = 0

    @property
    def layout(self) -> Layout:
        """The state dir's layout (run dir ``<state>/run``)."""
        return Layout(self.state, self.state / "run")

    @property
    def key(self) -> str:
        """The operator key (``<state>/operator.key``)."""
        return self.layout.operator_key.read_text().strip()

    @property
    def admin(self) -> UnixClient:
        """host.sock with the operator key."""
        return UnixClient(self.host_sock, timeout=20, token=self.key)

    def credential(self, agent: str) -> str:
        """``agent``'s broker credential, as the operator reads it from the state dir."""
        return self.layout.agent_credential(agent).read_text().strip()

    def agent_client(self, agent: str, token: str | None = None) -> UnixClient:
        """``agent``'s socket, with its own credential unless ``token`` is given."""
        return UnixClient(
            str(self.layout.agent_sock(agent)),
            timeout=20,
            token=self.credential(agent) if token is None else token,
        )

    @property
    def dash(self) -> tuple[str, int]:
        """The dashboard's address."""
        return ("127.0.0.1", self.dashboard_port)

    @property
    def origin(self) -> str:
        """The dashboard's own origin."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def login_token(self) -> str:
        """A fresh one-time login token (host.sock ``POST /login``, what the CLI calls)."""
        return str(self.admin.post("/login", {})["token"])

    def redeem(self, url_or_token: str) -> Reply:
        """Open a login URL (or token) the way a browser does."""
        token = url_or_token
        if "token=" in url_or_token:
            token = urllib.parse.parse_qs(urllib.parse.urlsplit(url_or_token).query)["token"][0]
        return http(self.dash, "GET", f"/login?token={urllib.parse.quote(token)}")

    def new_session(self) -> str:
        """Log in once more (another browser): a fresh session cookie value."""
        cookie = cookie_of(self.redeem(self.login_token()))
        assert cookie, "the login token did not give a session cookie"
        return cookie

    def dget(self, path: str, cookie: str | None = None, **kw: Any) -> Reply:
        """``GET path`` on the dashboard as the logged-in operator's page would."""
        c = self.cookie if cookie is None else cookie
        headers = [("Cookie", f"{SESSION_COOKIE}={c}")] if c else []
        return http(self.dash, "GET", path, headers=headers + list(kw.pop("headers", [])), **kw)

    def dpost(self, path: str, body: Any = None, cookie: str | None = None, **kw: Any) -> Reply:
        """``POST path`` with a JSON body from the dashboard's own page (same origin)."""
        c = self.cookie if cookie is None else cookie
        headers = [("Origin", self.origin)]
        if c:
            headers.append(("Cookie", f"{SESSION_COOKIE}={c}"))
        return http(
            self.dash,
            "POST",
            path,
            headers=headers + list(kw.pop("headers", [])),
            body={} if body is None else body,
            **kw,
        )

    def phase_of(self, name: str) -> str | None:
        """``name``'s phase in host.sock's status."""
        for a in self.status().get("agents", []):
            if a.get("name") == name:
                return str(a.get("phase"))
        return None

    def harness_pid(self, agent: str) -> int | None:
        """The pid the local driver recorded for ``agent`` (the outer bwrap under the sandbox)."""
        try:
            info = json.loads((self.layout.agent_dir(agent) / "harness.pid").read_text())
            return int(info["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def serve_rss(self) -> int:
        """The controller's resident memory, bytes."""
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def harness_python(self, agent: str) -> psutil.Process | None:
        """``agent``'s harness python process (inside bwrap, if sandboxed)."""
        pid = self.harness_pid(agent)
        if pid is None:
            return None
        try:
            top = psutil.Process(pid)
            for p in [top, *top.children(recursive=True)]:
                cmd = p.cmdline()
                if (
                    any(c.endswith("python") or "python3" in c for c in cmd[:1])
                    and "harness" in cmd
                ):
                    return p
        except psutil.Error:
            return None
        return None

    def deploy(self, name: str) -> int:
        """The manager proposes ``name`` over its socket; the operator approves with the CLI."""
        pid = int(self.agent_client("manager").post("/request_spawn", {"name": name})["id"])
        self.cli("approve", str(pid))
        return pid

    def wait_running(self, *names: str, timeout: float = 60.0) -> None:
        """Wait until each agent runs and serves its web UI socket."""
        for n in names:
            wait_for(f"{n} running", lambda n=n: self.phase_of(n) == "running", timeout=timeout)
            wait_for(
                f"{n}'s web.sock", lambda n=n: self.layout.agent_web_sock(n).exists(), timeout=30
            )

    def log_text(self) -> str:
        """The controller's log so far."""
        try:
            return (self.tmp / "controller.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop_everything(self) -> None:
        """SIGTERM the controller (SIGKILL after 20 s), then every agent's process group."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        kill_agents(self.state)


TRACEBACK = re.compile(r"^Traceback \(most recent call last\)", re.M)


def tracebacks(paths: Sequence[Path]) -> dict[str, int]:
    """How many tracebacks each of ``paths`` holds (only files that hold any)."""
    out: dict[str, int] = {}
    for p in paths:
        try:
            n = len(TRACEBACK.findall(p.read_text(errors="replace")))
        except OSError:
            continue
        if n:
            out[str(p)] = n
    return out


def sample_peak(fn: Any, stop: Any, every: float = 0.005) -> Iterator[int]:
    """Values of ``fn()`` every ``every`` s until ``stop`` is set (for a peak)."""
    while not stop.is_set():
        try:
            yield int(fn())
        except psutil.Error:
            return
        time.sleep(every)
