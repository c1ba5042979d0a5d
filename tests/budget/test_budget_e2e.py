"""Budgets end to end: a real ``hyperhive serve`` (local runtime) runs alice's real harness,
which runs the real ``claude`` CLI against the fake Messages API; every reply reports a
fixed usage, so every API call of alice's costs the same (the CLI prices it).

alice runs two turns without a budget (what one costs is measured, not assumed); the
operator then gives her ``usdPerDay`` = spend so far + half a turn and ``usdPerTurn`` = one
and a half calls (a push to main: a manifest change like any other). Her next turn calls a
tool for ever: claude stops it at the per-turn cap, and it crosses the daily limit. The
next message is not taken: it stays in her inbox through a controller restart and a
harness restart, ``Ready`` is ``False/BudgetExceeded``, the manager and the operator get
``BudgetExceeded`` once, ``hyperhive budget`` and the dashboard's ``/api/budget`` show her
held. An extension lets exactly one turn through. Then the controller's clock
(``HYPERHIVE_BUDGET_CLOCK_FILE``, no sleep) moves to the next UTC day: alice resumes by
herself and the waiting message is delivered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import Browser
from tests.e2e.credentials import agent_client
from tests.e2e.swarm import Swarm
from tests.fakeapi import (
    Reply,
    Request,
    reply_text,
    reply_tool_use,
)
from tests.fakeapi.server import Usage
from tests.realserve import wait_for
from tests.storyswarm import require_claude, scripted_swarm

pytestmark = pytest.mark.e2e

require_claude()  # skips this module without the claude CLI

TURN_USAGE = Usage(input_tokens=20_000, output_tokens=200)


def run_prompt(req: Request) -> str:
    """The text that started this claude run: the last user message with text of its own
    (later ones in the run carry only tool results)."""
    for msg in reversed(req.messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if any(t.strip() for t in texts):
            return "\n".join(texts)
    return ""


def model_script(req: Request) -> Reply:
    """Every reply reports ``TURN_USAGE``: a turn is one API call, except "task three",
    which calls a tool for ever (only ``usdPerTurn`` ends it)."""
    if "task three" in run_prompt(req):
        return reply_tool_use("mcp__hyperhive__status", {}, usage=TURN_USAGE)
    return reply_text("ok.", usage=TURN_USAGE)


MIDNIGHT_MARGIN = 150.0
"""Seconds before a UTC midnight within which the story waits for the new day first."""


def seconds_to_utc_midnight() -> float:
    return 86400 - time.time() % 86400


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    # the turns' start times are the real clock's: a real UTC midnight inside the test would
    # move them out of the controller's window, so a run that would cross one starts after it.
    # The story takes 17-60 s; the wait stays well inside the test's timeout (below).
    left = seconds_to_utc_midnight()
    if left < MIDNIGHT_MARGIN:
        time.sleep(left + 2)
    with scripted_swarm(tmp_path, model_script, agent_ports=9) as s:
        s.env["HYPERHIVE_BUDGET_CLOCK_FILE"] = str(tmp_path / "clock-offset")
        yield s


def manifest(budget: dict[str, Any] | None) -> str:
    text = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: alice\nspec:\n"
    text += "  model: claude-test\n"
    if budget:
        text += f"  budget: {json.dumps(budget)}\n"
    return text


def push_alice(s: Swarm, budget: dict[str, Any] | None) -> None:
    path = s.tmp / "m" / "agents" / "alice" / "agent.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest(budget))
    s.git("add", "agents/alice/agent.yaml")
    s.git("commit", "-qm", "alice's budget" if budget else "spawn alice")
    s.push("HEAD:main")


def report(s: Swarm, name: str = "alice") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(s.cli("budget", name, "-o", "json").stdout)
    return data


def alice(s: Swarm) -> dict[str, Any]:
    return dict(report(s)["agents"][0])


def turns_seen(s: Swarm, marker: str) -> int:
    return len(s.requests_where(lambda r: marker in r.last_user_text))


def ready(s: Swarm) -> dict[str, Any]:
    conds = s.admin.get("/agents/alice")["conditions"]
    return dict(next(c for c in conds if c["type"] == "Ready"))


def events(s: Swarm, kind: str, to: str) -> list[dict[str, Any]]:
    return [
        m["event"]
        for m in s.messages()
        if m["kind"] == "event" and m["to"] == to and m["event"]["type"] == kind
    ]


def unread(s: Swarm) -> int:
    return int(agent_client(s.state, "alice").get("/status")["unread"])


def send_and_wait_turn(s: Swarm, body: str, turns_before: int) -> None:
    s.cli("send", "alice", body)
    wait_for(f"alice's turn on {body!r}", lambda: alice(s)["turns"] > turns_before, timeout=90)


@pytest.mark.timeout(600)  # the story plus, near a UTC midnight, up to MIDNIGHT_MARGIN of waiting
def test_budget_holds_extends_and_resumes(swarm: Swarm) -> None:
    s = swarm
    s.start()
    wait_for("the manager running", lambda: s.phase("manager") == "running")
    s.git("clone", "-q", str(s.state / "meta.git"), str(s.tmp / "m"), cwd=s.tmp)
    push_alice(s, None)
    wait_for("alice running", lambda: s.phase("alice") == "running", timeout=90)

    # two turns without a budget: what a turn costs (the second, once alice is warmed up)
    send_and_wait_turn(s, "task one", 0)
    spent1 = float(alice(s)["spent_usd"])
    send_and_wait_turn(s, "task two", 1)
    before = alice(s)
    assert before["level"] == "unlimited" and before["limit_usd"] is None
    spent2 = float(before["spent_usd"])
    one = spent2 - spent1
    assert one > 0, before
    stats = json.loads(s.cli("stats", "alice", "-o", "json").stdout)["groups"][0]
    assert stats["turns"] == 2 and float(stats["cost_usd"]) == pytest.approx(spent2)

    # the operator sets usdPerDay to what she spent plus half a turn, and usdPerTurn to one
    # and a half API calls (a push to main); the manifest change restarts her harness: the
    # ledger keeps the spend
    limit = round(spent2 + one / 2, 6)
    cap = round(one * 1.5, 6)
    push_alice(s, {"usdPerDay": limit, "usdPerTurn": cap})
    wait_for("the budget at main", lambda: alice(s)["limit_usd"] == limit, timeout=60)
    wait_for("alice running again", lambda: s.phase("alice") == "running", timeout=90)
    assert alice(s)["spent_usd"] == pytest.approx(spent2)

    # one more turn crosses the limit; it would call tools for ever, but claude stops it after
    # the API call that reaches usdPerTurn: it overshoots the cap by less than one call
    send_and_wait_turn(s, "task three", 2)
    held = wait_for("alice held", lambda: alice(s)["held"], timeout=30)
    assert f"of ${limit:.4f}" in held, held
    row = alice(s)
    assert row["level"] == "exceeded" and row["turns"] == 3
    third = float(row["spent_usd"]) - spent2
    assert cap <= third < cap + one + 1e-6, (third, cap, one)

    # the next message is not processed and stays in her inbox
    s.cli("send", "alice", "task four")
    wait_for("task four queued", lambda: unread(s) == 1)
    cond = wait_for(
        "Ready=False/BudgetExceeded",
        lambda: (c := ready(s))["reason"] == "BudgetExceeded" and c,
        timeout=30,
    )
    assert cond["status"] == "False" and f"${limit:.4f}" in cond["message"], cond
    exceeded = wait_for("BudgetExceeded to the manager",
                        lambda: events(s, "BudgetExceeded", "manager"))  # fmt: skip
    assert exceeded[0]["agent"] == "alice" and exceeded[0]["limit_usd"] == limit
    assert len(events(s, "BudgetExceeded", "operator")) == 1
    assert len(events(s, "BudgetWarning", "manager")) <= 1
    text = s.cli("budget").stdout
    assert "alice" in text and "HELD" in text and "alice is held:" in text, text

    # the held spend survives a controller restart and a harness restart mid-window
    s.stop()
    s.start()
    assert alice(s)["spent_usd"] == pytest.approx(row["spent_usd"])
    s.cli("restart", "alice")
    wait_for("alice running again", lambda: s.phase("alice") == "running", timeout=90)
    wait_for("alice held again", lambda: alice(s)["held"], timeout=30)
    assert turns_seen(s, "task four") == 0 and unread(s) == 1
    assert alice(s)["turns"] == 3
    assert len(events(s, "BudgetExceeded", "manager")) == 1  # once per window

    # the dashboard shows the bar's figures and grants through the same JSON POST
    web = Browser(s.dashboard_port)
    web.open_login(s.cli("dashboard").stdout.strip().splitlines()[-1])
    board = web.get("/api/budget")
    assert board.status == 200, board
    [dash_row] = [a for a in board.json()["agents"] if a["agent"] == "alice"]
    assert dash_row["held"] and dash_row["level"] == "exceeded"
    bad = web.post("/api/budget/allow", {"agent": "alice", "usd": -1})
    assert bad.status == 400 and bad.json()["error"]["field"] == "usd", bad.text
    # her own web UI says so too: a held recv answers why within 15 s
    ui = wait_for(
        "alice's UI showing the hold",
        lambda: (st := web.get("/agents/alice/api/state").json())["status"] == "budget_held" and st,
        timeout=60,
    )
    assert f"${limit:.4f}" in ui["status_detail"], ui

    # an extension of what task three overspent plus one turn lets exactly one turn through
    out = s.cli("budget", "alice", "--allow", f"{third:.6f}", "--note", "one more").stdout
    assert out.startswith("extended: "), out
    wait_for("task four processed", lambda: turns_seen(s, "task four") > 0, timeout=90)
    wait_for("alice held again", lambda: alice(s)["turns"] == 4 and alice(s)["held"], timeout=60)
    [grant] = events(s, "BudgetExtended", "manager")
    assert grant["agent"] == "alice" and grant["by"] == "operator"
    s.cli("send", "alice", "task five")
    wait_for("task five queued", lambda: unread(s) == 1)
    assert turns_seen(s, "task five") == 0

    # tomorrow (an injected clock, no sleep): alice resumes and gets the waiting message
    (s.tmp / "clock-offset").write_text(str(seconds_to_utc_midnight() + 5))
    wait_for("task five processed", lambda: turns_seen(s, "task five") > 0, timeout=90)
    wait_for("alice free", lambda: not alice(s)["held"], timeout=30)
    wait_for("Ready again", lambda: ready(s)["reason"] == "Running", timeout=30)
    assert unread(s) == 0
    today = alice(s)
    assert today["window"] != row["window"] and today["spent_usd"] == 0, today
    assert web.get("/agents/alice/api/state").json()["status"] == "online"
