"""The pure part of budgets: windows, standings, notices once per window, extensions."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.budget.core import (
    NOTICE_EXCEEDED,
    NOTICE_WARNING,
    SWARM,
    BudgetError,
    Extension,
    Level,
    Limits,
    Spend,
    assess,
    check_extension,
    day_window,
    due_notices,
    hold_message,
    notice_event,
)
from schemas.validate import validate


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_day_window_is_the_utc_day_half_open() -> None:
    w = day_window(ts("2026-12-07T13:45:00"))
    assert w.key == "2026-12-07"
    assert w.start == ts("2026-12-07T00:00:00") and w.end == ts("2026-12-08T00:00:00")
    assert w.contains(w.start) and not w.contains(w.end)
    # the last instant of a day and the first of the next fall in different windows
    assert day_window(w.end - 0.001).key == "2026-12-07"
    assert day_window(w.end).key == "2026-12-08"


def test_limits_from_doc() -> None:
    assert Limits.from_doc(None) is None
    assert Limits.from_doc({}) is None
    lim = Limits.from_doc({"usdPerDay": 5, "tokensPerDay": 2_000_000})
    assert lim == Limits(5.0, 2_000_000, 0.8)
    assert Limits.from_doc({"usdPerTurn": 0.5}) == Limits(usd_per_turn=0.5)
    assert Limits.from_doc(lim.to_json() if lim else None) == lim
    for doc, field in (
        ({"usdPerDay": -1}, "spec.budget.usdPerDay"),
        ({"usdPerDay": True}, "spec.budget.usdPerDay"),
        ({"tokensPerDay": 1.5}, "spec.budget.tokensPerDay"),
        ({"usdPerDay": 1, "warnAt": 0}, "spec.budget.warnAt"),
        ({"usdPerDay": 1, "warnAt": 1.2}, "spec.budget.warnAt"),
        ({"usdPerTurn": 0}, "spec.budget.usdPerTurn"),
    ):
        with pytest.raises(BudgetError) as exc:
            Limits.from_doc(doc, "spec.budget")
        assert exc.value.field == field


W = day_window(ts("2026-12-07T12:00:00"))


def test_assess_levels_and_boundaries() -> None:
    lim = Limits(usd_per_day=1.0)
    assert assess("a", None, Spend(9.0), W).level is Level.UNLIMITED
    assert assess("a", lim, Spend(0.0), W).level is Level.OK
    assert assess("a", lim, Spend(0.79), W).level is Level.OK
    assert assess("a", lim, Spend(0.8), W).level is Level.WARNING
    assert assess("a", lim, Spend(0.9999), W).level is Level.WARNING
    s = assess("a", lim, Spend(1.0, 10, 3), W)  # reaching the limit exactly stops new turns
    assert s.level is Level.EXCEEDED and s.exceeded
    assert "a spent $1.0000 of $1.0000 on UTC day 2026-12-07" in s.message()
    assert "no new turn until 2026-12-08T00:00:00Z" in s.message()
    # tokens alone, and the larger fraction wins
    both = Limits(usd_per_day=10.0, tokens_per_day=1000, warn_at=0.5)
    assert assess("a", both, Spend(1.0, 600), W).level is Level.WARNING
    assert assess("a", both, Spend(1.0, 1000), W).level is Level.EXCEEDED
    assert assess("a", both, Spend(1.0, 600), W).fraction == pytest.approx(0.6)
    # a zero limit allows no turn at all
    zero = assess("a", Limits(usd_per_day=0.0), Spend(), W)
    assert zero.exceeded and zero.fraction == 1.0
    assert math.isinf(assess("a", Limits(usd_per_day=0.0), Spend(0.1), W).fraction or 0)


def test_extension_raises_the_limit_of_its_window_only() -> None:
    lim = Limits(usd_per_day=1.0, tokens_per_day=100)
    over = assess("a", lim, Spend(1.2, 50), W)
    assert over.exceeded
    one = check_extension(0.5)
    let = assess("a", lim, Spend(1.2, 50), W, one)
    assert not let.exceeded and let.usd_limit == 1.5 and let.tokens_limit == 100
    assert "extension of $0.5000" in let.message()
    # two grants add up; a grant of tokens raises the token limit only
    both = one + check_extension(0, 25)
    assert both == Extension(0.5, 25, 2)
    assert assess("a", lim, Spend(1.4, 120), W, both).tokens_limit == 125
    assert assess("a", lim, Spend(1.5, 50), W, one).exceeded  # spent up to the new limit
    bad = ((0, 0, "usd"), (-1, 0, "usd"), (math.inf, 0, "usd"), (True, 0, "usd"),
           (1, -5, "tokens"), (1, 0.5, "tokens"))  # fmt: skip
    for usd, tokens, field in bad:
        with pytest.raises(BudgetError) as exc:
            check_extension(usd, tokens)
        assert exc.value.field == field


def test_notices_once_per_window() -> None:
    lim = Limits(usd_per_day=1.0)
    ok = assess("a", lim, Spend(0.1), W)
    warn = assess("a", lim, Spend(0.85), W)
    over = assess("a", lim, Spend(1.1), W)
    assert due_notices(ok, frozenset()) == ()
    assert due_notices(warn, frozenset()) == (NOTICE_WARNING,)
    assert due_notices(warn, frozenset({NOTICE_WARNING})) == ()
    assert due_notices(over, frozenset({NOTICE_WARNING})) == (NOTICE_EXCEEDED,)
    assert due_notices(over, frozenset({NOTICE_WARNING, NOTICE_EXCEEDED})) == ()
    # straight past the warning: only the exceeded notice; no late warning after it
    assert due_notices(over, frozenset()) == (NOTICE_EXCEEDED,)
    assert due_notices(warn, frozenset({NOTICE_EXCEEDED})) == ()
    # the set of sent notices is per window: the caller keys it by window, so a new day owes
    # them again (the ledger's test shows that)


def test_notice_events_are_schema_valid() -> None:
    lim = Limits(usd_per_day=1.0, tokens_per_day=10)
    for scope in ("alice", SWARM):
        for kind in (NOTICE_WARNING, NOTICE_EXCEEDED):
            event = notice_event(kind, assess(scope, lim, Spend(1.5, 20), W))
            validate(event, "events")
            assert ("agent" in event) is (scope != SWARM)
    assert notice_event(NOTICE_EXCEEDED, assess("a", lim, Spend(1.5), W))["limit_usd"] == 1.0


def test_hold_message_names_own_and_swarm() -> None:
    lim = Limits(usd_per_day=1.0)
    own_ok, own_over = assess("a", lim, Spend(0.5), W), assess("a", lim, Spend(2.0), W)
    sw_over = assess(SWARM, Limits(usd_per_day=3.0), Spend(3.0), W)
    assert hold_message(own_ok, None) is None
    assert hold_message(own_over, None) == own_over.message()
    both = hold_message(own_over, sw_over) or ""
    assert both.startswith("a spent") and "the swarm spent $3.0000 of $3.0000" in both
    assert hold_message(own_ok, sw_over) == sw_over.message()


def test_usd_per_turn_reaches_claude_argv() -> None:
    from controller.manifest import parse_manifest, render_settings
    from harness.claude import build_argv
    from harness.config import SettingsError, parse_settings

    text = (
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\n"
        "spec: {budget: {usdPerDay: 2, usdPerTurn: 0.25}}\n"
    )
    m = parse_manifest(text, "alice")
    assert m.budget == Limits(usd_per_day=2.0, usd_per_turn=0.25)
    doc = render_settings(m, web_port=8101, dashboard_url="", meta_commit="c" * 40,
                          hyperhive_version="0")  # fmt: skip
    assert doc["max_budget_usd_per_turn"] == 0.25
    settings = parse_settings(doc, agent="alice", flavor="agent")
    assert settings.max_budget_usd_per_turn == 0.25
    argv = build_argv(claude_bin="claude", model="m", mcp_config=Path("/x"), allow=[],
                      continue_session=False, max_budget_usd=0.25)  # fmt: skip
    assert "--max-budget-usd=0.25" in argv
    plain = build_argv(claude_bin="c", model="m", mcp_config=Path("/x"), allow=[],
                       continue_session=False)  # fmt: skip
    assert not any(a.startswith("--max-budget-usd") for a in plain)
    with pytest.raises(SettingsError):
        parse_settings({**doc, "max_budget_usd_per_turn": 0}, agent="alice", flavor="agent")


def test_event_bodies_say_who_and_how_much() -> None:
    from controller.broker import summarize_event

    lim = Limits(usd_per_day=1.0)
    body = summarize_event(notice_event(NOTICE_EXCEEDED, assess("alice", lim, Spend(1.5), W)))
    assert body.startswith("BudgetExceeded: alice spent $1.5000 of $1.0000 on UTC day")
    ext = {"type": "BudgetExtended", "scope": "agent", "agent": "alice", "window": W.key,
           "grant": 3, "usd": 0.5, "tokens": 0, "by": "operator", "note": "release"}  # fmt: skip
    validate(ext, "events")
    assert summarize_event(ext) == "budget extension #3 for alice by operator: +$0.5000: release"
