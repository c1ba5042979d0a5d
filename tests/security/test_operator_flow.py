"""The legitimate operator, in the same run as every attack (these tests run last).

The operator's session (from the URL ``hyperhive dashboard`` printed) reads the
dashboard and an agent's UI through the proxy and commands the swarm; the CLI
sends and approves over host.sock; nothing in the controller's or the agents'
logs is a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.security.support import Hive, Tally, tracebacks, wait_for


def test_the_operator_still_commands_the_swarm(hive: Hive) -> None:
    h = hive
    # the dashboard answers the logged-in operator
    state = h.dget("/api/state")
    assert state.status == 200, state.brief()
    assert {"manager", "alice", "bob"} <= {a["name"] for a in state.json()["agents"]}
    page = h.dget("/")
    assert page.status == 200 and b"<html" in page.body.lower()

    # the CLI: send, then approve the proposal the attacks could not touch
    h.cli("send", "manager", "hello from the operator")
    msgs = json.loads(h.cli("messages", "-o", "json").stdout)
    assert any(
        m["from"] == "operator" and m["to"] == "manager" and m["body"] == "hello from the operator"
        for m in msgs
    )
    pending = json.loads(h.cli("pending", "-o", "json").stdout)
    assert h.carol in [p["id"] for p in pending], pending
    h.cli("approve", str(h.carol))
    assert f"approved/{h.carol}" in h.tags("approved")
    wait_for("carol running", lambda: h.phase_of("carol") == "running", timeout=60)

    # the agent UI through the dashboard's proxy: read, and command it as the operator
    ui = h.dget("/agents/manager/api/state")
    assert ui.status == 200, ui.brief()
    assert ui.json()["agent"] == "manager"
    assert ui.header("content-security-policy") and ui.header("x-content-type-options") == "nosniff"
    sent = h.dpost("/agents/manager/api/send", {"body": "hello through the proxy"})
    assert sent.status == 200, sent.brief()
    sent = h.dpost("/api/send", {"to": "alice", "body": "hello from the dashboard"})
    assert sent.status in (200, 201), sent.brief()
    msgs = json.loads(h.cli("messages", "-o", "json").stdout)
    bodies = {(m["from"], m["to"], m["body"]) for m in msgs}
    assert ("operator", "manager", "hello through the proxy") in bodies
    assert ("operator", "alice", "hello from the dashboard") in bodies


def test_a_stored_key_is_never_shown_back(hive: Hive, tally: Tally) -> None:
    """A key the operator stores for an agent is masked in its UI and appears in no log,
    event or file but the one the agent's claude reads."""
    h = hive
    key = "sk-ant-api03-never-shown-back-" + "k" * 16
    stored = h.dpost("/agents/bob/api/login/key", {"kind": "api_key", "value": key})
    assert stored.status == 200, stored.brief()
    where = {
        str(p.relative_to(h.tmp))
        for p in [h.tmp / "controller.log", *h.state.rglob("*")]
        if p.is_file() and not p.is_symlink() and key.encode() in p.read_bytes()
    }
    shown = [
        path
        for path in ("/agents/bob/api/state", "/agents/bob/api/history", "/api/state")
        if key.encode() in h.dget(path).body
    ]
    allowed = {"state/agents/bob/claude/settings.json"}
    assert allowed <= where, f"the key was not stored where bob's claude reads it: {where}"
    tally.record(
        "secrets shown back",
        "a stored key in logs, events, files or the UIs",
        where <= allowed and not shown,
        f"found in {sorted(where - allowed)}, shown by {shown}",
    )
    tally.assert_refused("secrets shown back")


def test_no_tracebacks_in_any_log(hive: Hive, tally: Tally) -> None:
    logs = [hive.tmp / "controller.log", *sorted(hive.layout.log_dir.glob("*.log"))]
    found = tracebacks(logs)
    tally.figure(
        "tracebacks in the controller's and agents' logs",
        str(sum(found.values())) + (f" ({found})" if found else ""),
    )
    assert not found, {p: hive_tail(p) for p in found}


def hive_tail(path: str) -> str:
    """The log around its first traceback."""
    text = Path(path).read_text(errors="replace")
    at = text.find("Traceback (most recent call last)")
    return text[max(0, at - 400) : at + 2500]
