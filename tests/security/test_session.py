"""No session, no dashboard: every page and API without the cookie, or with a forged or
tampered one, is a 401 that reads nothing and changes nothing; a login token works once."""

from __future__ import annotations

import json
import secrets
import socket
import time

from tests.security.support import SESSION_COOKIE, Hive, Reply, Tally, cookie_of, http
from tests.security.surface import Route, Snapshot, page_route, read_routes, write_routes

CATEGORY = "no session (401)"
SECRETS = (b"carol", b"alice", b"bob", b"friday")
"""What a read of the state would show (agent names, the pending question)."""


def _refused_401(route: Route, reply: Reply) -> tuple[bool, str]:
    if reply.status != 401:
        return False, reply.brief()
    leaked = [s.decode() for s in SECRETS if s in reply.body]
    if leaked:
        return False, f"401 but the body shows {leaked}: {reply.body[:200]!r}"
    if page_route(route.path):
        ok = "text/html" in (reply.header("content-type") or "")
        return ok, "401 page" if ok else f"401 but {reply.header('content-type')}"
    ok = reply.error.get("code") == "unauthorized"
    return ok, reply.brief()


def _send(h: Hive, route: Route, cookie: str | None) -> Reply:
    headers = [("Cookie", f"{SESSION_COOKIE}={cookie}")] if cookie else []
    if route.method == "GET":
        return http(h.dash, "GET", route.path, headers=headers, timeout=10)
    headers.append(("Origin", h.origin))
    return http(h.dash, "POST", route.path, headers=headers, body=route.body, timeout=10)


def _tampered(cookie: str) -> list[tuple[str, str]]:
    """Variants of a valid session value that must not pass: a later expiry, a flipped MAC
    character, another nonce, the MAC dropped."""
    version, expires, nonce, mac = cookie.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    return [
        ("expiry moved", f"{version}.{int(expires) + 86400 * 365}.{nonce}.{mac}"),
        ("mac flipped", f"{version}.{expires}.{nonce}.{flipped}"),
        ("other nonce", f"{version}.{expires}.{secrets.token_urlsafe(12)}.{mac}"),
        ("no mac", f"{version}.{expires}.{nonce}"),
    ]


def test_every_route_without_a_valid_session_is_401(hive: Hive, tally: Tally) -> None:
    h = hive
    before = Snapshot.take(h)
    forged = (
        f"v1.{int(time.time()) + 86400}.{secrets.token_urlsafe(12)}.{secrets.token_urlsafe(32)}"
    )
    cookies: list[tuple[str, str | None]] = [("no cookie", None), ("forged cookie", forged)]
    cookies += [(f"tampered cookie ({what})", value) for what, value in _tampered(h.cookie)]
    routes = read_routes(h) + write_routes(h)
    for what, cookie in cookies:
        for route in routes:
            reply = _send(h, route, cookie)
            refused, detail = _refused_401(route, reply)
            tally.record(CATEGORY, f"{route.label} with {what}", refused, detail)
    after = Snapshot.take(h)
    moved = before.changes(h, after)
    tally.record(CATEGORY, "state after the no-session requests", not moved, "; ".join(moved))
    tally.assert_refused(CATEGORY)
    # the operator's own session still works
    assert h.dget("/api/state").status == 200


def test_a_login_token_works_once(hive: Hive, tally: Tally) -> None:
    h = hive
    token = h.login_token()
    first = h.redeem(token)
    assert first.status == 303 and first.header("location") == "/", first.brief()
    cookie = cookie_of(first)
    assert cookie is not None
    attrs = next(v for k, v in first.headers if k == "set-cookie").lower()
    assert "httponly" in attrs and "samesite=strict" in attrs, attrs
    assert h.dget("/api/state", cookie=cookie).status == 200
    again = h.redeem(token)
    tally.record(
        CATEGORY,
        "GET /login with an already used token",
        again.status == 401 and cookie_of(again) is None,
        again.brief(),
    )
    made_up = h.redeem(secrets.token_urlsafe(32))
    tally.record(
        CATEGORY,
        "GET /login with a made-up token",
        made_up.status == 401 and cookie_of(made_up) is None,
        made_up.brief(),
    )
    empty = http(h.dash, "GET", "/login")
    tally.record(
        CATEGORY,
        "GET /login without a token",
        empty.status == 401 and cookie_of(empty) is None,
        empty.brief(),
    )
    tally.assert_refused(CATEGORY)


def test_no_agent_ui_listens_on_a_tcp_port(hive: Hive, tally: Tally) -> None:
    """The issue's first attack went to the agent UIs' own ports (8000, 8100+): by default
    they serve on their unix socket only, so nothing answers on any agent's web port."""
    h = hive
    for agent in ("manager", "alice", "bob"):
        settings = json.loads(h.layout.agent_settings(agent).read_text())
        port = int(settings["web_port"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3):
                outcome = "a server answers"
        except OSError as exc:
            outcome = f"closed ({exc.strerror or exc})"
        tally.record(
            CATEGORY,
            f"{agent}'s UI on its own TCP port {port}",
            outcome.startswith("closed"),
            outcome,
        )
    tally.assert_refused(CATEGORY)


TRAVERSALS = (
    "/agents/manager/api/..%2F..%2Fhealthz",
    "/agents/manager/api/%2e%2e/%2e%2e/static/index.html",
    "/agents/manager/api/../../../etc/passwd",
    "/agents/%2e%2e/api/state",
    "/agents/manager%2F..%2Fbob/api/state",
    "/agents/..%2F..%2Fstate/api/state",
    "/agents/manager/static/..%2F..%2Fweb.py",
    "/agents/manager/static/%2e%2e%2fweb.py",
    "/static/..%2F..%2Fapp.py",
    "/static/%2e%2e/%2e%2e/operator.key",
    "/api/agents/..%2Fmanager/journal",
    "/api/agents/manager/journal?unit=../../etc/passwd",
    "/api/agents/manager/journal?lines=99999999999999999999",
    "/api/tombstones/..%2F..%2Fagents%2Fmanager/purge",
)


def test_path_traversal_is_a_4xx(hive: Hive, tally: Tally) -> None:
    """With the operator's own session: odd paths reach no file and no other agent."""
    h = hive
    for path in TRAVERSALS:
        method = "POST" if path.endswith("/purge") else "GET"
        reply = h.dpost(path, {}) if method == "POST" else h.dget(path)
        tally.record(
            "path traversal (4xx)",
            f"{method} {path} with the session",
            400 <= reply.status < 500 and b"root:" not in reply.body,
            reply.brief(),
        )
    tally.assert_refused("path traversal (4xx)")
