"""A cross-origin page in the operator's own Chromium cannot command the swarm.

``attacker.html`` is served on 127.0.0.2 (another origin) and, in headless
Chromium, auto-submits urlencoded, text/plain (the JSON-in-a-form-field trick) and
multipart forms and fires ``fetch(…, {mode: "no-cors"})`` (and a CORS JSON fetch)
at every mutating dashboard route and at every mutating route of the manager's
and alice's UIs behind the dashboard; it loads the event streams as 30+ images and
tries to read the state. It runs twice in the same browser: before the operator
logs in, and after they opened the URL ``hyperhive dashboard`` printed.

Every request the page made must have been refused by the dashboard (401 / 403 /
415, as the browser saw it), and the operator's own channels (host.sock, the
meta repo, the agents' files) must show that nothing happened: no message from
``operator``, no model change, no stored or forgotten key, no approval, no
lifecycle action, the question still open, the session still valid.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import chromium
from tests.security.support import ROOT, Hive, Tally
from tests.security.surface import EVIL_KEY, MARK, Snapshot, write_routes

pytestmark = pytest.mark.browser

CATEGORY = "cross-origin browser page"
HERE = Path(__file__).parent
REFUSALS = (401, 403, 415)
STREAM_IMAGES = 16
"""Images per event-stream path (two paths: 32 loads, the issue's 30)."""
EXPECTED_POSTS = (
    ("Document", "application/x-www-form-urlencoded"),
    ("Document", "text/plain"),
    ("Document", "multipart/form-data"),
    ("Fetch", "application/x-www-form-urlencoded"),
    ("Fetch", "text/plain"),
    ("Fetch", "multipart/form-data"),
    ("Fetch", "text/plain;charset=UTF-8"),
)
"""What reaches the dashboard for each route: three forms and four no-cors fetches."""
OPERATOR_KEY = "sk-ant-api03-the-operators-own-key"
"""What the operator stores for alice through the dashboard before the attack."""


def _media(ctype: str | None) -> str:
    """A Content-Type without its multipart boundary or a form's charset."""
    text = (ctype or "").split("; boundary")[0]
    return text.replace("urlencoded;charset=UTF-8", "urlencoded")


def _key(r: dict[str, Any]) -> tuple[str, str, str]:
    return (r["url"], r["type"], _media(r["ctype"]))


@pytest.fixture
def attacker(hive: Hive) -> Iterator[str]:
    """The attacker's page on http://127.0.0.2:<port>/attack.html."""
    routes = [{"path": r.path, "fields": r.body} for r in write_routes(hive)]
    cfg = {
        "dash": hive.origin,
        "routes": routes,
        "streams": ["/messages/stream", "/agents/manager/events/stream"],
        "imagesPerStream": STREAM_IMAGES,
        "reads": ["/api/state", "/agents/manager/api/state", f"/api/proposals/{hive.carol}"],
    }
    page = (HERE / "attacker.html").read_text().replace("ATTACK_CONFIG", json.dumps(cfg))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}/attack.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(chromium.skip_reason() is not None, reason=chromium.skip_reason() or "")
def test_a_cross_origin_page_cannot_command_the_swarm(
    hive: Hive, tally: Tally, attacker: str, tmp_path: Path
) -> None:
    h = hive
    # the operator stores a key for alice through the dashboard: the page's
    # login/forget must not remove it, nor its login/key replace it
    stored = h.dpost("/agents/alice/api/login/key", {"kind": "api_key", "value": OPERATOR_KEY})
    assert stored.status == 200, stored.brief()
    before = Snapshot.take(h)
    login_url = h.cli("dashboard").stdout.strip().splitlines()[-1]
    cfg = tmp_path / "cfg.json"
    result = tmp_path / "seen.json"
    cfg.write_text(
        json.dumps({"attack": attacker, "dash": h.origin, "login": login_url, "out": str(result)})
    )
    res = subprocess.run(
        ["node", str(HERE / "cross_origin.mjs"), str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.exists(), f"cross_origin.mjs wrote nothing (exit {res.returncode}): {res.stderr}"
    seen = json.loads(result.read_text())
    assert res.returncode == 0 and not seen["errors"], seen["errors"] or res.stderr[-2000:]

    # the operator's login worked in that browser, before and after the attack
    login = seen["login"]
    assert login["landed"] == h.origin + "/", login
    cookie = next(c for c in login["cookies"] if c["name"] == "hyperhive_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert login["state"] == 200 and login["agentUi"] == 200, login
    assert login["stateAfter"] == 200, login

    n_routes = len(write_routes(h))
    for phase, data in seen["phases"].items():
        wire = data["wire"]
        for r in wire:
            what = f"{phase}: {r['method']} {r['url']} ({r['type']}, {r.get('ctype')})"
            if r["status"] is None:
                # never answered: a JSON fetch whose CORS preflight (tallied too) was refused
                refused = (
                    r["method"] == "POST" and r["ctype"] == "application/json" and not r["sent"]
                )
                detail = f"never sent by the browser ({r['failure']}): its preflight was refused"
            else:
                refused = r["status"] in REFUSALS
                detail = f"the dashboard answered {r['status']}"
            tally.record(CATEGORY, what, refused, detail)
        answered = [r for r in wire if r["method"] == "POST" and r["status"]]
        preflights = [r for r in wire if r["method"] == "OPTIONS"]
        images = [r for r in wire if r["type"] == "Image"]
        # every form and no-cors fetch reached the dashboard and was refused there; every
        # JSON fetch was stopped at its preflight; every stream load was answered at once
        expected = Counter(
            (r.path, kind, ctype) for r in write_routes(h) for kind, ctype in EXPECTED_POSTS
        )
        got = Counter(_key(r) for r in answered)
        lost = expected - got
        # a request the page gave up on (a busy machine) shows here, before the tally below
        page_saw = data["page"]
        odd = [r for r in page_saw["results"] if str(r).startswith(("READ", "timeout"))]
        assert not odd, (phase, odd)
        assert got == expected, (phase, lost, got - expected, [r for r in wire if _key(r) in lost])
        assert len(preflights) == n_routes, (phase, len(preflights))
        assert len(images) == 2 * STREAM_IMAGES, (phase, len(images))
        for path, outcome in page_saw["reads"].items():
            tally.record(
                CATEGORY,
                f"{phase}: read {path} with fetch (cors, credentials)",
                outcome.startswith("blocked"),
                outcome,
            )
        statuses = sorted({r["status"] for r in wire if r["status"] is not None})
        unsent = sum(1 for r in wire if r["status"] is None)
        with_cookie = sum(1 for r in wire if r.get("cookie"))
        tally.figure(
            f"browser page ({phase})",
            f"{len(answered)} cross-origin posts, {len(preflights)} preflights and "
            f"{len(images)} stream loads reached the dashboard, answered {statuses}; "
            f"{unsent} JSON posts never left the browser; the session cookie went with "
            f"{with_cookie} of them",
        )

    after = Snapshot.take(h)
    moved = before.changes(h, after)
    tally.record(CATEGORY, "state after both attacks", not moved, "; ".join(moved))
    files = dict(after.agent_files)
    assert OPERATOR_KEY in files["agents/alice/claude/settings.json"], files
    assert not any(EVIL_KEY in v or "pwned" in v.lower() for v in files.values()), files
    assert MARK not in json.dumps(h.admin.get("/messages?since=0&limit=1000"))
    for agent in ("manager", "alice"):  # as the operator sees it in the agent's UI
        ui = h.dget(f"/agents/{agent}/api/state").json()
        assert ui["model"] == "claude-test", ui
    tally.assert_refused(CATEGORY)
