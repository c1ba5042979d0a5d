"""Runs INSIDE an agent's sandbox (``python -c`` of this file's text): try everything.

Argument: one JSON object (never a path: the sandbox binds back ``/tmp`` paths
named in the command line, and a test must not change what the agent sees):
``self``, ``others`` (agent names), ``state``, ``run`` (host paths), ``controller``
(its pid), ``dashboard`` (port), ``sockets`` (name -> path of each agent's
``mcp.sock`` / ``web.sock``), ``home`` (the operator's home), ``outside`` (a file
outside the state dir under /tmp, e.g. the controller's log).

Prints one JSON object: attempt name -> ``{"ok": bool, "what": str}``; ``ok`` means
the attempt succeeded (for an attack: it got through).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

A: dict[str, Any] = json.loads(sys.argv[1])
OUT: dict[str, dict[str, Any]] = {}
CRED_FILE = os.environ.get("HYPERHIVE_CREDENTIAL_FILE", "")


def attempt(name: str, fn: Callable[[], Any]) -> None:
    try:
        got = fn()
        OUT[name] = {"ok": True, "what": repr(got)[:240]}
    except Exception as exc:  # the failure is the point
        OUT[name] = {"ok": False, "what": f"{type(exc).__name__}: {exc}"[:240]}


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(80)


def write(path: str) -> str:
    with open(path, "ab") as fh:
        fh.write(b"pwned\n")
    return f"wrote {path}"


def own_credential() -> str:
    with open(CRED_FILE) as fh:
        return fh.read().strip()


def http_unix(path: str, method: str = "GET", target: str = "/status", body: bytes = b"") -> str:
    """Talk to a unix socket with this agent's own credential; raise unless 2xx."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Authorization: Bearer {own_credential()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "?"
    if not status.startswith("2"):
        raise PermissionError(f"connected, answered {status}: {data[-160:]!r}")
    return f"{status} {data[-160:]!r}"


def dashboard(path: str) -> str:
    url = f"http://127.0.0.1:{A['dashboard']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return f"{r.status} {r.read(120)!r}"
    except urllib.error.HTTPError as exc:
        raise PermissionError(f"answered {exc.code}") from None


state, run, me = A["state"], A["run"], A["self"]
# --- what must fail
for other in A["others"]:
    agent_dir = f"{state}/agents/{other}"
    attempt(f"read {other}'s credential", lambda d=agent_dir: read(f"{d}/credential"))
    attempt(f"read {other}'s settings.json", lambda d=agent_dir: read(f"{d}/settings.json"))
    attempt(f"list {other}'s state dir", lambda d=agent_dir: os.listdir(f"{d}/state"))
    attempt(f"list {other}'s claude dir", lambda d=agent_dir: os.listdir(f"{d}/claude"))
    attempt(f"read {other}'s log", lambda o=other: read(f"{state}/logs/{o}.log"))
    for kind in ("mcp", "web"):
        sock = A["sockets"][f"{other}/{kind}"]
        attempt(f"call {other}'s {kind}.sock with my credential", lambda p=sock: http_unix(p))
attempt("call host.sock with my credential", lambda: http_unix(f"{run}/host.sock"))
attempt(
    "approve a proposal on host.sock",
    lambda: http_unix(f"{run}/host.sock", "POST", "/proposals/1/approve", b"{}"),
)
attempt("read broker.sqlite", lambda: read(f"{state}/broker.sqlite"))
attempt("read broker.sqlite-wal", lambda: read(f"{state}/broker.sqlite-wal"))
attempt("read meta.git/HEAD", lambda: read(f"{state}/meta.git/HEAD"))
attempt(
    "write deployed/9999 into meta.git",
    lambda: write(f"{state}/meta.git/refs/tags/deployed/9999"),
)
attempt("read operator.key", lambda: read(f"{state}/operator.key"))
attempt("read status.json", lambda: read(f"{state}/status.json"))
attempt("list the logs dir", lambda: os.listdir(f"{state}/logs"))
attempt("write a file into the state dir", lambda: write(f"{state}/planted"))
attempt("write my own settings.json", lambda: write(f"{state}/agents/{me}/settings.json"))
attempt("replace my own credential", lambda: write(CRED_FILE))
attempt("read the controller's log outside the state dir", lambda: read(A["outside"]))
attempt(
    "read the controller's /proc/<pid>/environ",
    lambda: read(f"/proc/{A['controller']}/environ"),
)
attempt("signal the controller", lambda: os.kill(A["controller"], 0) or "alive")
attempt(
    "see other processes in /proc",
    lambda: [p for p in os.listdir("/proc") if p.isdigit() and int(p) > 2] or 1 / 0,
)
attempt("read the dashboard's /api/state without a session", lambda: dashboard("/api/state"))
# --- what must work: its own socket, state and credential
attempt("own: call my mcp.sock", lambda: http_unix(A["sockets"][f"{me}/mcp"]))
attempt("own: my web.sock exists", lambda: os.path.exists(A["sockets"][f"{me}/web"]) or 1 / 0)
attempt("own: write my state dir", lambda: write(f"{state}/agents/{me}/state/probe.txt"))
attempt("own: read my credential", lambda: own_credential()[:4] + "…")
# --- observations (not attacks): what is visible of the state dir and the operator's home
attempt("observe: the state dir holds", lambda: sorted(os.listdir(state)))
attempt("observe: the operator's home holds", lambda: sorted(os.listdir(A["home"]))[:12])
print(json.dumps(OUT))
