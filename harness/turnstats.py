"""One row per turn in ``<state>/hyperhive-turn-stats.sqlite`` (WAL).

A "turn" is one wake: the claude run for one inbox message, including a
compaction and the retry after ``prompt_too_long``. Token counts and cost are
summed over the attempts. Recording is best effort: a failing insert is logged
and never stops the turn loop.

Columns: ``id``, ``turn`` (event-log turn number), ``message_id``, ``wake_from``,
``wake_kind``, ``model``, ``result_kind`` (``ok`` / ``failed`` /
``prompt_too_long`` / ``cancelled``), ``started_at`` / ``ended_at`` (unix
seconds), ``duration_ms``, ``input_tokens``, ``output_tokens``,
``cache_read_tokens``, ``cache_creation_tokens``, ``cost_usd`` (dollars),
``tool_calls`` (count), ``tool_breakdown`` (JSON ``{"Bash": 2, ...}``),
``compactions``, ``open_threads`` / ``pending_reminders`` (from ``GET /status``
after the turn, ``NULL`` when unreachable), ``meta_commit``, ``session_id``,
``exit_code``, ``note``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.events import connect

log = logging.getLogger(__name__)

RESULT_KINDS = ("ok", "failed", "prompt_too_long", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    turn                  INTEGER,
    message_id            INTEGER,
    wake_from             TEXT,
    wake_kind             TEXT,
    model                 TEXT NOT NULL,
    result_kind           TEXT NOT NULL,
    started_at            REAL NOT NULL,
    ended_at              REAL NOT NULL,
    duration_ms           INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd              REAL NOT NULL DEFAULT 0,
    tool_calls            INTEGER NOT NULL DEFAULT 0,
    tool_breakdown        TEXT NOT NULL DEFAULT '{}',
    compactions           INTEGER NOT NULL DEFAULT 0,
    open_threads          INTEGER,
    pending_reminders     INTEGER,
    meta_commit           TEXT,
    session_id            TEXT,
    exit_code             INTEGER,
    note                  TEXT
);
CREATE INDEX IF NOT EXISTS turns_started ON turns(started_at);
"""


@dataclass
class TurnRow:
    """One turn's figures (see the module docstring for units)."""

    model: str
    result_kind: str
    started_at: float
    ended_at: float
    duration_ms: int
    turn: int | None = None
    message_id: int | None = None
    wake_from: str | None = None
    wake_kind: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    tool_breakdown: dict[str, int] = field(default_factory=dict)
    compactions: int = 0
    open_threads: int | None = None
    pending_reminders: int | None = None
    meta_commit: str | None = None
    session_id: str | None = None
    exit_code: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object (``tool_breakdown`` as an object)."""
        return asdict(self)


class TurnStats:
    """The turn-stats table. Thread-safe; ``record`` never raises."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db: sqlite3.Connection | None = connect(path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            log.error("cannot open turn stats %s: %s; turn stats disabled", path, exc)
            self._db = None

    def record(self, row: TurnRow) -> int | None:
        """Insert ``row``; return its id, or ``None`` when the write failed (logged)."""
        if row.result_kind not in RESULT_KINDS:
            raise ValueError(f"result_kind: must be one of {RESULT_KINDS}, got {row.result_kind!r}")
        d = row.to_json()
        d["tool_breakdown"] = json.dumps(row.tool_breakdown, sort_keys=True)
        cols = ", ".join(d)
        marks = ", ".join("?" for _ in d)
        with self._lock:
            if self._db is None:
                return None
            try:
                cur = self._db.execute(
                    f"INSERT INTO turns ({cols}) VALUES ({marks})", tuple(d.values())
                )
                return int(cur.lastrowid or 0)
            except sqlite3.Error as exc:
                log.error("turn stats write failed: %s", exc)
                return None

    def recent(self, limit: int = 20) -> list[TurnRow]:
        """The newest ``limit`` rows, newest first."""
        with self._lock:
            if self._db is None:
                return []
            cur = self._db.execute("SELECT * FROM turns ORDER BY id DESC LIMIT ?", (limit,))
            names = [c[0] for c in cur.description]
            rows = cur.fetchall()
        out: list[TurnRow] = []
        for r in rows:
            d = dict(zip(names, r, strict=True))
            d.pop("id", None)
            d["tool_breakdown"] = json.loads(d.get("tool_breakdown") or "{}")
            out.append(TurnRow(**d))
        return out

    def max_turn(self) -> int:
        """The largest turn number recorded (0 when none)."""
        with self._lock:
            if self._db is None:
                return 0
            try:
                row = self._db.execute("SELECT COALESCE(MAX(turn), 0) FROM turns").fetchone()
            except sqlite3.Error:
                return 0
        return int(row[0] or 0)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
