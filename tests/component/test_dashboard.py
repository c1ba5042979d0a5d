"""Component tests of the dashboard app with a fake SwarmOps and an in-memory broker.

Plain endpoints go through ``falcon.testing`` with the app behind the same
``hivehttp`` guard (browser policy) ``hyperhive serve`` puts in front of it and
a valid session cookie; the streams and the agent UI proxy through a real
``hivehttp`` listener on 127.0.0.1, with a real ASGI app on a unix socket
standing in for an agent's web UI.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
from dashboard_fakes import (
    SSE,
    FakeBroker,
    FakeOps,
    demo,
    logged_in,
    make_app,
    serve,
    session_cookie,
)

from controller.dashboard.state import Snapshot
from controller.dashboard.views import (
    agent_view,
    describe_view,
    normalize_conditions,
    tombstone_view,
)
from controller.drivers.journal import HARNESS_UNIT
from controller.errors import Conflict, NotFound, TransientError
from controller.ops import Lifecycle
from hivehttp.encoding import accepts_gzip
from schemas.names import MANAGER, OPERATOR
from schemas.wire import Message


@pytest.fixture
def fakes() -> tuple[FakeOps, FakeBroker]:
    """The demo swarm."""
    return demo()


@pytest.fixture
def client(fakes: tuple[FakeOps, FakeBroker]) -> falcon.testing.TestClient:
    """A logged-in test client over the demo swarm."""
    ops, broker = fakes
    return logged_in(make_app(ops, broker))


def _error(r: falcon.testing.Result, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json["error"]
    assert err["field"] == field, err
    assert err["code"] and err["message"]
    return err


def _last_call(ops: FakeOps) -> tuple[Any, ...]:
    return ops.calls[-1]


# ----------------------------------------------------------------- static + state


def test_index_and_static(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in r.text and "MESSAGE FL0W" in r.text
    for name, ctype in (
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        r = client.simulate_get(f"/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(ctype)
    for bad in ("nope.js", "app.py", "index.html", ".hidden.js"):
        _error(client.simulate_get(f"/static/{bad}"), 404, "file")
    r = client.simulate_get("/static/..%2Fapp.py")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_state_snapshot(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    r = client.simulate_get("/api/state")
    assert r.status_code == 200
    s = r.json
    names = [a["name"] for a in s["agents"]]
    assert names[0] == MANAGER and sorted(names[1:]) == names[1:] == ["alice", "bob", "carol"]
    alice = next(a for a in s["agents"] if a["name"] == "alice")
    assert alice["needs_update"] is True
    assert alice["url"] == "/agents/alice/" and alice["web_port"] > 0
    assert alice["commit_short"] == alice["commit"][:8]
    assert alice["model"] == "haiku"
    assert {c["type"] for c in alice["conditions"]} == {"Ready", "UpToDate", "LoggedIn"}
    manager = s["agents"][0]
    assert manager["needs_update"] is False and manager["web_port"] == 8000
    assert [p["id"] for p in s["proposals"]] == [8, 7]
    p7 = s["proposals"][1]
    assert p7["title"] == "spawn dave" and p7["agents"] == ["dave"]
    assert "+apiVersion: hyperhive/v1" in p7["diff"] and p7["note"]
    assert [h["state"] for h in s["history"]] == ["deployed", "denied"]
    assert [q["id"] for q in s["questions"]] == [1, 2, 3]
    q1, q2 = s["questions"][:2]
    assert q1["options"] == ["haiku", "sonnet", "opus"] and q1["multi"] is False
    assert q1["deadline_at"] is None and q1["asked_at"] and q1["asker"] == MANAGER
    assert q2["multi"] is True and q2["deadline_at"]
    assert s["questions"][2]["options"] == []
    assert all(m["to"] == OPERATOR for m in s["inbox"]) and len(s["inbox"]) == 2
    assert s["recipients"] == ["alice", "bob", "carol", MANAGER]
    assert s["swarm"]["runtime"] == "local" and s["swarm"]["pending"] == 2
    assert s["errors"] == {}
    bob = next(a for a in s["agents"] if a["name"] == "bob")
    assert bob["crash_loop"] is True and bob["needs_login"] is True
    assert alice["crash_loop"] is False and alice["needs_login"] is False
    (frank,) = s["tombstones"]
    assert frank["id"] == next(iter(fakes[0].kept)) and frank["id"].startswith("frank-")
    assert frank["name"] == "frank" and frank["bytes"] == 18_874_368
    assert frank["path"] == f"/var/lib/hyperhive/tombstones/{frank['id']}"
    assert frank["commit_short"] == fakes[0].main_commit[:8] and frank["in_place"] is False
    assert s["tombstones"][0]["destroyed_at"].endswith("Z")


def test_state_etag_304(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/api/state")
    etag = r.headers["etag"]
    r2 = client.simulate_get("/api/state", headers={"If-None-Match": etag})
    assert r2.status_code == 304
    client.simulate_post("/api/send", json={"to": "alice", "body": "hi"})
    client.simulate_post("/api/proposals/7/approve", json={})
    assert client.simulate_get("/api/state", headers={"If-None-Match": etag}).status_code == 200


def test_state_gzipped_for_a_client_that_accepts_it(client: falcon.testing.TestClient) -> None:
    plain = client.simulate_get("/api/state")
    r = client.simulate_get("/api/state", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.headers["content-encoding"] == "gzip" and "Accept-Encoding" in r.headers["vary"]
    assert json.loads(gzip.decompress(r.content)) == plain.json
    # another representation, another ETag; each revalidates on its own
    assert r.headers["etag"] != plain.headers["etag"]
    again = client.simulate_get(
        "/api/state", headers={"Accept-Encoding": "gzip", "If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304
    refused = client.simulate_get("/api/state", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers and refused.json == plain.json


def test_accepts_gzip() -> None:
    assert accepts_gzip("gzip, deflate, br") and accepts_gzip("br;q=1, gzip;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip(None) and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip;q=zero")


class VersionedOps(FakeOps):
    """``FakeOps`` with the swarm's ``version()``: a token bumped by every change."""

    def __init__(self) -> None:
        super().__init__()
        self.rev = 0

    def version(self) -> str:
        return str(self.rev)


@pytest.mark.parametrize("versioned", [False, True])
def test_snapshot_render_is_the_build_and_its_etag_follows_the_state(versioned: bool) -> None:
    ops, broker = demo()
    if versioned:
        o: FakeOps = VersionedOps()
        o.__dict__.update({k: v for k, v in ops.__dict__.items() if k != "rev"})
    else:
        o = ops
    snap = Snapshot(o, broker)
    body, etag = snap.render()
    assert json.loads(body) == json.loads(json.dumps(snap.build(), default=str))
    assert snap.render() == (body, etag)  # nothing changed: the same body and ETag
    row = dict(next(a for a in o.agents.values() if a.get("phase") != "failed"))
    row["phase"] = "failed"
    o.add_agent(row)
    if isinstance(o, VersionedOps):
        o.rev += 1  # what the swarm does when an agent's observed state moves
    body2, etag2 = snap.render()
    assert etag2 != etag
    assert any(a["phase"] == "failed" for a in json.loads(body2)["agents"])
    # a change outside the agent cards moves the ETag too
    o.kept.clear()
    assert snap.render()[1] != etag2
    # another process (a restarted controller) never reuses an ETag
    assert Snapshot(o, broker).render()[1] != snap.render()[1]


def test_snapshot_answer_is_render_and_a_304_joins_no_body() -> None:
    import gzip

    ops, broker = demo()
    snap = Snapshot(ops, broker)
    body, etag = snap.render()
    assert snap.answer(False, ()) == (body, etag, "")
    packed, gz_etag, coding = snap.answer(True, ())
    assert (gz_etag, coding) == (etag + "-gz", "gzip") and packed is not None
    assert gzip.decompress(packed) == body
    assert snap.answer(False, {etag}) == (None, etag, "")
    assert snap.answer(True, {"x", gz_etag}) == (None, gz_etag, "")
    assert snap.answer(True, {etag})[0] is not None  # the identity tag names another body
    # a 304 is decided on the ETag alone: the ~340 KiB body is not joined for it
    snap._last_body = None
    assert snap.answer(True, {gz_etag}) == (None, gz_etag, "") and snap._last_body is None
    # a change: the old tag no longer matches and the new body shows it
    ops.kept.clear()
    body2, etag2, _ = snap.answer(False, {etag})
    assert etag2 != etag and body2 is not None and body2 != body
    assert json.loads(body2) == json.loads(json.dumps(snap.build(), default=str))


def test_state_survives_a_failing_section(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    ops.fail_status = True
    r = logged_in(make_app(ops, broker)).simulate_get("/api/state")
    assert r.status_code == 200
    assert r.json["agents"] == [] and "status exploded" in r.json["errors"]["status"]
    assert len(r.json["proposals"]) == 2


def test_state_survives_failing_tombstones(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes

    def boom() -> list[dict[str, Any]]:
        raise OSError("tombstones dir unreadable")

    ops.tombstones = boom  # type: ignore[method-assign]
    r = logged_in(make_app(ops, broker)).simulate_get("/api/state")
    assert r.status_code == 200 and r.json["tombstones"] == []
    assert "unreadable" in r.json["errors"]["tombstones"] and len(r.json["agents"]) == 4


def test_crash_loop_and_login_flags() -> None:
    def row(*conds: dict[str, Any]) -> dict[str, Any]:
        return agent_view({"name": "x", "conditions": list(conds)})

    stalled = {"type": "Stalled", "status": "True", "reason": "CrashLoopBackOff"}
    assert row(stalled)["crash_loop"] is True
    assert row({**stalled, "status": "False"})["crash_loop"] is False
    assert row({**stalled, "reason": "PermanentError"})["crash_loop"] is False
    assert row({"type": "LoggedIn", "status": "False", "reason": "NeedsLogin"})["needs_login"]
    assert not row({"type": "LoggedIn", "status": "Unknown", "reason": "NotProbed"})["needs_login"]
    assert not row({"type": "LoggedIn", "status": "True", "reason": "X"})["needs_login"]


def test_condition_shapes() -> None:
    as_map = normalize_conditions({"Ready": True, "UpToDate": {"status": "false", "reason": "X"}})
    assert as_map[0] == {
        "type": "Ready",
        "status": "True",
        "reason": "",
        "message": "",
        "last_transition_time": None,
    }
    assert as_map[1]["status"] == "False" and as_map[1]["reason"] == "X"
    row = agent_view(
        {
            "name": "x",
            "phase": "running",
            "deployed_commit": "abc",
            "web_port": 8123,
            "conditions": as_map,
        },
    )
    assert row["needs_update"] and row["commit"] == "abc" and row["url"] == "/agents/x/"
    assert row["web_port"] == 8123
    assert agent_view({"name": "y", "web_port": True})["web_port"] is None


def test_get_one_proposal(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/api/proposals/8").json["kind"] == "apply_commit"
    _error(client.simulate_get("/api/proposals/99"), 404, "id")
    _error(client.simulate_get("/api/proposals/x"), 400, "id")


# ----------------------------------------------------------------- proposals


def test_approve(client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, _ = fakes
    r = client.simulate_post("/api/proposals/7/approve", json={"note": "go"})
    assert r.status_code == 200 and r.json["state"] == "approved"
    r = client.simulate_post("/api/proposals/8/approve", json={})
    assert r.status_code == 200
    assert ("approve", 7, "go") in ops.calls and ("approve", 8, "") in ops.calls
    _error(client.simulate_post("/api/proposals/7/approve", json={}), 409, "id")
    _error(client.simulate_post("/api/proposals/42/approve", json={}), 404, "id")
    _error(client.simulate_post("/api/proposals/abc/approve", json={}), 400, "id")
    _error(client.simulate_post("/api/proposals/0/approve", json={}), 400, "id")
    _error(client.simulate_post("/api/proposals/5x/approve", json={}), 400, "id")


def test_deny_needs_a_note(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    _error(client.simulate_post("/api/proposals/7/deny", json={}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": "   "}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": ""}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": 5}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": "x", "y": 1}), 400, "y")
    assert not [c for c in ops.calls if c[0] == "deny"]
    r = client.simulate_post("/api/proposals/7/deny", json={"note": "one reviewer is enough"})
    assert r.status_code == 200 and r.json["state"] == "denied"
    assert ("deny", 7, "one reviewer is enough") in ops.calls


JSON = {"Content-Type": "application/json"}


def test_bad_bodies(client: falcon.testing.TestClient) -> None:
    url = "/api/proposals/7/approve"
    _error(
        client.simulate_post(url, body="{nope", headers={"Content-Type": "application/json"}),
        400,
        "(root)",
    )
    _error(
        client.simulate_post(url, body="[1]", headers={"Content-Type": "application/json"}),
        400,
        "(root)",
    )
    _error(
        client.simulate_post(url, body=b"\xff\xfe", headers={"Content-Type": "application/json"}),
        400,
        "(root)",
    )
    deep = "[" * 100_000 + "]" * 100_000
    err = _error(client.simulate_post(url, body=deep, headers=JSON), 400, "(root)")
    assert "deeper" in err["message"]
    err = _error(client.simulate_post(url, body='{"note": "a\\ud800b"}', headers=JSON), 400, "note")
    assert "surrogate" in err["message"]
    for ctype in ("application/xml", "text/plain", "application/x-www-form-urlencoded"):
        r = client.simulate_post(url, body="note=x", headers={"Content-Type": ctype})
        assert r.status_code == 415 and r.json["error"]["code"], ctype
    big = json.dumps({"note": "x" * (1 << 20)})
    r = client.simulate_post(url, body=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json
    r = client.simulate_get("/api/send")
    assert r.status_code == 405 and "error" in r.json
    r = client.simulate_get("/nowhere")
    assert r.status_code == 404 and "error" in r.json


def test_spawn(client: falcon.testing.TestClient) -> None:
    r = client.simulate_post("/api/spawn", json={"name": "dave"})
    assert r.status_code == 201 and r.json["kind"] == "spawn" and r.json["state"] == "pending"
    _error(client.simulate_post("/api/spawn", json={"name": "Bad Name"}), 400, "name")
    _error(client.simulate_post("/api/spawn", json={"name": "alice"}), 409, "name")
    _error(client.simulate_post("/api/spawn", json={}), 400, "name")
    _error(client.simulate_post("/api/spawn", json={"name": ["x"]}), 400, "name")


# ----------------------------------------------------------------- send


def test_send(client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]) -> None:
    _, broker = fakes
    r = client.simulate_post("/api/send", json={"to": "alice", "body": "hello"})
    assert r.status_code == 201
    m = broker.msgs[-1]
    assert (m.sender, m.recipient, m.body) == (OPERATOR, "alice", "hello")
    assert r.json == {"id": m.id, "message": m.to_json()}
    r = client.simulate_post("/api/send", json={"to": MANAGER, "body": "line 1\nline 2 & more"})
    assert r.status_code == 201 and broker.msgs[-1].body == "line 1\nline 2 & more"
    n = len(broker.msgs)
    _error(client.simulate_post("/api/send", json={"to": "alice"}), 400, "body")
    _error(client.simulate_post("/api/send", json={"to": "alice", "body": ""}), 400, "body")
    _error(client.simulate_post("/api/send", json={"to": 3, "body": "x"}), 400, "to")
    _error(client.simulate_post("/api/send", json={"to": "NOPE!", "body": "x"}), 400, "to")
    _error(client.simulate_post("/api/send", json={"to": "zed", "body": "x"}), 404, "to")
    _error(client.simulate_post("/api/send", json={"to": OPERATOR, "body": "x"}), 400, "to")
    _error(
        client.simulate_post("/api/send", json={"to": "alice", "body": "x", "from": "bob"}),
        400,
        "from",
    )
    assert len(broker.msgs) == n


# ----------------------------------------------------------------- lifecycle + reconcile


@pytest.mark.parametrize("verb", [v.value for v in Lifecycle])
def test_lifecycle(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker], verb: str
) -> None:
    ops, _ = fakes
    r = client.simulate_post(f"/api/agents/alice/{verb}", json={})
    assert r.status_code == 200 and r.json["result"] == f"{verb} alice: ok"
    assert ops.calls[-1] == ("lifecycle", verb, "alice")


def test_lifecycle_errors(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    _error(client.simulate_post("/api/agents/alice/explode", json={}), 404, "verb")
    _error(client.simulate_post("/api/agents/zed/start", json={}), 404, "name")
    _error(client.simulate_post("/api/agents/Not%20A%20Name/start", json={}), 404, "name")
    assert not [c for c in ops.calls if c[0] == "lifecycle"]

    def boom(verb: Lifecycle, name: str) -> str:
        raise TransientError("nixos-container start timed out")

    ops.lifecycle = boom  # type: ignore[method-assign]
    r = client.simulate_post("/api/agents/alice/start", json={})
    assert r.status_code == 503 and "timed out" in r.json["error"]["message"]


def test_reconcile(client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, _ = fakes
    r = client.simulate_post("/api/reconcile", json={"dry_run": True})
    assert r.status_code == 200 and r.json["dry_run"] is True
    assert r.json["plan"] == [
        {"action": "rebuild", "agent": "alice", "reason": "agent.nix changed"}
    ]
    r = client.simulate_post("/api/reconcile", json={})
    assert r.status_code == 200 and r.json["dry_run"] is False
    assert ops.calls[-2:] == [("reconcile", True), ("reconcile", False)]
    _error(client.simulate_post("/api/reconcile", json={"dry_run": "maybe"}), 400, "dry_run")
    _error(client.simulate_post("/api/reconcile", json={"dry_run": 1}), 400, "dry_run")
    _error(client.simulate_post("/api/reconcile", json={"force": True}), 400, "force")


# ----------------------------------------------------------------- one agent in depth


def test_describe(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/api/agents/bob")
    assert r.status_code == 200
    d = r.json
    assert d["name"] == "bob" and d["crash_loop"] is True and d["needs_login"] is True
    assert d["url"] == "/agents/bob/"
    stalled = next(c for c in d["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "CrashLoopBackOff" and stalled["message"]
    assert stalled["last_transition_time"].endswith("Z")
    assert [x["tag"] for x in d["deploys"]] == ["deployed/6", "failed/3"]
    assert d["deploys"][1]["commit_short"] == "f" * 8 and d["deploys"][1]["at"].endswith("Z")
    assert d["deploys"][0]["tags"][-1] == "deployed/6" and d["deploys"][0]["title"]
    assert len(d["crash"]["times"]) == 5 and d["crash"]["restart_at"].endswith("Z")
    assert d["crash"]["stalled"] is False and d["failure"] is None
    assert [e["type"] for e in d["events"]] == ["CrashLoopBackOff", "ContainerCrash", "Deployed"]
    carol = client.simulate_get("/api/agents/carol").json
    assert carol["deploys"] == [] and carol["events"] == [] and carol["crash"] is None
    assert client.simulate_get(f"/api/agents/{MANAGER}").status_code == 200


def test_describe_view_shapes() -> None:
    d = describe_view(
        {
            "name": "x",
            "conditions": [{"type": "Ready", "status": "False", "reason": "Failed"}],
            "deploys": [{"id": 3, "state": "failed", "commit": None, "at": None}],
            "events": [{"at": 10.0, "type": "Crashed"}, {"at": 20.0, "type": "Started"}],
            "crash": {"times": [1.0, 2.0], "restart_at": None, "stalled": True},
            "failure": {"kind": "permanent", "action": "start", "message": "m", "retry_at": 5.0},
        },
    )
    assert d["deploys"] == [
        {"id": 3, "state": "failed", "commit": None, "at": None, "tag": "failed/3",
         "tags": [], "commit_short": None}
    ]  # fmt: skip
    assert [e["type"] for e in d["events"]] == ["Started", "Crashed"]
    assert d["events"][0] == {"at": "1970-01-01T00:00:20.000Z", "type": "Started", "message": ""}
    assert d["crash"]["stalled"] is True and d["crash"]["restart_at"] is None
    assert d["crash"]["times"][0].startswith("1970-01-01T00:00:01")
    assert d["failure"]["retry_at"].startswith("1970-01-01T00:00:05")
    bare = describe_view({"name": "y"})
    assert bare["deploys"] == bare["events"] == [] and bare["crash"] is bare["failure"] is None
    t = tombstone_view({"name": "z", "destroyed_at": 0.5, "bytes": True, "path": None})
    assert t["id"] == "z" and t["bytes"] is None and t["path"] == "" and t["commit_short"] is None


def test_describe_errors(client: falcon.testing.TestClient) -> None:
    err = _error(client.simulate_get("/api/agents/zed"), 404, "name")
    assert "zed" in err["message"]
    _error(client.simulate_get("/api/agents/Not%20A%20Name"), 404, "name")
    _error(client.simulate_get("/api/agents/operator"), 404, "name")


def test_journal(client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, _ = fakes
    r = client.simulate_get("/api/agents/alice/journal")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    j = r.json
    assert j["agent"] == "alice" and j["unit"] == HARNESS_UNIT and j["lines"] == 200
    assert "hyperhive-agent[412]: turn" in j["text"] and "systemd[1]" not in j["text"]
    assert _last_call(ops) == ("journal", "alice", HARNESS_UNIT, 200)
    r = client.simulate_get("/api/agents/alice/journal", params={"unit": "machine", "lines": "5"})
    assert r.status_code == 200 and r.json["unit"] is None
    assert len(r.json["text"].splitlines()) == 5 and "systemd" in r.json["text"]
    assert _last_call(ops) == ("journal", "alice", None, 5)  # the whole machine journal
    for unit in ("harness", HARNESS_UNIT):
        r = client.simulate_get("/api/agents/bob/journal", params={"unit": unit, "lines": "5000"})
        assert r.status_code == 200 and r.json["unit"] == HARNESS_UNIT
    assert client.simulate_get(f"/api/agents/{MANAGER}/journal").status_code == 200


def test_journal_errors(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    n = len(ops.calls)
    _error(client.simulate_get("/api/agents/zed/journal"), 404, "name")
    _error(client.simulate_get("/api/agents/BAD!/journal"), 404, "name")
    for lines in ("0", "5001", "-1", "abc", "1e3", ""):
        err = _error(
            client.simulate_get("/api/agents/alice/journal", query_string=f"lines={lines}"),
            400,
            "lines",
        )
        assert "1 to 5000" in err["message"]
    for unit in ("sshd.service", "hyperhive-agent", "../x", "MACHINE"):
        err = _error(
            client.simulate_get("/api/agents/alice/journal", params={"unit": unit}), 400, "unit"
        )
        assert "harness" in err["message"] and "machine" in err["message"]
    assert len(ops.calls) == n  # nothing reached ops
    r = client.simulate_post("/api/agents/alice/journal", json={})
    assert r.status_code == 405 and "error" in r.json

    def stopped(name: str, unit: str | None = None, lines: int = 200) -> str:
        raise NotFound(f"no running container 'h-{name}'", "container")

    ops.journal = stopped  # type: ignore[method-assign]
    err = _error(client.simulate_get("/api/agents/carol/journal"), 404, "name")
    assert "h-carol" in err["message"]

    def failed(name: str, unit: str | None = None, lines: int = 200) -> str:
        raise Conflict(
            "journalctl -M h-carol failed (exit 1); is the container running?", "container"
        )

    ops.journal = failed  # type: ignore[method-assign]
    _error(client.simulate_get("/api/agents/carol/journal"), 409, "container")


def test_agent_config(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/api/agents/alice/config")
    assert r.status_code == 200
    c = r.json
    assert c["name"] == "alice" and c["commit_short"] == c["commit"][:8]
    assert "kind: Agent" in c["manifest"] and "name: alice" in c["manifest"]
    assert "pkgs.jq" in c["agent_nix"]
    assert c["settings"]["model"] == "haiku"
    bob = client.simulate_get("/api/agents/bob/config").json
    assert bob["agent_nix"] is None and "name: bob" in bob["manifest"]
    _error(client.simulate_get("/api/agents/zed/config"), 404, "name")
    _error(client.simulate_get("/api/agents/x_y/config"), 404, "name")


# ----------------------------------------------------------------- destroy + kept state


def test_destroy_keeps_state(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    r = client.simulate_post("/api/agents/carol/destroy", json={})
    assert r.status_code == 200 and r.json["purged"] is False and "kept" in r.json["result"]
    assert ops.calls[-1] == ("destroy", "carol", False)
    s = client.simulate_get("/api/state").json
    assert "carol" not in [a["name"] for a in s["agents"]]
    assert [t["name"] for t in s["tombstones"]] == ["carol", "frank"]  # newest first
    r = client.simulate_post("/api/agents/bob/destroy", json={"purge": True})
    assert r.status_code == 200 and r.json["purged"] is True
    assert ops.calls[-1] == ("destroy", "bob", True)
    assert "bob" not in [t["name"] for t in client.simulate_get("/api/state").json["tombstones"]]
    r = client.simulate_post("/api/agents/alice/destroy", json={"purge": False})
    assert r.status_code == 200 and ops.calls[-1] == ("destroy", "alice", False)


def test_destroy_errors(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    err = _error(client.simulate_post(f"/api/agents/{MANAGER}/destroy", json={}), 400, "name")
    assert "manager" in err["message"]
    _error(
        client.simulate_post(f"/api/agents/{MANAGER}/destroy", json={"purge": True}), 400, "name"
    )
    _error(client.simulate_post("/api/agents/zed/destroy", json={}), 404, "name")
    _error(client.simulate_post("/api/agents/NOPE/destroy", json={}), 404, "name")
    _error(client.simulate_post("/api/agents/alice/destroy", json={"purge": "maybe"}), 400, "purge")
    _error(client.simulate_post("/api/agents/alice/destroy", json={"purge": 1}), 400, "purge")
    _error(client.simulate_post("/api/agents/alice/destroy", json={"force": True}), 400, "force")
    evil = {"Host": "127.0.0.1:7000", "Origin": "http://evil.example"}
    _error(client.simulate_post("/api/agents/alice/destroy", json={}, headers=evil), 403, None)
    assert client.simulate_get("/api/agents/alice/destroy").status_code == 405
    assert not [c for c in ops.calls if c[0] == "destroy"]
    assert "alice" in ops.agents


def test_purge_tombstone(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    (tid,) = ops.kept
    url = f"/api/tombstones/{tid}/purge"
    _error(client.simulate_post(url, json={"x": 1}), 400, "x")
    evil = {"Host": "127.0.0.1:7000", "Origin": "http://evil.example"}
    _error(client.simulate_post(url, json={}, headers=evil), 403, None)
    assert tid in ops.kept and not [c for c in ops.calls if c[0] == "purge"]
    r = client.simulate_post(url, json={})
    assert r.status_code == 200
    assert r.json == {"agent": tid, "purged": True, "result": f"purged {tid}"}
    assert ops.calls[-1] == ("purge", tid)
    assert client.simulate_get("/api/state").json["tombstones"] == []
    _error(client.simulate_post(url, json={}), 404, "name")
    _error(client.simulate_post("/api/tombstones/frank/purge", json={}), 404, "name")
    still_desired = client.simulate_post("/api/tombstones/alice/purge", json={})
    _error(still_desired, 409, "name")
    _error(client.simulate_post("/api/tombstones/Bad%20Name/purge", json={}), 404, "name")
    _error(client.simulate_post("/api/tombstones/frank-12x/purge", json={}), 404, "name")
    _error(client.simulate_post(f"/api/tombstones/{MANAGER}/purge", json={}), 404, "name")
    assert client.simulate_get(url).status_code == 405


def test_purge_by_agent_name(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    assert client.simulate_post("/api/agents/carol/destroy", json={}).status_code == 200
    kept = client.simulate_get("/api/state").json["tombstones"]
    assert [t["name"] for t in kept] == ["carol", "frank"]  # newest first
    r = client.simulate_post("/api/tombstones/carol/purge", json={})
    assert r.status_code == 200 and ops.calls[-1] == ("purge", "carol")
    assert [t["name"] for t in client.simulate_get("/api/state").json["tombstones"]] == ["frank"]


# ----------------------------------------------------------------- questions


def test_answer_and_cancel(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    _, broker = fakes
    r = client.simulate_post("/api/questions/1/answer", json={"answer": "sonnet"})
    assert r.status_code == 200 and broker.qs[1].answer == "sonnet"
    r = client.simulate_post("/api/questions/2/answer", json={"answer": ["hyperhive", "infra"]})
    assert r.status_code == 200 and broker.qs[2].answer == "hyperhive, infra"
    _error(client.simulate_post("/api/questions/1/answer", json={"answer": "opus"}), 409, "id")
    _error(client.simulate_post("/api/questions/3/answer", json={}), 400, "answer")
    _error(client.simulate_post("/api/questions/3/answer", json={"answer": "  "}), 400, "answer")
    _error(client.simulate_post("/api/questions/3/answer", json={"answer": 7}), 400, "answer")
    _error(client.simulate_post("/api/questions/99/answer", json={"answer": "x"}), 404, "id")
    _error(client.simulate_post("/api/questions/x/answer", json={"answer": "x"}), 400, "id")
    r = client.simulate_post("/api/questions/3/cancel", json={})
    assert r.status_code == 200 and broker.qs[3].answer == "[cancelled]"
    _error(client.simulate_post("/api/questions/3/cancel", json={}), 409, "id")
    _error(client.simulate_post("/api/questions/99/cancel", json={}), 404, "id")
    assert client.simulate_get("/api/state").json["questions"] == []


# ----------------------------------------------------------------- CSRF, JSON only


def test_cross_origin_posts_are_refused(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    h = {"Host": "127.0.0.1:7000"}
    evil = {**h, "Origin": "http://evil.example"}
    _error(client.simulate_post("/api/proposals/7/approve", json={}, headers=evil), 403, None)
    other_port = {**h, "Origin": "http://127.0.0.1:8100"}
    _error(client.simulate_post("/api/proposals/7/approve", json={}, headers=other_port), 403, None)
    for site in ("cross-site", "same-site"):  # same-site: a page on an agent's own port
        xsite = {**h, "Sec-Fetch-Site": site}
        _error(client.simulate_post("/api/proposals/7/approve", json={}, headers=xsite), 403, None)
        r = client.simulate_get("/api/state", headers=xsite)
        _error(r, 403, None)
        assert r.json["error"]["code"] == "cross_site"
    rebinding = {"Host": "evil.example:7000", "Origin": "http://evil.example:7000"}
    r = client.simulate_post("/api/proposals/7/approve", json={}, headers=rebinding)
    assert r.status_code == 403 and r.json["error"]["code"] == "bad_host"
    assert client.simulate_get("/api/state", headers=rebinding).status_code == 403
    assert not [c for c in ops.calls if c[0] == "approve"]
    same = {**h, "Origin": "http://127.0.0.1:7000", "Sec-Fetch-Site": "same-origin"}
    r = client.simulate_post("/api/proposals/7/approve", json={}, headers=same)
    assert r.status_code == 200
    proxied = {"Host": "hive.example", "Origin": "https://hive.example"}
    r = client.simulate_post("/api/proposals/8/approve", json={}, headers=proxied)
    assert r.status_code == 200
    bad = {"Host": "hive.example", "Origin": "https://hive.example.evil.com"}
    _error(client.simulate_post("/api/send", json={}, headers=bad), 403, None)
    _error(client.simulate_post("/api/send", json={}, headers={**h, "Origin": "null"}), 403, None)


def test_the_app_alone_takes_json_only(fakes: tuple[FakeOps, FakeBroker]) -> None:
    """Without the listener's guard the app still refuses forms (defence in depth)."""
    ops, broker = fakes
    bare = falcon.testing.TestClient(make_app(ops, broker), headers={"Cookie": session_cookie()})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = bare.simulate_post("/api/send", body="to=alice&body=hi", headers=form)
    assert r.status_code == 415 and r.json["error"]["code"]
    r = bare.simulate_post("/api/send", body='{"to": "alice", "body": "hi"}', headers=JSON)
    assert r.status_code == 201
    assert [m.body for m in broker.msgs if m.sender == OPERATOR][-1] == "hi"


# ----------------------------------------------------------------- SSE (real HTTP)


@pytest.fixture
def live(fakes: tuple[FakeOps, FakeBroker]) -> Iterator[tuple[str, FakeBroker]]:
    """The demo app on a real socket, with a fast heartbeat."""
    ops, broker = fakes
    stop = threading.Event()
    app = make_app(ops, broker, heartbeat_seconds=0.3, stop=stop)
    with serve(app) as base:
        yield base, broker
        stop.set()


def test_sse_live_message_and_resume(live: tuple[str, FakeBroker]) -> None:
    base, broker = live
    start = len(broker.msgs)
    s = SSE(base, "/messages/stream")
    assert s.resp.status == 200
    assert s.resp.getheader("Content-Type", "").startswith("text/event-stream")
    assert s.next_block().get("retry") == "3000"
    # sent after connect → arrives live
    threading.Timer(0.2, lambda: broker.send("alice", "bob", "live one")).start()
    b = s.next_message()
    assert int(b["id"]) == start + 1
    assert json.loads(b["data"])["body"] == "live one"
    s.close()
    # messages while disconnected → replayed after Last-Event-ID
    broker.send("bob", "alice", "missed 1")
    broker.send("bob", MANAGER, "missed 2")
    s = SSE(base, "/messages/stream", {"Last-Event-ID": b["id"]})
    got = [s.next_message() for _ in range(2)]
    assert [json.loads(g["data"])["body"] for g in got] == ["missed 1", "missed 2"]
    assert [int(g["id"]) for g in got] == [start + 2, start + 3]
    s.close()
    # ?since= works like Last-Event-ID (a first connect can't set the header)
    s = SSE(base, f"/messages/stream?since={start + 2}")
    assert json.loads(s.next_message()["data"])["body"] == "missed 2"
    s.close()


def test_sse_backlog_and_heartbeat(live: tuple[str, FakeBroker]) -> None:
    base, broker = live
    total = len(broker.msgs)
    s = SSE(base, "/messages/stream?backlog=3")
    ids = [int(s.next_message()["id"]) for _ in range(3)]
    assert ids == [total - 2, total - 1, total]
    t0 = time.monotonic()
    while True:  # a heartbeat comment arrives within the heartbeat interval
        b = s.next_block()
        if b.get(":") == "heartbeat":
            break
        assert time.monotonic() - t0 < 3
    s.close()


def test_sse_bad_resume(live: tuple[str, FakeBroker]) -> None:
    base, _ = live
    s = SSE(base, "/messages/stream", {"Last-Event-ID": "abc"})
    assert s.resp.status == 400
    assert json.loads(s.resp.read())["error"]["field"] == "Last-Event-ID"
    s.close()
    s = SSE(base, "/messages/stream?backlog=100000")
    assert s.resp.status == 400
    assert json.loads(s.resp.read())["error"]["field"] == "backlog"
    s.close()


def test_backlog_from_last_id_with_gaps() -> None:
    broker = FakeBroker()
    ops = FakeOps()
    for i in range(1, 1000):
        broker.msgs.append(Message(id=i * 7, sender="a", recipient="b", body=str(i), sent_at=1.0))
    stop = threading.Event()
    with serve(make_app(ops, broker, heartbeat_seconds=0.1, stop=stop)) as base:
        s = SSE(base, "/messages/stream?backlog=14")
        assert [int(s.next_message()["id"]) for _ in range(2)] == [998 * 7, 999 * 7]
        s.close()
        stop.set()


def test_with_the_real_broker(tmp_path: Path) -> None:
    """The same flows against ``controller.broker.Broker`` (sqlite), not the fake."""
    broker_mod = pytest.importorskip("controller.broker")
    broker = broker_mod.Broker(tmp_path / "broker.sqlite")
    ops, _ = demo()
    stop = threading.Event()
    try:
        broker.send(MANAGER, OPERATOR, "hello operator")
        qid = broker.ask_operator("pick one", ["a", "b"], ttl_seconds=60)
        app = make_app(ops, broker, heartbeat_seconds=0.3, stop=stop)
        client = logged_in(app)
        s = client.simulate_get("/api/state").json
        assert s["errors"] == {}
        assert [m["body"] for m in s["inbox"]] == ["hello operator"]
        q = s["questions"][0]
        assert q["id"] == qid and q["options"] == ["a", "b"] and q["deadline_at"].endswith("Z")
        with serve(app) as base:
            sse = SSE(base, "/messages/stream?backlog=1")
            assert json.loads(sse.next_message()["data"])["body"] == "hello operator"
            r = client.simulate_post("/api/send", json={"to": "alice", "body": "over sqlite"})
            assert r.status_code == 201
            assert json.loads(sse.next_message()["data"])["body"] == "over sqlite"
            r = client.simulate_post(f"/api/questions/{qid}/answer", json={"answer": ["b"]})
            assert r.status_code == 200
            event = json.loads(sse.next_message()["data"])  # OperatorAnswered → manager
            assert event["kind"] == "event" and event["to"] == MANAGER
            sse.close()
            stop.set()
        _error(client.simulate_post(f"/api/questions/{qid}/cancel", json={}), 409, "id")
        assert client.simulate_get("/api/state").json["questions"] == []
    finally:
        stop.set()
        broker.close()


def test_verbs_stuck_behind_a_pass_leave_the_snapshot_answering(
    fakes: tuple[FakeOps, FakeBroker],
) -> None:
    """40 reconcile clicks while a long pass holds the lock (more than any default thread
    pool has threads) do not keep ``/api/state`` from answering."""
    ops, broker = fakes
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck_pass(dry_run: bool = False) -> Any:
        started.release()
        release.wait(60)
        return FakeOps.reconcile(ops, dry_run)

    ops.reconcile = stuck_pass  # type: ignore[method-assign]
    cookie = session_cookie()
    with serve(make_app(ops, broker)) as base:
        netloc = urllib.parse.urlsplit(base).netloc
        conns = []
        try:
            for _ in range(40):
                c = http.client.HTTPConnection(netloc, timeout=60)
                c.request(
                    "POST",
                    "/api/reconcile",
                    body=b"{}",
                    headers={"Cookie": cookie, "Content-Type": "application/json"},
                )
                conns.append(c)
            assert started.acquire(timeout=10)  # at least one is inside the pass
            probe = http.client.HTTPConnection(netloc, timeout=10)
            probe.request("GET", "/api/state", headers={"Cookie": cookie})
            r = probe.getresponse()
            assert r.status == 200 and json.loads(r.read())["agents"]
            probe.close()
        finally:
            release.set()
        assert all(c.getresponse().status == 200 for c in conns)
        for c in conns:
            c.close()
