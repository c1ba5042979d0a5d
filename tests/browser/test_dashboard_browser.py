"""The dashboard in real headless Chromium (playwright-core driven from node).

Starts the dashboard over the demo fakes on 127.0.0.1:<ephemeral>, runs
``tests/browser/dashboard.mjs`` (see the login page, log in through a one-time
login URL, see agents with their badges, open alice's UI through the dashboard
(a stand-in UI on a unix socket), open an
agent's logs, config and describe blocks, approve a proposal with a diff, answer
a question, send a message and see it come back over SSE, destroy an agent and
purge kept state through their confirms, screenshot) and checks what the fakes
recorded. The screenshot goes to the test's tmp dir;
with ``HYPERHIVE_UPDATE_SCREENSHOTS=1`` (or when it is missing) it also
replaces ``docs/img/dashboard.png``.
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
from controller.dashboard import make_dashboard_app
from controller.drivers.journal import HARNESS_UNIT
from schemas.names import OPERATOR
from tests import chromium

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("dashboard.mjs")
DOC_SHOT = ROOT / "docs" / "img" / "dashboard.png"

pytestmark = pytest.mark.browser


def _fakes() -> Any:
    """``tests/component/dashboard_fakes.py`` (shared with the component tests)."""
    path = str(ROOT / "tests" / "component")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("dashboard_fakes")


LOG_LINES = 500
"""Lines every journal answer has: the layout checks run with a 500-line log open."""


def _cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def _states_worth_a_badge(ops: Any) -> None:
    """Rows the issue-11 first hour met: an up-to-date agent whose deployed commit is not
    main's (nothing it uses changed), a suspended agent and an agent stopped on request,
    both out of date (their badge says what they are, not "needs update")."""
    ops.agents["manager"]["desired_commit"] = "0123abcd" * 5  # main moved; manager unaffected
    carol = ops.agents["carol"]
    carol["suspended"] = True
    carol["desired_commit"] = "0123abcd" * 5
    carol["conditions"] = [
        _cond("Ready", "False", "Suspended", "spec.suspend is true"),
        _cond("UpToDate", "False", "ManifestChanged", "agent.yaml changed"),
    ]
    ops.add_agent(
        {
            **ops.agents["carol"],
            "name": "erin-long",
            "suspended": False,
            "held": "stopped by request",
            "model": "claude-sonnet-4-5-20250929-with-a-long-suffix",
            "conditions": [
                _cond("Ready", "False", "StoppedByRequest", "stopped by request until started"),
                _cond("UpToDate", "False", "NeedsRebuild", "agent.nix changed"),
                _cond("Isolated", "False", "NoSandbox", "x" * 300),
            ],
        }
    )


def _long_journal(ops: Any) -> None:
    """Every journal answer is ``LOG_LINES`` lines, some far wider than the window: the
    open log must scroll inside its own box. The fake's own lines come last (the checks
    look for them at the bottom)."""
    fake_journal = ops.journal

    def journal(name: str, unit: str | None = None, lines: int = 200) -> str:
        tail = fake_journal(name, unit, lines).splitlines()
        pad = [
            f"2026-01-01T00:00:{i % 60:02d}+0000 {name} filler[7]: line {i} " + "w" * (i % 7) * 60
            for i in range(max(0, LOG_LINES - len(tail)))
        ]
        return "\n".join(pad + tail) + "\n"

    ops.journal = journal


@pytest.mark.skipif(chromium.skip_reason() is not None, reason=chromium.skip_reason() or "")
def test_dashboard_in_chromium(tmp_path: Path) -> None:
    fakes = _fakes()
    ops, broker = fakes.demo()
    _states_worth_a_badge(ops)
    _long_journal(ops)
    stop = threading.Event()
    shot = tmp_path / "dashboard.png"
    tokens = LoginTokens()
    app = make_dashboard_app(
        ops,
        broker,
        operator_key="browser-test-operator-key",
        login_tokens=tokens,
        web_sock=lambda name: tmp_path / f"{name}.sock",
        heartbeat_seconds=2.0,
        stop=stop,
    )
    alice_ui = fakes.FakeAgentUi("alice")
    with fakes.serve_agent_ui(alice_ui, tmp_path / "alice.sock"), fakes.serve(app) as base:
        login = f"{base}/login?token={tokens.issue().token}"
        try:
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

    # login: a 401 page until the one-time URL is opened, then an HttpOnly session cookie
    assert seen["anonStatus"] == 401 and "hyperhive dashboard" in seen["anonText"]
    assert seen["anonApi"] == 401 and all("401" in e for e in seen["anonErrors"])
    assert seen["loginLanded"] == "/"
    assert seen["cookies"] == [
        {"name": "hyperhive_session", "httpOnly": True, "sameSite": "Strict", "path": "/"}
    ]
    assert seen["cookieVisibleToScript"] is False
    # alice's UI behind the dashboard: her API and events went to her socket, no cookie
    assert seen["agentUiTitle"] == "alice · hyperhive" and seen["agentUiErrors"] == []
    paths = [r["path"] for r in alice_ui.seen]
    assert "/api/state" in paths and "/events/stream" in paths
    assert not any("cookie" in r["headers"] for r in alice_ui.seen)
    assert seen["reusedStatus"] == 401 and "hyperhive dashboard" in seen["reusedText"]
    assert seen["agents"] == ["manager", "alice", "bob", "carol", "erin-long"]
    # badges match the state: stopped on purpose is not "needs update"
    assert seen["badges"]["carol"] == ["stopped", "suspended"]
    assert seen["badges"]["erin-long"] == ["stopped", "by request"]
    assert "needs update ↻" in seen["badges"]["alice"]
    # one commit when up to date (even when main moved past it), the arrow when outdated
    assert seen["deployed"]["manager"] == ops.agents["manager"]["observed_commit"][:8]
    assert seen["deployed"]["alice"] == f"77aa01bd → {ops.main_commit[:8]}"
    assert "→" not in seen["deployed"]["carol"]
    assert seen["aliceNeedsUpdate"] is True
    assert seen["aliceLink"] == "/agents/alice/"
    assert "StartFailed" in seen["bobProblem"]
    assert seen["bobCrashLoop"] == "crash loop"
    assert seen["bobLoginHref"] == seen["bobUiHref"] and seen["bobUiHref"].endswith("/")
    assert seen["managerDanger"] == 0 and seen["aliceDanger"] == ["DESTR0Y", "PURG3"]
    assert seen["kept"] == ["frank"]
    # logs
    assert seen["logLines"] >= 20 and seen["logsAtBottom"] is True
    assert HARNESS_UNIT in seen["logsMeta"]
    assert ("journal", "alice", HARNESS_UNIT, 200) in ops.calls
    assert ("journal", "alice", None, 200) in ops.calls
    # config
    manifest, nix, settings = seen["aliceConfig"]
    assert "agents/alice/agent.yaml" in manifest and "kind: Agent" in manifest
    assert "pkgs.jq" in nix and "does not build Nix" in nix
    assert '"allowedRecipients"' in settings
    assert "no agent.nix — the local runtime does not build Nix" in seen["bobConfig"][1]
    # describe
    assert "CrashLoopBackOff" in seen["bobReasons"] and "NeedsLogin" in seen["bobReasons"]
    assert seen["bobDeployTags"] == ["deployed/6", "failed/3"]
    assert seen["bobEvents"][0] == "CrashLoopBackOff"
    # destroy keeps state, purge deletes it, both behind their confirms
    assert ("destroy", "carol", False) in ops.calls and "carol" not in ops.agents
    assert seen["frankId"].startswith("frank-") and ("purge", seen["frankId"]) in ops.calls
    assert seen["keptAfterDestroy"] == ["carol", "frank"]
    destroy = next(d for d in seen["dialogs"] if d.startswith("confirm: Destroy carol?"))
    assert "KEPT" in destroy and "credentials" in destroy
    purge = next(
        d for d in seen["dialogs"] if d.startswith("confirm: Purge the kept state of frank")
    )
    assert "notes" in purge and "credentials" in purge and "no undo" in purge
    # the redraw after destroy kept the open blocks open, filled, with their choices
    assert seen["logsStillOpen"] and seen["logsStillFilled"]
    assert seen["logsStillMachine"] == "machine" and seen["describeStillOpen"]
    assert seen["proposals"] == [8, 7]
    assert any("pkgs.ripgrep" in line for line in seen["diffAdds"])
    assert any("model: haiku" in line for line in seen["diffDels"])
    assert any(d.startswith("confirm: Approve #7") for d in seen["dialogs"])
    assert ("approve", 7, "") in ops.calls
    assert broker.qs[1].answer == "sonnet"
    sent = [m for m in broker.msgs if m.body == seen["sent"]]
    assert len(sent) == 1 and (sent[0].sender, sent[0].recipient) == (OPERATOR, "alice")
    assert seen["lastFlowRoute"].replace(" ", "") == "operator→alice"
    assert seen["sendBodyCleared"] is True
    assert seen["errors"] == []
    # layout: no horizontal overflow at 1400 and 420 px (and around the card breakpoint),
    # with every block open and a 500-line log that scrolls inside its own box (the check
    # finds a 3000 px probe)
    assert sorted(seen["layout"], key=int) == ["320", "420", "760", "900", "901", "1024", "1400"]
    for width, layout in seen["layout"].items():
        assert layout["overflow"] == [] and layout.get("overflowScreenshot", []) == [], width
        assert layout["selfTest"] and layout["logScrollsInside"] and layout["buttonsOnScreen"]
        assert layout["logLines"] == LOG_LINES
    update = os.environ.get("HYPERHIVE_UPDATE_SCREENSHOTS") == "1"
    for name in ("dashboard.png", "dashboard-1400.png", "dashboard-420.png"):
        got, doc = tmp_path / name, DOC_SHOT.with_name(name)
        assert got.stat().st_size > 10_000
        if update or not doc.exists():
            doc.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(got, doc)
