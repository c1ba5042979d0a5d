"""Conditions from the agent's own report (controller.status) and the report itself
(harness.report): pure functions, no processes."""

from __future__ import annotations

from typing import Any

from controller.model import AgentManifest, DesiredAgent, ObservedAgent, Phase
from controller.status import (
    AgentFacts,
    CondType,
    HarnessReport,
    compute_conditions,
    condition,
    env_drift,
)
from harness.report import Credentials, Snapshot, Turn, api_retry, build_report
from schemas.validate import validate
from schemas.wire import ApiTrouble, env_digest, reported_env

RETRY_529 = {
    "attempt": 2,
    "max_retries": 10,
    "retry_delay_ms": 1075.9,
    "error_status": 529,
    "error": "overloaded",
    "session_id": "s",
}


def want(name: str = "alice") -> DesiredAgent:
    return DesiredAgent(name, AgentManifest(name=name), "main1", "c1", "b1")


def running(name: str = "alice", phase: Phase = Phase.RUNNING) -> ObservedAgent:
    return ObservedAgent(name, phase, "main1", "c1", "b1", None)


def snap(**kw: Any) -> Snapshot:
    base: dict[str, Any] = {
        "claude_path": "/opt/claude/bin/claude",
        "claude_found": True,
        "claude_version": "2.1.3 (Claude Code)",
        "credentials": Credentials(True, "env ANTHROPIC_API_KEY"),
        "env": {"ANTHROPIC_API_KEY": "sk-secret", "PATH": "/usr/bin"},
        "turn": Turn(),
        "api": None,
        "started_at": 1000.0,
    }
    base.update(kw)
    return Snapshot(**base)


def report_of(s: Snapshot) -> HarnessReport:
    doc = build_report(s)
    validate(doc, "wire#AgentReport")  # what the harness sends passes the controller's schema
    return HarnessReport.from_json(doc)


def conds(report: HarnessReport | None, **kw: Any) -> dict[str, tuple[str, str, str]]:
    facts = AgentFacts(
        name="alice",
        desired=want(),
        observed=kw.pop("observed", running()),
        logged_in=kw.pop("logged_in", True),
        login_reason="API key or token passed through from the controller's environment",
        report=report,
        **kw,
    )
    return {str(c.type): (str(c.status), c.reason, c.message) for c in compute_conditions(facts)}


def test_a_healthy_report_is_ready_logged_in_and_not_degraded() -> None:
    c = conds(report_of(snap(turn=Turn(False, 3, "ok", None, None, 1001.0))))
    assert c["Ready"][:2] == ("True", "Running")
    assert c["LoggedIn"][:2] == ("True", "CredentialsPresent")
    assert "env ANTHROPIC_API_KEY" in c["LoggedIn"][2]
    assert "reported by the agent" in c["LoggedIn"][2]
    assert c["Degraded"][:2] == ("False", "Healthy") and "turn 3: ok" in c["Degraded"][2]


def test_no_claude_is_not_ready_and_says_how_to_fix_it() -> None:
    c = conds(report_of(snap(claude_found=False, claude_path="claude", claude_version=None)))
    assert c["Ready"][:2] == ("False", "ClaudeMissing")
    assert c["Degraded"][:2] == ("True", "ClaudeMissing")
    msg = c["Ready"][2]
    assert "./hh serve" in msg and "HYPERHIVE_CLAUDE_BIN" in msg and "restart alice" in msg


def test_the_agent_not_the_controller_says_whether_it_is_logged_in() -> None:
    # the controller's guess says yes (a key in its environment); the agent has none
    c = conds(report_of(snap(credentials=Credentials(False))), logged_in=True)
    assert c["LoggedIn"][:2] == ("False", "NeedsLogin")
    assert "ANTHROPIC_API_KEY" in c["LoggedIn"][2] and "restart alice" in c["LoggedIn"][2]
    assert c["Degraded"][:2] == ("True", "NotLoggedIn")
    rejected = conds(report_of(snap(credentials=Credentials(True, "claude login", True))))
    assert rejected["LoggedIn"][:2] == ("False", "CredentialsRejected")
    assert rejected["Degraded"][:2] == ("True", "ApiUnauthorized")


def test_before_any_report_the_controllers_reading_stands() -> None:
    c = conds(None, logged_in=True)
    assert c["LoggedIn"][:2] == ("True", "CredentialsPresent")
    assert c["Degraded"][:2] == ("Unknown", "NotReported")
    stopped = conds(report_of(snap()), observed=running(phase=Phase.STOPPED))
    assert stopped["Degraded"][:2] == ("Unknown", "NotRunning")


def test_api_retries_name_the_status_and_the_attempt() -> None:
    s = snap(turn=Turn(True, 4), api=api_retry(RETRY_529, 1002.0))
    c = conds(report_of(s))
    status, reason, message = c["Degraded"]
    assert (status, reason) == ("True", "ApiOverloaded")
    assert "529" in message and "attempt 2 of 10" in message
    assert c["Ready"][:2] == ("True", "Running")  # it runs; its turns are what suffer
    unreachable = api_retry({**RETRY_529, "error_status": None, "error": "unknown"}, 1003.0)
    assert conds(report_of(snap(api=unreachable)))["Degraded"][1] == "ApiUnreachable"
    for status_, reason_ in ((401, "ApiUnauthorized"), (429, "ApiRateLimited"), (500, "ApiError")):
        err = api_retry({**RETRY_529, "error_status": status_}, 1004.0)
        assert conds(report_of(snap(api=err)))["Degraded"][1] == reason_


def test_a_failed_turn_that_spent_its_message_is_degraded_until_the_next_ok() -> None:
    failed = Turn(False, 5, "failed", None, "exit 1: boom", 1005.0)
    c = conds(report_of(snap(turn=failed)))
    assert c["Degraded"][:2] == ("True", "TurnFailed") and "boom" in c["Degraded"][2]
    assert conds(report_of(snap(turn=Turn(False, 6, "ok"))))["Degraded"][1] == "Healthy"


def test_env_drift_names_what_the_running_agent_lacks() -> None:
    r = report_of(snap(env={"ANTHROPIC_BASE_URL": "http://x"}))
    passed = reported_env({"ANTHROPIC_BASE_URL": "http://x", "ANTHROPIC_API_KEY": "sk-new"})
    assert env_drift(r, passed) == ("ANTHROPIC_API_KEY",)
    assert env_drift(r, reported_env({"ANTHROPIC_BASE_URL": "http://x"})) == ()
    assert env_drift(r, None) == () and env_drift(None, passed) == ()
    c = conds(r, env_drift=env_drift(r, passed))
    assert c["UpToDate"][:2] == ("False", "EnvChanged")
    assert "ANTHROPIC_API_KEY" in c["UpToDate"][2] and "restart alice" in c["UpToDate"][2]


def test_the_report_carries_no_secret() -> None:
    doc = build_report(snap())
    assert "sk-secret" not in str(doc)
    assert doc["env"] == {"ANTHROPIC_API_KEY": env_digest("sk-secret")}  # PATH is not reported


def test_conditions_from_the_report_are_listed_once() -> None:
    facts = AgentFacts("alice", want(), running(), report=report_of(snap()))
    types = [c.type for c in compute_conditions(facts)]
    assert len(types) == len(set(types))
    degraded = condition(compute_conditions(facts), CondType.DEGRADED)
    assert degraded is not None and degraded.reason == "Healthy"


def test_api_trouble_is_one_value_on_both_sides_of_the_wire() -> None:
    """The harness sends ``ApiTrouble`` held to the schema; the controller reads back the
    same value (one definition in ``schemas.wire``)."""
    sent = api_retry(RETRY_529, 1002.0)
    doc = sent.to_json()
    validate({**build_report(snap(api=sent)), "api": doc}, "wire#AgentReport")
    assert ApiTrouble.from_json(doc) == sent
    assert report_of(snap(api=sent)).api == sent
    odd = ApiTrouble(700, "x" * 300, -1, -2, -3.0, True, None)
    cut = odd.to_json()
    validate({**build_report(snap()), "api": cut}, "wire#AgentReport")
    assert cut["status"] is None and len(cut["error"]) == 200 and "at" not in cut
    assert ApiTrouble.from_json(cut) == ApiTrouble(None, "x" * 200, 0, 0, 0.0, True, None)
    assert ApiTrouble.from_json({}) == ApiTrouble(None)
