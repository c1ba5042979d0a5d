"""Kept state of destroyed agents: tombstones.

When an agent is pruned (its directory removed from main, ``hyperhive destroy``),
the runtime is destroyed and ``<state>/agents/<a>/`` — notes (``state/``),
claude credentials and sessions (``claude/``), ``home/``, ``settings.json``,
``web-port`` — is *moved* to ``<state>/tombstones/<a>-<unix seconds>/`` with a
``tombstone.json`` (``{"name", "destroyed_at", "commit", "main"}``). So:

- nothing of a destroyed agent is left where a new agent would look, but its
  state is still on disk, listed (``hyperhive tombstones``) and purgeable
  (``hyperhive purge NAME``);
- spawning the same name again *restores* the newest tombstone of that name
  (credentials persist across destroy / re-create, as the seeds promise; the web
  port comes back with ``web-port``); older tombstones of the name stay listed.

An agent directory left in ``<state>/agents/`` for an agent that is neither in
desired state nor running (state kept in place by an older hyperhive, or a move
that failed) is listed as an in-place tombstone (``in_place: true``) and purged
the same way.

Ids: a moved tombstone's id is its directory name ``<a>-<unix>`` (never a valid
agent name: agent names are at most 9 characters); an in-place one's id is the
agent name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from controller.paths import Layout
from schemas.names import AGENT_NAME_PATTERN, MANAGER, is_agent_name

TOMBSTONE_FILE = "tombstone.json"
#: ``<agent>-<unix seconds>``; group 1 (``agent``) is the agent name.
TOMBSTONE_ID_RE = re.compile(rf"\A(?P<agent>{AGENT_NAME_PATTERN})-(?P<stamp>[0-9]{{1,12}})\Z")


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


def _read_info(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads((path / TOMBSTONE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def bury(layout: Layout, name: str, now: float, info: dict[str, Any]) -> Path | None:
    """Move ``<state>/agents/<name>/`` to ``<state>/tombstones/<name>-<unix>/``.

    Returns the tombstone's path, or None when the agent had no directory.
    Raises OSError when the move fails (the state then stays in place).
    """
    src = layout.agent_dir(name)
    if not src.is_dir():
        return None
    root = layout.tombstones
    root.mkdir(parents=True, exist_ok=True)
    stamp = int(now)
    dst = root / f"{name}-{stamp}"
    while dst.exists():
        stamp += 1
        dst = root / f"{name}-{stamp}"
    doc = {"name": name, "destroyed_at": now, **info}
    (src / TOMBSTONE_FILE).write_text(json.dumps(doc, sort_keys=True) + "\n")
    os.rename(src, dst)
    return dst


def moved(layout: Layout, name: str | None = None) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(agent, path, info)`` of every moved tombstone (of ``name``), oldest first."""
    out: list[tuple[float, str, Path, dict[str, Any]]] = []
    try:
        entries = list(layout.tombstones.iterdir())
    except OSError:
        return []
    for p in entries:
        m = TOMBSTONE_ID_RE.match(p.name)
        if m is None or not p.is_dir() or p.is_symlink():
            continue
        agent = m.group("agent")
        if name is not None and agent != name:
            continue
        info = _read_info(p)
        when = info.get("destroyed_at")
        at = float(when) if isinstance(when, int | float) else float(m.group(2))
        info["destroyed_at"] = at
        out.append((at, agent, p, info))
    out.sort(key=lambda t: (t[0], t[2].name))
    return [(agent, p, info) for _, agent, p, info in out]


def restore(layout: Layout, name: str) -> Path | None:
    """Move the newest tombstone of ``name`` back to ``<state>/agents/<name>/``.

    Only when the agent has no directory yet; returns the tombstone path it
    came from, or None. Raises OSError when the move fails.
    """
    dst = layout.agent_dir(name)
    if dst.exists():
        return None
    stones = moved(layout, name)
    if not stones:
        return None
    _, src, _ = stones[-1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    with contextlib.suppress(OSError):
        (dst / TOMBSTONE_FILE).unlink()
    return src


def in_place(layout: Layout, live: Collection[str]) -> list[tuple[str, Path]]:
    """Agent dirs under ``<state>/agents/`` whose agent is not in ``live`` (nor the manager)."""
    root = layout.state / "agents"
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [
        (p.name, p)
        for p in entries
        if is_agent_name(p.name)
        and p.name != MANAGER
        and p.name not in live
        and p.is_dir()
        and not p.is_symlink()
    ]


def listing(layout: Layout, live: Collection[str]) -> list[dict[str, Any]]:
    """Every tombstone, oldest first: ``{"name", "id", "destroyed_at", "bytes", "path",
    "commit", "in_place"}``. ``live`` are the agents in desired state or running."""
    out: list[dict[str, Any]] = []
    for agent, path, info in moved(layout):
        out.append(
            {
                "name": agent,
                "id": path.name,
                "destroyed_at": info["destroyed_at"],
                "bytes": dir_bytes(path),
                "path": str(path),
                "commit": info.get("commit") if isinstance(info.get("commit"), str) else None,
                "in_place": False,
            }
        )
    for agent, path in in_place(layout, live):
        try:
            when: float | None = path.stat().st_mtime
        except OSError:
            when = None
        out.append(
            {
                "name": agent,
                "id": agent,
                "destroyed_at": when,
                "bytes": dir_bytes(path),
                "path": str(path),
                "commit": None,
                "in_place": True,
            }
        )
    return out


def _make_writable(func: Callable[..., Any], path: str, _exc: object) -> None:
    """rmtree error hook: a read-only directory (0500) cannot lose entries; fix and retry."""
    parent = os.path.dirname(path)
    with contextlib.suppress(OSError):
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
    func(path)


def remove(path: Path) -> None:
    """Delete a tombstone directory for good (read-only entries included)."""
    shutil.rmtree(path, onerror=_make_writable)
