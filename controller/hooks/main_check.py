"""The pre-receive check of a push that moves main (pygit2 and the manifest schema).

Loaded by ``controller.hooks.pre_receive`` only when a push updates
``refs/heads/main``: fast-forward only, and the new tree must pass
``controller.metarepo.tree_errors`` (flake and manager manifest kept, every
changed ``agents/<name>/agent.yaml`` valid, ``metadata.name`` = directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

from controller.hooks.updates import RefUpdate
from controller.metarepo import tree_errors


def open_repo(path: Path) -> pygit2.Repository:
    """Open meta.git seeing a pushed-but-quarantined object store (receive-pack's tmp objdir)."""
    repo = pygit2.Repository(str(path))
    for var in ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY"):
        d = os.environ.get(var)
        if d and Path(d).is_dir():
            repo.odb.add_disk_alternate(d)
    return repo


def check_main(git_dir: Path, u: RefUpdate) -> list[str]:
    """Refusal messages for moving main from ``u.old`` to ``u.new`` (not a delete)."""
    repo = open_repo(git_dir)
    try:
        new = repo[u.new].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return [f"main: {u.new} is not a commit"]
    old_tree = None
    if not u.creates:
        try:
            old = repo[u.old].peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            old = None
        if old is not None:
            old_tree = old.tree
            if old.id != new.id and not repo.descendant_of(new.id, old.id):
                return ["main: only fast-forward pushes are accepted (pull/rebase first)"]
    return [f"main: {msg}" for _, msg in tree_errors(repo, new.tree, old_tree)]
