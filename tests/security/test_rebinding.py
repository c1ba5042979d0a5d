"""DNS rebinding and cross-site requests that carry the operator's session cookie.

A rebinding page controls both ``Host`` (its own name, now resolving to 127.0.0.1)
and ``Origin``; with the operator's valid cookie every dashboard route must still
answer 403 without running: nothing read, nothing changed. A plain cross-site post
(the ``Origin`` of another page, an opaque origin, ``Sec-Fetch-Site``) with the
cookie is 403 too, and a same-origin form post is 415.
"""

from __future__ import annotations

from tests.security.support import SESSION_COOKIE, Hive, Reply, Tally, http
from tests.security.surface import Route, Snapshot, read_routes, write_routes

REBINDING = "DNS rebinding (403)"
CROSS_SITE = "cross-site with the cookie (403/415)"


def _bad_host(reply: Reply) -> tuple[bool, str]:
    ok = (
        reply.status == 403
        and reply.error.get("code") == "bad_host"
        and not any(s in reply.body for s in (b"carol", b"alice", b"friday"))
    )
    return ok, reply.brief()


def test_rebinding_hosts_are_refused_on_every_route(hive: Hive, tally: Tally) -> None:
    h = hive
    port = h.dashboard_port
    before = Snapshot.take(h)
    token = h.login_token()
    cookie = [("Cookie", f"{SESSION_COOKIE}={h.cookie}")]
    routes = read_routes(h) + write_routes(h) + [Route("GET", f"/login?token={token}", {})]
    for host in (f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "localhost.evil.example"):
        origin = [("Origin", f"http://{host}")]
        for route in routes:
            reply = http(
                h.dash,
                route.method,
                route.path,
                host=host,
                headers=cookie + origin,
                body=route.body if route.method == "POST" else b"",
                timeout=10,
            )
            refused, detail = _bad_host(reply)
            tally.record(REBINDING, f"{route.label} Host: {host}", refused, detail)
    # the token was never redeemed by the rebinding requests: it still works here
    assert h.redeem(token).status == 303
    after = Snapshot.take(h)
    moved = before.changes(h, after)
    tally.record(REBINDING, "state after the rebinding requests", not moved, "; ".join(moved))
    tally.assert_refused(REBINDING)


def test_cross_site_posts_with_the_cookie_are_refused(hive: Hive, tally: Tally) -> None:
    h = hive
    before = Snapshot.take(h)
    cookie = ("Cookie", f"{SESSION_COOKIE}={h.cookie}")
    variants: list[tuple[str, list[tuple[str, str]], int]] = [
        ("Origin of another page", [("Origin", f"http://127.0.0.2:{h.dashboard_port}")], 403),
        ("Origin of an agent port", [("Origin", "http://127.0.0.1:8000")], 403),
        ("opaque Origin", [("Origin", "null")], 403),
        ("Sec-Fetch-Site: cross-site", [("Sec-Fetch-Site", "cross-site")], 403),
        ("Sec-Fetch-Site: same-site", [("Sec-Fetch-Site", "same-site")], 403),
    ]
    for route in write_routes(h):
        for what, headers, want in variants:
            reply = http(h.dash, "POST", route.path, headers=[cookie, *headers], body=route.body)
            tally.record(CROSS_SITE, f"{route.label} ({what})", reply.status == want, reply.brief())
        # same origin, with the cookie, but a form or text/plain body: 415, never run
        for ctype, raw in (
            ("application/x-www-form-urlencoded", "body=PWNED&to=manager"),
            ("text/plain", '{"body": "PWNED", "to": "manager"}'),
            (
                "multipart/form-data; boundary=x",
                '--x\r\nContent-Disposition: form-data; name="body"\r\n\r\nPWNED\r\n--x--\r\n',
            ),
        ):
            reply = http(
                h.dash,
                "POST",
                route.path,
                headers=[cookie, ("Origin", h.origin), ("Content-Type", ctype)],
                body=raw,
            )
            tally.record(
                CROSS_SITE, f"{route.label} ({ctype.split(';')[0]}, same origin)",
                reply.status == 415, reply.brief(),
            )  # fmt: skip
    after = Snapshot.take(h)
    moved = before.changes(h, after)
    tally.record(CROSS_SITE, "state after the cross-site posts", not moved, "; ".join(moved))
    tally.assert_refused(CROSS_SITE)
    assert h.dget("/api/state").status == 200  # the logout posts did not end the session
