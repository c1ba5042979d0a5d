"""The dashboard's budget bars and extension button in real headless Chromium.

The dashboard runs over the demo fakes of ``tests/component/dashboard_fakes.py`` for the
swarm and the broker, and a real :class:`~controller.budget.service.Budgets` (ledger in
sqlite, spend written by the harness' own turn-stats writer). The page shows a bar per
agent; the form posts JSON to ``/api/budget/allow`` and the ledger records the grant.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.auth import LoginTokens
from controller.budget.core import Limits
from controller.budget.ledger import Ledger
from controller.budget.service import Budgets
from controller.dashboard import make_dashboard_app
from harness.turnstats import TurnRow, TurnStats
from tests import chromium

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("budget.mjs")

pytestmark = pytest.mark.browser


def _fakes() -> Any:
    path = str(ROOT / "tests" / "component")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("dashboard_fakes")


@pytest.mark.skipif(chromium.skip_reason() is not None, reason=chromium.skip_reason() or "")
def test_budget_bar_and_extension_in_chromium(tmp_path: Path) -> None:
    fakes = _fakes()
    ops, broker = fakes.demo()
    now = 1_800_000_000.0  # a fixed day: 2027-01-15 08:00 UTC
    stats = {}
    for agent, usd in (("alice", 2.5), ("bob", 0.9)):
        p = tmp_path / "agents" / agent / "state" / "hyperhive-turn-stats.sqlite"
        p.parent.mkdir(parents=True)
        stats[agent] = TurnStats(p)
        row = TurnRow(model="m", result_kind="ok", started_at=now - 60, ended_at=now - 50,
                      duration_ms=10_000, cost_usd=usd)  # fmt: skip
        stats[agent].record(row)
    events: list[tuple[str, dict[str, Any]]] = []
    limits = {"alice": Limits(usd_per_day=2.0), "bob": Limits(usd_per_day=1.0), "manager": None}
    budgets = Budgets(
        Ledger(tmp_path / "budget.sqlite"),
        lambda a: tmp_path / "agents" / a / "state" / "hyperhive-turn-stats.sqlite",
        lambda: limits,
        notify=lambda to, ev, key: events.append((to, ev)),
        clock=lambda: now,
    )
    assert budgets.check("alice") is not None  # held: the page should say so
    stop = threading.Event()
    tokens = LoginTokens()
    app = make_dashboard_app(
        ops,
        broker,
        operator_key="budget-browser-operator-key",
        login_tokens=tokens,
        web_sock=lambda name: tmp_path / f"{name}.sock",
        heartbeat_seconds=2.0,
        stop=stop,
        budgets=budgets,
    )
    shot = tmp_path / "budget.png"
    with fakes.serve(app) as base:
        try:
            login = f"{base}/login?token={tokens.issue().token}"
            proc = subprocess.run(
                ["node", str(SCRIPT), base, login, str(shot)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            stop.set()
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    before, bob = seen["aliceBefore"], seen["bob"]
    assert before["level"] == ["exceeded"] and before["now"] == 100 and before["width"] == "100%"
    assert "HELD" in before["cells"] and "$2.5000 of $2.0000" in " ".join(before["cells"])
    assert bob["level"] == ["warning"] and bob["now"] == 90 and bob["width"] == "90%"
    assert seen["count"] == "1 held"
    assert seen["toast"].startswith("extended: alice spent $2.5000 of $3.5000")
    after = seen["aliceAfter"]
    assert after["level"] == ["ok"] and after["now"] == 71, after
    [post] = seen["posts"]
    assert post["url"] == "/api/budget/allow" and post["type"] == "application/json"
    assert json.loads(post["body"]) == {"agent": "alice", "usd": 1.5}
    assert budgets.ledger.extension("alice", budgets.standing("alice").window).usd == 1.5
    assert [ev["type"] for _, ev in events][-2:] == ["BudgetExtended", "BudgetExtended"]
    assert budgets.held("alice") is None
    assert seen["overflow420"] is False and seen["overflow320"] is False
    assert shot.stat().st_size > 10_000
    if os.environ.get("HYPERHIVE_BUDGET_SHOT"):
        shutil.copyfile(shot, os.environ["HYPERHIVE_BUDGET_SHOT"])
