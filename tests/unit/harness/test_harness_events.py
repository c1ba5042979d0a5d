"""The event log (sqlite, resume by id) and the bus's state events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from harness.events import Bus, EventLog, TurnState
from harness.stream import Usage
from harness.turnstats import TurnRow, TurnStats


def test_append_since_page_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "ev.sqlite"
    log = EventLog(path)
    ids = [log.append("note", {"i": i}, turn=1).id for i in range(10)]
    assert ids == list(range(1, 11))
    assert [e.data["i"] for e in log.since(7)] == [7, 8, 9]
    assert [e.id for e in log.page(None, 3)] == [8, 9, 10]
    assert [e.id for e in log.page(8, 3)] == [5, 6, 7]
    assert log.last_of("note").data == {"i": 9}  # type: ignore[union-attr]
    assert log.next_turn() == 2
    log.close()
    again = EventLog(path)
    assert again.last_id == 10 and again.next_turn() == 2
    assert again.append("x", {}).id == 11
    assert path.with_name("ev.sqlite-wal").exists() or True  # WAL mode (file may be checkpointed)


def test_wait_wakes_on_append_and_on_stop() -> None:
    log = EventLog(None)
    got: list[int] = []

    def waiter() -> None:
        got.extend(e.id for e in log.wait(0, 5.0))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    log.append("a", {})
    t.join(2)
    assert got == [1]
    stop = threading.Event()
    start = time.monotonic()
    threading.Timer(0.1, lambda: (stop.set(), log.notify())).start()
    assert log.wait(1, 5.0, stop=stop.is_set) == []
    assert time.monotonic() - start < 2


def test_bus_emits_state_events_once() -> None:
    bus = Bus(EventLog(None), "haiku", clock=lambda: 100.0)
    bus.set_state(TurnState.THINKING, 3)
    bus.set_state(TurnState.THINKING, 3)
    bus.set_model("haiku", "settings")  # unchanged: no event
    bus.set_model("sonnet", "operator")
    bus.set_usage(Usage(10, 1, 100, 5))
    bus.set_usage(Usage(10, 1, 100, 5))
    bus.set_status("online", inbox={"unread": 1, "open_threads": 0, "pending_reminders": 0})
    evs = bus.log.since(0)
    assert [e.kind for e in evs] == [
        "turn_state_changed",
        "model_changed",
        "token_usage_changed",
        "status_changed",
    ]
    assert evs[0].data == {"state": "thinking", "since": 100.0} and evs[0].turn == 3
    assert evs[2].data["context_tokens"] == 115
    snap = bus.snapshot()
    assert snap["turn_state"] == "thinking" and snap["model"] == "sonnet"
    assert snap["usage"]["context_tokens"] == 115 and snap["inbox_status"]["unread"] == 1


def test_bus_restores_usage_and_last_turn(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite")
    Bus(log, "haiku").set_usage(Usage(1, 2, 3, 4))
    log.append("turn_end", {"duration_ms": 1234})
    snap = Bus(log, "haiku").snapshot()
    assert snap["usage"]["context_tokens"] == 8 and snap["last_turn_ms"] == 1234


def test_turn_stats_roundtrip(tmp_path: Path) -> None:
    stats = TurnStats(tmp_path / "ts.sqlite")
    row = TurnRow(
        model="haiku",
        result_kind="ok",
        started_at=1.0,
        ended_at=2.5,
        duration_ms=1500,
        input_tokens=10,
        tool_calls=2,
        tool_breakdown={"Bash": 2},
        wake_from="bob",
    )
    assert stats.record(row) == 1
    (back,) = stats.recent()
    assert back == row
    try:
        stats.record(
            TurnRow(model="m", result_kind="weird", started_at=0, ended_at=0, duration_ms=0)
        )
    except ValueError as exc:
        assert "result_kind" in str(exc)
    else:
        raise AssertionError("bad result_kind accepted")
