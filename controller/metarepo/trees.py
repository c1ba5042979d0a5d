"""Tree inspection: what two root trees differ in, and what is wrong with a proposed one.

Read-only over a repo's objects (nothing written), shared with the pre-receive hook
(``controller.hooks.main_check``). Blob sizes are read from object headers before
any blob is loaded (``controller.metarepo.objects.object_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pygit2

from controller.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    ManifestInvalid,
    manifest_path,
    parse_manifest,
)
from controller.metarepo.names import AGENTS_DIR, FLAKE_FILE, LOCK_FILE
from controller.metarepo.objects import object_size
from schemas.names import MANAGER, InvalidName, check_agent_name


def subtree(repo: pygit2.Repository, tree: pygit2.Tree | None, name: str) -> pygit2.Tree | None:
    """The subtree ``name`` of ``tree``, or None if absent or not a directory."""
    if tree is None or name not in tree:
        return None
    obj = tree[name]
    return obj if isinstance(obj, pygit2.Tree) else None


def entry_id(tree: pygit2.Tree | None, name: str) -> str:
    """The object id (hex) of entry ``name`` of ``tree``; "" when absent."""
    if tree is None or name not in tree:
        return ""
    return str(tree[name].id)


@dataclass(frozen=True)
class TreeChange:
    """What differs between two root trees: agent dirs and whether the flake changed."""

    agents: tuple[str, ...]
    flake_changed: bool
    other: bool

    @property
    def empty(self) -> bool:
        """True when nothing differs."""
        return not self.agents and not self.flake_changed and not self.other


def tree_change(
    repo: pygit2.Repository, old: pygit2.Tree | None, new: pygit2.Tree | None
) -> TreeChange:
    """Compare two root trees at the ``agents/<name>`` level (no blob reads)."""
    if old is not None and new is not None and old.id == new.id:
        return TreeChange((), False, False)
    flake = any(entry_id(old, f) != entry_id(new, f) for f in (FLAKE_FILE, LOCK_FILE))
    old_agents = subtree(repo, old, AGENTS_DIR)
    new_agents = subtree(repo, new, AGENTS_DIR)
    names: set[str] = set()
    if old_agents is None or new_agents is None or old_agents.id != new_agents.id:
        old_map = {e.name: e.id for e in old_agents} if old_agents is not None else {}
        new_map = {e.name: e.id for e in new_agents} if new_agents is not None else {}
        names = {
            n or "" for n in old_map.keys() | new_map.keys() if old_map.get(n) != new_map.get(n)
        }
    skip = {FLAKE_FILE, LOCK_FILE, AGENTS_DIR}
    old_rest = {e.name: e.id for e in old if e.name not in skip} if old is not None else {}
    new_rest = {e.name: e.id for e in new if e.name not in skip} if new is not None else {}
    names.discard("")
    return TreeChange(tuple(sorted(names)), flake, old_rest != new_rest)


def tree_errors(
    repo: pygit2.Repository, new: pygit2.Tree, old: pygit2.Tree | None = None
) -> list[tuple[str, str]]:
    """Problems with a proposed main tree, as ``(path, message)``; ``[]`` if fine.

    Checks the flake and the manager's manifest are still there, and every
    ``agents/<name>/`` that differs from ``old`` (all of them when ``old`` is
    None): a valid agent name, a directory, an ``agent.yaml`` that parses, passes
    the schema and whose ``metadata.name`` is the directory name.
    """
    errors: list[tuple[str, str]] = []
    if FLAKE_FILE not in new:
        errors.append((FLAKE_FILE, f"{FLAKE_FILE}: is missing (the meta flake must stay)"))
    new_agents = subtree(repo, new, AGENTS_DIR)
    old_agents = subtree(repo, old, AGENTS_DIR)
    if new_agents is None or MANAGER not in new_agents:
        path = manifest_path(MANAGER)
        errors.append((path, f"{path}: is missing (the manager's manifest must stay)"))
    if new_agents is None:
        return errors
    for entry in new_agents:
        name = entry.name or ""
        if old_agents is not None and name in old_agents and old_agents[name].id == entry.id:
            continue
        where = f"{AGENTS_DIR}/{name}"
        if name != MANAGER:
            try:
                check_agent_name(name)
            except InvalidName as exc:
                errors.append((where, f"{where}/: {exc}"))
                continue
        if not isinstance(entry, pygit2.Tree):
            errors.append((where, f"{where}: must be a directory holding {MANIFEST_FILE}"))
            continue
        path = manifest_path(name)
        if MANIFEST_FILE not in entry:
            errors.append((path, f"{path}: is missing"))
            continue
        blob = entry[MANIFEST_FILE]
        if not isinstance(blob, pygit2.Blob):
            errors.append((path, f"{path}: must be a file"))
            continue
        if object_size(repo, blob.id) > MAX_MANIFEST_BYTES:  # before .data inflates it
            errors.append((path, f"{path}: is larger than {MAX_MANIFEST_BYTES} bytes"))
            continue
        try:
            parse_manifest(blob.data, name)
        except ManifestInvalid as exc:
            errors.append((exc.path, str(exc)))
    return errors
