"""The controller's own record of spend, extensions and sent notices: ``<state>/budget.sqlite``.

The harness writes one row per turn to its turn-stats file
(``<state>/agents/<a>/state/hyperhive-turn-stats.sqlite``, ``controller/stats.py``).
:meth:`Ledger.ingest` copies the rows it has not seen yet (``id`` above the agent's
cursor) into the ledger, so what an agent spent stays counted when its harness
restarts, when its stats file is lost or rewritten (the agent can write it; the ledger
it cannot), and across controller restarts. The harness also reports each turn as it
records it (``POST /spend`` → :meth:`Ledger.add_turn`), which is how an agent whose stats
file the controller cannot read (one on another machine, on the agent API over TCP) is
counted. A row is keyed by
(agent, started_at, id), the same for both paths, so a turn is counted once:
a stats file started afresh (its ids below the cursor) is read again from the start and
rows already copied are ignored.

Tables: ``spend(agent, src_id, started_at, cost_usd, tokens)``, ``cursors(agent,
last_id)``, ``extensions(id, scope, window, usd, tokens, at, by, note)`` (every
grant: the accounting; the audit trail is the ``BudgetExtended`` broker event),
``notices(scope, window, kind, at)`` (a notice is sent once per scope and window),
``deliveries(agent, window, n)`` (messages the controller leased to the agent: the bound
on how many turns it can have paid for, docs/budgets.md#agent-reported-spend).
An agent holds at most ``MAX_ROWS_PER_AGENT`` spend rows (further reports and stats
rows are dropped) and :meth:`Ledger.prune` drops rows older than ``RETENTION_SECONDS``,
so neither path can grow the file without bound.
Thread-safe (one connection behind a lock); sqlite errors are raised.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from controller.agentfile import sqlite_snapshot
from controller.budget.core import Extension, Spend, Window

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    agent      TEXT NOT NULL,
    src_id     INTEGER NOT NULL,
    started_at REAL NOT NULL,
    cost_usd   REAL NOT NULL,
    tokens     INTEGER NOT NULL,
    PRIMARY KEY (agent, started_at, src_id)
);
CREATE INDEX IF NOT EXISTS spend_time ON spend(started_at);
CREATE INDEX IF NOT EXISTS spend_agent ON spend(agent, started_at);
CREATE TABLE IF NOT EXISTS cursors (agent TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    agent  TEXT NOT NULL,
    window TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (agent, window)
);
CREATE TABLE IF NOT EXISTS extensions (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    scope  TEXT NOT NULL,
    window TEXT NOT NULL,
    usd    REAL NOT NULL,
    tokens INTEGER NOT NULL,
    at     REAL NOT NULL,
    by     TEXT NOT NULL,
    note   TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS notices (
    scope  TEXT NOT NULL,
    window TEXT NOT NULL,
    kind   TEXT NOT NULL,
    at     REAL NOT NULL,
    PRIMARY KEY (scope, window, kind)
);
"""

_FileKey = tuple[int, int, int, int]


def _file_key(path: Path) -> _FileKey | None:
    """(mtime, size) of the stats file and of its WAL: a change means new rows may be there."""
    try:
        st = path.stat()
    except OSError:
        return None
    try:
        wal = Path(f"{path}-wal").stat()
        w = (wal.st_mtime_ns, wal.st_size)
    except OSError:
        w = (0, 0)
    return (st.st_mtime_ns, st.st_size, *w)


class Ledger:
    """Spend per agent and window, extensions and notices, in ``path`` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(path, timeout=10.0, check_same_thread=False,
                                    isolation_level=None)  # fmt: skip
        self._lock = threading.Lock()
        self._seen: dict[str, _FileKey] = {}
        self._read_at: dict[str, float] = {}
        with self._lock:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._con.close()

    # ------------------------------------------------------------ spend

    def ingest(self, agent: str, stats_file: Path) -> int:
        """Copy ``agent``'s new turn rows from its ``stats_file``; returns how many were new.

        Cheap when the file did not change since the last call (two ``stat``s). A file
        that is missing, has no ``turns`` table yet, or cannot be read adds nothing (the
        last is logged). Each read copies the file (``controller.agentfile``), and an agent
        can touch its file and ask (``recv``) as often as it likes: a file over
        ``INGEST_FREE_BYTES`` is read at most once per ``INGEST_EVERY`` seconds.
        """
        key = _file_key(stats_file)
        if key is None or self._seen.get(agent) == key:
            return 0
        if key[1] + key[3] > INGEST_FREE_BYTES:
            now = time.monotonic()
            with self._lock:  # claimed before the copy: concurrent checks skip it
                if now - self._read_at.get(agent, -INGEST_EVERY) < INGEST_EVERY:
                    return 0
                self._read_at[agent] = now
        with self._lock:
            row = self._con.execute(
                "SELECT last_id FROM cursors WHERE agent = ?", (agent,)
            ).fetchone()
            cursor = int(row[0]) if row else 0
        try:
            rows = _read_new(stats_file, cursor)
        except (sqlite3.Error, OSError) as exc:
            log.warning("budget: cannot read %s: %s", stats_file, exc)
            return 0
        if rows is None:  # the file starts afresh: read it all again
            cursor = 0
            try:
                rows = _read_new(stats_file, 0) or []
            except (sqlite3.Error, OSError) as exc:
                log.warning("budget: cannot read %s: %s", stats_file, exc)
                return 0
        added = 0
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                room = MAX_ROWS_PER_AGENT - self._rows(agent)
                for src_id, started, cost, tokens in rows:
                    cursor = max(cursor, src_id)
                    if room <= added:
                        continue  # over the cap: skipped for good (the cursor moves on)
                    cur = self._con.execute(
                        "INSERT OR IGNORE INTO spend VALUES (?, ?, ?, ?, ?)",
                        (agent, src_id, started, cost, tokens),
                    )
                    added += cur.rowcount
                self._con.execute(
                    "INSERT INTO cursors VALUES (?, ?) "
                    "ON CONFLICT(agent) DO UPDATE SET last_id = excluded.last_id",
                    (agent, cursor),
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        if len(rows) < INGEST_ROWS:  # else more rows wait: read on at the next call
            self._seen[agent] = key
        return added

    def add_turn(
        self, agent: str, src_id: int, started_at: float, cost_usd: float, tokens: int
    ) -> bool:
        """Record one turn reported by the harness (``POST /spend``); False when the ledger
        already had it (from the stats file or an earlier report: the same key) or ``agent``
        already has ``MAX_ROWS_PER_AGENT`` rows."""
        with self._lock:
            if self._rows(agent) >= MAX_ROWS_PER_AGENT:
                return False
            cur = self._con.execute(
                "INSERT OR IGNORE INTO spend VALUES (?, ?, ?, ?, ?)",
                (agent, src_id, started_at, cost_usd, tokens),
            )
            return cur.rowcount == 1

    def _rows(self, agent: str) -> int:
        """How many spend rows ``agent`` has (the caller holds the lock)."""
        row = self._con.execute("SELECT COUNT(*) FROM spend WHERE agent = ?", (agent,)).fetchone()
        return int(row[0])

    def spend_by_agent(
        self, window: Window, usd_per_row: float, tokens_per_row: int
    ) -> dict[str, Spend]:
        """``{agent: Spend}`` in ``window``, each row counted at most ``usd_per_row`` dollars
        and ``tokens_per_row`` tokens (the per-turn ceiling of the swarm-wide sum)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT agent, TOTAL(MIN(cost_usd, ?)), TOTAL(MIN(tokens, ?)), COUNT(*) "
                "FROM spend WHERE started_at >= ? AND started_at < ? GROUP BY agent",
                (usd_per_row, tokens_per_row, window.start, window.end),
            ).fetchall()
        return {str(a): Spend(float(u), int(t), int(n)) for a, u, t, n in rows}

    def add_delivery(self, agent: str, window: Window) -> None:
        """Count one message leased to ``agent`` in ``window``."""
        with self._lock:
            self._con.execute(
                "INSERT INTO deliveries VALUES (?, ?, 1) "
                "ON CONFLICT(agent, window) DO UPDATE SET n = n + 1",
                (agent, window.key),
            )

    def deliveries(self, agent: str, window: Window) -> int:
        """How many messages were leased to ``agent`` in ``window``."""
        with self._lock:
            row = self._con.execute(
                "SELECT n FROM deliveries WHERE agent = ? AND window = ?", (agent, window.key)
            ).fetchone()
        return int(row[0]) if row else 0

    def deliveries_by_agent(self, window: Window) -> dict[str, int]:
        """``{agent: messages leased to it in window}`` for every agent that had any."""
        with self._lock:
            rows = self._con.execute(
                "SELECT agent, n FROM deliveries WHERE window = ?", (window.key,)
            ).fetchall()
        return {str(a): int(n) for a, n in rows}

    def prune(self, before: float) -> int:
        """Drop spend rows of turns started before ``before`` (unix seconds), and deliveries
        and notices of windows that ended by then; returns how many spend rows went.
        Extensions stay (the accounting of grants, a handful a day)."""
        day = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d")
        with self._lock:
            cur = self._con.execute("DELETE FROM spend WHERE started_at < ?", (before,))
            self._con.execute("DELETE FROM deliveries WHERE window < ?", (day,))
            self._con.execute("DELETE FROM notices WHERE window < ?", (day,))
            return int(cur.rowcount)

    def spend(self, agent: str | None, window: Window) -> Spend:
        """What ``agent`` (None: every agent) spent in turns started in ``window``."""
        # TOTAL, not SUM: a float that cannot overflow (SUM of integers raises past 2**63)
        sql = "SELECT TOTAL(cost_usd), TOTAL(tokens), COUNT(*) FROM spend "
        sql += "WHERE started_at >= ? AND started_at < ?"
        args: tuple[object, ...] = (window.start, window.end)
        if agent is not None:
            sql += " AND agent = ?"
            args = (*args, agent)
        with self._lock:
            usd, tokens, turns = self._con.execute(sql, args).fetchone()
        return Spend(float(usd), int(tokens), int(turns))

    # ------------------------------------------------------------ extensions

    def add_extension(
        self, scope: str, window: Window, ext: Extension, at: float, by: str, note: str = ""
    ) -> int:
        """Record one grant for ``scope`` in ``window``; returns its id."""
        with self._lock:
            cur = self._con.execute(
                "INSERT INTO extensions (scope, window, usd, tokens, at, by, note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (scope, window.key, ext.usd, ext.tokens, at, by, note),
            )
            return int(cur.lastrowid or 0)

    def extension(self, scope: str, window: Window) -> Extension:
        """The sum of the grants for ``scope`` in ``window``."""
        with self._lock:
            usd, tokens, n = self._con.execute(
                "SELECT COALESCE(SUM(usd), 0), COALESCE(SUM(tokens), 0), COUNT(*) "
                "FROM extensions WHERE scope = ? AND window = ?",
                (scope, window.key),
            ).fetchone()
        return Extension(float(usd), int(tokens), int(n))

    def extensions_by_scope(self, window: Window) -> dict[str, Extension]:
        """``{scope: the sum of its grants in window}`` for every scope granted any."""
        with self._lock:
            rows = self._con.execute(
                "SELECT scope, SUM(usd), SUM(tokens), COUNT(*) FROM extensions "
                "WHERE window = ? GROUP BY scope",
                (window.key,),
            ).fetchall()
        return {str(s): Extension(float(u), int(t), int(n)) for s, u, t, n in rows}

    # ------------------------------------------------------------ notices

    def sent(self, scope: str, window: Window) -> frozenset[str]:
        """The notice kinds already sent for ``scope`` in ``window``."""
        with self._lock:
            rows = self._con.execute(
                "SELECT kind FROM notices WHERE scope = ? AND window = ?", (scope, window.key)
            ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def mark_sent(self, scope: str, window: Window, kind: str, at: float) -> bool:
        """Record ``kind`` as sent; False when it already was (so two callers never both send)."""
        with self._lock:
            cur = self._con.execute(
                "INSERT OR IGNORE INTO notices VALUES (?, ?, ?, ?)", (scope, window.key, kind, at)
            )
            return cur.rowcount == 1


MAX_ROWS_PER_AGENT = 200_000
"""Spend rows one agent may hold in the ledger (about 6,000 turns a day over the retention
window, ~10 MB); reports and stats rows past it are dropped, not counted."""
RETENTION_SECONDS = 32 * 86400.0
"""Spend rows older than this are pruned (``Budgets`` runs :meth:`Ledger.prune`)."""

INGEST_FREE_BYTES = 1 << 20
"""A stats file (with its WAL) up to this size is read whenever it changed."""
INGEST_EVERY = 1.0
"""Seconds between two reads of a larger stats file (``Ledger.ingest``)."""
INGEST_ROWS = 50_000
"""Rows copied from a stats file per :meth:`Ledger.ingest` at most (memory stays bounded)."""


def _read_new(path: Path, after: int) -> list[tuple[int, float, float, int]] | None:
    """Rows of ``turns`` with ``id > after`` as (id, started_at, cost_usd, tokens); None when
    the file's largest id is below ``after`` (it was started afresh).

    The agent writes this file, so it is read from a private copy (``controller.agentfile``:
    no symlink, FIFO or huge file) and every value is bounded as ``POST /spend`` bounds it:
    a negative, NaN or infinite cost, or a negative or huge token count, can neither take
    back spend already counted nor break the sums."""
    with sqlite_snapshot(path) as con:
        if con is None:
            return []
        has = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'turns'"
        ).fetchone()
        if not has:
            return []
        top = con.execute("SELECT COALESCE(MAX(id), 0) FROM turns").fetchone()[0]
        if not isinstance(top, int) or top < after:
            return None
        cols = {r[1] for r in con.execute("PRAGMA table_info(turns)")}

        def col(name: str) -> str:
            return name if name in cols else "0"

        cur = con.execute(
            f"SELECT id, started_at, {col('cost_usd')}, {col('input_tokens')}, "
            f"{col('output_tokens')}, {col('cache_creation_tokens')} FROM turns "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after, INGEST_ROWS),
        )
        out = []
        for i, s, c, *t in cur.fetchall():
            started = _number(s, 0.0, 1e11)
            if not isinstance(i, int) or started is None:
                continue
            tokens = sum(int(_number(x, 0, MAX_TOKENS) or 0) for x in t)
            out.append((i, started, _number(c, 0.0, MAX_USD) or 0.0, min(tokens, MAX_TOKENS)))
        return out


MAX_USD = 1_000_000.0
"""Largest cost of one turn counted (``SpendReport.cost_usd``'s maximum)."""
MAX_TOKENS = 1_000_000_000_000
"""Largest token count of one turn counted (``SpendReport.tokens``' maximum)."""


def _number(value: object, low: float, high: float) -> float | None:
    """``value`` clamped to ``[low, high]``; None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(float(value), low), high)
