"""Who gets into the dashboard: the one-time login, the session cookie, the stream caps.

Plain routes go through ``falcon.testing`` (behind the listener's guard); the
stream caps through a real ``hivehttp`` listener, since a stream only holds
its slot while its connection is open.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from dashboard_fakes import (
    KEY,
    SSE,
    FakeBroker,
    FakeOps,
    demo,
    guarded,
    make_app,
    serve,
    session_cookie,
)

from controller.auth import LoginTokens, SessionSigner
from controller.auth.sessions import SESSION_TTL_SECONDS

GET_ROUTES = [
    "/",
    "/static/app.js",
    "/static/app.css",
    "/api/state",
    "/api/proposals/7",
    "/api/agents/alice",
    "/api/agents/alice/journal",
    "/api/agents/alice/config",
    "/messages/stream",
    "/agents/alice/",
    "/agents/alice",
    "/agents/alice/static/app.js",
    "/agents/alice/api/state",
    "/agents/alice/events/stream",
    "/nowhere",
]
POST_ROUTES = [
    "/api/proposals/7/approve",
    "/api/proposals/7/deny",
    "/api/spawn",
    "/api/send",
    "/api/agents/alice/restart",
    "/api/agents/alice/destroy",
    "/api/tombstones/frank-1/purge",
    "/api/reconcile",
    "/api/questions/1/answer",
    "/api/questions/1/cancel",
    "/api/logout",
    "/agents/alice/api/send",
]
PAGES = {"/", "/static/app.js", "/static/app.css", "/agents/alice/", "/agents/alice"}
PAGES |= {"/agents/alice/static/app.js", "/nowhere"}


@pytest.fixture
def fakes() -> tuple[FakeOps, FakeBroker]:
    """The demo swarm."""
    return demo()


def _anonymous(app: Any, cookie: str | None = None) -> falcon.testing.TestClient:
    headers = {"Cookie": cookie} if cookie is not None else None
    return falcon.testing.TestClient(guarded(app), headers=headers)


def _refused_everywhere(client: falcon.testing.TestClient, ops: FakeOps) -> None:
    """Every route answers 401: JSON for the API and streams, the login page for pages."""
    n_calls = len(ops.calls)
    for path in GET_ROUTES:
        r = client.simulate_get(path)
        assert r.status_code == 401, path
        if path in PAGES:
            assert r.headers["content-type"].startswith("text/html"), path
            assert "hyperhive dashboard" in r.text, path
            assert r.headers["cache-control"] == "no-store"
        else:
            assert r.headers["content-type"].startswith("application/json"), path
            assert r.json["error"]["code"] == "unauthorized", path
            assert "hyperhive dashboard" in r.json["error"]["message"]
    for path in POST_ROUTES:
        r = client.simulate_post(path, json={"note": "x", "name": "eve", "to": "alice"})
        assert r.status_code == 401, path
        assert r.json["error"]["code"] == "unauthorized", path
    assert len(ops.calls) == n_calls  # nothing reached the swarm


def test_no_cookie_is_401_on_every_route(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    n_msgs = len(broker.msgs)
    _refused_everywhere(_anonymous(make_app(ops, broker)), ops)
    assert len(broker.msgs) == n_msgs


@pytest.mark.parametrize(
    "cookie",
    [
        "forged",
        "expired",
        "tampered_mac",
        "tampered_expiry",
        "garbage",
        "empty",
        "other_name",
    ],
)
def test_a_bad_session_is_the_same_as_none(fakes: tuple[FakeOps, FakeBroker], cookie: str) -> None:
    ops, broker = fakes
    good = SessionSigner(KEY).issue()
    payload, _, mac = good.rpartition(".")
    version, expires, nonce = payload.split(".")
    values = {
        "forged": SessionSigner("some-other-operator-key").issue(),
        "expired": SessionSigner(KEY, clock=lambda: time.time() - SESSION_TTL_SECONDS - 5).issue(),
        "tampered_mac": f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}",
        "tampered_expiry": f"{version}.{int(expires) + 86400}.{nonce}.{mac}",
        "garbage": "v1.\u00e9\u00e9.x.y",
        "empty": "",
    }
    header = (
        f"not_the_session={good}"
        if cookie == "other_name"
        else f"hyperhive_session={values[cookie]}"
    )
    _refused_everywhere(_anonymous(make_app(ops, broker), header), ops)


def test_a_planted_second_cookie_does_not_lock_the_operator_out(
    fakes: tuple[FakeOps, FakeBroker],
) -> None:
    """A page on another port of the host can set a cookie of the same name (cookies
    ignore ports); the operator's valid one still counts."""
    ops, broker = fakes
    client = _anonymous(make_app(ops, broker), f"hyperhive_session=junk; {session_cookie()}")
    assert client.simulate_get("/api/state").status_code == 200


def _login(client: falcon.testing.TestClient, token: str) -> falcon.testing.Result:
    return client.simulate_get("/login", params={"token": token})


def test_login_sets_the_session_once(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    tokens = LoginTokens()
    client = _anonymous(make_app(ops, broker, tokens=tokens))
    token = tokens.issue().token
    r = _login(client, token)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    raw = r.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in raw.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs and "secure" not in attrs
    assert "SameSite=Strict" in raw and "Path=/" in raw
    cookie = SimpleCookie(raw)["hyperhive_session"]
    assert int(cookie["max-age"]) == SESSION_TTL_SECONDS
    assert SessionSigner(KEY).verify(cookie.value)
    ok = client.simulate_get("/api/state", headers={"Cookie": f"hyperhive_session={cookie.value}"})
    assert ok.status_code == 200 and ok.json["agents"]
    # the token is spent: a second use (say, from a leaked shell history) gets nothing
    again = _login(client, token)
    assert again.status_code == 401 and "set-cookie" not in again.headers
    assert again.headers["content-type"].startswith("text/html")
    assert "hyperhive dashboard" in again.text and "already used" in again.text
    for bad in ("", "nope", "x" * 300, "\u00e9"):
        r = _login(client, bad)
        assert r.status_code == 401 and "set-cookie" not in r.headers, bad
    r = client.simulate_get("/login")
    assert r.status_code == 401 and "set-cookie" not in r.headers


def test_an_expired_login_token_does_nothing(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    now = [1_000_000.0]
    tokens = LoginTokens(clock=lambda: now[0])
    client = _anonymous(make_app(ops, broker, tokens=tokens))
    token = tokens.issue().token
    now[0] += 601
    r = _login(client, token)
    assert r.status_code == 401 and "set-cookie" not in r.headers


def test_login_over_https_sets_a_secure_cookie(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    tokens = LoginTokens()
    client = _anonymous(make_app(ops, broker, tokens=tokens))
    r = client.simulate_get("/login", params={"token": tokens.issue().token}, protocol="https")
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_logout_drops_the_cookie(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    client = _anonymous(make_app(ops, broker), session_cookie())
    r = client.simulate_post("/api/logout", json={})
    assert r.status_code == 204
    cookie = SimpleCookie(r.headers["set-cookie"])["hyperhive_session"]
    expires = email.utils.parsedate_to_datetime(cookie["expires"]).timestamp()
    assert cookie.value == "" and expires <= time.time()


def test_pages_carry_a_strict_csp(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    client = _anonymous(make_app(ops, broker), session_cookie())
    for path in ("/", "/agents/alice/"):
        r = client.simulate_get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "default-src 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"


# ----------------------------------------------------------------- stream caps (real HTTP)


@pytest.fixture
def capped(fakes: tuple[FakeOps, FakeBroker], tmp_path: Path) -> Iterator[str]:
    """The demo app on a real socket with at most 3 streams per login and 5 in all."""
    ops, broker = fakes
    stop = threading.Event()
    app = make_app(
        ops,
        broker,
        heartbeat_seconds=0.3,
        stop=stop,
        streams_per_session=3,
        streams_total=5,
    )
    with serve(app) as base:
        yield base
        stop.set()


def _open(base: str, cookie: str) -> SSE:
    return SSE(base, "/messages/stream", {"Cookie": cookie}, login=False)


def _status_of_one_more(base: str, cookie: str) -> tuple[int, dict[str, Any]]:
    s = _open(base, cookie)
    try:
        status = s.resp.status
        body = json.loads(s.resp.read()) if status != 200 else {}
        return status, body
    finally:
        s.close()


def test_streams_are_capped_per_login_and_in_all(capped: str) -> None:
    base = capped
    alice_tab = session_cookie()
    mine = [_open(base, alice_tab) for _ in range(3)]
    assert [s.resp.status for s in mine] == [200, 200, 200]
    for s in mine:  # each one is live
        assert s.next_block().get("retry") == "3000"
    status, body = _status_of_one_more(base, alice_tab)
    assert status == 503 and body["error"]["code"] == "too_many_streams"
    # another login still gets streams, up to the total
    other = session_cookie()
    theirs = [_open(base, other) for _ in range(2)]
    assert [s.resp.status for s in theirs] == [200, 200]
    status, _ = _status_of_one_more(base, session_cookie())
    assert status == 503
    # the JSON API is not starved by open streams
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
    conn.request("GET", "/api/state", headers={"Cookie": alice_tab})
    assert conn.getresponse().status == 200
    conn.close()
    # a closed stream gives its slot back (noticed when the client goes away)
    mine.pop().close()
    deadline = time.monotonic() + 10
    while True:
        status, _ = _status_of_one_more(base, alice_tab)
        if status == 200:
            break
        assert time.monotonic() < deadline, "the closed stream's slot never came back"
        time.sleep(0.05)
    for s in mine + theirs:
        s.close()
