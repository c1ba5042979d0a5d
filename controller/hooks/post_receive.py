"""The post-receive poke: ``POST /poke`` on host.sock so the controller runs a pass now.

Sent with the operator key (``<state>/operator.key``) as its bearer
credential. When the controller is down, or the key cannot be read (a pusher
who is not the operator), it says so and exits 0: the push already happened,
and the next pass picks the change up.

Why a raw socket: the poke runs after every push and the controller starts
its pass only when the poke arrives, so the hook's start-up time is on the
approval path. One HTTP/1.1 request needs ``socket`` and ``json``;
``http.client`` (with the email parser it imports) would double the start-up.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from controller.auth.operator import load_operator_key
from controller.auth.secretfile import CredentialError
from controller.hooks.updates import parse_updates
from controller.paths import Layout

TIMEOUT = 5.0
"""Seconds for connecting, sending and reading the answer."""
MAX_ANSWER = 64 * 1024
"""Bytes of answer read at most (the poke's answer is ``{"accepted": true}``)."""


class PokeFailed(Exception):
    """The controller answered with an error status, or with something that is not HTTP."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: ``status`` code and decoded ``body`` (None when not JSON)."""

    status: int
    body: object


def _dechunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def post_json(path: Path, url: str, token: str, body: object) -> Answer:
    """One ``POST`` of JSON ``body`` to ``url`` on the unix socket ``path`` (``Connection: close``).

    Raises ``ConnectionError`` / ``FileNotFoundError`` (``OSError``) when nobody
    listens, ``TimeoutError`` after ``TIMEOUT`` and ``PokeFailed`` for an answer
    that is not HTTP.
    """
    payload = json.dumps(body).encode()
    head = (
        f"POST {url} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(head + payload)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_ANSWER:
            chunk = sock.recv(16384)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    raw = b"".join(chunks)
    header, sep, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise PokeFailed(f"not an HTTP answer: {raw[:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise PokeFailed(f"not an HTTP status: {lines[0]!r}") from None
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        content = _dechunk(content)
    try:
        doc: object = json.loads(content) if content else None
    except ValueError:
        doc = None
    return Answer(status, doc)


def _error_message(answer: Answer) -> str:
    err = answer.body.get("error") if isinstance(answer.body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    text = str(message) if message else f"HTTP {answer.status}"
    if answer.status == 401:
        return f"the operator key was refused: {text}"
    return text


def post_receive(layout: Layout, stdin: TextIO, stderr: TextIO) -> int:
    """Poke the controller (``POST /poke``); always 0 — the push already happened."""
    updates = parse_updates(stdin.read().splitlines())
    refs = ", ".join(u.ref.removeprefix("refs/tags/").removeprefix("refs/heads/") for u in updates)
    not_running = (
        f"hyperhive: received {refs}; the controller is not running — it acts on this "
        "when it starts"
    )
    try:
        key = load_operator_key(layout)
    except CredentialError as exc:
        if not layout.host_sock.exists():
            print(not_running, file=stderr)
        else:
            print(
                f"hyperhive: received {refs}; could not poke the controller: {exc.message}; "
                "it acts on this at its next pass",
                file=stderr,
            )
        return 0
    try:
        answer = post_json(layout.host_sock, "/poke", key, {})
    except (FileNotFoundError, ConnectionRefusedError):
        print(not_running, file=stderr)
        return 0
    except (OSError, PokeFailed) as exc:
        print(f"hyperhive: received {refs}; could not poke the controller: {exc}", file=stderr)
        return 0
    if answer.status >= 300:
        print(
            f"hyperhive: received {refs}; could not poke the controller: {_error_message(answer)}",
            file=stderr,
        )
        return 0
    print(
        f"hyperhive: received {refs}; the controller is reconciling "
        "(git fetch --tags to see deployed/<id> or failed/<id>)",
        file=stderr,
    )
    return 0
