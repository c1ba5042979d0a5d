"""The budget verbs over real unix sockets: host.sock's ``/budget`` (the CLI's) and the hold
on an agent's ``POST /recv``, with a real broker, real credentials and a real ``Budgets``
(ledger in sqlite, spend written by the harness' own turn-stats writer)."""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.api import make_admin_app, make_agent_app
from controller.auth import AgentCredentials, ensure_operator_key
from controller.broker import Broker
from controller.budget.core import Limits
from controller.budget.ledger import Ledger
from controller.budget.service import Budgets
from controller.paths import Layout
from harness.turnstats import TurnRow, TurnStats
from hivehttp import Listener, serve_unix
from schemas.client import ApiError, UnixClient
from schemas.validate import validate

ROOT = Path(__file__).resolve().parents[2]


def _fake_ops() -> Any:
    path = str(ROOT / "tests" / "component")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("test_api_agent").FakeOps()


@dataclass
class Hive:
    dir: Path
    layout: Layout
    broker: Broker
    budgets: Budgets
    stats: TurnStats
    key: str
    credentials: AgentCredentials
    servers: list[Listener]

    def operator(self, token: str | None = "own") -> UnixClient:
        tok = self.key if token == "own" else token
        return UnixClient(str(self.layout.host_sock), timeout=30, token=tok)

    def agent(self, name: str) -> UnixClient:
        token = self.credentials.current(name)
        return UnixClient(str(self.layout.agent_sock(name)), timeout=60, token=token)


@pytest.fixture
def hive() -> Iterator[Hive]:
    d = Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db)
    ops = _fake_ops()
    credentials = AgentCredentials(layout)
    key = ensure_operator_key(layout)
    stats_path = layout.agent_state("alice") / "hyperhive-turn-stats.sqlite"
    stats_path.parent.mkdir(parents=True)
    stats = TurnStats(stats_path)
    budgets = Budgets(
        Ledger(d / "budget.sqlite"),
        lambda a: layout.agent_state(a) / "hyperhive-turn-stats.sqlite",
        lambda: {"alice": Limits(usd_per_day=1.0), "bob": None, "manager": None},
        notify=broker.emit_event,
        tick=0.05,
        answer_after=20.0,
    )
    servers = []
    for name in ("alice", "manager"):
        credentials.issue(name)
        flavor = "manager" if name == "manager" else "agent"
        app = make_agent_app(broker, name, ops, flavor, credentials, budgets)
        servers.append(serve_unix(app, layout.agent_sock(name), name=name))
    admin = make_admin_app(broker, ops, key, budgets=budgets)
    servers.append(serve_unix(admin, layout.host_sock, name="host.sock"))
    h = Hive(d, layout, broker, budgets, stats, key, credentials, servers)
    try:
        yield h
    finally:
        for s in servers:
            s.stop(timeout=3.0)
        broker.close()
        budgets.ledger.close()
        shutil.rmtree(d, ignore_errors=True)


def spend(h: Hive, usd: float) -> None:
    now = time.time()
    h.stats.record(TurnRow(model="m", result_kind="ok", started_at=now, ended_at=now,
                           duration_ms=1, cost_usd=usd))  # fmt: skip


def err(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int, str | None]:
    return exc.value.status, exc.value.field


def test_host_sock_budget_verbs_and_their_errors(hive: Hive) -> None:
    op = hive.operator()
    spend(hive, 0.4)
    report = op.get("/budget")
    assert report["enabled"] is True and report["swarm"] is None
    [alice] = [a for a in report["agents"] if a["agent"] == "alice"]
    assert alice["spent_usd"] == 0.4 and alice["limit_usd"] == 1.0 and alice["held"] is None
    assert op.get("/budget?name=alice")["agents"][0]["agent"] == "alice"
    with pytest.raises(ApiError) as e:
        op.get("/budget?name=nobody")
    assert err(e) == (404, "name")
    for body, field in (
        ({"agent": "alice", "usd": -1}, "usd"),
        ({"agent": "alice", "usd": "1"}, "usd"),
        ({"agent": "alice", "usd": 1, "tokens": 1.5}, "tokens"),
        ({"agent": "alice", "usd": 0}, "usd"),
        ({"usd": 1}, "agent"),
        ({"agent": "alice", "swarm": True, "usd": 1}, "agent"),
        ({"agent": "Alice!", "usd": 1}, "agent"),
        ({"agent": "bob", "usd": 1}, "agent"),
        ({"swarm": True, "usd": 1}, "swarm"),
        ({"agent": "alice", "usd": 1, "extra": 1}, "extra"),
    ):
        with pytest.raises(ApiError) as e:
            op.post("/budget/allow", body)
        assert e.value.status == 400 and field in (e.value.field or ""), (body, e.value)
    with pytest.raises(ApiError) as e:
        hive.operator(token=None).get("/budget")
    assert e.value.status == 401
    with pytest.raises(ApiError) as e:  # an agent's credential is not the operator's
        hive.operator(token=hive.credentials.current("alice")).post(
            "/budget/allow", {"agent": "alice", "usd": 5}
        )
    assert e.value.status == 401
    ok = op.post("/budget/allow", {"agent": "alice", "usd": 0.5, "note": "why not"})
    assert ok["standing"]["limit_usd"] == 1.5 and ok["result"].startswith("alice spent $0.4000")


def test_recv_is_held_over_budget_and_let_go_by_an_extension(hive: Hive) -> None:
    alice = hive.agent("alice")
    spend(hive, 1.2)
    sent = hive.operator().post("/send", {"to": "alice", "body": "are you there?"})
    # held: nothing taken; when the wait runs out the answer says why
    got = alice.post("/recv", {"wait_seconds": 1, "lease_seconds": 60}, timeout=60)
    validate(got, "wire#RecvResponse")
    assert got["message"] is None and "alice spent $1.2000 of $1.0000" in got["held"]
    assert got["status"]["unread"] == 1
    assert hive.broker.status("alice").unread == 1
    # the manager and the operator were told, once
    events = [m for m in hive.broker.messages() if m.kind == "event"]
    assert sorted(m.recipient for m in events) == ["manager", "operator"]
    assert {m.event["type"] for m in events if m.event} == {"BudgetExceeded"}
    assert events[0].body.startswith("BudgetExceeded: alice spent $1.2000")
    # a recv parked while held takes the message once the operator extends the budget
    out: dict[str, Any] = {}

    def park() -> None:
        out["r"] = alice.post("/recv", {"wait_seconds": 30, "lease_seconds": 60}, timeout=60)

    t = threading.Thread(target=park)
    t.start()
    time.sleep(0.2)
    hive.operator().post("/budget/allow", {"agent": "alice", "usd": 1})
    t.join(30)
    assert out["r"]["message"]["id"] == sent["id"] and "held" not in out["r"]
    # the manager's socket (no budget) is not held
    assert hive.agent("manager").post("/recv", {"wait_seconds": 0})["message"] is not None


def test_spend_reported_by_the_harness_counts_once(hive: Hive) -> None:
    # an agent whose stats file the controller cannot read (on another machine) is counted
    # from its harness' reports; the same turn from both paths counts once
    alice = hive.agent("alice")
    now = time.time()
    report = {"turn_id": 7, "started_at": now, "cost_usd": 0.6, "tokens": 1000}
    assert alice.post("/spend", report) == {"recorded": True}
    assert alice.post("/spend", report) == {"recorded": False}
    with pytest.raises(ApiError) as e:
        alice.post("/spend", {**report, "cost_usd": -1})
    assert err(e) == (400, "cost_usd")
    # a turn filed under another day counts today
    old = {"turn_id": 8, "started_at": now - 5 * 86400, "cost_usd": 0.5, "tokens": 10}
    assert alice.post("/spend", old) == {"recorded": True}
    st = hive.budgets.standing("alice")
    assert st.spend.turns == 2 and st.spend.usd == pytest.approx(1.1) and st.exceeded
    got = alice.post("/recv", {"wait_seconds": 1}, timeout=60)
    assert got["message"] is None and "$1.1000 of $1.0000" in got["held"]
    # the harness writes the row and reports it: the file and the report are one turn
    t = time.time()
    rid = hive.stats.record(TurnRow(model="m", result_kind="ok", started_at=t, ended_at=t,
                                    duration_ms=1, cost_usd=0.25))  # fmt: skip
    assert rid is not None
    same = {"turn_id": rid, "started_at": t, "cost_usd": 0.25, "tokens": 0}
    assert alice.post("/spend", same) == {"recorded": True}
    st = hive.budgets.standing("alice")  # reads the stats file too
    assert st.spend.turns == 3 and st.spend.usd == pytest.approx(1.35)
