"""Retention of the agents' event logs: the host sweeps them, the harness only appends.

Every agent's harness writes ``<state>/agents/<agent>/state/hyperhive-events.sqlite``
(table ``events(id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL unix seconds, kind,
turn, data)``, WAL mode — see docs/turn-loop.md). A misbehaving or stopped
harness must not be trusted to clean up after itself, so the controller does it,
on the same hourly tick as the broker sweep:

1. delete events older than ``keep_seconds`` (7 days);
2. then keep only the newest ``keep_rows`` (2,000) of what is left;
3. ``PRAGMA wal_checkpoint(TRUNCATE)`` so the WAL file shrinks too.

Two stages so a quiet agent keeps its last week and a chatty one stays bounded.
The harness may be appending at the same moment: the deletes run in one
``BEGIN IMMEDIATE`` transaction with a busy timeout, and ids are never reused
(``AUTOINCREMENT``; the harness continues from ``sqlite_sequence``), so a web UI
that resumes with ``Last-Event-ID`` never sees an id twice. The schema is read
from the file, not imported: ``controller`` never imports ``harness``.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from controller.paths import Layout

log = logging.getLogger(__name__)

EVENTS_DB = "hyperhive-events.sqlite"
KEEP_SECONDS = 7 * 86400
KEEP_ROWS = 2000
BUSY_TIMEOUT_MS = 10_000


def event_logs(layout: Layout) -> list[Path]:
    """Every agent's event log that exists: ``<state>/agents/*/state/hyperhive-events.sqlite``."""
    return sorted(p for p in layout.state.glob(f"agents/*/state/{EVENTS_DB}") if p.is_file())


def sweep_event_log(
    path: Path, now: float, keep_seconds: float = KEEP_SECONDS, keep_rows: int = KEEP_ROWS
) -> int:
    """Apply both stages to one file; return the number of events deleted.

    A file without an ``events`` table (not a harness event log yet) is left alone (0).
    Raises ``sqlite3.Error`` for a file sqlite cannot use.
    """
    if keep_rows < 0 or keep_seconds < 0:
        raise ValueError("keep_seconds and keep_rows must not be negative")
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        has = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
        if not has:
            return 0
        con.execute("BEGIN IMMEDIATE")
        try:
            old = con.execute("DELETE FROM events WHERE ts < ?", (now - keep_seconds,)).rowcount
            extra = con.execute(
                "DELETE FROM events WHERE id < "
                "(SELECT MIN(id) FROM (SELECT id FROM events ORDER BY id DESC LIMIT ?))",
                (keep_rows,),
            ).rowcount
            if keep_rows == 0:
                extra += con.execute("DELETE FROM events").rowcount
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        deleted = max(old, 0) + max(extra, 0)
        if deleted:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted
    finally:
        con.close()


def sweep_event_logs(
    layout: Layout, now: float, keep_seconds: float = KEEP_SECONDS, keep_rows: int = KEEP_ROWS
) -> int:
    """Sweep every agent's event log (see the module doc); return the events deleted in total.

    A file that cannot be swept (locked past the busy timeout, corrupt, unreadable) is
    logged and skipped; the others are still swept. Never raises for one bad file.
    """
    total = 0
    for path in event_logs(layout):
        try:
            n = sweep_event_log(path, now, keep_seconds, keep_rows)
        except (sqlite3.Error, OSError) as exc:
            log.warning("event log retention: cannot sweep %s: %s", path, exc)
            continue
        if n:
            log.info("event log retention: deleted %d event(s) from %s", n, path)
        total += n
    return total
