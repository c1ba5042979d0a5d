"""Credentials on the real sockets: every endpoint of the agent, manager and admin sockets
refuses a request without the right bearer credential (401, before anything happens);
rotation takes effect at once; ``/login`` and ``hyperhive dashboard``; parked recvs hold
no threads."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_agent import Swarm, close_swarm, make_swarm
from test_hostile_bodies import POSTS, Target, _Conn, raw

from controller import cli
from controller.auth import AgentCredentials
from controller.auth.secretfile import new_secret
from controller.paths import Layout
from schemas.client import ApiError
from schemas.names import MANAGER
from schemas.validate import validate

GETS: list[tuple[str, str]] = [
    ("alice", "/status"),
    (MANAGER, "/list"),
    (MANAGER, "/status"),
    ("operator", "/status"),
    ("operator", "/proposals?pending=1"),
    ("operator", "/proposals/1"),
    ("operator", "/messages"),
    ("operator", "/messages/stream"),
    ("operator", "/questions"),
    ("operator", "/agents/alice"),
    ("operator", "/agents/alice/journal"),
    ("operator", "/tombstones"),
    ("alice", "/no/such/path"),
    ("operator", "/no/such/path"),
]


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    s = make_swarm()
    yield s
    close_swarm(s)


def _wrong_tokens(swarm: Swarm, who: str) -> dict[str, str | None]:
    """Credentials that must not open ``who``'s socket."""
    others = {w: swarm.token(w) for w in ("alice", "bob", MANAGER, "operator") if w != who}
    return {
        "none": None,
        "garbage": "not-a-credential",
        "random": new_secret(),
        "empty bearer": "",
        **{f"{w}'s": t for w, t in others.items()},
    }


def _unauthorized(problems: list[str], label: str, status: int, doc: object) -> None:
    if status != 401:
        problems.append(f"{label}: expected 401, got {status} {str(doc)[:150]}")
        return
    validate(doc, "wire#Error")
    assert isinstance(doc, dict)
    if doc["error"]["code"] != "unauthorized" or doc["error"]["field"] is not None:
        problems.append(f"{label}: {doc}")


def test_every_endpoint_refuses_a_missing_or_wrong_credential(swarm: Swarm) -> None:
    before = len(swarm.broker.messages(0))
    proposals, passes = dict(swarm.ops.props), list(swarm.ops.passes)
    problems: list[str] = []
    calls = [(w, "POST", u, json.dumps(v).encode()) for w, u, v in POSTS]
    calls += [(w, "GET", u, None) for w, u in GETS]
    calls += [("operator", "POST", "/login", b"{}")]
    for who, method, url, body in calls:
        for label, token in _wrong_tokens(swarm, who).items():
            target = Target(str(swarm.sock(who)), token)
            headers = {"Authorization": "Bearer "} if token == "" else None
            status, doc, _ = raw(target, method, url, body, headers)
            _unauthorized(problems, f"{who} {method} {url} with {label}", status, doc)
    assert not problems, "\n".join(problems[:40])
    # nothing was done on anyone's behalf
    assert len(swarm.broker.messages(0)) == before
    assert swarm.ops.props == proposals and swarm.ops.passes == passes
    assert swarm.login_tokens.pending() == 0


def test_other_schemes_and_malformed_headers_are_refused(swarm: Swarm) -> None:
    path = str(swarm.sock("alice"))
    token = swarm.token("alice")
    for header in (
        f"Basic {token}",
        f"Token {token}",
        token,
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
        f"Bearer {token} {token}",
        "Bearer " + "a" * 5000,
    ):
        status = raw(Target(path, None), "GET", "/status", None, {"Authorization": header})[0]
        assert status == 401, header
    lower = {"Authorization": f"bearer {token}"}
    assert (
        raw(Target(path, None), "GET", "/status", None, lower)[0] == 200
    )  # the scheme is case-insensitive


def test_a_401_says_which_credential_is_missing(swarm: Swarm) -> None:
    with pytest.raises(ApiError) as err:
        swarm.client("bob", token=swarm.token("alice")).post("/send", {"to": "alice", "body": "x"})
    assert err.value.status == 401 and "bob's credential" in err.value.message
    assert "HYPERHIVE_CREDENTIAL_FILE" in err.value.message
    with pytest.raises(ApiError) as err:
        swarm.client("operator", token=None).get("/status")
    assert err.value.status == 401 and "operator key" in err.value.message
    assert "no credential was sent" in err.value.message
    assert raw(Target(str(swarm.sock("alice")), None), "GET", "/status")[0] == 401


def test_www_authenticate_header(swarm: Swarm) -> None:
    conn = _Conn(str(swarm.sock("alice")))
    conn.request("GET", "/status")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    conn.close()


def test_rotation_takes_effect_at_once(swarm: Swarm) -> None:
    old = swarm.token("carol")
    assert swarm.client("carol", token=old).get("/status")["unread"] >= 0
    new = swarm.credentials.issue("carol")  # what a recreate does
    with pytest.raises(ApiError) as err:
        swarm.client("carol", token=old).get("/status")
    assert err.value.status == 401
    assert swarm.client("carol", token=new).get("/status")["unread"] >= 0
    # a rotation written by another process (a fresh instance) is honoured too
    newer = AgentCredentials(swarm.layout).issue("carol")
    with pytest.raises(ApiError):
        swarm.client("carol", token=new).get("/status")
    assert swarm.client("carol", token=newer).get("/status")["unread"] >= 0
    swarm.credentials.remove("carol")  # destroyed: nothing opens the socket
    with pytest.raises(ApiError):
        swarm.client("carol", token=newer).get("/status")
    swarm.credentials.issue("carol")


def test_login_tokens_over_host_sock(swarm: Swarm) -> None:
    op = swarm.client("operator")
    r = op.post("/login", {})
    assert set(r) == {"token", "expires_at", "url"}
    assert r["url"] == f"http://127.0.0.1:7000/login?token={r['token']}"
    assert swarm.login_tokens.redeem(r["token"]) is True
    assert swarm.login_tokens.redeem(r["token"]) is False
    with pytest.raises(ApiError) as err:
        op.post("/login", {"extra": 1})
    assert (err.value.status, err.value.field) == (400, "extra")


def _cli(layout: Layout, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--state-dir", str(layout.state), "--run-dir", str(layout.run), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dashboard_and_a_missing_key(
    swarm: Swarm, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _cli(swarm.layout, capsys, "dashboard")
    assert code == 0, err
    url = out.strip()
    assert url.startswith("http://127.0.0.1:7000/login?token=") and "\n" not in url
    assert swarm.login_tokens.redeem(url.rpartition("=")[2])
    code, out, err = _cli(swarm.layout, capsys, "status")
    assert code == 0 and "alice" in out
    # a state dir without a key (or a run dir whose controller has another key)
    other = Layout(tmp_path / "s", swarm.layout.run)
    code, out, err = _cli(other, capsys, "status")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(other.operator_key) in err and "hyperhive serve" in err
    other.state.mkdir()
    other.operator_key.write_text(new_secret() + "\n")
    code, out, err = _cli(other, capsys, "pending")
    assert code == 1 and "operator key" in err and "refused" in err


def test_forty_parked_recvs_hold_no_threads(swarm: Swarm) -> None:
    """A recv parks on the event loop: 40 of them add no thread to the controller."""
    token = swarm.token("bob")
    payload = b'{"wait_seconds": 30}'
    request = (
        b"POST /recv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    swarm.client("bob").get("/status")  # warm up whatever the first request starts
    time.sleep(0.2)
    before = threading.active_count()
    socks = []
    for _ in range(40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(swarm.sock("bob")))
        s.sendall(request)
        socks.append(s)
    try:
        deadline = time.monotonic() + 5
        while swarm.sockets["bob"].connections < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        parked = threading.active_count()
        assert parked <= before + 1, (before, parked)
        # alice's socket answers at once meanwhile, and each parked recv gets one message
        assert swarm.client("alice").get("/status")["unread"] >= 0
        for i in range(40):
            swarm.client("alice").post("/send", {"to": "bob", "body": f"m{i}"})
        bodies = set()
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            doc = json.loads(data.split(b"\r\n\r\n", 1)[1])
            bodies.add(doc["message"]["body"])
        assert bodies == {f"m{i}" for i in range(40)}
    finally:
        for s in socks:
            s.close()
