"""The broker database is checked at start, before anything is served.

``check_broker_db(layout, reset=...)`` returns what it found, or raises
``BrokerDbRefused`` with a one-line message naming the file and a recovery step
(the controller logs it and exits 2, no traceback):

- **missing** or **emptied** (0 bytes, or a valid file without the broker's tables)
  while this state dir shows that agents have run (``agents_have_run``): the
  messages are gone and starting would restart ids at 1, so that followers resuming
  from ``Last-Event-ID`` would miss new messages. Refused unless ``reset``.
- **not a database** (the 16-byte header is not sqlite's) or **damaged**
  (``PRAGMA quick_check`` fails, or sqlite refuses to read it): refused. With
  ``reset`` the damaged file (and its ``-wal``/``-shm``) is moved aside to
  ``broker.sqlite.damaged-<unix seconds>`` and the controller starts empty.
- **unreadable** (permissions, a directory in its place): refused.

A PostgreSQL broker (``broker: postgresql://…``) is checked by connecting: unreachable, or
migrated by a newer hyperhive, is refused; a database without the broker's tables while
agents have run here is refused unless ``reset`` (the URL names the wrong database, or its
data is gone). Nothing is ever moved or dropped there.

``reset`` (``hyperhive serve --reset-broker``) never touches a healthy database.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from controller.paths import Layout

SQLITE_HEADER = b"SQLite format 3\x00"
RESET_FLAG = "--reset-broker"
MAX_PROBLEMS = 3


class BrokerDbRefused(Exception):
    """The broker database must not be used as it is; ``str()`` is one line for the operator.

    ``exit_code`` is what ``hyperhive serve`` exits with (2).
    """

    exit_code = 2


class DbState(enum.StrEnum):
    """What ``check_broker_db`` found."""

    OK = "ok"
    NEW = "new"
    """Missing or empty on a state dir where no agent has run yet: created fresh."""
    RESET = "reset"
    """Missing, empty or damaged, accepted by ``reset`` (a damaged file was moved aside)."""


@dataclass(frozen=True)
class DbCheck:
    """The outcome: ``state``, a human ``detail``, and where a damaged file went (if moved)."""

    state: DbState
    detail: str
    moved_to: Path | None = None


def agents_have_run(layout: Layout) -> str | None:
    """Why this state dir has had agents (a short phrase), or None for a fresh one.

    Evidence: a dir under ``<state>/agents/`` or ``<state>/tombstones/``, a deployed
    agent in ``status.json``, or a ``deployed/<id>`` tag in ``meta.git``.
    """
    for sub in ("agents", "tombstones"):
        with contextlib.suppress(OSError):
            names = sorted(p.name for p in (layout.state / sub).iterdir() if p.is_dir())
            if names:
                return f"{layout.state / sub} has {', '.join(names[:3])}"
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(layout.status_file.read_text())
        agents = doc.get("agents") if isinstance(doc, dict) else None
        if isinstance(agents, dict):
            ran = sorted(
                n
                for n, row in agents.items()
                if isinstance(row, dict) and row.get("phase") not in (None, "absent")
            )
            if ran:
                return f"{layout.status_file} lists {', '.join(ran[:3])}"
    tags = layout.meta_git / "refs" / "tags" / "deployed"
    with contextlib.suppress(OSError):
        if any(tags.iterdir()):
            return f"{layout.meta_git} has deploy tags"
    with contextlib.suppress(OSError):
        if "refs/tags/deployed/" in (layout.meta_git / "packed-refs").read_text():
            return f"{layout.meta_git} has deploy tags"
    return None


def _side_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _damage(db: Path) -> str | None:
    """Why ``db`` (which exists, non-empty) is not a usable sqlite database, or None."""
    try:
        with open(db, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if header != SQLITE_HEADER:
        return "is not a sqlite database (its header is not sqlite's)"
    try:
        conn = sqlite3.connect(str(db), timeout=10.0, isolation_level=None)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        return f"is damaged ({exc})"
    finally:
        conn.close()
    if rows != ["ok"]:
        more = f" (+{len(rows) - MAX_PROBLEMS} more)" if len(rows) > MAX_PROBLEMS else ""
        return f"is damaged (quick_check: {'; '.join(rows[:MAX_PROBLEMS])}{more})"
    return None


def _has_tables(db: Path) -> bool:
    """True when ``db`` has the broker's ``messages`` table."""
    conn = sqlite3.connect(str(db), timeout=10.0, isolation_level=None)
    try:
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
        ).fetchone()
        return bool(row[0])
    finally:
        conn.close()


def _move_aside(db: Path, now: float) -> Path:
    dest = db.with_name(f"{db.name}.damaged-{int(now)}")
    for src in (db, *_side_files(db)):
        if src.exists():
            os.replace(src, dest.with_name(dest.name + src.name[len(db.name) :]))
    return dest


def broker_location(broker: str | None, layout: Layout) -> Path | str:
    """Where the broker keeps messages: the config's ``broker`` URL, else the sqlite file
    ``<state>/broker.sqlite``."""
    return layout.broker_db if broker is None else broker


def check_broker_db(
    layout: Layout,
    *,
    reset: bool = False,
    now: float | None = None,
    location: Path | str | None = None,
) -> DbCheck:
    """Check the broker's database before the broker opens it (see the module docstring):
    ``location`` (a ``postgresql://`` URL, or by default ``layout.broker_db``).

    Raises ``BrokerDbRefused`` (one line: the file or database, what is wrong, how to recover).
    """
    if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
        return _check_postgres(location, layout, reset=reset)
    db = layout.broker_db
    ran = agents_have_run(layout)
    lost = f"but agents have run here ({ran}): its messages are gone and ids would restart at 1"
    recover = (
        f"restore {db.name} (with any {db.name}-wal) from a backup, or start once with "
        f"`hyperhive serve {RESET_FLAG}` to begin with an empty broker"
    )
    if db.is_symlink() or (db.exists() and not db.is_file()):
        raise BrokerDbRefused(f"broker database {db} is not a regular file; move it away")
    if not db.exists() or (_size(db) == 0 and _size(_side_files(db)[0]) == 0):
        what = "is missing" if not db.exists() else "is empty (0 bytes)"
        if ran is None:
            return DbCheck(DbState.NEW, f"{db} {what}; creating it (no agent has run here)")
        if not reset:
            raise BrokerDbRefused(f"broker database {db} {what} {lost}; {recover}")
        return DbCheck(DbState.RESET, f"{db} {what}; starting with an empty broker ({RESET_FLAG})")
    why = _damage(db)
    if why is not None:
        if not reset:
            raise BrokerDbRefused(
                f"broker database {db} {why}; restore {db.name} from a backup (moving "
                f"{db.name}* aside first), or start with `hyperhive serve {RESET_FLAG}` to "
                "move it aside and begin with an empty broker"
            )
        dest = _move_aside(db, time.time() if now is None else now)
        return DbCheck(
            DbState.RESET, f"{db} {why}; moved it to {dest} and starting empty", moved_to=dest
        )
    try:
        tables = _has_tables(db)
    except sqlite3.Error as exc:
        raise BrokerDbRefused(f"broker database {db} cannot be read ({exc}); {recover}") from exc
    if not tables and ran is not None and not reset:
        raise BrokerDbRefused(f"broker database {db} has no messages table {lost}; {recover}")
    return DbCheck(DbState.OK, f"{db}: quick_check ok")


def _check_postgres(url: str, layout: Layout, *, reset: bool) -> DbCheck:
    """``check_broker_db`` for a PostgreSQL broker: connect and read its schema versions."""
    try:
        import psycopg

        from controller.broker.postgres import redact
        from controller.broker.postgres_schema import SCHEMA_VERSION, applied_versions
    except ImportError as exc:
        from controller.broker.broker import NEEDS_PSYCOPG

        raise BrokerDbRefused(
            f"the broker is configured on PostgreSQL, which {NEEDS_PSYCOPG}"
        ) from exc
    where = redact(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            versions = applied_versions(conn)
    except psycopg.Error as exc:
        raise BrokerDbRefused(
            f"broker database {where} cannot be reached ({' '.join(str(exc).split())}); "
            "check the config's broker URL and that PostgreSQL is running"
        ) from exc
    newest = max(versions, default=0)
    if newest > SCHEMA_VERSION:
        raise BrokerDbRefused(
            f"broker database {where} has schema version {newest}, newer than this "
            f"hyperhive's {SCHEMA_VERSION}; run the newer hyperhive, or restore a backup"
        )
    if versions:
        return DbCheck(DbState.OK, f"{where}: schema version {newest}")
    ran = agents_have_run(layout)
    if ran is None:
        return DbCheck(DbState.NEW, f"{where} has no broker tables; creating them")
    if not reset:
        raise BrokerDbRefused(
            f"broker database {where} has no broker tables but agents have run here ({ran}): "
            "the URL names another database, or its messages are gone; fix the config's "
            f"broker URL or restore the database, or start once with `hyperhive serve "
            f"{RESET_FLAG}` to begin with an empty broker"
        )
    return DbCheck(DbState.RESET, f"{where} has no broker tables; starting empty ({RESET_FLAG})")
