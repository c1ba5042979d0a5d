"""controller.stats: summarising turn-stats rows, reading them from the agents' files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.paths import Layout
from controller.stats import (
    TurnRecord,
    load_rows,
    percentile,
    render_stats,
    stats_json,
    summarise,
)

# the harness' table (harness/turnstats.py), written here by hand: controller never imports it
TURNS_SQL = """
CREATE TABLE turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT, turn INTEGER, message_id INTEGER, wake_from TEXT,
    wake_kind TEXT, model TEXT NOT NULL, result_kind TEXT NOT NULL, started_at REAL NOT NULL,
    ended_at REAL NOT NULL, duration_ms INTEGER NOT NULL, input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
    tool_calls INTEGER NOT NULL DEFAULT 0, tool_breakdown TEXT NOT NULL DEFAULT '{}',
    compactions INTEGER NOT NULL DEFAULT 0, open_threads INTEGER, pending_reminders INTEGER,
    meta_commit TEXT, session_id TEXT, exit_code INTEGER, note TEXT)
"""


def rec(
    agent: str,
    model: str,
    kind: str,
    ms: int,
    t: float,
    commit: str | None = "a" * 40,
    tokens: int = 100,
    cost: float = 0.01,
    tools: dict[str, int] | None = None,
) -> TurnRecord:
    return TurnRecord(
        agent=agent, model=model, result_kind=kind, started_at=t, duration_ms=ms,
        input_tokens=tokens, output_tokens=tokens // 10, cache_read_tokens=tokens * 2,
        cache_creation_tokens=tokens // 2, cost_usd=cost, tool_calls=sum((tools or {}).values()),
        tool_breakdown=tools or {}, meta_commit=commit,
    )  # fmt: skip


ROWS = [
    rec("alice", "haiku", "ok", 1000, 10, tools={"Bash": 2}),
    rec("alice", "haiku", "failed", 3000, 20, tools={"Bash": 1, "Read": 1}),
    rec("alice", "sonnet", "ok", 2000, 30, commit="b" * 40),
    rec("bob", "haiku", "cancelled", 500, 15, commit=None),
    rec("bob", "haiku", "prompt_too_long", 9000, 25, commit="b" * 40, cost=0.5),
]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4], 50) == 2
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95
    assert percentile(values, 100) == 100 and percentile(values, 0) == 1


def test_by_agent() -> None:
    alice, bob = summarise(ROWS, "agent")
    assert (alice.key, alice.turns, alice.ok, alice.failed) == ("alice", 3, 2, 1)
    assert (bob.cancelled, bob.prompt_too_long, bob.ok) == (1, 1, 0)
    assert alice.input_tokens == 300 and alice.output_tokens == 30
    assert alice.cache_read_tokens == 600 and alice.cache_creation_tokens == 150
    assert alice.cost_usd == pytest.approx(0.03) and bob.cost_usd == pytest.approx(0.51)
    assert alice.p50_ms == 2000 and alice.p95_ms == 3000
    assert alice.tool_calls == 4 and alice.tools == {"Bash": 3, "Read": 1}
    assert (alice.first_at, alice.last_at) == (10, 30)


def test_by_model_and_commit() -> None:
    haiku, sonnet = summarise(ROWS, "model")
    assert (haiku.key, haiku.turns, haiku.agents) == ("haiku", 4, ["alice", "bob"])
    assert (sonnet.key, sonnet.turns) == ("sonnet", 1)
    commits = summarise(ROWS, "commit")
    # in deploy order: the first turn under each commit
    assert [c.key for c in commits] == ["a" * 12, "(none)", "b" * 12]
    assert [c.turns for c in commits] == [2, 1, 2]
    with pytest.raises(ValueError, match="by"):
        summarise(ROWS, "colour")


def test_render_and_json() -> None:
    text = render_stats(ROWS, "agent")
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["AGENT", "TURNS", "OK", "FAILED", "CANCELLED", "PTL"]
    assert lines[1].split()[:6] == ["alice", "3", "2", "1", "0", "0"]
    assert lines[-1].startswith("total") and lines[-1].split()[1] == "5"
    assert set(lines[-2]) == {"-"}
    assert "$0.5100" in lines[2] and "9.0s" in lines[2]
    assert render_stats([], "agent") == "no turns recorded yet\n"
    one = render_stats(ROWS[:1], "model")
    assert "total" not in one and one.splitlines()[1].split()[0] == "haiku"
    doc = stats_json(ROWS, "commit")
    json.dumps(doc)
    assert doc["by"] == "commit" and doc["total"]["turns"] == 5
    assert [g["key"] for g in doc["groups"]] == ["a" * 12, "(none)", "b" * 12]


def write_turns(path: Path, rows: list[dict[str, object]], schema: str = TURNS_SQL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(schema)
    for r in rows:
        cols = ", ".join(r)
        con.execute(f"INSERT INTO turns ({cols}) VALUES ({', '.join('?' for _ in r)})",
                    tuple(r.values()))  # fmt: skip
    con.commit()
    con.close()


def test_load_rows_from_every_agent(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path, tmp_path / "run")
    base = {"result_kind": "ok", "ended_at": 0, "duration_ms": 1200}
    write_turns(layout.agent_state("alice") / "hyperhive-turn-stats.sqlite", [
        {**base, "model": "haiku", "started_at": 30.0, "input_tokens": 7, "cost_usd": 0.25,
         "tool_breakdown": '{"Bash": 2}', "tool_calls": 2, "meta_commit": "c" * 40},
        {**base, "model": "haiku", "started_at": 10.0, "tool_breakdown": "not json"},
    ])  # fmt: skip
    manager = {**base, "model": "opus", "started_at": 20.0, "result_kind": "failed"}
    write_turns(layout.agent_state("manager") / "hyperhive-turn-stats.sqlite", [manager])
    # an older harness without some columns: they read as 0 / None
    old_schema = (
        "CREATE TABLE turns (id INTEGER PRIMARY KEY, model TEXT, result_kind TEXT, "
        "started_at REAL, duration_ms INTEGER)"
    )
    write_turns(layout.agent_state("bob") / "hyperhive-turn-stats.sqlite",
                [{"model": "haiku", "result_kind": "ok", "started_at": 5.0, "duration_ms": 1}],
                old_schema)  # fmt: skip
    # not a stats file at all, and an empty one without the table: skipped, not fatal
    bad = layout.agent_state("carol") / "hyperhive-turn-stats.sqlite"
    bad.parent.mkdir(parents=True)
    bad.write_text("this is not sqlite")
    sqlite3.connect(layout.agent_state("dave").mkdir(parents=True) or
                    layout.agent_state("dave") / "hyperhive-turn-stats.sqlite").close()  # fmt: skip

    rows = load_rows(layout)
    assert [(r.agent, r.started_at) for r in rows] == [
        ("bob", 5.0), ("alice", 10.0), ("manager", 20.0), ("alice", 30.0)
    ]  # fmt: skip
    newest = rows[-1]
    assert newest.input_tokens == 7 and newest.tool_breakdown == {"Bash": 2}
    assert newest.meta_commit == "c" * 40 and rows[1].tool_breakdown == {}
    assert rows[0].cost_usd == 0.0 and rows[0].meta_commit is None
    assert [r.agent for r in load_rows(layout, agents=["alice"])] == ["alice", "alice"]
    assert [r.started_at for r in load_rows(layout, since=15)] == [20.0, 30.0]
    assert load_rows(Layout.for_state(tmp_path / "empty", tmp_path / "run2")) == []
    # read-only: the files are not modified
    assert bad.read_text() == "this is not sqlite"
    assert [s.key for s in summarise(rows, "agent")] == ["alice", "bob", "manager"]
