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

The agent owns its ``state/`` dir (it is bound read-write into its sandbox or
container) and can put a symlink where the log or its ``-wal`` / ``-shm`` /
``-journal`` should be. Followed by the controller, that would sweep, or write a
WAL or wal-index into, a file the agent cannot reach itself (another agent's log,
``broker.sqlite-wal``). So a log is swept only when ``state/``, the log and every
sidecar are plain files or dirs (``lstat``), the log is in WAL mode (no rollback
journal is ever created), and, before anything is written, the files sqlite has
open are the ones at the expected paths (``/proc/self/fd``; this catches a
symlink swapped in after the ``lstat``). Anything else is skipped with a warning
naming the agent.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from controller.paths import Layout

log = logging.getLogger(__name__)

EVENTS_DB = "hyperhive-events.sqlite"
KEEP_SECONDS = 7 * 86400
KEEP_ROWS = 2000
BUSY_TIMEOUT_MS = 10_000


SIDECARS = ("-wal", "-shm", "-journal")
FD_DIR = Path("/proc/self/fd")


class UnsafeEventLog(Exception):
    """An agent's event log (or a sidecar of it) is not a plain file where it should be.

    ``str(exc)`` says which path and why. The sweep skips that log.
    """


def _plain(path: Path, kind: int, missing_ok: bool) -> bool:
    """True when ``path`` is of ``kind`` (``stat.S_IFREG``/``S_IFDIR``), not following links.

    False when it is missing and ``missing_ok``; ``UnsafeEventLog`` for a symlink or
    anything else (a fifo, a device, a dir where a file belongs).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise UnsafeEventLog(f"{path} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeEventLog(f"{path} is a symlink (to {os.readlink(path)!r})")
    if stat.S_IFMT(st.st_mode) != kind:
        raise UnsafeEventLog(f"{path} is not a plain {'dir' if kind == stat.S_IFDIR else 'file'}")
    return True


def event_logs(layout: Layout) -> list[Path]:
    """Every agent's event log that exists: ``<state>/agents/*/state/hyperhive-events.sqlite``.

    Found without following symlinks: a ``state/`` dir or a log that is a symlink is
    left out with a warning naming the agent (see the module doc).
    """
    out: list[Path] = []
    try:
        agent_dirs = sorted(layout.state.joinpath("agents").iterdir())
    except OSError:
        return out
    for agent_dir in agent_dirs:
        if agent_dir.is_symlink() or not agent_dir.is_dir():
            continue  # the agents/ dir is the controller's; nothing an agent made
        state, log_path = agent_dir / "state", agent_dir / "state" / EVENTS_DB
        try:
            if _plain(state, stat.S_IFDIR, True) and _plain(log_path, stat.S_IFREG, True):
                out.append(log_path)
        except (UnsafeEventLog, OSError) as exc:
            log.warning("event log retention: skipping agent %s: %s", agent_dir.name, exc)
    return out


def _check_sidecars(path: Path) -> None:
    """``UnsafeEventLog`` unless the log and each existing sidecar are plain files."""
    _plain(path, stat.S_IFREG, False)
    for suffix in SIDECARS:
        _plain(path.with_name(path.name + suffix), stat.S_IFREG, True)


def _open_files() -> set[str] | None:
    """The paths this process has open (``/proc/self/fd``), or None where there is no /proc."""
    try:
        fds = os.listdir(FD_DIR)
    except OSError:
        return None
    out: set[str] = set()
    for fd in fds:
        try:
            out.add(os.readlink(FD_DIR / fd))
        except OSError:
            continue  # closed meanwhile
    return out


def _check_opened(path: Path) -> None:
    """``UnsafeEventLog`` unless sqlite opened the log, its WAL and wal-index at their paths.

    Called after a read in WAL mode, before any write: a symlink followed by sqlite
    shows up as an open file under another path (and none under the expected one).
    """
    _check_sidecars(path)
    opened = _open_files()
    if opened is None:
        return
    for suffix in ("", "-wal", "-shm"):
        want = str(path.with_name(path.name + suffix))
        if want not in opened:
            raise UnsafeEventLog(f"{want} was not opened at its own path (a symlink swapped in?)")


def sweep_event_log(
    path: Path, now: float, keep_seconds: float = KEEP_SECONDS, keep_rows: int = KEEP_ROWS
) -> int:
    """Apply both stages to one file; return the number of events deleted.

    A file without an ``events`` table (not a harness event log yet) is left alone (0).
    Raises ``sqlite3.Error`` for a file sqlite cannot use, ``UnsafeEventLog`` when the
    log or a sidecar is a symlink or not a plain file, or the log is not in WAL mode
    (nothing is written then; see the module doc).
    """
    if keep_rows < 0 or keep_seconds < 0:
        raise ValueError("keep_seconds and keep_rows must not be negative")
    # the dir (not a symlink itself) is resolved once here; the names inside are the agent's
    _plain(path.parent, stat.S_IFDIR, False)
    path = Path(os.path.realpath(path.parent)) / path.name
    _check_sidecars(path)
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        has = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
        if not has:
            return 0
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            # a rollback journal is created at the first write, through a symlink if one is there
            raise UnsafeEventLog(f"{path} is in journal mode {mode!r}, not WAL")
        _check_opened(path)
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

    A file that cannot be swept (locked past the busy timeout, corrupt, unreadable, a
    symlink or with a symlinked sidecar) is logged, naming the agent, and skipped; the
    others are still swept. Never raises for one bad file.
    """
    total = 0
    for path in event_logs(layout):
        try:
            n = sweep_event_log(path, now, keep_seconds, keep_rows)
        except UnsafeEventLog as exc:
            log.warning("event log retention: skipping agent %s: %s", path.parent.parent.name, exc)
            continue
        except (sqlite3.Error, OSError) as exc:
            log.warning("event log retention: cannot sweep %s: %s", path, exc)
            continue
        if n:
            log.info("event log retention: deleted %d event(s) from %s", n, path)
        total += n
    return total
