"""Component tests of the dashboard app with a fake SwarmOps and an in-memory broker.

Plain endpoints go through ``falcon.testing``; the SSE stream through a real
waitress server on 127.0.0.1 (the stream never ends, so it needs a socket).
"""

from __future__ import annotations

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
from dashboard_fakes import FakeBroker, FakeOps, demo, serve

from controller.dashboard import make_dashboard_app
from controller.dashboard.app import agent_view, normalize_conditions
from controller.errors import TransientError
from controller.ops import Lifecycle
from schemas.names import MANAGER, OPERATOR
from schemas.wire import Message


@pytest.fixture
def fakes() -> tuple[FakeOps, FakeBroker]:
    """The demo swarm."""
    return demo()


@pytest.fixture
def client(fakes: tuple[FakeOps, FakeBroker]) -> falcon.testing.TestClient:
    """A test client over the demo swarm."""
    ops, broker = fakes
    return falcon.testing.TestClient(make_dashboard_app(ops, broker))


def _error(r: falcon.testing.Result, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json["error"]
    assert err["field"] == field, err
    assert err["code"] and err["message"]
    return err


def _form(**fields: str | list[str]) -> dict[str, Any]:
    return {
        "body": urllib.parse.urlencode(fields, doseq=True),
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }


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


def test_state_snapshot(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/api/state", headers={"Host": "hive.lan:7000"})
    assert r.status_code == 200
    s = r.json
    names = [a["name"] for a in s["agents"]]
    assert names[0] == MANAGER and sorted(names[1:]) == names[1:] == ["alice", "bob", "carol"]
    alice = next(a for a in s["agents"] if a["name"] == "alice")
    assert alice["needs_update"] is True
    assert alice["url"] == f"http://hive.lan:{alice['web_port']}/"
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


def test_state_etag_304(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/api/state")
    etag = r.headers["etag"]
    r2 = client.simulate_get("/api/state", headers={"If-None-Match": etag})
    assert r2.status_code == 304
    client.simulate_post("/api/send", json={"to": "alice", "body": "hi"})
    client.simulate_post("/api/proposals/7/approve", json={})
    assert client.simulate_get("/api/state", headers={"If-None-Match": etag}).status_code == 200


def test_state_survives_a_failing_section(fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, broker = fakes
    ops.fail_status = True
    r = falcon.testing.TestClient(make_dashboard_app(ops, broker)).simulate_get("/api/state")
    assert r.status_code == 200
    assert r.json["agents"] == [] and "status exploded" in r.json["errors"]["status"]
    assert len(r.json["proposals"]) == 2


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
        "::1",
    )
    assert row["needs_update"] and row["commit"] == "abc" and row["url"] == "http://[::1]:8123/"
    assert agent_view({"name": "y", "web_port": True}, "h")["url"] is None


def test_get_one_proposal(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/api/proposals/8").json["kind"] == "apply_commit"
    _error(client.simulate_get("/api/proposals/99"), 404, "id")
    _error(client.simulate_get("/api/proposals/x"), 400, "id")


# ----------------------------------------------------------------- proposals


def test_approve_json_and_form(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    r = client.simulate_post("/api/proposals/7/approve", json={"note": "go"})
    assert r.status_code == 200 and r.json["state"] == "approved"
    r = client.simulate_post("/api/proposals/8/approve", **_form())
    assert r.status_code == 200
    assert ("approve", 7, "go") in ops.calls and ("approve", 8, "") in ops.calls
    _error(client.simulate_post("/api/proposals/7/approve", json={}), 409, "id")
    _error(client.simulate_post("/api/proposals/42/approve"), 404, "id")
    _error(client.simulate_post("/api/proposals/abc/approve"), 400, "id")
    _error(client.simulate_post("/api/proposals/0/approve"), 400, "id")
    _error(client.simulate_post("/api/proposals/5x/approve"), 400, "id")


def test_deny_needs_a_note(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    _error(client.simulate_post("/api/proposals/7/deny", json={}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": "   "}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", **_form(note="")), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": 5}), 400, "note")
    _error(client.simulate_post("/api/proposals/7/deny", json={"note": "x", "y": 1}), 400, "y")
    assert not [c for c in ops.calls if c[0] == "deny"]
    r = client.simulate_post("/api/proposals/7/deny", **_form(note="one reviewer is enough"))
    assert r.status_code == 200 and r.json["state"] == "denied"
    assert ("deny", 7, "one reviewer is enough") in ops.calls


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
    r = client.simulate_post(url, body="<x/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and r.json["error"]["code"]
    big = json.dumps({"note": "x" * (1 << 20)})
    r = client.simulate_post(url, body=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json
    r = client.simulate_get("/api/send")
    assert r.status_code == 405 and "error" in r.json
    r = client.simulate_get("/nowhere")
    assert r.status_code == 404 and "error" in r.json


def test_spawn(client: falcon.testing.TestClient) -> None:
    r = client.simulate_post("/api/spawn", **_form(name="dave"))
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
    r = client.simulate_post("/api/send", **_form(to=MANAGER, body="line 1\nline 2 & more"))
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
    r = client.simulate_post(f"/api/agents/alice/{verb}")
    assert r.status_code == 200 and r.json["result"] == f"{verb} alice: ok"
    assert ops.calls[-1] == ("lifecycle", verb, "alice")


def test_lifecycle_errors(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    _error(client.simulate_post("/api/agents/alice/explode"), 404, "verb")
    _error(client.simulate_post("/api/agents/zed/start"), 404, "name")
    _error(client.simulate_post("/api/agents/Not%20A%20Name/start"), 404, "name")
    assert not [c for c in ops.calls if c[0] == "lifecycle"]

    def boom(verb: Lifecycle, name: str) -> str:
        raise TransientError("nixos-container start timed out")

    ops.lifecycle = boom  # type: ignore[method-assign]
    r = client.simulate_post("/api/agents/alice/start")
    assert r.status_code == 503 and "timed out" in r.json["error"]["message"]


def test_reconcile(client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]) -> None:
    ops, _ = fakes
    r = client.simulate_post("/api/reconcile", **_form(dry_run="1"))
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


# ----------------------------------------------------------------- questions


def test_answer_and_cancel(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    _, broker = fakes
    r = client.simulate_post("/api/questions/1/answer", **_form(answer="sonnet"))
    assert r.status_code == 200 and broker.qs[1].answer == "sonnet"
    r = client.simulate_post("/api/questions/2/answer", **_form(answer=["hyperhive", "infra"]))
    assert r.status_code == 200 and broker.qs[2].answer == "hyperhive, infra"
    _error(client.simulate_post("/api/questions/1/answer", json={"answer": "opus"}), 409, "id")
    _error(client.simulate_post("/api/questions/3/answer", json={}), 400, "answer")
    _error(client.simulate_post("/api/questions/3/answer", json={"answer": "  "}), 400, "answer")
    _error(client.simulate_post("/api/questions/3/answer", json={"answer": 7}), 400, "answer")
    _error(client.simulate_post("/api/questions/99/answer", json={"answer": "x"}), 404, "id")
    _error(client.simulate_post("/api/questions/x/answer", json={"answer": "x"}), 400, "id")
    r = client.simulate_post("/api/questions/3/cancel")
    assert r.status_code == 200 and broker.qs[3].answer == "[cancelled]"
    _error(client.simulate_post("/api/questions/3/cancel"), 409, "id")
    _error(client.simulate_post("/api/questions/99/cancel"), 404, "id")
    assert client.simulate_get("/api/state").json["questions"] == []


# ----------------------------------------------------------------- CSRF


def test_cross_origin_posts_are_refused(
    client: falcon.testing.TestClient, fakes: tuple[FakeOps, FakeBroker]
) -> None:
    ops, _ = fakes
    h = {"Host": "127.0.0.1:7000"}
    evil = {**h, "Origin": "http://evil.example"}
    _error(client.simulate_post("/api/proposals/7/approve", headers=evil), 403, "Origin")
    other_port = {**h, "Origin": "http://127.0.0.1:8100"}
    _error(client.simulate_post("/api/proposals/7/approve", headers=other_port), 403, "Origin")
    xsite = {**h, "Sec-Fetch-Site": "cross-site"}
    _error(client.simulate_post("/api/proposals/7/approve", headers=xsite), 403, "Origin")
    assert not [c for c in ops.calls if c[0] == "approve"]
    same = {**h, "Origin": "http://127.0.0.1:7000", "Sec-Fetch-Site": "same-origin"}
    assert client.simulate_post("/api/proposals/7/approve", headers=same).status_code == 200
    assert client.simulate_get("/api/state", headers=evil).status_code == 200
    proxied = {"Host": "hive.example", "Origin": "https://hive.example"}
    assert client.simulate_post("/api/proposals/8/approve", headers=proxied).status_code == 200
    bad = {"Host": "hive.example", "Origin": "https://hive.example.evil.com"}
    _error(client.simulate_post("/api/send", headers=bad), 403, "Origin")
    _error(client.simulate_post("/api/send", headers={**h, "Origin": "null"}), 403, "Origin")


# ----------------------------------------------------------------- SSE (real HTTP)


class SSE:
    """A minimal SSE reader over http.client: ``next_event()`` → (id, event, data) or a comment."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        u = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()

    def next_block(self) -> dict[str, str]:
        """The next blank-line-terminated block as a dict (``":"`` holds comments)."""
        block: dict[str, str] = {}
        while True:
            line = self.resp.fp.readline().decode()
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if not line:
                if block:
                    return block
                continue
            key, _, value = line.partition(":")
            block[key or ":"] = (block.get(key or ":", "") + value.lstrip(" ")).strip()

    def next_message(self) -> dict[str, str]:
        """Skip comments / retry blocks, return the next ``event: message`` block."""
        while True:
            b = self.next_block()
            if b.get("event") == "message":
                return b

    def close(self) -> None:
        """Drop the connection."""
        self.conn.close()


@pytest.fixture
def live(fakes: tuple[FakeOps, FakeBroker]) -> Iterator[tuple[str, FakeBroker]]:
    """The demo app on a real socket, with a fast heartbeat."""
    ops, broker = fakes
    stop = threading.Event()
    app = make_dashboard_app(ops, broker, heartbeat_seconds=0.3, stop=stop)
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


def test_cursor_finds_latest_id_with_gaps() -> None:
    broker = FakeBroker()
    ops = FakeOps()
    for i in range(1, 1000):
        broker.msgs.append(Message(id=i * 7, sender="a", recipient="b", body=str(i), sent_at=1.0))
    stop = threading.Event()
    with serve(make_dashboard_app(ops, broker, heartbeat_seconds=0.1, stop=stop)) as base:
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
        app = make_dashboard_app(ops, broker, heartbeat_seconds=0.3, stop=stop)
        client = falcon.testing.TestClient(app)
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
        _error(client.simulate_post(f"/api/questions/{qid}/cancel"), 409, "id")
        assert client.simulate_get("/api/state").json["questions"] == []
    finally:
        stop.set()
        broker.close()
