"""The state and run dirs are the operator's alone: umask 077 and owner-only modes.

``prepare_state_dirs`` runs once at controller start-up, before anything opens a
file under ``<state>``: it sets the process umask to 077 (so everything created
afterwards — the broker database and its ``-wal``/``-shm``, logs, ``status.json``,
``meta.git`` objects, agent dirs — is owner-only, and agents inherit it), creates
``<state>`` and ``<run>`` mode 0700, and takes group and other bits off what an
older version left readable: the top level of ``<state>`` (``broker.sqlite*``,
``logs/``, ``meta.git``, ``status.json``, the lock file, ``agents/``, ...), the
files in ``logs/`` and the top level of ``<run>``. Symlinks are never followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.paths import Layout

UMASK = 0o077
GROUP_OTHER = 0o077


@dataclass(frozen=True)
class Tightened:
    """One path whose mode ``prepare_state_dirs`` changed: ``old`` → ``new`` (permission bits)."""

    path: Path
    old: int
    new: int

    def __str__(self) -> str:
        return f"{self.path} {self.old:04o} -> {self.new:04o}"


def _entries(layout: Layout) -> Iterator[Path]:
    yield layout.state
    yield layout.run
    for root in (layout.state, layout.run, layout.log_dir):
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        yield from children


def tighten(path: Path) -> Tightened | None:
    """Remove group and other permission bits from ``path`` (not following a symlink).

    Returns what changed, or None (already owner-only, a symlink, gone, or not ours).
    """
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return None
    old = stat.S_IMODE(st.st_mode)
    new = old & ~GROUP_OTHER
    if new == old:
        return None
    try:
        os.chmod(path, new)
    except OSError:
        return None
    return Tightened(path, old, new)


def prepare_state_dirs(layout: Layout) -> list[Tightened]:
    """Set umask 077, create ``<state>`` and ``<run>`` (0700), tighten what exists.

    Returns the paths whose mode changed (for one log line each). Raises
    ``OSError`` when ``<state>`` or ``<run>`` cannot be created.
    """
    os.umask(UMASK)
    for d in (layout.state, layout.run):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    seen: set[Path] = set()
    out: list[Tightened] = []
    for p in _entries(layout):
        if p in seen:
            continue
        seen.add(p)
        if (t := tighten(p)) is not None:
            out.append(t)
    return out
