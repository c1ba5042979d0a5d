"""Reading files an agent can write, without letting the agent choose what is read or block.

An agent runs arbitrary commands and its state dir (``<state>/agents/<a>/state``) is
its own: whatever the controller reads there may have been swapped for a symlink to
the operator's files, a FIFO (an ``open`` that never returns: a worker thread, then
the loop's executor, gone), a device, or a huge file, at any moment. So:

- :func:`read_small` opens with ``O_NOFOLLOW | O_NONBLOCK`` and reads only a regular
  file, at most ``limit`` bytes, from the descriptor it checked (no race between the
  check and the read);
- :func:`sqlite_snapshot` copies an agent's sqlite database (and its ``-wal``) the same
  way into a private temporary directory and opens the copy: sqlite itself never opens
  a path the agent controls (it would follow symlinks and block on a FIFO, and it opens
  ``-wal`` and ``-shm`` by name).

Both return None (the file is absent or refused) instead of raising for anything the
agent can arrange; the caller treats that like a missing file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MAX_SQLITE_BYTES = 256 * 1024 * 1024
"""Largest agent sqlite file (or WAL) copied: a turn-stats file grows ~1 KiB per turn."""
QUERY_SECONDS = 10.0
"""Longest the queries on one snapshot may run, all together; then they raise
``sqlite3.OperationalError`` (interrupted)."""


def _open_regular(path: Path, limit: int) -> int | None:
    """A read-only descriptor of ``path`` when it is a regular file (not a symlink, FIFO,
    socket or device) of at most ``limit`` bytes; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        os.close(fd)
        return None
    return fd


def read_small(path: Path, limit: int = 4096) -> bytes | None:
    """The bytes of the regular file ``path`` (at most ``limit``), None when it is absent,
    not a regular file, a symlink or larger than ``limit``."""
    fd = _open_regular(path, limit)
    if fd is None:
        return None
    try:
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def _copy(fd: int, dst: Path, limit: int) -> bool:
    """Copy at most ``limit`` bytes from ``fd`` to a new ``dst``; False when there were more."""
    with os.fdopen(fd, "rb") as src, open(dst, "xb") as out:
        copied = 0
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                return False
            out.write(chunk)
    return True


@contextlib.contextmanager
def sqlite_snapshot(
    path: Path, limit: int = MAX_SQLITE_BYTES
) -> Iterator[sqlite3.Connection | None]:
    """A connection to a private copy of the agent's sqlite database ``path`` (and its
    ``-wal``, so that rows not yet checkpointed are there), or None when ``path`` is
    absent, not a regular file, a symlink or over ``limit`` bytes. A ``-wal`` that is not a
    regular file is left out. The copy is deleted on exit. sqlite errors (a garbled copy,
    a value over 1 MiB, queries past ``QUERY_SECONDS``) are raised by the queries."""
    fd = _open_regular(path, limit)
    if fd is None:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="hyperhive-agentdb-"))
    try:
        copy = tmp / "db.sqlite"
        if not _copy(fd, copy, limit):
            yield None
            return
        wal = _open_regular(Path(f"{path}-wal"), limit)
        if wal is not None and not _copy(wal, Path(f"{copy}-wal"), limit):
            Path(f"{copy}-wal").unlink(missing_ok=True)
        # read-only: closing a read-write connection would checkpoint the copied WAL (and
        # fsync) for nothing; the private directory lets sqlite make its -shm beside it
        con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True, timeout=1.0)
        # the agent wrote the schema too: no value over 1 MiB, no query over QUERY_SECONDS
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)
        deadline = time.monotonic() + QUERY_SECONDS
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
