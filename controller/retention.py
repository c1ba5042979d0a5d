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

Those checks race with an agent that keeps swapping a sidecar for a symlink: sqlite
may open (and, for a wal-index, truncate) the target between the ``lstat`` and the
check. So where bubblewrap works, ``sweep_event_logs`` sweeps each log in a child
process (``python -m controller.retention``) inside a sandbox that shows the host
read-only and, of ``<state>`` and ``<run>``, only that agent's ``state/`` dir
(read-write): a symlink there can reach nothing the agent could not write itself.
Without bubblewrap the agents are not sandboxed either (they can write the state
dir directly), and the sweep runs in-process with the checks above.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.paths import Layout

log = logging.getLogger(__name__)

EVENTS_DB = "hyperhive-events.sqlite"
KEEP_SECONDS = 7 * 86400
KEEP_ROWS = 2000
BUSY_TIMEOUT_MS = 10_000


SIDECARS = ("-wal", "-shm", "-journal")
FD_DIR = Path("/proc/self/fd")
SANDBOX_TIMEOUT = 120.0
"""Seconds one sandboxed sweep may take (sqlite waits up to ``BUSY_TIMEOUT_MS`` for locks)."""


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


@functools.cache
def sweep_sandbox() -> str | None:
    """``bwrap`` when it can build a sandbox here (probed once per process), else None."""
    from controller.drivers import bwrap as bw

    path = bw.find_bwrap(os.environ)
    if path is None or bw.probe(path, os.environ) is not None:
        return None
    return path


def sandbox_argv(bwrap: str, layout: Layout, state_dir: Path) -> list[str]:
    """The ``bwrap`` argv prefix that shows the host read-only and of ``<state>`` and
    ``<run>`` only ``state_dir`` (read-write); no network, own pid namespace."""
    from controller.drivers import bwrap as bw

    hidden = sorted({Path(os.path.realpath(p)) for p in (layout.state, layout.run)})
    out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    out += ["--unshare-all", "--die-with-parent", "--tmpfs", "/tmp"]
    # the child runs this interpreter and imports controller: a checkout or venv under
    # /tmp (a CI clone) must stay visible; <state> and <run> are hidden again below
    tmp = Path(os.path.realpath("/tmp"))
    for top in dict.fromkeys(
        tmp / real.relative_to(tmp).parts[0]
        for real in (Path(os.path.realpath(p)) for p in bw.runtime_paths())
        if real != tmp and tmp in real.parents
    ):
        out += ["--ro-bind", str(top), str(top)]
    for h in sorted(hidden, key=lambda p: len(p.parts)):
        out += ["--tmpfs", str(h)]
    real = os.path.realpath(state_dir)
    out += ["--bind", real, real]
    for h in hidden:
        out += ["--remount-ro", str(h)]
    return [*out, "--chdir", "/", "--"]


def sweep_sandboxed(
    bwrap: str,
    layout: Layout,
    path: Path,
    now: float,
    keep_seconds: float = KEEP_SECONDS,
    keep_rows: int = KEEP_ROWS,
) -> int:
    """``sweep_event_log`` of ``path`` in a child process inside ``sandbox_argv``.

    Returns the events deleted. Raises ``UnsafeEventLog`` and ``sqlite3.Error`` as
    the in-process sweep does, ``OSError`` when the child cannot run or times out.
    """
    _plain(path.parent, stat.S_IFDIR, False)
    argv = sandbox_argv(bwrap, layout, path.parent)
    # -P: neither the cwd nor a script dir on sys.path (nothing of the agent's is imported)
    argv += [sys.executable, "-P", "-m", "controller.retention", str(path)]
    argv += [repr(now), repr(keep_seconds), str(keep_rows)]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "TZ")}
    try:
        res = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SANDBOX_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"the sweep of {path} took more than {SANDBOX_TIMEOUT:g} s") from exc
    try:
        out = json.loads(res.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(
            f"the sandboxed sweep of {path} failed (code {res.returncode}): "
            + (err[-1] if err else "no output")
        ) from None
    if "deleted" in out:
        return int(out["deleted"])
    if "unsafe" in out:
        raise UnsafeEventLog(str(out["unsafe"]))
    raise sqlite3.OperationalError(str(out.get("error")))


def sweep_event_logs(
    layout: Layout, now: float, keep_seconds: float = KEEP_SECONDS, keep_rows: int = KEEP_ROWS
) -> int:
    """Sweep every agent's event log (see the module doc); return the events deleted in total.

    Each log is swept inside a bubblewrap sandbox when ``bwrap`` works here
    (``sweep_sandboxed``), else in-process. A file that cannot be swept (locked past
    the busy timeout, corrupt, unreadable, a symlink or with a symlinked sidecar) is
    logged, naming the agent, and skipped; the others are still swept. Never raises
    for one bad file.
    """
    bwrap = sweep_sandbox()
    total = 0
    for path in event_logs(layout):
        agent = path.parent.parent.name
        try:
            if bwrap is not None:
                n = sweep_sandboxed(bwrap, layout, path, now, keep_seconds, keep_rows)
            else:
                n = sweep_event_log(path, now, keep_seconds, keep_rows)
        except UnsafeEventLog as exc:
            log.warning("event log retention: skipping agent %s: %s", agent, exc)
            continue
        except (sqlite3.Error, OSError) as exc:
            log.warning("event log retention: cannot sweep %s: %s", path, exc)
            continue
        if n:
            log.info("event log retention: deleted %d event(s) from %s", n, path)
        total += n
    return total


def main(argv: Sequence[str]) -> int:
    """``python -m controller.retention <log> <now> <keep_seconds> <keep_rows>``.

    Sweeps one log in-process (the child of ``sweep_sandboxed``) and prints one JSON
    line: ``{"deleted": n}``, ``{"unsafe": why}`` or ``{"error": why}``. Exit code 0,
    or 2 for bad arguments.
    """
    try:
        path, now, keep_seconds, keep_rows = argv
        args = (Path(path), float(now), float(keep_seconds), int(keep_rows))
    except ValueError:
        print("usage: python -m controller.retention <log> <now> <keep_seconds> <keep_rows>")
        return 2
    try:
        out: dict[str, object] = {"deleted": sweep_event_log(*args)}
    except UnsafeEventLog as exc:
        out = {"unsafe": str(exc)}
    except (sqlite3.Error, OSError, ValueError) as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
