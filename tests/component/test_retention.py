"""controller.retention against real sqlite files laid out like the harness writes them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.paths import Layout
from controller.retention import (
    UnsafeEventLog,
    _check_opened,
    sandbox_argv,
    sweep_event_log,
    sweep_event_logs,
    sweep_sandbox,
)

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


def test_symlinks_the_agent_planted_are_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent owns its state/ dir: a log, a sidecar or the dir itself that is a symlink to a
    file it cannot reach (another agent's log, the broker's WAL) is skipped, naming the agent,
    and the target is untouched; the other agents are still swept."""
    layout = Layout.for_state(tmp_path / "s", tmp_path / "run")
    victim = tmp_path / "victim" / "hyperhive-events.sqlite"
    make_log(victim, [NOW - 30 * DAY] * 7)
    victim_wal = tmp_path / "victim" / "broker.sqlite-wal"
    victim_wal.write_bytes(b"the broker's uncheckpointed frames")
    good = layout.agent_state("good") / "hyperhive-events.sqlite"
    make_log(good, [NOW - 30 * DAY] * 2)
    # mallory's log is a symlink to another database
    mallory = layout.agent_state("mallory") / "hyperhive-events.sqlite"
    mallory.parent.mkdir(parents=True)
    mallory.symlink_to(victim)
    # eve's log is her own, but its WAL points at the broker's
    eve = layout.agent_state("eve") / "hyperhive-events.sqlite"
    make_log(eve, [NOW - 30 * DAY] * 3)
    eve.with_name(eve.name + "-wal").symlink_to(victim_wal)
    # trent's wal-index points elsewhere
    trent = layout.agent_state("trent") / "hyperhive-events.sqlite"
    make_log(trent, [NOW - 30 * DAY] * 4)
    trent.with_name(trent.name + "-shm").symlink_to(victim_wal)
    # oscar's whole state/ dir is a symlink to the victim's dir
    layout.agent_dir("oscar").mkdir(parents=True)
    layout.agent_state("oscar").symlink_to(victim.parent)

    with caplog.at_level("WARNING", logger="controller.retention"):
        assert sweep_event_logs(layout, NOW) == 2  # good's two, nobody else's
    assert ids(good) == []
    assert ids(victim) == list(range(1, 8))
    assert victim_wal.read_bytes() == b"the broker's uncheckpointed frames"
    eve.with_name(eve.name + "-wal").unlink()  # (so that this test can read them)
    trent.with_name(trent.name + "-shm").unlink()
    assert ids(eve) == [1, 2, 3] and ids(trent) == [1, 2, 3, 4]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for agent in ("mallory", "eve", "trent", "oscar"):
        assert f"skipping agent {agent}:" in warned, agent
    assert "symlink" in warned
    # a direct sweep of a symlinked log refuses too
    with pytest.raises(UnsafeEventLog, match="symlink"):
        sweep_event_log(mallory, NOW)
    assert ids(victim) == list(range(1, 8))


def test_a_log_not_in_wal_mode_is_left_alone(tmp_path: Path) -> None:
    """A rollback journal would be created, through a symlink if one appeared, at the first
    write: only WAL logs (what the harness writes) are swept."""
    path = tmp_path / "agents" / "a" / "state" / "hyperhive-events.sqlite"
    make_log(path, [NOW - 30 * DAY] * 3)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    with pytest.raises(UnsafeEventLog, match="not WAL"):
        sweep_event_log(path, NOW)
    assert ids(path) == [1, 2, 3]


def test_a_symlink_sqlite_followed_is_caught_before_any_write(tmp_path: Path) -> None:
    """What the sweep checks after its first read: the files sqlite opened are the ones at
    the log's own paths. Here sqlite opened the log through a symlink (as it would if one
    were swapped in between the lstat and the open)."""
    real = tmp_path / "real" / "hyperhive-events.sqlite"
    make_log(real, [NOW] * 2)
    state = tmp_path / "state"
    state.mkdir()
    link = state / "hyperhive-events.sqlite"
    link.symlink_to(real)
    con = sqlite3.connect(link)
    try:
        con.execute("SELECT count(*) FROM events").fetchone()
        link.unlink()  # the agent swaps a plain file back in before the check
        make_log(link, [NOW])
        with pytest.raises(UnsafeEventLog, match="not opened at its own path"):
            _check_opened(link)
    finally:
        con.close()


@pytest.mark.skipif(sweep_sandbox() is None, reason="bubblewrap cannot build a sandbox here")
def test_the_sandboxed_sweep_sees_only_the_agents_state_dir(tmp_path: Path) -> None:
    """Where bwrap works each log is swept in a child inside a sandbox: there, a symlink the
    agent swapped in after the checks reaches nothing it could not write itself."""
    layout = Layout.for_state(tmp_path / "s", tmp_path / "run")
    layout.broker_db.parent.mkdir(parents=True, exist_ok=True)
    layout.broker_db.write_bytes(b"SQLite format 3\x00")
    bob = layout.agent_state("bob") / "hyperhive-events.sqlite"
    make_log(bob, [NOW] * 2)
    alice = layout.agent_state("alice") / "hyperhive-events.sqlite"
    make_log(alice, [NOW - 30 * DAY] * 3)
    outside = tmp_path / "outside.txt"
    outside.write_text("the operator's file")
    (alice.parent / "to-broker").symlink_to(str(layout.broker_db) + "-wal")
    (alice.parent / "to-outside").symlink_to(outside)
    probe = (
        "import json, os, sys\n"
        "def w(p):\n"  # a new file only in the agent's own dir; else open what is there
        "    flags = os.O_RDWR | (os.O_CREAT if p.endswith('new') else 0)\n"
        "    try:\n"
        "        fd = os.open(p, flags, 0o600); os.close(fd); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "a = sys.argv[1:]\n"
        "print(json.dumps({'broker': os.path.exists(a[0]), 'bob': os.path.exists(a[1]),"
        " 'own': w(a[2]), 'to_broker': w(a[3]), 'to_outside': w(a[4])}))\n"
    )
    argv = sandbox_argv(str(sweep_sandbox()), layout, alice.parent)
    argv += [sys.executable, "-c", probe, str(layout.broker_db), str(bob)]
    argv += [str(alice.parent / "new"), str(alice.parent / "to-broker")]
    argv += [str(alice.parent / "to-outside")]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(res.stdout)
    assert seen == {
        "broker": False,
        "bob": False,
        "own": True,
        "to_broker": False,
        "to_outside": False,
    }
    assert not Path(str(layout.broker_db) + "-wal").exists()
    assert outside.read_text() == "the operator's file"
    # and the sweep itself runs there
    assert sweep_event_logs(layout, NOW) == 3 and ids(alice) == []
    assert ids(bob) == [1, 2]
