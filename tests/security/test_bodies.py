"""Hostile bodies: 1 GiB announced, 100k-deep JSON, lone surrogates, bytes that are not UTF-8.

A 1 GiB ``Content-Length`` (and a chunked body that runs past the limit) on the
dashboard, host.sock, an agent socket and an agent UI (through the dashboard's
proxy, and on its own socket) is a 413 answered before the body is read: the
controller's (and the harness') resident memory is sampled while the client keeps
pushing. Deep JSON, ``"\\ud800"`` in every string field of every broker write,
and invalid UTF-8 are 400s naming the field; nothing is a 5xx.
"""

from __future__ import annotations

import contextlib
import functools
import json
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil

from tests.security.support import (
    SESSION_COOKIE,
    Hive,
    Reply,
    Tally,
    Target,
    connect,
    http,
    read_reply,
    request_bytes,
)

T = TypeVar("T")
GiB = 1 << 30
MiB = 1 << 20
PUSH_LIMIT = 128 * MiB
"""Most body bytes the client pushes after the head (it stops at the server's answer)."""
PUSH_SECONDS = 2.0
MEMORY_BOUND = 8 * MiB
"""Most a refused 1 GiB body may add to the server's resident memory."""
DEPTH = 100_000
SIZE = "oversized bodies (413)"
BAD_JSON = "bad JSON bodies (400)"


@dataclass(frozen=True)
class Surface:
    """Where a write goes: ``target``, ``host`` header, credentials, and whose memory."""

    name: str
    target: Target
    host: str
    headers: tuple[tuple[str, str], ...]
    memory: Callable[[], int]


def _surfaces(h: Hive) -> dict[str, Surface]:
    dash_headers = (("Cookie", f"{SESSION_COOKIE}={h.cookie}"), ("Origin", h.origin))

    def bearer(token: str) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {token}"),)

    harness = h.harness_python("alice")
    assert harness is not None, "alice's harness process is not found"
    host = f"127.0.0.1:{h.dashboard_port}"
    return {
        "dashboard": Surface("dashboard", h.dash, host, dash_headers, h.serve_rss),
        "host.sock": Surface(
            "host.sock", h.layout.host_sock, "localhost", bearer(h.key), h.serve_rss
        ),
        "alice's socket": Surface(
            "alice's socket",
            h.layout.agent_sock("alice"),
            "localhost",
            bearer(h.credential("alice")),
            h.serve_rss,
        ),
        "manager's socket": Surface(
            "manager's socket",
            h.layout.agent_sock("manager"),
            "localhost",
            bearer(h.credential("manager")),
            h.serve_rss,
        ),
        "alice's web.sock": Surface(
            "alice's web.sock",
            h.layout.agent_web_sock("alice"),
            "localhost",
            (),
            lambda: int(harness.memory_info().rss),
        ),
    }


def _push(target: Target, head: bytes, chunk: bytes, limit: int) -> tuple[Reply, int]:
    """Send ``head``, then ``chunk`` after ``chunk`` until the server answers (or closes),
    ``limit`` bytes went out or ``PUSH_SECONDS`` passed; the reply and the bytes pushed."""
    s = connect(target, 10)
    sent = 0
    try:
        s.sendall(head)
        s.setblocking(False)
        deadline = time.monotonic() + PUSH_SECONDS
        while sent < limit and time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 0.05)
            if readable:
                break
            if writable:
                try:
                    sent += s.send(chunk)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        s.setblocking(True)
        s.settimeout(10)
        return read_reply(s), sent
    finally:
        s.close()


def _peak_while(memory: Callable[[], int], fn: Callable[[], T]) -> tuple[T, int, int]:
    """Run ``fn`` while sampling ``memory``; its result, the baseline and the peak (bytes)."""
    base = memory()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], memory())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = fn()
    finally:
        stop.set()
        t.join()
    return result, base, max(peak[0], memory())


def test_a_gibibyte_is_refused_before_it_is_read(hive: Hive, tally: Tally) -> None:
    h = hive
    surfaces = _surfaces(h)
    cases = [
        ("dashboard", "/api/send"),
        ("dashboard", "/agents/manager/api/send"),
        ("host.sock", "/send"),
        ("alice's socket", "/send"),
        ("alice's web.sock", "/api/send"),
    ]
    figures: list[str] = []
    worst = 0
    for name, path in cases:
        sf = surfaces[name]
        for mode in ("Content-Length", "chunked"):
            headers = [*sf.headers, ("Content-Type", "application/json")]
            if mode == "chunked":
                headers.append(("Transfer-Encoding", "chunked"))
                head = request_bytes("POST", path, host=sf.host, headers=headers)
                head = head.replace(b"Content-Length: 0\r\n", b"")
                piece = b"x" * 65536
                chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
            else:
                head = request_bytes(
                    "POST", path, host=sf.host, headers=headers, content_length=GiB
                )
                chunk = b"x" * 65536
            # warm up the route with a small body first, so the figure is the attack's alone
            http(sf.target, "POST", path, host=sf.host, headers=sf.headers, body={})
            attack = functools.partial(_push, sf.target, head, chunk, PUSH_LIMIT)
            (reply, pushed), base, peak = _peak_while(sf.memory, attack)
            grew = max(0, peak - base)
            worst = max(worst, grew) if sf.name != "alice's web.sock" else worst
            what = f"POST {path} on {name} with a 1 GiB body ({mode})"
            ok = reply.status == 413 and grew < MEMORY_BOUND
            detail = f"{reply.brief()}; pushed {pushed // MiB} MiB; RSS +{grew / MiB:.1f} MiB"
            tally.record(SIZE, what, ok, detail)
            print(f"{what}: {detail}")
            figures.append(f"{name} {path} ({mode}): +{grew / MiB:.1f} MiB")
    tally.figure(
        "memory for a 1 GiB body",
        f"controller RSS grew at most {worst / MiB:.1f} MiB (" + "; ".join(figures) + ")",
    )
    tally.assert_refused(SIZE)


def _writes(h: Hive) -> list[tuple[str, str, dict[str, object], list[str]]]:
    """``(surface, path, valid body, its string fields)`` for every broker write."""
    c, q = h.carol, h.question
    return [
        ("host.sock", "/send", {"to": "manager", "body": "x"}, ["to", "body"]),
        ("host.sock", "/answer", {"thread": 1, "body": "x"}, ["body"]),
        ("host.sock", f"/proposals/{c}/deny", {"note": "x"}, ["note"]),
        ("host.sock", f"/proposals/{c}/approve", {"note": "x"}, ["note"]),
        ("host.sock", f"/questions/{q}/answer", {"answer": "x"}, ["answer"]),
        ("alice's socket", "/send", {"to": "manager", "body": "x"}, ["to", "body"]),
        ("alice's socket", "/ask", {"to": "manager", "question": "x"}, ["to", "question"]),
        ("alice's socket", "/answer", {"thread": 1, "body": "x"}, ["body"]),
        ("alice's socket", "/remind", {"after_seconds": 60, "body": "x"}, ["body"]),
        ("alice's socket", "/wake", {"from": "operator", "body": "x"}, ["from", "body"]),
        ("alice's socket", "/send", {"to": "bob", "body": "x", "idempotency_key": "k"},
         ["idempotency_key"]),
        ("manager's socket", "/request_spawn", {"name": "x"}, ["name"]),
        ("manager's socket", "/ask_operator", {"question": "x", "options": ["a", "b"]},
         ["question", "options.0"]),
        ("dashboard", "/api/send", {"to": "manager", "body": "x"}, ["to", "body"]),
        ("dashboard", "/api/spawn", {"name": "x"}, ["name"]),
        ("dashboard", f"/api/proposals/{c}/deny", {"note": "x"}, ["note"]),
        ("dashboard", f"/api/questions/{q}/answer", {"answer": "x"}, ["answer"]),
        ("dashboard", "/agents/manager/api/send", {"body": "x"}, ["body"]),
        ("dashboard", "/agents/manager/api/model", {"model": "x"}, ["model"]),
        ("dashboard", "/agents/manager/api/login/key", {"kind": "api_key", "value": "x"},
         ["kind", "value"]),
        ("dashboard", "/agents/manager/api/login/code", {"code": "x"}, ["code"]),
    ]  # fmt: skip


def _with_surrogate(body: dict[str, object], field: str) -> bytes:
    """``body`` as JSON text with the string at dotted ``field`` replaced by ``"\\ud800"``."""
    doc = dict(body)
    marker = "@@SURROGATE@@"
    head, _, index = field.partition(".")
    if index:
        items = list(doc[head])  # type: ignore[call-overload]
        items[int(index)] = marker
        doc[head] = items
    else:
        doc[head] = marker
    return json.dumps(doc).replace(f'"{marker}"', '"\\ud800"').encode()


def test_deep_surrogate_and_non_utf8_bodies_are_400_naming_the_field(
    hive: Hive, tally: Tally
) -> None:
    h = hive
    surfaces = _surfaces(h)
    deep = b'{"body": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    worst: list[str] = []
    for name, path, body, fields in _writes(h):
        sf = surfaces[name]

        def post(raw: bytes, sf: Surface = sf, path: str = path) -> Reply:
            headers = [*sf.headers, ("Content-Type", "application/json")]
            return http(sf.target, "POST", path, host=sf.host, headers=headers, body=raw)

        for field in fields:
            reply = post(_with_surrogate(body, field))
            ok = reply.status == 400 and reply.error.get("field") == field
            tally.record(BAD_JSON, f'POST {path} on {name}: {field}="\\ud800"', ok, reply.brief())
            if reply.status >= 500:
                worst.append(f"{name} {path}: {reply.brief()}")
        for what, raw in (
            (f"JSON {DEPTH} deep", deep),
            ("not UTF-8", b'{"body": "caf\xe9", "to": "manager"}'),
            ("NaN", b'{"body": NaN, "to": "manager"}'),
            ("an integer past 64 bits", b'{"body": "x", "thread": 99999999999999999999999}'),
        ):
            reply = post(raw)
            ok = reply.status == 400 and bool(reply.error.get("message"))
            if what.startswith("JSON"):
                ok = ok and reply.error.get("field") is not None
            tally.record(BAD_JSON, f"POST {path} on {name}: {what}", ok, reply.brief())
    tally.assert_refused(BAD_JSON)
