"""The meta repo: desired state of the swarm as git objects and refs (pygit2).

``<state>/meta.git`` is a bare repo. The tree at ``refs/heads/main`` is the
approved desired state (``flake.nix``, optional ``flake.lock``,
``agents/<name>/agent.yaml``, optional ``agents/<name>/agent.nix``). Every
proposal and deploy has a positive integer id, allocated atomically by creating
its first ref; one id space is shared by the six tag prefixes (docs/approvals.md):

==================  ============  ===================================================
ref                 written by    meaning
==================  ============  ===================================================
proposal/<id>       controller    lightweight → the proposal commit
approved/<id>       operator      lightweight or annotated → the proposal commit
denied/<id>         operator      annotated (message = reason) → the proposal commit
building/<id>       controller    lightweight → the main commit being deployed
deployed/<id>       controller    annotated (message = what happened) → that commit
failed/<id>         controller    annotated (message = what went wrong)
==================  ============  ===================================================

Controller bookkeeping outside the tag namespace (the pre-receive hook refuses
pushes to both):

- ``refs/notes/hyperhive``: a git note on each proposal / pushed main commit, JSON
  ``{"<id>": {"kind", "base", "note", "created_at"}}`` (``git log --notes=hyperhive``).
- ``refs/hyperhive/last-deploy``: the main commit of the newest ``building/<id>``,
  whatever its outcome; main differing from it means the operator pushed to main.
- ``refs/hyperhive/notified/<id>``: the manager was told about ``denied/<id>``.

Costs: ``desired()`` is cached by main commit and by agent tree id, so a pass
with no change reads one ref; the tag index is cached and rebuilt only when the
ref storage changed on disk (packed-refs and the tag directories' stat), so a
no-op pass does not grow with the number of tags. Every method is thread-safe
(one lock per MetaRepo).

``MetaRepo`` is a thin facade composing one module per job (kopf's ``_core`` /
``_cogs`` layering); a module imports only those listed before it:

- ``names``      ref names, file names, limits (pure constants);
- ``tags``       tag-ref parsing and the id index as values, an id's state (pure);
- ``digests``    build digests (pure);
- ``values``     ``Build``, ``Denial``, ``ApplyFailed`` (pure);
- ``objects``    object sizes from headers, history walks, object copying;
- ``trees``      ``tree_change`` / ``tree_errors`` (read-only; shared with the hook);
- ``templates``  the first flake and manager manifest;
- ``core``       the shared repo, lock, clock; main read and compare-and-swap;
- ``index``      the cached tag index, ``pass_scope``, id allocation;
- ``notes``      the controller's per-id notes;
- ``bootstrap``  genesis commit, receive config, hooks;
- ``clone``      the manager's clone: made, synced, unshared;
- ``desired``    desired state at main, cached;
- ``describe``   ``Proposal`` / ``Build`` values from the refs;
- ``propose``    spawn and apply-commit proposals;
- ``decide``     approve, deny;
- ``deploys``    apply approved, record pushes, outcomes, denials told;
- ``agents``     per agent: files, deploys, flake ref, removal from main.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pygit2

import controller
from controller.config import Config
from controller.errors import NotFound
from controller.metarepo.agents import Agents
from controller.metarepo.bootstrap import configure, hook_script, install_hooks, seed
from controller.metarepo.clone import (
    ensure_manager_clone,
    sync_manager_clone,
    unshare_object_files,
)
from controller.metarepo.core import MetaCore
from controller.metarepo.decide import Decide
from controller.metarepo.deploys import Deploys
from controller.metarepo.describe import Describe
from controller.metarepo.desired import Desired
from controller.metarepo.digests import build_digest
from controller.metarepo.index import RefIndex
from controller.metarepo.names import (
    AGENTS_DIR,
    CONTROLLER_EMAIL,
    CONTROLLER_NAME,
    DECISION_PREFIXES,
    FLAKE_FILE,
    GIT_CONFIG,
    LAST_DEPLOY_REF,
    LOCK_FILE,
    MAIN_REF,
    MANAGER_PREFIX,
    MAX_DIFF_CHARS,
    MAX_PROPOSAL_BLOB_BYTES,
    MAX_PROPOSAL_NEW_BYTES,
    MAX_PROPOSAL_OBJECT_BYTES,
    NOTES_REF,
    NOTIFIED_PREFIX,
    RACY_NS,
    TAG_PREFIXES,
    parse_id,
    tag_ref,
)
from controller.metarepo.notes import Notes
from controller.metarepo.objects import copy_objects, new_objects, oversized
from controller.metarepo.propose import Propose
from controller.metarepo.tags import split_tag
from controller.metarepo.templates import flake_template, manager_template
from controller.metarepo.trees import TreeChange, subtree, tree_change, tree_errors
from controller.metarepo.values import ApplyFailed, Build, Denial
from controller.model import DesiredState
from controller.ops import Proposal, ProposalState
from controller.paths import Layout

__all__ = [
    "AGENTS_DIR",
    "CONTROLLER_EMAIL",
    "CONTROLLER_NAME",
    "DECISION_PREFIXES",
    "FLAKE_FILE",
    "GIT_CONFIG",
    "LAST_DEPLOY_REF",
    "LOCK_FILE",
    "MAIN_REF",
    "MANAGER_PREFIX",
    "MAX_DIFF_CHARS",
    "MAX_PROPOSAL_BLOB_BYTES",
    "MAX_PROPOSAL_NEW_BYTES",
    "MAX_PROPOSAL_OBJECT_BYTES",
    "NOTES_REF",
    "NOTIFIED_PREFIX",
    "RACY_NS",
    "TAG_PREFIXES",
    "ApplyFailed",
    "Build",
    "Denial",
    "MetaRepo",
    "TreeChange",
    "build_digest",
    "copy_objects",
    "flake_template",
    "manager_template",
    "new_objects",
    "oversized",
    "parse_id",
    "split_tag",
    "subtree",
    "tag_ref",
    "tree_change",
    "tree_errors",
    "unshare_object_files",
]


class MetaRepo:
    """The bare meta repo: desired state, proposals, decisions, deploy outcomes.

    Construct with ``MetaRepo.open_or_init(layout, config)`` (or ``open`` for a
    repo that must already exist). ``clock`` gives unix seconds (tag and note
    times); ``version`` is the hyperhive version folded into build digests.
    """

    def __init__(
        self,
        layout: Layout,
        config: Config,
        repo: pygit2.Repository,
        *,
        clock: Callable[[], float] = time.time,
        version: str = controller.__version__,
    ) -> None:
        core = MetaCore(layout, config, repo, clock, version)
        self.core = core
        self.refs = RefIndex(core)
        self.notes = Notes(core)
        self.desired_ = Desired(core)
        self.describe = Describe(core, self.refs, self.notes)
        self.propose = Propose(core, self.refs, self.notes, self.describe)
        self.decide = Decide(core, self.refs, self.describe)
        self.deploys = Deploys(core, self.refs, self.notes, self.describe)
        self.agents = Agents(core, self.refs, self.describe, self.desired_)

    # ---------------------------------------------------------------- collaborators

    @property
    def layout(self) -> Layout:
        """The state/run directory layout."""
        return self.core.layout

    @property
    def config(self) -> Config:
        """The controller's configuration (default model, hyperhive flake)."""
        return self.core.config

    @property
    def repo(self) -> pygit2.Repository:
        """The pygit2 repository of meta.git."""
        return self.core.repo

    @property
    def path(self) -> Path:
        """``<state>/meta.git``."""
        return self.core.path

    @property
    def version(self) -> str:
        """The hyperhive version folded into build digests."""
        return self.core.version

    # ---------------------------------------------------------------- setup

    @classmethod
    def open(
        cls,
        layout: Layout,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        version: str = controller.__version__,
    ) -> MetaRepo:
        """Open an existing meta repo (no writes). NotFound if it does not exist."""
        if not (layout.meta_git / "HEAD").is_file():
            raise NotFound(f"no meta repo at {layout.meta_git}; run `hyperhive serve` once")
        return cls(
            layout, config, pygit2.Repository(str(layout.meta_git)), clock=clock, version=version
        )

    @classmethod
    def open_or_init(
        cls,
        layout: Layout,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        version: str = controller.__version__,
        python: str = sys.executable,
    ) -> MetaRepo:
        """Open ``<state>/meta.git``, creating it on first use; install hooks; clone it.

        A new repo is bare with HEAD → refs/heads/main and a first commit holding
        ``flake.nix`` (template) and ``agents/manager/agent.yaml`` (model =
        ``config.default_model``); ``flake.lock`` is omitted until the operator or
        the manager commits one (Nix resolves unlocked inputs at build time).
        An existing repo is reused as is: only the receive config and hooks are
        (re)written, and only when they differ. The manager's working clone
        ``<state>/manager/meta`` is created when missing.
        """
        path = layout.meta_git
        if (path / "HEAD").is_file():
            repo = pygit2.Repository(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(path), bare=True, initial_head="main")
        meta = cls(layout, config, repo, clock=clock, version=version)
        with meta.core.lock:
            if repo.references.get(MAIN_REF) is None:
                seed(meta.core)
            configure(repo)
            meta.install_hooks(python)
            meta.ensure_manager_clone()
        return meta

    def hook_script(self, kind: str, python: str = sys.executable) -> str:
        """The shell script installed as ``hooks/<kind>`` (pre-receive / post-receive)."""
        return hook_script(self.layout, kind, python)

    def install_hooks(self, python: str = sys.executable) -> None:
        """(Re)write ``pre-receive`` and ``post-receive`` when their content differs."""
        install_hooks(self.layout, python)

    def ensure_manager_clone(self) -> Path:
        """Create ``<state>/manager/meta`` if missing; see ``controller.metarepo.clone``."""
        return ensure_manager_clone(self.core)

    def sync_manager_clone(self) -> bool:
        """Point the clone's ``origin/main`` at main; True when it moved."""
        return sync_manager_clone(self.core)

    # ---------------------------------------------------------------- main, desired

    def main_commit(self) -> str:
        """The commit id (hex) at ``refs/heads/main``."""
        with self.core.lock:
            return str(self.core.main_oid())

    def last_deploy(self) -> str | None:
        """The main commit of the newest ``building/<id>`` (``refs/hyperhive/last-deploy``)."""
        with self.core.lock:
            ref = self.repo.references.get(LAST_DEPLOY_REF)
            return None if ref is None else str(ref.target)

    def desired(self) -> DesiredState:
        """Desired state at main: every ``agents/<name>/agent.yaml`` that is valid.

        Invalid agent dirs are left out (see ``desired_checked``). Cached by main
        commit; agents by tree id, so a new commit re-reads only changed agents.
        """
        return self.desired_.checked()[0]

    def desired_checked(self) -> tuple[DesiredState, Mapping[str, str]]:
        """``(desired, invalid)``: ``invalid`` maps agent dir → error message."""
        return self.desired_.checked()

    def pass_scope(self) -> AbstractContextManager[None]:
        """Hold the ref index for one reconcile pass, in the calling thread only
        (``controller.metarepo.index.RefIndex.pass_scope``)."""
        return self.refs.pass_scope()

    # ---------------------------------------------------------------- proposals

    def propose_spawn(self, name: str) -> Proposal:
        """``proposal/<id>`` adding ``agents/<name>/agent.yaml``; Invalid / Conflict
        (``controller.metarepo.propose``)."""
        return self.propose.propose_spawn(name)

    def propose_commit(self, commit: str, source: Path | None = None, note: str = "") -> Proposal:
        """Import ``commit`` from the manager's clone (or ``source``, or its push namespace)
        as ``proposal/<id>``; NotFound / Invalid / Conflict (``controller.metarepo.propose``)."""
        return self.propose.propose_commit(commit, source, note)

    def pushed_commit(self, commit: str) -> pygit2.Commit | None:
        """The commit ``commit`` names among what the manager pushed to meta.git, or None;
        Invalid for an object too large. Call with the lock held (``Propose.pushed_commit``)."""
        return self.propose.pushed_commit(commit)

    def approve(self, id: int, note: str = "", who: str = "operator") -> Proposal:
        """Write ``approved/<id>`` at the proposal commit (annotated when ``note`` is given).

        NotFound without ``proposal/<id>``; Conflict when already decided.
        """
        return self.decide.approve(id, note, who)

    def deny(self, id: int, note: str, who: str = "operator") -> Proposal:
        """Write annotated ``denied/<id>`` with ``note`` as the reason. NotFound / Conflict."""
        return self.decide.deny(id, note, who)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy by id. NotFound if no ref carries ``id``."""
        return self.describe.proposal(id)

    def proposals(self, pending_only: bool = False, limit: int | None = None) -> list[Proposal]:
        """Proposals and deploys, newest id first; ``pending_only``: awaiting a decision."""
        return self.describe.proposals(pending_only, limit)

    def ids_by_state(self) -> Mapping[ProposalState, tuple[int, ...]]:
        """Ids per state (cheap: refs only)."""
        return self.describe.ids_by_state()

    # ---------------------------------------------------------------- reconcile side

    def open_builds(self) -> list[Build]:
        """Every ``building/<id>`` without ``deployed/<id>`` or ``failed/<id>``, oldest first."""
        return self.deploys.open_builds()

    def approved_unapplied(self) -> list[int]:
        """Ids with ``approved/<id>`` and no building / outcome yet, oldest first."""
        return self.deploys.approved_unapplied()

    def denied_unnotified(self) -> list[Denial]:
        """``denied/<id>`` the manager has not been told about, oldest first."""
        return self.deploys.denied_unnotified()

    def mark_notified(self, id: int) -> None:
        """Record that the manager was told about ``denied/<id>``; NotFound without it."""
        self.deploys.mark_notified(id)

    def apply_approved(self, id: int) -> Build:
        """Apply approved ``proposal/<id>`` to main and write ``building/<id>``; ApplyFailed
        (main untouched) or NotFound (``controller.metarepo.deploys``)."""
        return self.deploys.apply_approved(id)

    def record_push(self) -> Build | None:
        """If main moved with no deploy for it (a GitOps push): new id, ``building/<id>``.

        Returns the new Build, or None when main is already being/been deployed.
        """
        return self.deploys.record_push()

    def finish(self, id: int, ok: bool, message: str) -> None:
        """Write annotated ``deployed/<id>`` (ok) or ``failed/<id>`` with ``message``;
        idempotent; NotFound (``controller.metarepo.deploys``)."""
        self.deploys.finish(id, ok, message)

    # ---------------------------------------------------------------- per agent

    def remove_agent(self, name: str, message: str, who: str = "operator") -> str:
        """Commit on main removing ``agents/<name>/`` (the operator's ``destroy``); returns
        it. NotFound / Invalid / Conflict (``controller.metarepo.agents``)."""
        return self.agents.remove_agent(name, message, who)

    def agent_files(self, commit: str, name: str) -> tuple[str | None, str | None]:
        """``(agent.yaml, agent.nix)`` texts of ``agents/<name>/`` at ``commit`` (None: absent)."""
        return self.agents.agent_files(commit, name)

    def deploys_for(self, agent: str, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` deploys that touched ``agent`` (``controller.metarepo.agents``)."""
        return self.agents.deploys_for(agent, limit)

    def flake_ref(self, commit: str, agent: str) -> str:
        """The flake ref to build ``agent`` at ``commit``: ``git+file://<meta.git>?rev=<commit>#<agent>``."""
        return self.agents.flake_ref(commit, agent)
