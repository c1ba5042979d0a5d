"""The agent and manager socket APIs over real unix sockets (hivehttp) and a real sqlite broker.

``FakeOps`` and the ``swarm`` fixture here are shared with ``test_api_admin``,
``test_auth_sockets`` and ``test_hostile_bodies``. Every client carries its
credential (the agent's, or the operator key for host.sock).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from controller.api import make_admin_app, make_agent_app
from controller.auth import AgentCredentials, LoginTokens, ensure_operator_key
from controller.broker import Broker
from controller.errors import Conflict, Invalid, NotFound, TransientError
from controller.model import Action, ActionKind
from controller.ops import Lifecycle, PassResult, Proposal, ProposalKind, ProposalState
from controller.paths import Layout
from hivehttp import Listener, serve_unix
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import MANAGER, InvalidName, check_agent_name
from schemas.validate import validate

REPO = Path(__file__).resolve().parents[2]


class FakeOps:
    """An in-memory ``SwarmOps``: agents alice, bob, carol (carol may only message bob)."""

    def __init__(self) -> None:
        self.agents: set[str] = {"alice", "bob", "carol"}
        self.allowed: dict[str, tuple[str, ...]] = {"carol": ("bob",)}
        self.props: dict[int, Proposal] = {}
        self.passes: list[str] = []
        self.lifecycles: list[tuple[Lifecycle, str]] = []
        self.reconciles: list[bool] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []

    def agent_report(self, agent: str, report: dict[str, Any]) -> bool:
        self.reports.append((agent, report))
        return True

    def _new(self, kind: ProposalKind, title: str, agents: tuple[str, ...], note: str) -> Proposal:
        pid = len(self.props) + 1
        p = Proposal(
            pid, kind, ProposalState.PENDING, "c" * 40, "b" * 40, title, agents, "", note, 1.0
        )
        self.props[pid] = p
        return p

    def request_spawn(self, name: str) -> Proposal:
        try:
            check_agent_name(name)
        except InvalidName as exc:
            raise Invalid(str(exc), "name") from exc
        if name in self.agents:
            raise Conflict(f"agent {name} exists", "name")
        return self._new(ProposalKind.SPAWN, f"spawn {name}", (name,), "")

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        if commit.startswith("dead"):
            raise NotFound(f"no commit {commit}", "commit")
        return self._new(ProposalKind.APPLY_COMMIT, f"apply {commit[:7]}", (), note)

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        if name not in self.agents:
            raise NotFound(f"no agent {name}", "name")
        self.lifecycles.append((verb, name))
        return f"{verb} {name}: ok"

    def list_agents(self) -> list[dict[str, Any]]:
        return [{"name": a, "phase": "running"} for a in sorted(self.agents)]

    def agent_names(self) -> frozenset[str]:
        return frozenset(self.agents | {MANAGER})

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        return self.allowed.get(agent, ())

    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        rows = sorted(self.props.values(), key=lambda p: -p.id)
        return [p for p in rows if not pending_only or p.state is ProposalState.PENDING]

    def proposal(self, id: int) -> Proposal:
        if id not in self.props:
            raise NotFound(f"no proposal {id}", "id")
        return self.props[id]

    def _decide(self, id: int, state: ProposalState, note: str) -> Proposal:
        p = self.proposal(id)
        if p.state is not ProposalState.PENDING:
            raise Conflict(f"proposal {id} is already {p.state}", "id")
        self.props[id] = replace(p, state=state, note=note)
        return self.props[id]

    def approve(self, id: int, note: str = "") -> Proposal:
        return self._decide(id, ProposalState.APPROVED, note)

    def deny(self, id: int, note: str) -> Proposal:
        return self._decide(id, ProposalState.DENIED, note)

    def reconcile(self, dry_run: bool = False) -> PassResult:
        self.reconciles.append(dry_run)
        return PassResult((Action(ActionKind.START, "alice", "stopped"),), (), dry_run)

    def request_pass(self, reason: str) -> None:
        self.passes.append(reason)

    def version(self) -> str:
        return str(hash(json.dumps(self.status(), default=str)))

    def status_json(self) -> bytes:
        return json.dumps(self.status(), default=str).encode()

    def status(self) -> dict[str, Any]:
        pending = len(self.proposals(pending_only=True))
        return {"agents": self.list_agents(), "pending": pending, "runtime": "fake"}


AGENTS = ("alice", "bob", "carol", MANAGER)


def serve_agents(
    broker: Broker,
    ops: Any,
    layout: Layout,
    credentials: AgentCredentials,
    names: tuple[str, ...] = AGENTS,
) -> dict[str, Listener]:
    """Issue each agent a credential and serve its socket (what ``SocketRegistry`` does)."""
    out = {}
    for name in names:
        credentials.issue(name)
        flavor = "manager" if name == MANAGER else "agent"
        app = make_agent_app(broker, name, ops, flavor, credentials)
        out[name] = serve_unix(app, layout.agent_sock(name), name=name)
    return out


@dataclass
class Swarm:
    """A broker, fake ops, the agent/manager sockets and host.sock, with real credentials."""

    dir: Path
    broker: Broker
    ops: FakeOps
    layout: Layout
    credentials: AgentCredentials
    operator_key: str
    login_tokens: LoginTokens
    sockets: dict[str, Listener]
    admin: Listener
    extra: list[Listener] = field(default_factory=list)

    def token(self, who: str) -> str:
        """``who``'s credential (``operator`` → the operator key)."""
        if who == "operator":
            return self.operator_key
        token = self.credentials.current(who)
        assert token is not None
        return token

    def sock(self, who: str) -> Path:
        """``who``'s socket path (``operator`` → host.sock)."""
        return self.layout.host_sock if who == "operator" else self.layout.agent_sock(who)

    def client(self, who: str, timeout: float = 30.0, token: str | None = "own") -> UnixClient:
        """A client of ``who``'s socket (``operator`` → host.sock) sending ``who``'s
        credential, or ``token`` when given (None: no credential)."""
        tok = self.token(who) if token == "own" else token
        return UnixClient(str(self.sock(who)), timeout=timeout, token=tok)


def make_swarm(heartbeat: float = 15.0, max_streams: int = 8) -> Swarm:
    """Start a swarm in a short temp dir (unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db)
    ops = FakeOps()
    credentials = AgentCredentials(layout)
    key = ensure_operator_key(layout)
    tokens = LoginTokens()
    sockets = serve_agents(broker, ops, layout, credentials)
    admin = serve_unix(
        make_admin_app(
            broker,
            ops,
            key,
            login_tokens=tokens,
            dashboard_url=lambda: "http://127.0.0.1:7000",
            heartbeat_seconds=heartbeat,
            max_streams=max_streams,
        ),
        layout.host_sock,
        name="host.sock",
    )
    return Swarm(d, broker, ops, layout, credentials, key, tokens, sockets, admin)


def close_swarm(s: Swarm) -> None:
    """Stop every server and close the broker."""
    for x in [*s.sockets.values(), s.admin, *s.extra]:
        x.stop(timeout=3.0)
    s.broker.close()


@pytest.fixture
def swarm() -> Iterator[Swarm]:
    s = make_swarm()
    yield s
    close_swarm(s)


def _err(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, str | None, str]:
    e = exc.value
    return e.status, e.code, e.field, e.message


# ---------------------------------------------------------------------- broker verbs


def test_send_recv_ack_roundtrip(swarm: Swarm) -> None:
    alice, bob = swarm.client("alice"), swarm.client("bob")
    r = alice.post("/send", {"to": "bob", "body": "hello bob"})
    validate(r, "wire#SendResponse")
    assert bob.get("/status") == {
        "unread": 1,
        "open_threads": 0,
        "pending_reminders": 0,
        "dead_letters": 0,
    }
    got = bob.post("/recv", {})
    validate(got, "wire#RecvResponse")
    assert got["message"]["id"] == r["id"] and got["message"]["from"] == "alice"
    assert got["message"]["to"] == "bob" and got["message"]["acked_at"] is not None
    assert got["status"]["unread"] == 0
    assert bob.post("/recv", {"wait_seconds": 0}) == {"message": None, "status": got["status"]}


def test_release_gives_leases_back_at_once(swarm: Swarm) -> None:
    alice, bob = swarm.client("alice"), swarm.client("bob")
    m1 = alice.post("/send", {"to": "bob", "body": "one"})["id"]
    m2 = alice.post("/send", {"to": "bob", "body": "two"})["id"]
    assert bob.post("/recv", {"lease_seconds": 3600})["message"]["id"] == m1
    assert bob.post("/recv", {"lease_seconds": 3600})["message"]["id"] == m2
    assert bob.post("/recv", {})["message"] is None  # both leased for an hour
    # a restarted harness gives back only what it names; others' ids are ignored
    r = bob.post("/release", {"ids": [m2, 999999]})
    validate(r, "wire#ReleaseResponse")
    assert r["released"] == 1
    assert bob.post("/recv", {"lease_seconds": 3600})["message"]["id"] == m2
    assert alice.post("/release", {})["released"] == 0  # alice holds no leases
    # a parked recv wakes at once when a release makes a message deliverable
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=bob.post("/recv", {"wait_seconds": 20})))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert bob.post("/release", {})["released"] == 2
    t.join(10)
    assert out["r"]["message"]["id"] == m1 and time.monotonic() - t0 < 1.0
    with pytest.raises(ApiError) as err:
        bob.post("/release", {"ids": ["x"]})
    assert err.value.status == 400 and err.value.field == "ids.0"


def test_long_poll_returns_on_send_and_times_out(swarm: Swarm) -> None:
    bob = swarm.client("bob")
    out: dict[str, Any] = {}

    def park() -> None:
        t0 = time.monotonic()
        out["r"] = bob.post("/recv", {"wait_seconds": 20})
        out["t"] = time.monotonic() - t0

    t = threading.Thread(target=park)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    swarm.client("alice").post("/send", {"to": "bob", "body": "ping"})
    t.join(10)
    assert out["r"]["message"]["body"] == "ping"
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert bob.post("/recv", {"wait_seconds": 0.5})["message"] is None
    assert 0.4 < time.monotonic() - t0 < 3


def test_lease_redelivery_and_ack_over_http(swarm: Swarm) -> None:
    alice, bob = swarm.client("alice"), swarm.client("bob")
    mid = alice.post("/send", {"to": "bob", "body": "leased"})["id"]
    first = bob.post("/recv", {"lease_seconds": 1})["message"]
    assert first["id"] == mid and first["acked_at"] is None
    assert bob.post("/recv", {})["message"] is None  # leased: not handed out again yet
    again = bob.post("/recv", {"wait_seconds": 5, "lease_seconds": 60})["message"]
    assert again["id"] == mid  # lease ran out → redelivered, same id
    r = bob.post("/ack", {"ids": [mid]})
    validate(r, "wire#AckResponse")
    assert r["acked"] == 1 and r["status"]["unread"] == 0
    assert bob.post("/ack", {"ids": [mid]})["acked"] == 0


def test_ask_answer_over_http(swarm: Swarm) -> None:
    alice, bob, carol = swarm.client("alice"), swarm.client("bob"), swarm.client("carol")
    r = alice.post("/ask", {"to": "bob", "question": "lunch?"})
    validate(r, "wire#AskResponse")
    assert r["status"]["open_threads"] == 1
    q = bob.post("/recv", {})["message"]
    assert q["kind"] == "question" and q["thread"] == r["thread"]
    with pytest.raises(ApiError) as e:
        carol.post("/answer", {"thread": r["thread"], "body": "me!"})
    assert _err(e)[:3] == (403, "forbidden", "thread")
    with pytest.raises(ApiError) as e:
        bob.post("/answer", {"thread": r["thread"] + 99, "body": "?"})
    assert _err(e)[:2] == (404, "not_found")
    a = bob.post("/answer", {"thread": r["thread"], "body": "yes"})
    assert a["thread"] == r["thread"] and a["status"]["open_threads"] == 0
    with pytest.raises(ApiError) as e:
        bob.post("/answer", {"thread": r["thread"], "body": "again"})
    assert _err(e)[:2] == (409, "conflict")
    ans = alice.post("/recv", {})["message"]
    assert ans["kind"] == "answer" and ans["body"] == "yes" and ans["from"] == "bob"


def test_remind_over_http(swarm: Swarm) -> None:
    alice = swarm.client("alice")
    r = alice.post("/remind", {"after_seconds": 1, "body": "check the build"})
    validate(r, "wire#RemindResponse")
    assert r["status"]["pending_reminders"] == 1
    assert alice.post("/recv", {})["message"] is None
    t0 = time.monotonic()
    m = alice.post("/recv", {"wait_seconds": 5})["message"]
    assert m["kind"] == "reminder" and m["body"] == "check the build" and m["from"] == "alice"
    assert 0.5 < time.monotonic() - t0 < 3


def test_recent_status_and_wake(swarm: Swarm) -> None:
    alice, bob = swarm.client("alice"), swarm.client("bob")
    alice.post("/send", {"to": "bob", "body": "one"})
    bob.post("/send", {"to": "alice", "body": "two"})
    w = alice.post("/wake", {"from": "matrix: new dm", "body": "hi from matrix"})
    validate(w, "wire#SendResponse")
    r = alice.post("/recent", {"limit": 10})
    validate(r, "wire#RecentResponse")
    assert [m["body"] for m in r["messages"]] == ["one", "two", "hi from matrix"]
    assert r["status"]["unread"] == 2
    m = alice.post("/recv", {})["message"]
    assert m["body"] == "two"
    woke = alice.post("/recv", {})["message"]
    assert woke["kind"] == "wake" and woke["from"] == "matrix: new dm"
    validate(alice.get("/status"), "wire#Status")


def test_unknown_recipient_lists_who_exists(swarm: Swarm) -> None:
    with pytest.raises(ApiError) as e:
        swarm.client("alice").post("/send", {"to": "zed", "body": "x"})
    status, code, fld, msg = _err(e)
    assert (status, code, fld) == (404, "not_found", "to")
    assert "zed" in msg and "alice" in msg and "manager" in msg


def test_allowed_recipients_refusal(swarm: Swarm) -> None:
    carol = swarm.client("carol")
    with pytest.raises(ApiError) as e:
        carol.post("/send", {"to": "alice", "body": "psst"})
    status, code, fld, msg = _err(e)
    assert (status, code, fld) == (403, "forbidden", "to")
    assert "manager" in msg and "bob" in msg
    with pytest.raises(ApiError):
        carol.post("/ask", {"to": "alice", "question": "?"})
    carol.post("/send", {"to": "bob", "body": "allowed"})
    carol.post("/send", {"to": MANAGER, "body": "always allowed"})
    assert swarm.broker.status("alice").unread == 0
    # an empty list means anyone
    swarm.client("alice").post("/send", {"to": "carol", "body": "fine"})


def test_recipient_checks_cache_only_what_they_allowed(swarm: Swarm) -> None:
    """A recipient check's reading of desired state is reused for RECIPIENTS_TTL seconds, but
    only to allow: a new agent is reachable at once, a narrowed allow list bites after it."""
    from controller.api.agent import RECIPIENTS_TTL

    alice = swarm.client("alice")
    alice.post("/send", {"to": "bob", "body": "reads desired state"})
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "dave", "body": "nobody yet"})
    assert _err(e)[0] == 404
    swarm.ops.agents.add("dave")
    alice.post("/send", {"to": "dave", "body": "dave exists now"})  # a refusal is never cached
    assert swarm.broker.status("dave").unread == 1
    swarm.ops.allowed["alice"] = ("carol",)
    time.sleep(RECIPIENTS_TTL + 0.2)  # past the reading's life: read afresh
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "bob", "body": "not any more"})
    assert _err(e)[:3] == (403, "forbidden", "to")
    alice.post("/send", {"to": "carol", "body": "on the list"})


def test_manager_verbs_are_404_on_agent_socket(swarm: Swarm) -> None:
    alice = swarm.client("alice")
    for verb in (
        "request_spawn",
        "request_apply_commit",
        "start",
        "kill",
        "restart",
        "update",
        "ask_operator",
    ):
        with pytest.raises(ApiError) as e:
            alice.post(f"/{verb}", {"name": "bob"})
        assert e.value.status == 404 and "manager" in e.value.message, verb
    with pytest.raises(ApiError) as e:
        alice.get("/list")
    assert e.value.status == 404
    assert swarm.ops.lifecycles == [] and swarm.ops.props == {}


def test_manager_socket_verbs(swarm: Swarm) -> None:
    mgr = swarm.client(MANAGER)
    p = mgr.post("/request_spawn", {"name": "dave"})
    validate(p, "wire#ProposalResponse")
    assert p["ref"] == f"proposal/{p['id']}" and "status" in p
    with pytest.raises(ApiError) as e:
        mgr.post("/request_spawn", {"name": "alice"})
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        mgr.post("/request_spawn", {"name": "../../etc"})
    assert (e.value.status, e.value.field) == (400, "name")
    a = mgr.post("/request_apply_commit", {"commit": "abcdef1", "note": "bump"})
    assert a["id"] == p["id"] + 1
    with pytest.raises(ApiError) as e:
        mgr.post("/request_apply_commit", {"commit": "deadbeef"})
    assert e.value.status == 404
    for verb in Lifecycle:
        r = mgr.post(f"/{verb.value}", {"name": "bob"})
        assert r["result"] == f"{verb} bob: ok"
    with pytest.raises(ApiError) as e:
        mgr.post("/kill", {"name": "nobody"})
    assert e.value.status == 404
    assert mgr.get("/list")["agents"][0]["name"] == "alice"
    q = mgr.post("/ask_operator", {"question": "ok?", "options": ["y", "n"], "ttl_seconds": 60})
    (pending,) = swarm.broker.questions(pending_only=True)
    assert pending.id == q["id"] and pending.asker == MANAGER and pending.deadline_at
    # the manager also has every broker verb
    mgr.post("/send", {"to": "alice", "body": "from the manager"})
    assert swarm.client("alice").post("/recv", {})["message"]["from"] == MANAGER


def test_events_reach_manager_coalesced(swarm: Swarm) -> None:
    ev = {"type": "NeedsLogin", "agent": "bob"}
    assert swarm.broker.emit_event(MANAGER, ev) is not None
    assert swarm.broker.emit_event(MANAGER, ev) is None
    mgr = swarm.client(MANAGER)
    m = mgr.post("/recv", {})["message"]
    assert m["kind"] == "event" and m["event"] == ev and "bob needs login" in m["body"]
    assert mgr.post("/recv", {})["message"] is None


def test_client_gone_during_long_poll_does_not_swallow_message(swarm: Swarm) -> None:
    """A recv whose client hung up must not take (and ack) the next message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(swarm.layout.agent_sock("bob")))
    payload = b'{"wait_seconds": 30}'
    sock.sendall(
        b"POST /recv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + swarm.token("bob").encode() + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    time.sleep(0.3)
    sock.close()
    time.sleep(0.5)  # the loop sees the hang-up at once
    swarm.client("alice").post("/send", {"to": "bob", "body": "do not lose me"})
    time.sleep(0.3)
    m = swarm.client("bob").post("/recv", {"wait_seconds": 2})["message"]
    assert m is not None and m["body"] == "do not lose me"


def test_parked_polls_do_not_block_other_agents(swarm: Swarm) -> None:
    """Bob parks every worker of his socket; alice's socket still answers at once."""
    threads = [
        threading.Thread(target=swarm.client("bob").post, args=("/recv", {"wait_seconds": 3}))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    swarm.client("alice").get("/status")
    assert time.monotonic() - t0 < 0.5
    for t in threads:
        t.join(15)


def test_unexpected_errors_are_json_and_the_socket_lives_on(
    swarm: Swarm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = swarm.client(MANAGER)

    def boom() -> list[dict[str, Any]]:
        raise RuntimeError("kaboom")

    def flaky(verb: Lifecycle, name: str) -> str:
        raise TransientError("container did not start in time; retry")

    monkeypatch.setattr(swarm.ops, "list_agents", boom)
    monkeypatch.setattr(swarm.ops, "lifecycle", flaky)
    for _ in range(6):  # more than the socket's worker threads: none of them died
        with pytest.raises(ApiError) as e:
            mgr.get("/list")
        assert (e.value.status, e.value.code) == (500, "internal")
        assert "kaboom" not in e.value.message  # no internals leak to the caller
    assert "kaboom" in caplog.text and "Traceback" in caplog.text
    with pytest.raises(ApiError) as e:
        mgr.post("/start", {"name": "bob"})
    assert (e.value.status, e.value.code) == (503, "transient")
    assert mgr.get("/status")["unread"] == 0


# ---------------------------------------------------------------------- kill -9

_CHILD = """
import sys, time
from pathlib import Path
from controller.api import make_agent_app
from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.paths import Layout
from hivehttp import serve_unix

class Ops:
    def agent_names(self): return frozenset({"alice", "bob", "manager"})
    def allowed_recipients(self, agent): return ()

b = Broker(Path(sys.argv[1]))
creds = AgentCredentials(Layout(Path(sys.argv[1]).parent, Path(sys.argv[1]).parent))
for name in ("alice", "bob"):
    creds.ensure(name)  # the first start makes them; a restart keeps them
serve_unix(make_agent_app(b, "alice", Ops(), "agent", creds), Path(sys.argv[2]))
serve_unix(make_agent_app(b, "bob", Ops(), "agent", creds), Path(sys.argv[3]))
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def _start_child(d: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(d / "b.sqlite"), str(d / "a.sock"), str(d / "b.sock")],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def test_kill9_every_acknowledged_send_is_delivered_once() -> None:
    """1,000 sends over the socket while the server is kill -9'd and restarted: each send
    answered 200 is delivered exactly once afterwards, and nothing is delivered twice."""
    d = Path(tempfile.mkdtemp(prefix="hh-k9-", dir="/tmp"))
    proc = _start_child(d)
    ok: list[str] = []
    lock = threading.Lock()
    attempts = iter(range(1000))
    killed = threading.Event()

    creds = AgentCredentials(Layout(d, d))

    def sender() -> None:
        client = UnixClient(str(d / "a.sock"), timeout=10.0, token=creds.current("alice"))
        for i in attempts:
            body = f"n{i}"
            try:
                client.post("/send", {"to": "bob", "body": body})
            except (Unreachable, ApiError):
                time.sleep(0.01)
                continue
            with lock:
                ok.append(body)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    while len(ok) < 300:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed.set()
    proc = _start_child(d)
    for t in threads:
        t.join(120)
    try:
        bob = UnixClient(str(d / "b.sock"), token=creds.current("bob"))
        got: list[str] = []
        while (m := bob.post("/recv", {})["message"]) is not None:
            got.append(m["body"])
        assert len(got) == len(set(got)), "a message was delivered twice"
        missing = set(ok) - set(got)
        assert not missing, f"{len(missing)} acknowledged sends lost: {sorted(missing)[:5]}"
        assert len(ok) > 300
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------- issue 4, second slice


def test_idempotent_send_ask_remind_wake_over_http(swarm: Swarm) -> None:
    alice = swarm.client("alice")
    r1 = alice.post("/send", {"to": "bob", "body": "once", "idempotency_key": "s-1"})
    r2 = alice.post("/send", {"to": "bob", "body": "once", "idempotency_key": "s-1"})
    validate(r2, "wire#SendResponse")
    assert r1["id"] == r2["id"] and (r1["duplicate"], r2["duplicate"]) == (False, True)
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "bob", "body": "other", "idempotency_key": "s-1"})
    assert _err(e)[:3] == (409, "conflict", "idempotency_key")
    # the key is the caller's: bob may use the same one
    b = swarm.client("bob").post("/send", {"to": "alice", "body": "once", "idempotency_key": "s-1"})
    assert b["id"] != r1["id"] and b["duplicate"] is False
    a1 = alice.post("/ask", {"to": "bob", "question": "?", "idempotency_key": "a-1"})
    a2 = alice.post("/ask", {"to": "bob", "question": "?", "idempotency_key": "a-1"})
    validate(a2, "wire#AskResponse")
    assert (a1["id"], a1["thread"]) == (a2["id"], a2["thread"]) and a2["duplicate"]
    m1 = alice.post("/remind", {"after_seconds": 60, "body": "r", "idempotency_key": "r-1"})
    m2 = alice.post("/remind", {"after_seconds": 60, "body": "r", "idempotency_key": "r-1"})
    validate(m2, "wire#RemindResponse")
    assert (m1["id"], m1["due_at"]) == (m2["id"], m2["due_at"]) and m2["duplicate"]
    w1 = alice.post("/wake", {"from": "cron", "body": "tick", "idempotency_key": "w-1"})
    w2 = alice.post("/wake", {"from": "cron", "body": "tick", "idempotency_key": "w-1"})
    assert w1["id"] == w2["id"] and w2["duplicate"]
    bodies = [m.body for m in swarm.broker.messages(0)]
    assert bodies.count("once") == 2 and bodies.count("?") == 1 and bodies.count("tick") == 1
    with pytest.raises(ApiError) as e:
        alice.post("/send", {"to": "bob", "body": "x", "idempotency_key": "k" * 129})
    assert _err(e)[:3] == (400, "invalid", "idempotency_key")


def test_every_verb_answers_with_the_callers_status(swarm: Swarm) -> None:
    alice, mgr = swarm.client("alice"), swarm.client(MANAGER)
    sent = alice.post("/send", {"to": "bob", "body": "x"})
    asked = swarm.client("bob").post("/ask", {"to": "alice", "question": "q"})
    calls: list[tuple[str, dict[str, Any], str]] = [
        ("/send", {"to": "bob", "body": "x"}, "SendResponse"),
        ("/recv", {}, "RecvResponse"),
        ("/ack", {"ids": [sent["id"]]}, "AckResponse"),
        ("/ask", {"to": "bob", "question": "q"}, "AskResponse"),
        ("/answer", {"thread": asked["thread"], "body": "a"}, "AnswerResponse"),
        ("/remind", {"after_seconds": 60, "body": "r"}, "RemindResponse"),
        ("/recent", {"limit": 3}, "RecentResponse"),
        ("/wake", {"from": "cron", "body": "w"}, "SendResponse"),
    ]
    for url, doc, schema in calls:
        r = alice.post(url, doc)
        validate(r, f"wire#{schema}")
        validate(r["status"], "wire#Status")
        assert "dead_letters" in r["status"], url
    validate(alice.get("/status"), "wire#Status")
    manager_calls: list[tuple[str, dict[str, Any] | None, str]] = [
        ("/request_spawn", {"name": "dave"}, "ProposalResponse"),
        ("/request_apply_commit", {"commit": "abcdef1"}, "ProposalResponse"),
        ("/restart", {"name": "bob"}, "LifecycleResponse"),
        ("/ask_operator", {"question": "ok?"}, "AskOperatorResponse"),
        ("/list", None, "ListResponse"),
    ]
    for url, doc, schema in manager_calls:
        r = mgr.get(url) if doc is None else mgr.post(url, doc)
        validate(r, f"wire#{schema}")


def test_dead_letters_over_http(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="hh-dl-", dir="/tmp"))
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db, max_deliveries=2)
    creds = AgentCredentials(layout)
    sockets = serve_agents(broker, FakeOps(), layout, creds, ("alice", "bob", MANAGER))
    try:
        alice = UnixClient(str(layout.agent_sock("alice")), token=creds.current("alice"))
        bob = UnixClient(str(layout.agent_sock("bob")), token=creds.current("bob"))
        mid = alice.post("/send", {"to": "bob", "body": "poison"})["id"]
        for _ in range(2):  # two harness turns that die before acking
            m = bob.post("/recv", {"wait_seconds": 5, "lease_seconds": 1})["message"]
            assert m["id"] == mid
        r = bob.post("/recv", {"wait_seconds": 2, "lease_seconds": 1})
        assert r["message"] is None and r["status"]["dead_letters"] == 1
        assert r["status"]["unread"] == 0
        mgr = UnixClient(str(layout.agent_sock(MANAGER)), token=creds.current(MANAGER))
        ev = mgr.post("/recv", {})["message"]
        assert ev["event"]["type"] == "DeadLetter" and ev["event"]["id"] == mid
    finally:
        for x in sockets.values():
            x.stop(timeout=3.0)
        broker.close()


def test_operator_answer_must_be_one_of_the_options(swarm: Swarm) -> None:
    op = swarm.client("operator")
    qid = swarm.client(MANAGER).post(
        "/ask_operator", {"question": "which?", "options": ["a", "b"], "multi": True}
    )["id"]
    with pytest.raises(ApiError) as e:
        op.post(f"/questions/{qid}/answer", {"answer": "c"})
    status, code, fld, msg = _err(e)
    assert (status, code, fld) == (400, "invalid", "answer") and "'a'" in msg
    r = op.post(f"/questions/{qid}/answer", {"answer": ["b", "a"]})
    assert r["answer"] == "b, a" and r["state"] == "answered"


def test_a_report_is_kept_under_the_sockets_identity(swarm: Swarm) -> None:
    report = {
        "claude": {"found": False, "path": "claude", "version": None},
        "credentials": {"present": True, "source": "env ANTHROPIC_API_KEY"},
        "env": {"ANTHROPIC_API_KEY": "0123456789abcdef"},
    }
    answer = swarm.client("alice").post("/report", report)
    assert answer["ok"] is True and "unread" in answer["status"]
    # the body names no agent: alice's socket can only speak for alice
    assert swarm.ops.reports == [("alice", report)]
    with pytest.raises(ApiError) as err:
        swarm.client("alice").post("/report", {**report, "agent": "bob"})
    assert err.value.status == 400 and err.value.field == "agent"
    with pytest.raises(ApiError) as err:
        swarm.client("alice").post("/report", {**report, "env": {"PATH": "x" * 65}})
    assert err.value.status == 400 and err.value.field == "env.PATH"
    with pytest.raises(ApiError) as err:  # bob's credential on alice's socket
        swarm.client("alice", token=swarm.token("bob")).post("/report", report)
    assert err.value.status == 401
    assert len(swarm.ops.reports) == 1
