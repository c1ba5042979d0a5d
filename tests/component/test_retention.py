"""controller.retention against real sqlite files laid out like the harness writes them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from controller.paths import Layout
from controller.retention import sweep_event_log, sweep_event_logs

# harness/events.py's table, written here by hand: controller never imports harness
EVENTS_SQL = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    turn INTEGER, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_turn ON events(turn);
"""
DAY = 86400.0
NOW = 1_800_000_000.0


def make_log(path: Path, stamps: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(EVENTS_SQL)
    con.execute("BEGIN")
    for ts in stamps:
        con.execute("INSERT INTO events(ts, kind, turn, data) VALUES (?, 'note', 1, '{}')", (ts,))
    con.execute("COMMIT")
    con.close()


def ids(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT id FROM events ORDER BY id")]
    finally:
        con.close()


def test_two_stages_over_every_agent(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path, tmp_path / "run")
    quiet = layout.agent_state("quiet") / "hyperhive-events.sqlite"
    chatty = layout.agent_state("chatty") / "hyperhive-events.sqlite"
    # quiet: 10 events 8 days old, 5 from yesterday → keeps its last week (5)
    make_log(quiet, [NOW - 8 * DAY] * 10 + [NOW - DAY] * 5)
    # chatty: 2,500 recent events and 100 old ones → the newest 2,000
    make_log(chatty, [NOW - 10 * DAY] * 100 + [NOW - 60.0] * 2500)
    assert sweep_event_logs(layout, NOW) == 10 + 100 + 500
    assert ids(quiet) == list(range(11, 16))
    kept = ids(chatty)
    assert len(kept) == 2000 and kept[-1] == 2600 and kept[0] == 601
    # idempotent
    assert sweep_event_logs(layout, NOW) == 0
    # the WAL was checkpointed and truncated
    wal = chatty.with_name(chatty.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_everything_old_goes_but_ids_never_come_back(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "a" / "state" / "hyperhive-events.sqlite"
    make_log(path, [NOW - 30 * DAY] * 3)
    assert sweep_event_log(path, NOW) == 3 and ids(path) == []
    # the harness continues from sqlite_sequence (harness.events.EventLog), so no id is reused
    from harness.events import EventLog

    log = EventLog(path)
    assert log.append("note", {}).id == 4
    log.close()


def test_custom_limits_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "ev.sqlite"
    make_log(path, [NOW - 5.0] * 10)
    assert sweep_event_log(path, NOW, keep_seconds=3600, keep_rows=4) == 6
    assert sweep_event_log(path, NOW, keep_seconds=1) == 4
    make_log(path, [NOW] * 3)
    assert sweep_event_log(path, NOW, keep_rows=0) == 3
    with pytest.raises(ValueError):
        sweep_event_log(path, NOW, keep_rows=-1)


def test_bad_files_are_skipped_not_fatal(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path, tmp_path / "run")
    good = layout.agent_state("good") / "hyperhive-events.sqlite"
    make_log(good, [NOW - 9 * DAY] * 2)
    junk = layout.agent_state("junk") / "hyperhive-events.sqlite"
    junk.parent.mkdir(parents=True)
    junk.write_text("not a database")
    empty = layout.agent_state("empty") / "hyperhive-events.sqlite"
    empty.parent.mkdir(parents=True)
    sqlite3.connect(empty).close()  # no events table yet
    assert sweep_event_logs(layout, NOW) == 2
    assert junk.read_text() == "not a database"


def test_sweeping_while_the_harness_appends(tmp_path: Path) -> None:
    """The harness keeps writing (its own connection, WAL) while the host sweeps: no errors,
    no lost new events, ids keep growing."""
    from harness.events import EventLog

    path = tmp_path / "agents" / "a" / "state" / "hyperhive-events.sqlite"
    path.parent.mkdir(parents=True)
    log = EventLog(path)
    for _ in range(3000):
        log.append("note", {"x": 1})
    stop = threading.Event()
    appended: list[int] = []

    def writer() -> None:
        while not stop.is_set():
            appended.append(log.append("note", {"y": 2}).id)
            time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    try:
        deleted = sweep_event_log(path, time.time(), keep_rows=2000)
    finally:
        stop.set()
        t.join()
    assert deleted >= 1000
    kept = ids(path)
    assert kept == sorted(kept) and kept[-1] == appended[-1]
    assert all(i in kept for i in appended[-50:])
    log.close()
