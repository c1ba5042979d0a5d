"""The operator's admin API on host.sock over a real unix socket: proposals, send,
messages + SSE stream, reconcile, poke, operator questions."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_api_agent import Swarm, close_swarm, make_swarm

from controller.ops import ProposalKind
from schemas.client import ApiError
from schemas.names import MANAGER
from schemas.validate import validate


@pytest.fixture
def swarm() -> Iterator[Swarm]:
    s = make_swarm(heartbeat=0.5, max_streams=2)
    yield s
    close_swarm(s)


class _Conn(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class SseReader:
    """A raw SSE client of ``swarm``'s host.sock (with the operator key): yields
    ``(id, event, data)`` and counts heartbeat comments."""

    def __init__(
        self, swarm: Swarm, headers: dict[str, str] | None = None, url: str = "/messages/stream"
    ):
        self.conn = _Conn(str(swarm.layout.host_sock))
        auth = {"Authorization": f"Bearer {swarm.operator_key}"}
        self.conn.request(
            "GET", url, headers={"Accept": "text/event-stream", **auth, **(headers or {})}
        )
        self.resp = self.conn.getresponse()
        self.heartbeats = 0

    def next_event(self) -> tuple[int, str, dict[str, Any]]:
        ev: dict[str, str] = {}
        while True:
            line = self.resp.readline().decode()
            assert line, "stream ended"
            line = line.rstrip("\r\n")
            if not line:
                if "data" in ev:
                    return int(ev["id"]), ev["event"], json.loads(ev["data"])
                continue
            if line.startswith(":"):
                if "heartbeat" in line:
                    self.heartbeats += 1
                continue
            key, _, value = line.partition(": ")
            ev[key] = value

    def close(self) -> None:
        self.resp.close()  # the response holds the socket open too
        self.conn.close()


def open_stream(
    swarm: Swarm, headers: dict[str, str] | None = None, url: str = "/messages/stream"
) -> SseReader:
    """Connect, retrying while the server has not yet noticed a previous stream's client left."""
    deadline = time.monotonic() + 5
    while True:
        s = SseReader(swarm, headers, url)
        if s.resp.status != 503 or time.monotonic() > deadline:
            return s
        s.close()
        time.sleep(0.1)


def test_status_and_proposals(swarm: Swarm) -> None:
    op = swarm.client("operator")
    assert op.get("/status")["runtime"] == "fake"
    p1 = swarm.ops.request_spawn("dave")
    p2 = swarm.ops.request_apply_commit("abcdef1", "bump")
    assert [p["id"] for p in op.get("/proposals")["proposals"]] == [p2.id, p1.id]
    one = op.get(f"/proposals/{p1.id}")
    assert one["kind"] == str(ProposalKind.SPAWN) and one["state"] == "pending"
    approved = op.post(f"/proposals/{p1.id}/approve", {"note": "go"})
    assert approved["state"] == "approved"
    with pytest.raises(ApiError) as e:
        op.post(f"/proposals/{p1.id}/deny", {"note": "too late"})
    assert e.value.status == 409
    denied = op.post(f"/proposals/{p2.id}/deny", {"note": "no thanks"})
    assert denied["state"] == "denied" and denied["note"] == "no thanks"
    assert op.get("/proposals?pending=1")["proposals"] == []
    with pytest.raises(ApiError) as e:
        op.get("/proposals/999")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        op.get("/proposals?pending=maybe")
    assert (e.value.status, e.value.field) == (400, "pending")


def test_operator_send_and_messages(swarm: Swarm) -> None:
    op = swarm.client("operator")
    r = op.post("/send", {"to": "alice", "body": "hello from the operator"})
    validate(r, "wire#SendResponse")
    m = swarm.client("alice").post("/recv", {})["message"]
    assert m["from"] == "operator" and m["body"] == "hello from the operator"
    with pytest.raises(ApiError) as e:
        op.post("/send", {"to": "nobody", "body": "x"})
    assert (e.value.status, e.value.field) == (404, "to")
    swarm.client("alice").post("/send", {"to": "operator", "body": "hi operator"})
    msgs = op.get("/messages")["messages"]
    for x in msgs:
        validate(x, "wire#Message")
    assert [x["body"] for x in msgs] == ["hello from the operator", "hi operator"]
    assert op.get(f"/messages?since={msgs[0]['id']}")["messages"][0]["body"] == "hi operator"
    assert len(op.get("/messages?limit=1")["messages"]) == 1
    for bad in ("since=-1", "since=abc", "limit=0", "limit=100000", f"since={10**30}"):
        with pytest.raises(ApiError) as e:
            op.get(f"/messages?{bad}")
        assert e.value.status == 400 and e.value.field in ("since", "limit"), bad


def test_operator_answers_a_thread(swarm: Swarm) -> None:
    q = swarm.client("alice").post("/ask", {"to": "operator", "question": "may I?"})
    op = swarm.client("operator")
    r = op.post("/answer", {"thread": q["thread"], "body": "yes"})
    assert r["thread"] == q["thread"]
    assert swarm.client("alice").get("/status")["open_threads"] == 0


def test_reconcile_and_poke(swarm: Swarm) -> None:
    op = swarm.client("operator")
    r = op.post("/reconcile", {"dry_run": True})
    assert r["dry_run"] is True and r["plan"][0]["agent"] == "alice" and not r["in_sync"]
    op.post("/reconcile", {})
    assert swarm.ops.reconciles == [True, False]
    res = op.call("POST", "/poke", {})
    assert res.data == {"accepted": True}
    conn = _Conn(str(swarm.layout.host_sock))
    auth = {"Authorization": f"Bearer {swarm.operator_key}"}
    conn.request("POST", "/poke", headers=auth)  # an empty body is fine too
    resp = conn.getresponse()
    assert resp.status == 202
    resp.read()
    conn.close()
    assert swarm.ops.passes == ["hook", "hook"]
    with pytest.raises(ApiError) as e:
        op.post("/poke", {"x": 1})
    assert e.value.status == 400


def test_operator_questions(swarm: Swarm) -> None:
    op = swarm.client("operator")
    mgr = swarm.client(MANAGER)
    a = mgr.post("/ask_operator", {"question": "which?", "options": ["a", "b"], "multi": True})[
        "id"
    ]
    b = mgr.post("/ask_operator", {"question": "cancel me"})["id"]
    c = mgr.post("/ask_operator", {"question": "expire me", "ttl_seconds": 1})["id"]
    qs = op.get("/questions?pending=1")["questions"]
    assert [q["id"] for q in qs] == [a, b, c]
    assert qs[0]["options"] == ["a", "b"] and qs[0]["multi"] is True
    assert qs[2]["deadline_at"] is not None
    done = op.post(f"/questions/{a}/answer", {"answer": "a, b"})
    assert done["answer"] == "a, b" and done["state"] == "answered"
    with pytest.raises(ApiError) as e:
        op.post(f"/questions/{a}/answer", {"answer": "again"})
    assert e.value.status == 409
    assert op.post(f"/questions/{b}/cancel", {})["answer"] == "[cancelled]"
    with pytest.raises(ApiError) as e:
        op.post(f"/questions/{b}/cancel", {})
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        op.post("/questions/4242/answer", {"answer": "x"})
    assert e.value.status == 404
    time.sleep(1.1)
    assert [q.id for q in swarm.broker.expire_questions()] == [c]
    assert op.get(f"/questions/{c}")["state"] == "expired"
    assert op.get("/questions?pending=1")["questions"] == []
    assert len(op.get("/questions")["questions"]) == 3
    events = []
    while (m := mgr.post("/recv", {})["message"]) is not None:
        events.append(m["event"])
    assert [(e["id"], e["answer"]) for e in events] == [
        (a, "a, b"),
        (b, "[cancelled]"),
        (c, "[expired]"),
    ]
    for e in events:
        validate(e, "events")


def test_sse_stream_gets_new_messages_and_resumes(swarm: Swarm) -> None:
    old = swarm.broker.send("alice", "bob", "before connect")
    stream = SseReader(swarm)
    assert stream.resp.status == 200
    assert stream.resp.getheader("Content-Type", "").startswith("text/event-stream")
    time.sleep(0.2)
    m1 = swarm.client("alice").post("/send", {"to": "bob", "body": "after connect"})["id"]
    eid, event, data = stream.next_event()
    assert (eid, event) == (m1, "message") and data["body"] == "after connect"
    assert old.id < m1  # the message before connect was not replayed
    validate(data, "wire#Message")
    time.sleep(1.2)  # heartbeats while idle
    m2 = swarm.broker.send("bob", "alice", "second").id
    assert stream.next_event()[0] == m2
    assert stream.heartbeats >= 1
    stream.close()
    m3 = swarm.broker.send("bob", "alice", "while away").id
    resumed = open_stream(swarm, {"Last-Event-ID": str(m1)})
    assert [resumed.next_event()[0] for _ in range(2)] == [m2, m3]
    resumed.close()
    since = open_stream(swarm, url=f"/messages/stream?since={old.id}")
    assert since.next_event()[0] == m1
    since.close()


def test_sse_stream_slots_are_freed_when_clients_leave(swarm: Swarm) -> None:
    a = SseReader(swarm)
    b = SseReader(swarm)
    c = SseReader(swarm)
    assert (a.resp.status, b.resp.status, c.resp.status) == (200, 200, 503)
    assert json.loads(c.resp.read())["error"]["code"] == "unavailable"
    a.close()
    b.close()
    c.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the hang-up; the stream ends and frees its slot
        d = SseReader(swarm)
        if d.resp.status == 200:
            d.close()
            break
        d.close()
        assert time.monotonic() < deadline, "stream slots were never released"
        time.sleep(0.2)


def test_sse_bad_last_event_id(swarm: Swarm) -> None:
    s = SseReader(swarm, {"Last-Event-ID": "abc"})
    assert s.resp.status == 400
    assert json.loads(s.resp.read())["error"]["field"] == "Last-Event-ID"
    s.close()


def test_sse_many_messages_in_order(swarm: Swarm) -> None:
    stream = SseReader(swarm)
    time.sleep(0.2)
    sent: list[int] = []

    def burst() -> None:
        for i in range(300):
            sent.append(swarm.broker.send("alice", "bob", f"m{i}").id)

    t = threading.Thread(target=burst)
    t.start()
    got = [stream.next_event()[0] for _ in range(300)]
    t.join()
    assert got == sent
    stream.close()
