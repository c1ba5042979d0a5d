"""A meta repo's first commit, its receive config and its hooks.

``seed`` writes the genesis commit of a new repo; ``configure`` and
``install_hooks`` (re)write meta.git's config and ``hooks/pre-receive`` /
``hooks/post-receive`` at every start, only where they differ.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pygit2

from controller.hooks import script as hooks_script
from controller.manifest import MANIFEST_FILE
from controller.metarepo.core import MetaCore
from controller.metarepo.names import (
    AGENTS_DIR,
    FLAKE_FILE,
    GIT_CONFIG,
    LAST_DEPLOY_REF,
    MAIN_REF,
)
from controller.metarepo.templates import flake_template, manager_template
from controller.paths import Layout
from schemas.names import MANAGER

HOOK_KINDS = ("pre-receive", "post-receive")


def seed(core: MetaCore) -> None:
    """Write main's first commit: ``flake.nix`` (template) and ``agents/manager/agent.yaml``
    (model = ``config.default_model``), and point ``last-deploy`` at it."""
    repo = core.repo
    sig = core.controller_sig()
    manager = repo.TreeBuilder()
    manager.insert(
        MANIFEST_FILE,
        repo.create_blob(manager_template(core.config).encode()),
        pygit2.GIT_FILEMODE_BLOB,
    )
    agents = repo.TreeBuilder()
    agents.insert(MANAGER, manager.write(), pygit2.GIT_FILEMODE_TREE)
    root = repo.TreeBuilder()
    root.insert(
        FLAKE_FILE,
        repo.create_blob(flake_template(core.config).encode()),
        pygit2.GIT_FILEMODE_BLOB,
    )
    root.insert(AGENTS_DIR, agents.write(), pygit2.GIT_FILEMODE_TREE)
    genesis = repo.create_commit(
        MAIN_REF, sig, sig, "init: hyperhive meta repo\n", root.write(), []
    )
    # The genesis commit is the controller's own bootstrap, not a change anyone
    # proposed or pushed: it gets no id, so the first proposal is proposal/1.
    repo.references.create(LAST_DEPLOY_REF, genesis, force=True)


def configure(repo: pygit2.Repository) -> None:
    """Set ``GIT_CONFIG`` in ``repo``'s config, writing only the keys that differ."""
    cfg = repo.config
    for key, value in GIT_CONFIG.items():
        current = None
        with contextlib.suppress(KeyError):
            current = cfg[key]
        if current != value:
            cfg[key] = value


def hook_script(layout: Layout, kind: str, python: str = sys.executable) -> str:
    """The shell script installed as ``hooks/<kind>`` (pre-receive / post-receive);
    written by ``controller.hooks.script``, which owns the hooks' start-up path."""
    return hooks_script.hook_script(layout, kind, python)


def install_hooks(layout: Layout, python: str = sys.executable) -> None:
    """(Re)write ``pre-receive`` and ``post-receive`` of ``layout.meta_git`` when their
    content differs (atomically: a push never runs half a script)."""
    hooks = layout.meta_git / "hooks"
    hooks.mkdir(exist_ok=True)
    for kind in HOOK_KINDS:
        target = hooks / kind
        text = hook_script(layout, kind, python)
        try:
            if target.read_text() == text and os.access(target, os.X_OK):
                continue
        except OSError:
            pass
        tmp = hooks / f".{kind}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
