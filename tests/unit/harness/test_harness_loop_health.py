"""TurnLoop.health (what feeds the systemd watchdog) and the turn time limit's wording."""

from __future__ import annotations

import time
from pathlib import Path

from harness.config import HarnessEnv, parse_settings
from harness.events import Bus, EventLog
from harness.loop import TurnLoop, fmt_seconds
from harness.model import ModelStore
from harness.turnstats import TurnStats


def make_loop(tmp_path: Path, settings: dict[str, object] | None = None) -> TurnLoop:
    env = HarnessEnv("alice", "agent", str(tmp_path / "s.sock"), tmp_path, None, "127.0.0.1", 0,
                     "claude", tmp_path / "claude")  # fmt: skip
    s = parse_settings(settings or {}, agent="alice", flavor="agent")
    return TurnLoop(env, s, Bus(EventLog(None), "haiku"), TurnStats(None),
                    ModelStore(tmp_path / "m", "haiku"), environ={})  # fmt: skip


def test_health_follows_the_phase_bound(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    ok, why = loop.health()
    assert ok and why.startswith("starting for")
    loop._enter("recv", 0.05)
    assert loop.health()[0]
    time.sleep(0.1)
    ok, why = loop.health()
    assert not ok and why.startswith("recv for") and "limit 0 s" in why
    loop._enter("turn", 60)
    assert loop.health(time.monotonic() + 59)[0] and not loop.health(time.monotonic() + 61)[0]


def test_time_limit_from_settings_and_its_wording(tmp_path: Path) -> None:
    assert make_loop(tmp_path).turn_timeout == 1800
    assert make_loop(tmp_path, {"turn_timeout_seconds": 90}).turn_timeout == 90
    assert fmt_seconds(1800) == "30 min" and fmt_seconds(90) == "90 s"
    assert fmt_seconds(7200) == "2 h" and fmt_seconds(2.5) == "2.5 s"


def test_needs_login_and_the_401_fingerprint(tmp_path: Path) -> None:
    from harness import login

    loop = make_loop(tmp_path)
    assert loop.needs_login() and "no credentials" in (loop.needs_login() or "")
    login.store_credential(tmp_path / "claude", "api_key", "sk-1")
    assert loop.needs_login() is None
    loop._rejected = login.fingerprint({}, tmp_path / "claude")
    assert "rejected (HTTP 401)" in (loop.needs_login() or "")
    loop.store_credential("api_key", "sk-2")  # a new key clears it
    assert loop.needs_login() is None
    state = loop.login_state()
    assert state["source"] == "stored api key" and state["stored"] == "api_key"
    assert state["session"] is None and loop.cancel_login() is False
