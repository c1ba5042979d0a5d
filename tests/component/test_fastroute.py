"""The agent socket's fast routes (``hivehttp.fastroute``) answer exactly as the ASGI path.

Every request below goes, byte for byte, to two listeners serving the same agent app over
real unix sockets: one as served (its JSON verbs take the fast route) and one behind a
plain ASGI wrapper that hides ``fast_routes`` (everything through uvicorn's cycle, the
guard and ``FastVerbs``). Each side has its own sqlite broker and credentials, made the
same way, so ids and counts match; the answers (status, headers that matter, JSON body,
whether the connection is closed after) must be identical.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.api import make_agent_app
from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.paths import Layout
from hivehttp import HttpCore, Limits, Policy, RequestSeen, set_request_observer
from hivehttp.guard import Receive, Scope, Send


class _Ops:
    """Just enough ``SwarmOps``: agents alice and bob, no allow lists."""

    def agent_names(self) -> frozenset[str]:
        return frozenset({"alice", "bob"})

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        return ()

    def agent_report(self, agent: str, report: dict[str, Any]) -> bool:
        return True


class _AsgiOnly:
    """The app behind a plain ASGI call: no ``fast_routes`` for the server to find."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@dataclass
class Side:
    """One way of serving: its socket path and the tokens of alice and bob."""

    name: str
    sock: Path
    tokens: dict[str, str]
    broker: Broker


@dataclass(frozen=True)
class Answer:
    """One response as compared: status, the headers that matter, the body, and whether
    the server closed the connection after it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: Any
    closed: bool


_COMPARED = ("content-type", "www-authenticate", "connection")


def _untimed(doc: Any) -> Any:
    """``doc`` with every timestamp (``*_at``) blanked: the two sides run moments apart."""
    if isinstance(doc, dict):
        return {k: "<t>" if k.endswith("_at") else _untimed(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_untimed(v) for v in doc]
    return doc


def _read_answers(sock: socket.socket, n: int, head: bool = False) -> list[Answer]:
    buf = b""
    out: list[tuple[int, tuple[tuple[str, str], ...], Any]] = []
    closed = False
    sock.settimeout(10)
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {len(out)} answers: {buf!r}")
            buf += chunk
        top, _, buf = buf.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed mid-body")
            buf += chunk
        raw, buf = buf[:length], buf[length:]
        try:
            body: Any = _untimed(json.loads(raw))
        except ValueError:
            body = raw.decode("latin-1")
        out.append((status, tuple((k, headers[k]) for k in _COMPARED if k in headers), body))
    # closed after the last answer? (a kept connection stays silent)
    sock.settimeout(0.3)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    except ConnectionResetError:
        closed = True
    return [Answer(s, h, b, closed and i == n - 1) for i, (s, h, b) in enumerate(out)]


def _exchange(side: Side, data: bytes, n: int = 1) -> list[Answer]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(side.sock))
        data = data.replace(b"$ALICE", side.tokens["alice"].encode())
        # refused and closed before all of it was sent: the answer is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data.replace(b"$BOB", side.tokens["bob"].encode()))
        return _read_answers(s, n, head=data.startswith(b"HEAD "))


def _post(
    path: str, body: bytes, *, token: str = "$ALICE", extra: str = "", version: str = "1.1"
) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/{version}\r\nHost: localhost\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _serve(
    core: HttpCore,
    tmp: Path,
    name: str,
    fast: bool,
    policy: Policy | None = None,
    limits: Limits | None = None,
) -> Side:
    state = tmp / name
    layout = Layout(state=state, run=state / "run")
    broker = Broker(state / "broker.sqlite")
    creds = AgentCredentials(layout)
    tokens = {a: creds.issue(a) for a in ("alice", "bob")}
    app: Any = make_agent_app(broker, "alice", _Ops(), "agent", credentials=creds)  # type: ignore[arg-type]
    if not fast:
        app = _AsgiOnly(app)
    sock = state / "alice.sock"
    kw: dict[str, Any] = {}
    if policy is not None:
        kw["policy"] = policy
    if limits is not None:
        kw["limits"] = limits
    listener = core.serve_unix(app, sock, name="alice", **kw)
    assert (listener.fast_routes is not None) is fast
    return Side(name, sock, tokens, broker)


@pytest.fixture
def core() -> Iterator[HttpCore]:
    c = HttpCore("test-fastroute")
    c.start()
    yield c
    c.stop()


@pytest.fixture
def sides(core: HttpCore, tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    fast = _serve(core, tmp_path, "fast", True)
    asgi = _serve(core, tmp_path, "asgi", False)
    yield fast, asgi
    fast.broker.close()
    asgi.broker.close()


_BIG = 2 * 1024 * 1024

TABLE: list[tuple[str, bytes, int]] = [
    ("send", _post("/send", b'{"to": "bob", "body": "hi"}'), 1),
    ("send to self", _post("/send", b'{"to": "alice", "body": "me"}'), 1),
    ("no credential", _post("/send", b'{"to": "bob", "body": "hi"}', token=""), 1),
    ("wrong credential", _post("/send", b'{"to": "bob", "body": "x"}', token="nope"), 1),
    ("another agent's credential", _post("/send", b'{"to": "bob", "body": "x"}', token="$BOB"), 1),
    ("not JSON", _post("/send", b'{"to": '), 1),
    ("not an object", _post("/send", b"[1, 2]"), 1),
    ("missing field", _post("/send", b'{"to": "bob"}'), 1),
    ("wrong type", _post("/send", b'{"to": 5, "body": "x"}'), 1),
    ("unknown field", _post("/send", b'{"to": "bob", "body": "x", "evil": 1}'), 1),
    ("unknown recipient", _post("/send", b'{"to": "zed", "body": "x"}'), 1),
    ("not UTF-8", _post("/send", b'{"to": "bob", "body": "\xff"}'), 1),
    ("lone surrogate", _post("/send", b'{"to": "bob", "body": "\\ud800"}'), 1),
    (
        "too deep",
        _post("/send", b'{"to": "bob", "body": "x", "k": ' + b"[" * 70 + b"]" * 70 + b"}"),
        1,
    ),
    ("huge integer", _post("/ack", b'{"ids": [99999999999999999999]}'), 1),
    ("NaN", _post("/ack", b'{"ids": [NaN]}'), 1),
    ("empty body", _post("/send", b""), 1),
    (
        "declared too large",
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b"Content-Length: %d\r\n\r\n" % _BIG,
        1,
    ),
    (
        "declared too large, no credential",
        b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % _BIG,
        1,
    ),
    (
        "chunked past the limit",
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + (b"100000\r\n" + b"a" * 0x100000 + b"\r\n") * 2
        + b"0\r\n\r\n",
        1,
    ),
    (
        "chunked",
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'e\r\n{"to": "bob", \r\nc\r\n"body": "c"}\r\n0\r\n\r\n',
        1,
    ),
    (
        "bad Content-Length",
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b"Content-Length: 1x\r\n\r\n{}",
        1,
    ),
    (
        "text/plain body",
        _post("/send", b'{"to": "bob", "body": "t"}').replace(b"application/json", b"text/plain"),
        1,
    ),
    ("recv", _post("/recv", b'{"wait_seconds": 0}'), 1),
    ("recv leased", _post("/recv", b'{"lease_seconds": 30}'), 1),
    ("ack", _post("/ack", b'{"ids": [2]}'), 1),
    ("ack nothing", _post("/ack", b'{"ids": []}'), 1),
    ("bad wait", _post("/recv", b'{"wait_seconds": 1000}'), 1),
    ("status", b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n\r\n", 1),
    ("status, no credential", b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", 1),
    ("wrong method", b"GET /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n\r\n", 1),
    ("HEAD", b"HEAD /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n\r\n", 1),
    ("query string", _post("/send?x=1", b'{"to": "bob", "body": "q"}'), 1),
    ("manager verb", _post("/request_spawn", b'{"name": "zed"}'), 1),
    ("unknown path", _post("/nope", b"{}"), 1),
    ("HTTP/1.0", _post("/send", b'{"to": "bob", "body": "old"}', version="1.0"), 1),
    (
        "Connection: close",
        _post("/send", b'{"to": "bob", "body": "c"}', extra="Connection: close\r\n"),
        1,
    ),
    (
        "pipelined, fast then slow then fast",
        _post("/send", b'{"to": "bob", "body": "p1"}')
        + b"GET /nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n\r\n"
        + _post("/send", b'{"to": "alice", "body": "p2"}')
        + _post("/recv", b"{}")
        + _post("/send", b"not json"),
        5,
    ),
    (
        "pipelined behind a 401 (which keeps the connection)",
        _post("/send", b'{"to": "bob", "body": "p"}', token="")
        + _post("/send", b'{"to": "bob", "body": "next"}'),
        2,
    ),
    (
        "pipelined behind a 413 (which closes it)",
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b"Content-Length: %d\r\n\r\n" % _BIG + _post("/send", b'{"to": "bob", "body": "never"}'),
        1,
    ),
    (
        "after all that",
        b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n\r\n",
        1,
    ),
]


def test_every_answer_is_the_same_on_both_paths(sides: tuple[Side, Side]) -> None:
    fast, asgi = sides
    for label, data, n in TABLE:
        got_fast = _exchange(fast, data, n)
        got_asgi = _exchange(asgi, data, n)
        assert got_fast == got_asgi, label
    # and they are the answers one expects (a few spot checks on the shared result)
    answers = {label: _exchange(fast, data, n) for label, data, n in TABLE}
    assert answers["send"][0].status == 200
    assert answers["no credential"][0].status == 401
    assert ("www-authenticate", 'Bearer realm="hyperhive"') in answers["no credential"][0].headers
    assert answers["missing field"][0].body["error"]["field"] == "body"
    assert answers["declared too large"][0].status == 413
    assert answers["declared too large"][0].closed
    assert [a.status for a in answers["pipelined, fast then slow then fast"]] == [
        200,
        404,
        200,
        200,
        400,
    ]
    assert [a.status for a in answers["pipelined behind a 401 (which keeps the connection)"]] == [
        401,
        200,
    ]
    recv = answers["pipelined, fast then slow then fast"][3].body
    assert recv["message"]["body"] == "p2"  # the send pipelined before it was answered first


def test_refusals_of_a_browser_policy_are_the_same(core: HttpCore, tmp_path: Path) -> None:
    """A listener with a Host allow-list, same-origin and JSON-only mutations."""
    policy = Policy(allowed_hosts=frozenset({"localhost"}), json_mutations=True, same_origin=True)
    fast = _serve(core, tmp_path, "fast", True, policy=policy)
    asgi = _serve(core, tmp_path, "asgi", False, policy=policy)
    body = b'{"to": "bob", "body": "hi"}'
    cases = [
        _post("/send", body),
        _post("/send", body).replace(b"Host: localhost", b"Host: evil.example"),
        _post("/send", body).replace(b"Host: localhost\r\n", b""),
        _post("/send", body, extra="Origin: http://evil.example\r\n"),
        _post("/send", body, extra="Sec-Fetch-Site: cross-site\r\n"),
        _post("/send", body).replace(b"application/json", b"text/plain"),
        _post("/send", body).replace(b"Content-Type: application/json\r\n", b""),
        # a refusal after the body leaves the connection usable: the next one is answered
        _post("/send", body).replace(b"application/json", b"text/plain") + _post("/send", body),
    ]
    statuses = []
    for data in cases:
        n = 2 if data.count(b"POST") == 2 else 1
        a, b = _exchange(fast, data, n), _exchange(asgi, data, n)
        assert a == b, data
        statuses.append([x.status for x in a])
    assert statuses == [[200], [403], [403], [403], [403], [415], [415], [415, 200]]
    fast.broker.close()
    asgi.broker.close()


def test_a_slow_body_gets_408_on_both_paths(core: HttpCore, tmp_path: Path) -> None:
    policy = Policy(body_timeout=0.3)
    fast = _serve(core, tmp_path, "fast", True, policy=policy)
    asgi = _serve(core, tmp_path, "asgi", False, policy=policy)
    data = (
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $ALICE\r\n"
        b'Content-Length: 40\r\n\r\n{"to": '
    )
    a, b = _exchange(fast, data), _exchange(asgi, data)
    assert a == b
    assert a[0].status == 408 and a[0].closed
    fast.broker.close()
    asgi.broker.close()


def _closed_within(path: Path, data: bytes, seconds: float) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(data)
        s.settimeout(seconds)
        try:
            return s.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def test_a_slow_head_is_closed_at_the_deadline_on_both_paths(
    core: HttpCore, tmp_path: Path
) -> None:
    limits = Limits(max_connections=8, per_client=8, header_timeout=0.5)
    fast = _serve(core, tmp_path, "fast", True, limits=limits)
    asgi = _serve(core, tmp_path, "asgi", False, limits=limits)
    head = b"POST /send HTTP/1.1\r\nHost: x\r\nAuthori"
    assert _closed_within(fast.sock, head, 5.0)
    assert _closed_within(asgi.sock, head, 5.0)
    fast.broker.close()
    asgi.broker.close()


def test_a_parked_recv_gives_up_when_its_client_leaves(sides: tuple[Side, Side]) -> None:
    fast, _ = sides
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(fast.sock))
        s.sendall(
            _post("/recv", b'{"wait_seconds": 30}').replace(
                b"$ALICE", fast.tokens["alice"].encode()
            )
        )
        time.sleep(0.3)  # parked
    time.sleep(0.3)  # the server saw it leave
    sent = _exchange(fast, _post("/send", b'{"to": "alice", "body": "kept"}'))
    assert sent[0].status == 200
    got = _exchange(fast, _post("/recv", b"{}"))
    assert got[0].body["message"]["body"] == "kept"  # the gone client took nothing


def test_the_request_observer_sees_fast_requests(core: HttpCore, tmp_path: Path) -> None:
    seen: list[RequestSeen] = []
    started: list[tuple[str, str]] = []

    class Observer:
        def started(self, listener: str, route: str) -> None:
            started.append((listener, route))

        def finished(self, s: RequestSeen) -> None:
            seen.append(s)

    set_request_observer(Observer())
    try:
        fast = _serve(core, tmp_path, "fast", True)
    finally:
        set_request_observer(None)
    _exchange(fast, _post("/send", b'{"to": "bob", "body": "hi"}'))
    _exchange(fast, _post("/send", b"{}", token=""))
    assert started == [("alice", "/send"), ("alice", "/send")]
    assert [(s.listener, s.method, s.route, s.status) for s in seen] == [
        ("alice", "POST", "/send", 200),
        ("alice", "POST", "/send", 401),
    ]
    fast.broker.close()
