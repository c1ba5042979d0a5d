"""Attacks on the surfaces that came with budgets, the forge, metrics and the agent API on TCP.

A real ``hyperhive serve`` of its own (local runtime, stand-in agents, the sandbox off:
the attacks are on the controller, and the test plays the agent's shell, writing only
where the agent can write: its own state dir ``<state>/agents/<a>/state``), with

- a swarm budget (``budget: {usdPerDay: 1}``), spend reported over the agent API;
- the agent API on TCP (``api:``), Prometheus ``/metrics`` on loopback (``metrics:``);
- the hive forge: the forge stand-in (``tests/forge/standin.py``), polled every second.

Replayed, each counted in the session's tally:

- **spend reports**: an agent reporting for another, negative / NaN / infinite / huge /
  wrongly typed amounts, malformed JSON: 400 naming the field, never a 500;
- **the agent's own turn-stats file** (the controller reads it for budgets and
  metrics): rows with a negative, infinite or huge cost or token count cannot take back
  spend already counted (so unblock a swarm over budget) nor make the report a 500;
  thousands of distinct model, tool and outcome names do not become thousands of
  Prometheus series;
- **files that are not what they seem** in the agent's state dir: the turn-stats file,
  its WAL and ``forge-token`` swapped for FIFOs (an ``open`` that never returns), and
  ``forge-url`` a symlink to a file of the operator's (which the controller would
  overwrite): the controller keeps answering, keeps delivering forge notifications to
  other agents, and writes nothing through the link;
- **/metrics**: a foreign ``Host`` (DNS rebinding), a mutation, an oversized body.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from controller.frontend.files import Capabilities
from controller.stats import STATS_DB
from schemas.client import ApiClient
from schemas.names import MANAGER
from tests.forge.standin import StandinForgejo
from tests.realserve import (
    free_port,
    wait_for,
)
from tests.security.support import (
    SESSION_COOKIE,
    Reply,
    Tally,
    cookie_of,
    http,
    sample_peak,
)
from tests.standinserve import Served, admin_client, credential, launch, request_and_approve, shut

ROUTES = "new routes: bad input is a 4xx naming the field"
CAPS = "custom front-end file capabilities: replayed elsewhere"
SPEND = "agent API: forged or bent spend reports (400)"
STATS = "agent's turn-stats file: spend and labels bounded"
FILES = "agent's state files: FIFOs and symlinks"
METRICS = "/metrics: rebinding and hostile requests"

STATS_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL, duration_ms INTEGER, model TEXT,
    result_kind TEXT, input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER,
    cache_creation_tokens INTEGER, cost_usd REAL, tool_calls INTEGER, tool_breakdown TEXT
)
"""


@dataclass
class NewHive(Served):
    """The controller with budgets, the forge, metrics and the agent API on TCP."""

    api_port: int
    metrics_port: int
    forge: StandinForgejo
    dash_port: int = 0
    git_port: int = 0

    @property
    def admin(self) -> ApiClient:
        return admin_client(self.layout, timeout=20)

    def agent(self, name: str) -> ApiClient:
        token = credential(self.layout, name)
        return ApiClient(f"http://127.0.0.1:{self.api_port}", timeout=20, token=token)

    def auth(self, name: str) -> tuple[str, str]:
        return ("Authorization", f"Bearer {credential(self.layout, name)}")

    @property
    def api(self) -> tuple[str, int]:
        return ("127.0.0.1", self.api_port)

    @property
    def metrics(self) -> tuple[str, int]:
        return ("127.0.0.1", self.metrics_port)

    @property
    def scrape_auth(self) -> tuple[str, str]:
        """The bearer of ``<state>/metrics.token`` (made by the controller: no token_file)."""
        path = self.layout.metrics_token
        return ("Authorization", f"Bearer {path.read_text().strip() if path.exists() else ''}")

    def state_of(self, agent: str) -> Path:
        """The agent's own state dir: all the test writes, as the agent's shell would."""
        return self.layout.agent_state(agent)


@pytest.fixture(scope="module")
def new_hive() -> Iterator[NewHive]:
    tmp = Path(tempfile.mkdtemp(prefix="hhnew-", dir="/tmp"))
    forge = StandinForgejo().start()
    api_port, metrics_port, dash_port = free_port(), free_port(), free_port()
    git_port = free_port()
    token_file = tmp / "forge-admin-token"
    token_file.write_text(forge.admin_token + "\n")
    try:
        proc, log = launch(
            tmp,
            dashboard_port=dash_port,
            resync_seconds=30,
            api={"listen": f"127.0.0.1:{api_port}"},
            git={"listen": f"127.0.0.1:{git_port}"},
            metrics={"port": metrics_port},
            budget={"usdPerDay": 1.0},
            forge={"url": forge.url, "admin_token_file": str(token_file), "poll_seconds": 1},
        )
    except BaseException:
        forge.stop()
        log_text = (tmp / "serve.log").read_text(errors="replace")
        sys.stderr.write("---- serve log (tail) ----\n" + log_text[-3000:])
        raise
    h = NewHive(tmp, proc, api_port, metrics_port, forge, dash_port, git_port)
    try:
        request_and_approve(h.agent(MANAGER), h.admin, ("alice", "bob"))
        for name in ("alice", "bob"):
            wait_for(
                f"{name}'s forge token", lambda n=name: (h.state_of(n) / "forge-token").exists()
            )
        yield h
    finally:
        shut(proc, log, tmp / "state")
        forge.stop()
        sys.stderr.write("---- serve log (tail) ----\n" + h.log()[-3000:])


def swarm_spent(h: NewHive) -> float:
    """What the swarm spent today, as the operator's ``GET /budget`` says."""
    return float(h.admin.get("/budget")["swarm"]["spent_usd"])


def alice_spent(h: NewHive) -> float:
    """What alice spent today by her own reports, as the operator's ``GET /budget`` says."""
    rows = h.admin.get("/budget?name=alice")["agents"]
    return float(rows[0]["spent_usd"])


def stats_db(h: NewHive, agent: str) -> sqlite3.Connection:
    path = h.state_of(agent) / STATS_DB
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(STATS_SCHEMA)
    return con


# --- spend reports ----------------------------------------------------------------------


def test_spend_reports_cannot_be_forged_or_bent(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    good = {"turn_id": 1, "started_at": time.time(), "cost_usd": 0.01, "tokens": 10}
    cases: list[tuple[str, bytes | dict[str, Any], str]] = [
        ("for another agent", {**good, "agent": "bob"}, "agent"),
        ("as the operator", {**good, "from": "operator"}, "from"),
        ("negative cost", {**good, "cost_usd": -100.0}, "cost_usd"),
        ("huge cost", {**good, "cost_usd": 1e308}, "cost_usd"),
        ("cost as a string", {**good, "cost_usd": "1"}, "cost_usd"),
        ("negative tokens", {**good, "tokens": -1}, "tokens"),
        ("tokens past 64 bits", {**good, "tokens": 2**70}, "tokens"),
        ("tokens as a float", {**good, "tokens": 1.5}, "tokens"),
        ("turn id 0", {**good, "turn_id": 0}, "turn_id"),
        ("negative start", {**good, "started_at": -1}, "started_at"),
        ("missing cost", {k: v for k, v in good.items() if k != "cost_usd"}, "cost_usd"),
    ]
    raw = json.dumps(good)
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        # not JSON at all: refused by the body parser, naming the field
        text = raw.replace('"cost_usd": 0.01', f'"cost_usd": {literal}')
        cases.append((f"cost {literal}", text.encode(), "cost_usd"))
    for what, body, field in cases:
        headers = [h.auth("alice")]
        if isinstance(body, bytes):
            headers.append(("Content-Type", "application/json"))
        reply = http(h.api, "POST", "/spend", headers=headers, body=body)
        ok = reply.status == 400 and field in str(reply.error.get("field"))
        tally.record(SPEND, f"POST /spend {what}", ok, reply.brief())
    for what, body in (
        ("malformed JSON", b'{"turn_id": 1,'),
        ("an array", b"[1, 2]"),
        ("deep nesting", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ):
        reply = http(h.api, "POST", "/spend", headers=[h.auth("alice"),
                     ("Content-Type", "application/json")], body=body)  # fmt: skip
        tally.record(SPEND, f"POST /spend {what}", 400 <= reply.status < 500, reply.brief())
    tally.assert_refused(SPEND)


# --- the agent's own turn-stats file ----------------------------------------------------


def test_an_agents_stats_file_cannot_take_back_spend(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    now = time.time()
    alice = h.agent("alice")
    alice.post("/spend", {"turn_id": 1, "started_at": now, "cost_usd": 5.0, "tokens": 100})
    wait_for("alice's spend counted", lambda: alice_spent(h) >= 5.0, timeout=20)
    held = alice.post("/recv", {"wait_seconds": 0}).get("held")
    assert held, "alice is over the $1 swarm budget by her own reports: she must be held"
    con = stats_db(h, "alice")
    bad_rows: list[tuple[str, float, int]] = [
        ("a negative cost", -1e9, 0),
        ("a cost of -inf", float("-inf"), 0),
        ("a NaN cost", float("nan"), 0),
        ("a cost of +inf", float("inf"), 0),
        ("negative tokens", 0.0, -(2**62)),
        ("tokens that overflow a sum", 0.0, 2**62),
        ("tokens that overflow a sum again", 0.0, 2**62),
    ]
    for i, (what, cost, tokens) in enumerate(bad_rows, start=100):
        con.execute(
            "INSERT INTO turns (id, started_at, model, result_kind, input_tokens, cost_usd) "
            "VALUES (?, ?, 'claude', 'ok', ?, ?)",
            (i, now + i / 1000, tokens, cost),
        )
        time.sleep(1.2)  # the swarm ingest is reused for a second
        reply = http(h.layout.host_sock, "GET", "/budget",
                     headers=[("Authorization", f"Bearer {h.admin.token}")])  # fmt: skip
        doc = reply.json() or {}
        rows = (doc.get("agents") or []) if isinstance(doc, dict) else []
        spent = next((r.get("spent_usd") for r in rows if r.get("agent") == "alice"), None)
        ok = reply.status == 200 and isinstance(spent, float | int) and 5.0 <= spent < 1e7
        tally.record(STATS, f"stats row with {what}: GET /budget", ok,
                     f"{reply.status} spent={spent!r} {reply.brief()[:200]}")  # fmt: skip
        # (bob is not held by alice's reports: test_budget_bounds.py)
        r = http(h.api, "POST", "/recv", headers=[h.auth("alice")], body={"wait_seconds": 0})
        tally.record(STATS, f"stats row with {what}: alice's recv still held", r.status == 200
                     and bool((r.json() or {}).get("held")), r.brief())  # fmt: skip
    con.close()
    tally.assert_refused(STATS)


def _series(text: str, agent: str, name: str) -> int:
    return sum(
        1 for line in text.splitlines() if line.startswith(name) and f'agent="{agent}"' in line
    )


def test_stats_labels_stay_bounded(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    con = stats_db(h, "bob")
    now = time.time() - 3 * 86400  # not today: no budget effect
    rows = [
        (
            now + i,
            f"model-{i}",
            f"outcome-{i}",
            json.dumps({f"mcp__evil__tool{i}": 1, "Bash": 1}),
            -5.0 if i % 2 else float("nan"),
        )
        for i in range(3000)
    ]
    con.executemany(
        "INSERT INTO turns (started_at, model, result_kind, tool_breakdown, cost_usd, "
        "duration_ms, input_tokens) VALUES (?, ?, ?, ?, ?, -1000, -7)",
        rows,
    )
    con.close()

    def scraped() -> str | None:
        r = http(h.metrics, "GET", "/metrics", headers=[h.scrape_auth])
        return r.body.decode() if r.status == 200 and 'agent="bob"' in r.body.decode() else None

    text = wait_for("bob's turns in /metrics", scraped, timeout=30)
    for name, cap in (
        ("hyperhive_turns_total", 16 * 5),
        ("hyperhive_turn_tool_calls_total", 64),
        ("hyperhive_turn_cost_usd_total", 16),
        ("hyperhive_turn_tokens_total", 16 * 4),
    ):
        n = _series(text, "bob", name)
        tally.record(STATS, f"3000 distinct names: {name} series for bob", n <= cap, f"{n} series")
    negative = [ln for ln in text.splitlines() if 'agent="bob"' in ln and " -" in ln]
    tally.record(STATS, "negative counters from the stats file", not negative, str(negative[:3]))
    nan = [ln for ln in text.splitlines() if 'agent="bob"' in ln and ln.endswith(("NaN", "Inf"))]
    tally.record(STATS, "NaN / Inf counters from the stats file", not nan, str(nan[:3]))
    tally.figure("/metrics size with 3000 hostile turn rows", f"{len(text) // 1024} KiB")
    tally.assert_refused(STATS)


# --- files that are not what they seem ---------------------------------------------------


def _answers(h: NewHive) -> list[tuple[str, Reply]]:
    """What must keep answering; a request that times out is a ``Reply`` with status 0."""
    key = ("Authorization", f"Bearer {h.admin.token}")
    asks: list[tuple[str, Any, str, str, list[tuple[str, str]], Any]] = [
        ("GET /budget on host.sock", h.layout.host_sock, "GET", "/budget", [key], b""),
        ("GET /metrics", h.metrics, "GET", "/metrics", [h.scrape_auth], b""),
        ("bob's recv", h.api, "POST", "/recv", [h.auth("bob")], {"wait_seconds": 0}),
        ("alice's recv", h.api, "POST", "/recv", [h.auth("alice")], {"wait_seconds": 0}),
    ]
    out = []
    for what, target, method, path, headers, body in asks:
        try:
            reply = http(target, method, path, headers=headers, body=body, timeout=10)
        except OSError as exc:  # TimeoutError included: the controller is stuck
            reply = Reply(0, (), repr(exc).encode())
        out.append((what, reply))
    return out


def test_fifos_and_symlinks_in_an_agents_state(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    alice = h.state_of("alice")
    victim = h.tmp / "operator-file"  # stands for operator.key, a hook, the broker database
    victim.write_text("the operator's\n")
    # forge-url -> the operator's file; forge-token gone, so the worker provisions again
    (alice / "forge-url").unlink()
    (alice / "forge-url").symlink_to(victim)
    (alice / "forge-token").unlink()
    wait_for("alice's forge token again", lambda: (alice / "forge-token").exists(), timeout=30)
    time.sleep(1)
    written = victim.read_text()
    tally.record(FILES, "forge-url a symlink to the operator's file: not written through",
                 written == "the operator's\n", repr(written[:80]))  # fmt: skip
    tally.record(FILES, "forge-url is a regular file again", (alice / "forge-url").is_file()
                 and not (alice / "forge-url").is_symlink(), "")  # fmt: skip

    # FIFOs where the controller reads: an open() that never returns
    for name in (STATS_DB, f"{STATS_DB}-wal", "forge-token"):
        path = alice / name
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    h.forge._add_user("carol")
    h.forge.issue("carol/site", 1, "Help", "carol", assignees=["bob"])
    tid = h.forge.notify("bob", "carol/site", 1)
    for round_ in range(3):
        time.sleep(1.5)  # several forge ticks, budget checks and metrics ingests
        for what, reply in _answers(h):
            tally.record(FILES, f"{what} with FIFOs in alice's state (round {round_})",
                         reply.status == 200, reply.brief()[:200])  # fmt: skip

    def delivered() -> bool:
        msgs = h.admin.get("/messages?since=0&limit=1000")["messages"]
        return any(m["from"] == "forge" and m["to"] == "bob" for m in msgs)

    try:
        wait_for(f"bob's forge notification {tid}", delivered, timeout=20)
        got = True
    except AssertionError:
        got = False
    tally.record(FILES, "the forge keeps delivering to bob", got, "no message from forge")
    for name in (STATS_DB, f"{STATS_DB}-wal"):
        (alice / name).unlink(missing_ok=True)
    tally.assert_refused(FILES)


# --- /metrics -------------------------------------------------------------------------


def test_metrics_refuses_rebinding_and_hostile_requests(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    cases: list[tuple[str, Reply, bool]] = []
    r = http(h.metrics, "GET", "/metrics", host="evil.example")
    cases.append(("Host evil.example", r, r.status in (403, 421)))
    r = http(h.metrics, "GET", "/metrics", host=f"evil.example:{h.metrics_port}")
    cases.append(("Host evil.example:port", r, r.status in (403, 421)))
    r = http(h.metrics, "POST", "/metrics", body={"a": 1})
    cases.append(("POST /metrics", r, 400 <= r.status < 500))
    r = http(h.metrics, "GET", "/metrics", body=b"x" * (1 << 20),
             headers=[("Content-Type", "application/json")])  # fmt: skip
    cases.append(("1 MiB body", r, 400 <= r.status < 500))
    r = http(h.metrics, "GET", "/../../state/operator.key")
    cases.append(("path traversal", r, r.status in (401, 404)))
    # loopback is no boundary: an agent's shell shares the host network (local runtime)
    r = http(h.metrics, "GET", "/metrics")
    cases.append(("a local process without the scrape token", r, r.status == 401))
    r = http(h.metrics, "GET", "/metrics", headers=[h.auth("alice")])
    cases.append(("an agent's own credential as the bearer", r, r.status == 401))
    token = h.layout.metrics_token
    mode = token.stat().st_mode & 0o777 if token.exists() else None
    cases.append(("metrics.token made, 0600", Reply(0, (), str(mode).encode()), mode == 0o600))
    r = http(h.metrics, "GET", "/metrics", headers=[h.scrape_auth])
    cases.append(("the operator's scrape with the token", r, r.status == 200))
    for what, reply, ok in cases:
        tally.record(METRICS, what, ok, reply.brief())
    tally.assert_refused(METRICS)


# --- the new routes, fed bad input; signed file paths replayed ---------------------------


def _login(h: NewHive) -> str:
    token = h.admin.post("/login", {})["token"]
    reply = http(("127.0.0.1", h.dash_port), "GET", f"/login?token={token}")
    cookie = cookie_of(reply)
    assert cookie, reply.brief()
    return cookie


BAD_ALLOWS: tuple[tuple[str, Any, str], ...] = (
    ("usd missing", {"agent": "alice"}, "usd"),
    ("usd a string", {"swarm": True, "usd": "5"}, "usd"),
    ("usd negative", {"swarm": True, "usd": -5}, "usd"),
    ("usd huge", {"swarm": True, "usd": 1e300}, "usd"),
    ("usd a bool", {"swarm": True, "usd": True}, "usd"),
    ("usd and tokens zero", {"swarm": True, "usd": 0}, "usd"),
    ("tokens a float", {"swarm": True, "usd": 1, "tokens": 1.5}, "tokens"),
    ("tokens past 64 bits", {"swarm": True, "usd": 1, "tokens": 2**80}, "tokens"),
    ("both agent and swarm", {"swarm": True, "agent": "alice", "usd": 1}, "agent"),
    ("neither agent nor swarm", {"usd": 1}, "agent"),
    ("an unknown agent", {"agent": "zed", "usd": 1}, "agent"),
    ("an agent without a budget", {"agent": "alice", "usd": 1}, "agent"),
    ("agent with a newline", {"agent": "alice\n", "usd": 1}, "agent"),
    ("agent a list", {"agent": ["alice"], "usd": 1}, "agent"),
    ("swarm a string", {"swarm": "yes", "usd": 1}, "swarm"),
    ("note too long", {"swarm": True, "usd": 1, "note": "x" * 600}, "note"),
    ("an extra field", {"swarm": True, "usd": 1, "by": "manager"}, "by"),
    ("a lone surrogate in the note", '{"swarm": true, "usd": 1, "note": "\\ud800"}', "note"),
    ("malformed JSON", '{"swarm": true,', ""),
    ("an array", "[1]", ""),
)


def test_budget_routes_refuse_bad_input_with_a_4xx(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    before = h.admin.get("/budget")["swarm"]
    cookie = _login(h)
    dash = ("127.0.0.1", h.dash_port)
    origin = ("Origin", f"http://127.0.0.1:{h.dash_port}")
    key = ("Authorization", f"Bearer {h.admin.token}")
    json_ct = ("Content-Type", "application/json")
    for what, body, field in BAD_ALLOWS:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        for where, target, path, headers in (
            ("host.sock", h.layout.host_sock, "/budget/allow", [key, json_ct]),
            ("dashboard", dash, "/api/budget/allow",
             [("Cookie", f"{SESSION_COOKIE}={cookie}"), origin, json_ct]),
        ):  # fmt: skip
            reply = http(target, "POST", path, headers=headers, body=raw)
            named = field in str(reply.error.get("field") or "")
            ok = 400 <= reply.status < 500 and (named or not field)
            tally.record(ROUTES, f"{where} {path}: {what}", ok, reply.brief())
    for query in ("?name=zed", "?name=" + "a" * 5000, "?name=%00", "?name=alice&name=bob"):
        for where, target, path, headers in (
            ("host.sock", h.layout.host_sock, "/budget", [key]),
            ("dashboard", dash, "/api/budget", [("Cookie", f"{SESSION_COOKIE}={cookie}")]),
        ):
            reply = http(target, "GET", path + query, headers=headers)
            tally.record(ROUTES, f"{where} GET {path}{query[:40]}",
                         reply.status < 500, reply.brief())  # fmt: skip
    # the agent API: an agent granting itself or the swarm an extension is not a route there
    for path in ("/budget/allow", "/api/budget/allow", "/budget"):
        reply = http(h.api, "POST", path, headers=[h.auth("alice")], body={"swarm": True, "usd": 1})
        tally.record(ROUTES, f"an agent's POST {path} on the agent API",
                     reply.status in (404, 405), reply.brief())  # fmt: skip
    after = h.admin.get("/budget")["swarm"]
    tally.record(ROUTES, "no extension was granted", after.get("extensions") ==
                 before.get("extensions"), f"{before} -> {after}")  # fmt: skip
    tally.assert_refused(ROUTES)


def test_file_capabilities_cannot_be_replayed(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    key = h.layout.operator_key.read_text().strip()
    caps = Capabilities(key)
    alices = caps.issue("alice")
    expiry, _, mac = alices.partition(".")
    old = Capabilities(key, clock=lambda: time.time() - 13 * 3600).issue("alice")
    other = Capabilities("A" * 43).issue("alice")
    dash = ("127.0.0.1", h.dash_port)
    for what, path in (
        ("alice's capability on bob's files", f"/agents/bob/files/{alices}/ui/"),
        ("alice's capability on the manager's", f"/agents/manager/files/{alices}/ui/index.html"),
        ("an expired capability", f"/agents/alice/files/{old}/ui/"),
        ("a later expiry, same mac", f"/agents/alice/files/{int(expiry) + 3600}.{mac}/ui/"),
        ("a capability under another key", f"/agents/alice/files/{other}/ui/"),
        ("no mac", f"/agents/alice/files/{expiry}./ui/"),
        ("a traversal out of files/", f"/agents/alice/files/{alices}/../../api/state"),
        ("a traversal to the dashboard API", "/agents/alice/files/x/../../../api/state"),
        ("an encoded traversal", "/agents/alice/files/x/%2e%2e/%2e%2e/%2e%2e/api/state"),
    ):
        reply = http(dash, "GET", path)
        ok = reply.status in (401, 404) and b'"agents"' not in reply.body
        tally.record(CAPS, what, ok, reply.brief())
    # a valid capability opens nothing on a route that is not a custom file
    for path in (f"/agents/alice/files/{alices}/", f"/agents/alice/files/{alices}/ui/x.js"):
        reply = http(dash, "POST", path, body={})
        tally.record(CAPS, f"POST {path}", 400 <= reply.status < 500, reply.brief())
    tally.assert_refused(CAPS)


SECRETS = "forge tokens: owner-only, never shown"


def test_forge_tokens_are_owner_only_and_never_shown(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    wait_for("bob's forge token", lambda: (h.state_of("bob") / "forge-token").exists())
    token_file = h.state_of("bob") / "forge-token"
    token = token_file.read_text().strip()
    assert token, "bob's forge token is empty"
    mode = token_file.stat().st_mode & 0o777
    tally.record(SECRETS, "forge-token is 0600", mode == 0o600, oct(mode))
    url_mode = (h.state_of("bob") / "forge-url").stat().st_mode & 0o077
    tally.record(SECRETS, "forge-url is not group/world-writable", url_mode & 0o022 == 0,
                 oct(url_mode))  # fmt: skip
    tally.record(SECRETS, "not in the controller's log", token not in h.log(), "")
    key = ("Authorization", f"Bearer {h.admin.token}")
    for path in ("/status", "/agents/bob", "/agents/bob/config", "/messages?since=0&limit=1000"):
        reply = http(h.layout.host_sock, "GET", path, headers=[key])
        hidden = reply.status < 500 and token.encode() not in reply.body
        tally.record(SECRETS, f"not in host.sock GET {path}", hidden, reply.brief())
    reply = http(h.metrics, "GET", "/metrics", headers=[h.scrape_auth])
    tally.record(SECRETS, "not in /metrics", token.encode() not in reply.body, "")
    shown = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(p.info.get("cmdline") or []) + " ".join(
                f"{k}={v}" for k, v in (p.info.get("environ") or {}).items()
            )
        except psutil.Error:
            continue
        if token in text:
            shown.append(p.pid)
    tally.record(SECRETS, "not in any process' command line or environment", not shown,
                 str(shown))  # fmt: skip
    tally.assert_refused(SECRETS)


HOSTILE_SCHEMAS = (
    (
        "turns an endless recursive view",
        "CREATE VIEW turns AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT x AS id, x AS started_at, 1.0 AS cost_usd, 'm' AS model FROM c",
    ),
    (
        "a 100 MB generated column per row",
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, started_at REAL, cost_usd REAL, "
        "model TEXT AS (printf('%.*c', 100000000, 'x')));"
        "INSERT INTO turns (started_at, cost_usd) VALUES (1, 0), (2, 0), (3, 0)",
    ),
    (
        "a slow generated column",
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, started_at REAL, cost_usd REAL, "
        "model TEXT AS (hex(zeroblob(1000000))));"
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000) "
        "INSERT INTO turns (started_at, cost_usd) SELECT x, 0 FROM c",
    ),
)


def test_hostile_stats_schemas_do_not_stall_the_controller(new_hive: NewHive, tally: Tally) -> None:
    h = new_hive
    path = h.state_of("alice") / STATS_DB
    for what, sql in HOSTILE_SCHEMAS:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        con = sqlite3.connect(path, isolation_level=None)
        con.executescript(sql)
        con.close()
        rss = psutil.Process(h.proc.pid).memory_info().rss
        started = time.monotonic()
        answers = _answers(h) + _answers(h)
        took = time.monotonic() - started
        grew = (psutil.Process(h.proc.pid).memory_info().rss - rss) / 2**20
        for name, reply in answers:
            tally.record(STATS, f"alice's stats file with {what}: {name}", reply.status == 200,
                         reply.brief()[:200])  # fmt: skip
        tally.record(STATS, f"alice's stats file with {what}: memory", grew < 300,
                     f"controller grew {grew:.0f} MiB, answers took {took:.1f} s")  # fmt: skip
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    tally.assert_refused(STATS)


def test_a_huge_stats_file_is_counted_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.budget import ledger as ledger_module
    from controller.budget.core import day_window
    from controller.budget.ledger import INGEST_ROWS, Ledger

    stats = tmp_path / STATS_DB
    con = sqlite3.connect(stats, isolation_level=None)
    con.executescript(STATS_SCHEMA)
    now = time.time()
    n = 2 * INGEST_ROWS + 123
    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO turns (started_at, cost_usd, input_tokens) VALUES (?, 0.001, 1)",
        ((now,) for _ in range(n)),
    )
    con.execute("COMMIT")
    con.close()
    ledger = Ledger(tmp_path / "budget.sqlite")
    # a big file is read once a second at most, however often the agent asks
    assert [ledger.ingest("alice", stats) for _ in range(3)] == [INGEST_ROWS, 0, 0]
    monkeypatch.setattr(ledger_module, "INGEST_EVERY", 0.0)
    got = [ledger.ingest("alice", stats) for _ in range(3)]
    assert got == [INGEST_ROWS, 123, 0]
    spend = ledger.spend("alice", day_window(now))
    assert spend.turns == n and spend.tokens == n


BOMB = "a manager's decompression bomb on meta.git"


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "m", "GIT_AUTHOR_EMAIL": "m@x",
           "GIT_COMMITTER_NAME": "m", "GIT_COMMITTER_EMAIL": "m@x"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def _manager_clone(h: NewHive, tmp_path: Path) -> tuple[list[str], Path]:
    """The manager's clone of meta.git over the git listener, made with its credential in
    ``tmp_path/mgr``: the ``git -c`` options that present that credential, and the clone."""
    cred = credential(h.layout, MANAGER)
    auth = ["-c", f"http.extraHeader=Authorization: Bearer {cred}"]
    clone = tmp_path / "mgr"
    r = _git(*auth, "clone", "-q", f"http://127.0.0.1:{h.git_port}/meta.git", str(clone),
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return auth, clone


def _peak_during(proc: psutil.Process, fn: Any) -> tuple[Any, int]:
    """``fn()``'s result and ``proc``'s peak resident memory while it ran (bytes)."""
    stop = threading.Event()
    peaks: list[int] = []

    def sample() -> None:
        peaks.extend(sample_peak(lambda: proc.memory_info().rss, stop))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn()
    finally:
        stop.set()
        sampler.join()
    return result, max(peaks, default=0)


def test_a_managers_pushed_bomb_is_refused_unread(
    new_hive: NewHive, tally: Tally, tmp_path: Path
) -> None:
    """A few hundred KiB of pack holding 300 MB of zeros (a file, then a manifest), pushed
    to the manager's namespace and proposed: refused from the objects' headers, the
    controller's memory unmoved."""
    h = new_hive
    auth, clone = _manager_clone(h, tmp_path)
    proc = psutil.Process(h.proc.pid)
    for what, rel in (("a 300 MB file", "agents/zed/big.bin"),
                      ("a 300 MB manifest", "agents/zed/agent.yaml")):  # fmt: skip
        (clone / "agents" / "zed").mkdir(parents=True, exist_ok=True)
        (clone / "agents" / "zed" / "agent.yaml").write_text(
            "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: zed\n"
        )
        with open(clone / rel, "wb") as f:
            f.truncate(300 * 1024 * 1024)
        _git("add", "-A", cwd=clone)
        _git("commit", "-q", "-m", what, cwd=clone)
        head = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
        r = _git(*auth, "push", "-q", "origin", f"+HEAD:refs/hyperhive/manager/{head}", cwd=clone)
        assert r.returncode == 0, r.stderr
        rss = proc.memory_info().rss

        def ask(head: str = head) -> Reply:
            reply = http(h.api, "POST", "/request_apply_commit", headers=[h.auth(MANAGER)],
                         body={"commit": head, "note": "bomb"}, timeout=120)  # fmt: skip
            h.admin.get("/proposals?pending=1")  # what the operator's views read next
            return reply

        reply, peak = _peak_during(proc, ask)
        grew = (max(peak, rss) - rss) / 2**20
        named = reply.status == 400 and reply.error.get("field") == rel
        tally.record(BOMB, f"{what}: request_apply_commit refused naming it", named, reply.brief())
        tally.record(BOMB, f"{what}: controller memory at its peak", grew < 100,
                     f"grew {grew:.0f} MiB")  # fmt: skip
        _git("rm", "-q", "--cached", rel, cwd=clone)
        (clone / rel).unlink()
        _git("commit", "-q", "-m", "drop", cwd=clone)
    pending = [p for p in h.admin.get("/proposals?pending=1")["proposals"]]
    tally.record(BOMB, "no proposal was made", not any("bomb" in str(p.get("note")) for p in
                 pending), str(pending)[:300])  # fmt: skip
    tally.assert_refused(BOMB)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_managers_gzip_bomb_push_is_cut_off(
    new_hive: NewHive, tally: Tally, tmp_path: Path
) -> None:
    """A push whose body is 240 MiB of pack (120 blobs stored uncompressed) gzipped to
    well under a MiB: ``git http-backend`` inflates it, so the body limit alone does not bound
    what lands on disk; ``receive.maxInputSize`` must."""
    h = new_hive
    repo = tmp_path / "bomb"
    _git("init", "-q", str(repo), cwd=tmp_path)
    # past receive.unpackLimit (100 objects) the pack is kept as sent: uncompressed blobs
    blobs = []
    for i in range(120):
        f = repo / f"zeros{i}"
        with open(f, "wb") as out:
            out.truncate(2 * 1024 * 1024)
            out.write(str(i).encode())
        blobs.append(_git("hash-object", "-w", f.name, cwd=repo).stdout.strip())
        f.unlink()
    listing = "".join(f"100644 blob {b}\tzeros{i}\n" for i, b in enumerate(blobs))
    tree = subprocess.run(["git", "mktree"], cwd=repo, input=listing,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    commit = _git("commit-tree", "-m", "bomb", tree, cwd=repo).stdout.strip()
    objects = "\n".join([commit, tree, *blobs]) + "\n"
    pack = subprocess.run(
        ["git", "-c", "pack.compression=0", "pack-objects", "--window=0", "--stdout", "-q"],
        cwd=repo, input=objects.encode(), capture_output=True, check=True,
    ).stdout  # fmt: skip
    ref = "refs/hyperhive/manager/bomb"
    line = f"{'0' * 40} {commit} {ref}\0report-status\n".encode()
    body = f"{len(line) + 4:04x}".encode() + line + b"0000" + pack
    packed = gzip.compress(body, 9)
    before = _dir_bytes(h.layout.meta_git)
    cred = h.layout.agent_credential(MANAGER).read_text().strip()
    reply = http(
        ("127.0.0.1", h.git_port),
        "POST",
        "/meta.git/git-receive-pack",
        headers=[
            ("Authorization", f"Bearer {cred}"),
            ("Content-Type", "application/x-git-receive-pack-request"),
            ("Content-Encoding", "gzip"),
        ],
        body=packed,
        timeout=120,
    )
    grew = (_dir_bytes(h.layout.meta_git) - before) / 2**20
    tally.figure(
        "gzip bomb push", f"{len(packed) // 1024} KiB sent for {len(pack) >> 20} MiB of pack"
    )
    tally.record(BOMB, "a 240 MiB pack in a gzipped push: meta.git growth", grew < 70,
                 f"meta.git grew {grew:.0f} MiB; {reply.brief()[:200]}")  # fmt: skip
    has = _git(
        "--git-dir", str(h.layout.meta_git), "rev-parse", "-q", "--verify", ref, cwd=tmp_path
    )
    tally.record(BOMB, "a 240 MiB pack in a gzipped push: the ref", has.returncode != 0,
                 has.stdout)  # fmt: skip
    tally.assert_refused(BOMB)


def test_a_managers_huge_commit_object_is_refused_unread(
    new_hive: NewHive, tally: Tally, tmp_path: Path
) -> None:
    """A commit object of 300 MB (its message), a few hundred KiB in the pack, pushed to the
    manager's namespace and named by ref, full id and abbreviated id."""
    h = new_hive
    auth, clone = _manager_clone(h, tmp_path)
    tree = _git("rev-parse", "HEAD^{tree}", cwd=clone).stdout.strip()
    parent = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    raw = clone / "commit.raw"
    with open(raw, "wb") as f:
        f.write(
            f"tree {tree}\nparent {parent}\nauthor m <m@x> 1 +0000\n"
            f"committer m <m@x> 1 +0000\n\n".encode()
        )
        f.write(b"a" * (300 * 1024 * 1024))
    big = _git("hash-object", "-w", "--literally", "-t", "commit", str(raw), cwd=clone)
    raw.unlink()
    commit = big.stdout.strip()
    assert len(commit) == 40, big.stderr
    r = _git(*auth, "push", "-q", "origin", f"{commit}:refs/hyperhive/manager/huge", cwd=clone)
    assert r.returncode == 0, r.stderr
    proc = psutil.Process(h.proc.pid)
    for what, name in (("its ref", "huge"), ("its id", commit), ("an abbreviated id", commit[:10])):
        rss = proc.memory_info().rss

        def ask(name: str = name) -> Reply:
            return http(h.api, "POST", "/request_apply_commit", headers=[h.auth(MANAGER)],
                        body={"commit": name, "note": "bomb"}, timeout=120)  # fmt: skip

        reply, peak = _peak_during(proc, ask)
        grew = (max(peak, rss) - rss) / 2**20
        tally.record(BOMB, f"a 300 MB commit named by {what}: refused",
                     400 <= reply.status < 500, reply.brief())  # fmt: skip
        tally.record(BOMB, f"a 300 MB commit named by {what}: controller memory at its peak",
                     grew < 100, f"grew {grew:.0f} MiB")  # fmt: skip
    r = _git(*auth, "push", "-q", "origin", ":refs/hyperhive/manager/huge", cwd=clone)
    tally.assert_refused(BOMB)
