"""Proposals the manager makes: spawn an agent, or apply a commit it made.

``propose_spawn`` writes the commit itself; ``propose_commit`` imports one from
the manager's clone or its push namespace on meta.git
(``refs/hyperhive/manager/*``), after sizing every object from its header and
checking the tree (``controller.metarepo.objects``, ``controller.metarepo.trees``).
Each writes ``proposal/<id>`` and the controller's note for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pygit2

from controller.clonecheck import contained_git_dir
from controller.errors import Conflict, Invalid, NotFound
from controller.manifest import MANIFEST_FILE, default_manifest_yaml
from controller.metarepo.core import MetaCore
from controller.metarepo.describe import Describe
from controller.metarepo.index import RefIndex
from controller.metarepo.names import (
    AGENTS_DIR,
    CONTROLLER_EMAIL,
    CONTROLLER_NAME,
    MANAGER_PREFIX,
)
from controller.metarepo.notes import Notes
from controller.metarepo.objects import copy_objects, new_objects, oversized, peel_small
from controller.metarepo.trees import subtree, tree_change, tree_errors
from controller.ops import Proposal, ProposalKind
from schemas.names import MANAGER, InvalidName, check_agent_name


class Propose:
    """The manager's proposal verbs over meta.git."""

    def __init__(self, core: MetaCore, index: RefIndex, notes: Notes, describe: Describe) -> None:
        self.core = core
        self.index = index
        self.notes = notes
        self.describe = describe

    def _pending_ids(self) -> list[int]:
        """Proposals awaiting a decision or approved but not yet applied."""
        return list(self.index.refresh().open_proposals)

    def propose_spawn(self, name: str) -> Proposal:
        """Write ``proposal/<id>``: a commit on main adding ``agents/<name>/agent.yaml``.

        The manifest uses ``config.default_model``; the commit message is
        ``spawn <name>``. Raises Invalid (field ``name``) for a bad or reserved
        name, Conflict when the agent exists at main or a pending proposal adds
        it. Nothing is written on error.
        """
        try:
            check_agent_name(name)
        except InvalidName as exc:
            raise Invalid(str(exc), field="name") from exc
        core = self.core
        repo = core.repo
        with core.lock:
            main = core.main_oid()
            tree = core.commit(main).tree
            agents = subtree(repo, tree, AGENTS_DIR)
            if agents is not None and name in agents:
                raise Conflict(f"agent {name!r} already exists at main", field="name")
            for pid in self._pending_ids():
                if name in self._added_agents(pid):
                    raise Conflict(f"proposal/{pid} already spawns {name!r}", field="name")
            blob = repo.create_blob(default_manifest_yaml(name, core.config.default_model).encode())
            agent_tb = repo.TreeBuilder()
            agent_tb.insert(MANIFEST_FILE, blob, pygit2.GIT_FILEMODE_BLOB)
            agents_tb = repo.TreeBuilder(agents) if agents is not None else repo.TreeBuilder()
            agents_tb.insert(name, agent_tb.write(), pygit2.GIT_FILEMODE_TREE)
            root_tb = repo.TreeBuilder(tree)
            root_tb.insert(AGENTS_DIR, agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
            author = core.sig(MANAGER, f"{MANAGER}@hyperhive.local")
            committer = core.sig(CONTROLLER_NAME, CONTROLLER_EMAIL)
            commit = repo.create_commit(
                None, author, committer, f"spawn {name}\n", root_tb.write(), [main]
            )
            id = self.index.allocate("proposal", commit)
            self.notes.set(
                str(commit),
                id,
                {
                    "kind": ProposalKind.SPAWN.value,
                    "base": str(main),
                    "note": "",
                    "created_at": core.clock(),
                },
            )
            return self.describe.proposal(id)

    def _added_agents(self, id: int) -> set[str]:
        """Agent dirs proposal ``id`` adds relative to its base."""
        e = self.index.entry(id)
        if e is None or "proposal" not in e.targets:
            return set()
        repo = self.core.repo
        commit = self.core.peel(e.targets["proposal"])
        base = self._base_of(id, commit)
        base_agents = subtree(repo, repo[base].peel(pygit2.Tree), AGENTS_DIR) if base else None
        new_agents = subtree(repo, commit.tree, AGENTS_DIR)
        if new_agents is None:
            return set()
        return {
            e.name or ""
            for e in new_agents
            if base_agents is None or (e.name or "") not in base_agents
        }

    def _base_of(self, id: int, commit: pygit2.Commit) -> str | None:
        """The note's base of ``id``, else ``commit``'s first parent."""
        base = self.notes.for_id(str(commit.id), id).get("base")
        if isinstance(base, str) and base:
            return base
        return str(commit.parent_ids[0]) if commit.parent_ids else None

    def propose_commit(self, commit: str, source: Path | None = None, note: str = "") -> Proposal:
        """Import ``commit`` from the manager's clone (or ``source``) as ``proposal/<id>``.

        Objects are copied into meta.git with pygit2. A commit that is not in the clone
        (or no clone at all: a manager in a pod, docs/kubernetes.md) is taken from the
        manager's push namespace in meta.git instead (``refs/hyperhive/manager/*``,
        ``pushed_commit``); once proposed, the namespace refs at that commit are deleted.
        ``base`` = merge-base with main (the commit may sit several commits on top of it).
        Raises NotFound (no such commit in either place, field ``commit``), Invalid (a
        clone that reads objects from elsewhere, ``controller.clonecheck``; no shared
        history with main; a changed manifest fails the schema: field = the file path),
        Conflict (nothing to change, already part of main, or already pending).
        """
        core = self.core
        repo = core.repo
        src_path = source or core.layout.manager_meta
        if not commit or len(commit) > 256 or any(c.isspace() for c in commit):
            raise Invalid(f"{commit!r} is not a commit id", field="commit")
        src: pygit2.Repository | None = None
        obj: pygit2.Commit | None = None
        missing = f"no git repository at {src_path}"
        try:
            # the clone is the manager's: check it reads nothing outside itself first
            git_dir = contained_git_dir(src_path)
        except OSError as exc:
            missing = f"no git repository at {src_path}: {exc}"
        else:
            try:
                src = pygit2.Repository(str(git_dir))
                obj = src.revparse_single(commit).peel(pygit2.Commit)
            except (KeyError, ValueError, pygit2.GitError):
                missing = f"no commit {commit!r} in {src_path}"
        if obj is None:
            with core.lock:
                obj = self.pushed_commit(commit)
            if obj is None:
                raise NotFound(
                    f"{missing}, nor pushed to {MANAGER_PREFIX}* on meta.git (a remote "
                    f"manager pushes it first: git push origin {commit}:{MANAGER_PREFIX}<name>)",
                    field="commit",
                )
            src = repo
        with core.lock:
            if src is not None and src is not repo:
                copy_objects(src, repo, obj.id)
            else:  # pushed to meta.git: its objects are there already, unchecked
                history = {c.id for c in repo.walk(core.main_oid())}
                new_objects(repo, obj.id, history.__contains__, blob_limit=None)
            new = repo[obj.id]
            assert isinstance(new, pygit2.Commit)
            main = core.main_oid()
            if new.id == main or repo.descendant_of(main, new.id):
                raise Conflict(f"commit {new.id} is already part of main", field="commit")
            try:
                base_oid = repo.merge_base(new.id, main)
            except pygit2.GitError:
                base_oid = None
            if base_oid is None:
                raise Invalid(
                    f"commit {new.id} shares no history with main; commit on top of origin/main "
                    "in the meta clone",
                    field="commit",
                )
            base_commit = repo[base_oid]
            assert isinstance(base_commit, pygit2.Commit)
            change = tree_change(repo, base_commit.tree, new.tree)
            if change.empty:
                raise Conflict(f"commit {new.id} changes nothing relative to main", field="commit")
            big = oversized(repo, new.tree, base_commit.tree)
            if big is not None:
                raise Invalid(big[1], field=big[0])
            errors = tree_errors(repo, new.tree, base_commit.tree)
            if errors:
                path, message = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise Invalid(message + more, field=path)
            for pid in self._pending_ids():
                e = self.index.entry(pid)
                if e is not None and core.peel(e.targets["proposal"]).id == new.id:
                    raise Conflict(
                        f"commit {new.id} is already pending as proposal/{pid}", field="commit"
                    )
            id = self.index.allocate("proposal", new.id)
            self.notes.set(
                str(new.id),
                id,
                {
                    "kind": ProposalKind.APPLY_COMMIT.value,
                    "base": str(base_oid),
                    "note": note,
                    "created_at": core.clock(),
                },
            )
            if src is repo:
                self._drop_handed_over(new.id)
            return self.describe.proposal(id)

    def _drop_handed_over(self, oid: pygit2.Oid) -> None:
        """Delete the manager's refs that point at ``oid`` once ``proposal/<id>`` holds it:
        the hand-over is done, and the namespace stays small (the hook caps it,
        ``controller.hooks.updates.MAX_MANAGER_REFS``). Call with ``core.lock`` held."""
        repo = self.core.repo
        for name in list(repo.references):
            if not name.startswith(MANAGER_PREFIX):
                continue
            with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
                # sized from headers first (peel_small): the manager made these objects
                tip = peel_small(repo, repo.references[name].target)
                if tip is not None and tip.id == oid:
                    repo.references.delete(name)
        self.index.dirty = True

    def pushed_commit(self, commit: str) -> pygit2.Commit | None:
        """The commit ``commit`` names among what the manager pushed to meta.git, or None.

        ``commit`` is a ref under ``refs/hyperhive/manager/`` (full, or the part after
        it) or a hex object id (full or abbreviated) of a commit reachable from one of
        those refs; anything else in meta.git (main, proposals, other objects) is not
        the manager's to name here. Raises ``Invalid`` (``new_objects``) when what the
        manager pushed holds an object too large to load. Call with ``core.lock`` held.
        """
        repo = self.core.repo
        tips: dict[str, pygit2.Oid] = {}
        for name in repo.references:
            if not name.startswith(MANAGER_PREFIX):
                continue
            try:
                peeled = peel_small(repo, repo.references[name].target)
            except (KeyError, ValueError, TypeError, pygit2.GitError):
                continue
            if peeled is not None:
                tips[name] = peeled.id
        if not tips:
            return None
        for name in (commit, MANAGER_PREFIX + commit):
            if name in tips:
                found = repo[tips[name]]
                return found if isinstance(found, pygit2.Commit) else None
        if not 4 <= len(commit) <= 64 or any(c not in "0123456789abcdef" for c in commit.lower()):
            return None
        try:  # expand_id reads no object; peel_small loads it only if it is small
            obj = peel_small(repo, repo.expand_id(commit.lower()))
        except (KeyError, ValueError, pygit2.GitError):
            return None
        if obj is None:
            return None
        # descendant_of loads the history between: the manager's objects, checked first
        history = {c.id for c in repo.walk(self.core.main_oid())}
        for tip in tips.values():
            new_objects(repo, tip, history.__contains__, blob_limit=None)
        for tip in tips.values():
            if tip == obj.id or repo.descendant_of(tip, obj.id):
                return obj
        return None
