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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import ObjectType

import controller
from controller.clonecheck import contained_git_dir
from controller.config import Config
from controller.errors import Conflict, Invalid, NotFound

# the ref names live with the hooks, which must not import pygit2 to read them
from controller.hooks.updates import (
    LAST_DEPLOY_REF,
    MAIN_REF,
    MANAGER_PREFIX,
    NOTES_REF,
    TAG_PREFIXES,
    parse_id,
    tag_ref,
)
from controller.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    NIX_FILE,
    ManifestInvalid,
    default_manifest_yaml,
    manifest_path,
    parse_manifest,
)
from controller.model import AgentManifest, DesiredAgent, DesiredState
from controller.ops import Proposal, ProposalKind, ProposalState
from controller.paths import Layout
from schemas.names import MANAGER, InvalidName, check_agent_name, is_agent_name

log = logging.getLogger(__name__)

NOTIFIED_PREFIX = "refs/hyperhive/notified/"
DECISION_PREFIXES = ("approved", "denied")
FLAKE_FILE = "flake.nix"
LOCK_FILE = "flake.lock"
AGENTS_DIR = "agents"
CONTROLLER_NAME = "hyperhive"
CONTROLLER_EMAIL = "hyperhive@localhost"
MAX_DIFF_CHARS = 200_000
RACY_NS = 2_000_000_000

GIT_CONFIG = {
    # main only moves forward: its history is the audit trail of desired state.
    "receive.denyNonFastForwards": "true",
    # deletes are judged by the pre-receive hook (controller refs and decisions
    # are protected; an operator's own scratch branches may be deleted).
    "receive.denyDeletes": "false",
    "receive.fsckObjects": "true",
    "core.logAllRefUpdates": "true",
}


def split_tag(refname: str) -> tuple[str, int] | None:
    """``refs/tags/approved/3`` → ``("approved", 3)``; None for any other ref."""
    if not refname.startswith("refs/tags/"):
        return None
    prefix, sep, rest = refname[len("refs/tags/") :].partition("/")
    if not sep or prefix not in TAG_PREFIXES:
        return None
    id = parse_id(rest)
    return None if id is None else (prefix, id)


def flake_template(config: Config) -> str:
    """The meta flake for a new repo.

    ``nix/templates/meta-flake.nix`` of the source tree when present (the NixOS
    side owns it), else ``controller/templates/meta-flake.nix``; ``@HYPERHIVE_FLAKE@``
    is replaced by ``config.hyperhive_flake``.
    """
    tree_file = Path(controller.__file__).resolve().parent.parent / "nix/templates/meta-flake.nix"
    if tree_file.is_file():
        text = tree_file.read_text()
    else:
        text = resources.files("controller").joinpath("templates/meta-flake.nix").read_text()
    return text.replace("@HYPERHIVE_FLAKE@", config.hyperhive_flake)


def manager_template(config: Config) -> str:
    """The manager's first ``agents/manager/agent.yaml`` (``controller/templates``)."""
    text = resources.files("controller").joinpath("templates/manager.agent.yaml").read_text()
    return text.replace("@MODEL@", config.default_model)


def _sig(name: str, email: str, clock: Callable[[], float]) -> pygit2.Signature:
    return pygit2.Signature(name, email, int(clock()), 0)


# --------------------------------------------------------------------------
# tree inspection (shared with the pre-receive hook)


def subtree(repo: pygit2.Repository, tree: pygit2.Tree | None, name: str) -> pygit2.Tree | None:
    """The subtree ``name`` of ``tree``, or None if absent or not a directory."""
    if tree is None or name not in tree:
        return None
    obj = tree[name]
    return obj if isinstance(obj, pygit2.Tree) else None


def _entry_id(tree: pygit2.Tree | None, name: str) -> str:
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


MAX_PROPOSAL_BLOB_BYTES = 32 * 1024 * 1024
"""Largest file a proposal may add (the largest custom front-end file served)."""
MAX_PROPOSAL_NEW_BYTES = 64 * 1024 * 1024
"""Most bytes of new files one proposal may add (a push's limit over HTTP too)."""
MAX_PROPOSAL_OBJECT_BYTES = 4 * 1024 * 1024
"""Largest commit, tree or tag a proposal may bring (a meta repo's are a few KiB)."""


def _object_size(repo: pygit2.Repository, oid: pygit2.Oid) -> int:
    """An object's size in bytes from its header: nothing is inflated (a blob a manager
    made could be gigabytes of zeros in a few hundred KiB of pack)."""
    return int(repo.odb.read_header(oid)[1])


def _blobs(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> Iterator[tuple[str, pygit2.Oid]]:
    """``(path, id)`` of every blob under ``tree`` (submodule links skipped); no blob read."""
    for e in tree:
        path = f"{prefix}{e.name}"
        if e.filemode == pygit2.GIT_FILEMODE_TREE:
            sub = repo[e.id]
            if isinstance(sub, pygit2.Tree):
                yield from _blobs(repo, sub, path + "/")
        elif e.filemode != pygit2.GIT_FILEMODE_COMMIT:
            yield path, e.id


def oversized(
    repo: pygit2.Repository, new: pygit2.Tree, old: pygit2.Tree | None
) -> tuple[str, str] | None:
    """``(path, message)`` when ``new`` adds a file over ``MAX_PROPOSAL_BLOB_BYTES`` or more
    than ``MAX_PROPOSAL_NEW_BYTES`` of files ``old`` lacks; None when it is within both.
    Reads object headers only."""
    known = {oid for _, oid in _blobs(repo, old)} if old is not None else set()
    total = 0
    for path, oid in _blobs(repo, new):
        if oid in known:
            continue
        known.add(oid)
        size = _object_size(repo, oid)
        if size > MAX_PROPOSAL_BLOB_BYTES:
            return (
                path,
                f"{path}: is {size} bytes; a proposal's files are at most "
                f"{MAX_PROPOSAL_BLOB_BYTES} bytes",
            )
        total += size
        if total > MAX_PROPOSAL_NEW_BYTES:
            return (
                path,
                f"{path}: the proposal adds more than {MAX_PROPOSAL_NEW_BYTES} bytes of new files",
            )
    return None


def tree_change(
    repo: pygit2.Repository, old: pygit2.Tree | None, new: pygit2.Tree | None
) -> TreeChange:
    """Compare two root trees at the ``agents/<name>`` level (no blob reads)."""
    if old is not None and new is not None and old.id == new.id:
        return TreeChange((), False, False)
    flake = any(_entry_id(old, f) != _entry_id(new, f) for f in (FLAKE_FILE, LOCK_FILE))
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
        if _object_size(repo, blob.id) > MAX_MANIFEST_BYTES:  # before .data inflates it
            errors.append((path, f"{path}: is larger than {MAX_MANIFEST_BYTES} bytes"))
            continue
        try:
            parse_manifest(blob.data, name)
        except ManifestInvalid as exc:
            errors.append((exc.path, str(exc)))
    return errors


# --------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class Build:
    """One deploy in progress (``building/<id>``).

    ``commit`` is the main commit being deployed; ``base`` what it was based on;
    ``agents`` the agent dirs changed base..proposal; ``flake_changed`` True when
    flake.nix / flake.lock changed (every agent rebuilds).
    """

    id: int
    kind: ProposalKind
    commit: str
    base: str | None
    agents: tuple[str, ...]
    flake_changed: bool
    title: str = ""

    def touches(self, agent: str) -> bool:
        """True when this deploy affects ``agent``."""
        return self.flake_changed or agent in self.agents


@dataclass(frozen=True)
class Denial:
    """A ``denied/<id>`` the manager has not been told about yet."""

    id: int
    kind: ProposalKind
    agents: tuple[str, ...]
    note: str


class ApplyFailed(Exception):
    """An approved proposal cannot be applied to main (conflict, invalid result)."""


@dataclass
class _Entry:
    targets: dict[str, pygit2.Oid] = field(default_factory=dict)
    notified: bool = False


@dataclass
class _Index:
    entries: dict[int, _Entry]
    max_id: int
    fingerprint: tuple[Any, ...]
    racy: bool
    # ids needing attention, computed once per rebuild so a pass is O(open ids)
    open_builds: list[int] = field(default_factory=list)
    approved: list[int] = field(default_factory=list)
    denied: list[int] = field(default_factory=list)
    open_proposals: list[int] = field(default_factory=list)

    def classify(self) -> None:
        """Fill the open-id lists from ``entries``."""
        outcome = {"deployed", "failed"}
        for id in sorted(self.entries):
            e = self.entries[id]
            t = e.targets
            if "building" in t and not (outcome & t.keys()):
                self.open_builds.append(id)
            if "proposal" not in t:
                continue
            if "approved" in t and not ({"building", "denied"} | outcome) & t.keys():
                self.approved.append(id)
            if "denied" in t and not e.notified:
                self.denied.append(id)
            if "denied" not in t and not ({"building"} | outcome) & t.keys():
                self.open_proposals.append(id)


@dataclass(frozen=True)
class _AgentRead:
    manifest: AgentManifest | None
    config_digest: str
    nix_id: str
    error: str | None


# --------------------------------------------------------------------------


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
        self.layout = layout
        self.config = config
        self.repo = repo
        self.path = layout.meta_git
        self.version = version
        self._clock = clock
        self._lock = threading.RLock()
        self._index: _Index | None = None
        self._dirty = True
        self._desired: tuple[str, DesiredState, dict[str, str]] | None = None
        self._agent_cache: dict[tuple[str, str], _AgentRead] = {}
        self._diff_cache: dict[tuple[str | None, str], str] = {}
        self._build_cache: dict[int, Build] = {}
        self._scope_owner: int | None = None  # the thread in pass_scope, if any
        self._scope_checked = False  # ...and whether it checked the ref storage yet

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
        with meta._lock:
            if repo.references.get(MAIN_REF) is None:
                meta._seed()
            meta._configure()
            meta.install_hooks(python)
            meta.ensure_manager_clone()
        return meta

    def _seed(self) -> None:
        repo = self.repo
        sig = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
        manager = repo.TreeBuilder()
        manager.insert(
            MANIFEST_FILE,
            repo.create_blob(manager_template(self.config).encode()),
            pygit2.GIT_FILEMODE_BLOB,
        )
        agents = repo.TreeBuilder()
        agents.insert(MANAGER, manager.write(), pygit2.GIT_FILEMODE_TREE)
        root = repo.TreeBuilder()
        root.insert(
            FLAKE_FILE,
            repo.create_blob(flake_template(self.config).encode()),
            pygit2.GIT_FILEMODE_BLOB,
        )
        root.insert(AGENTS_DIR, agents.write(), pygit2.GIT_FILEMODE_TREE)
        genesis = repo.create_commit(
            MAIN_REF, sig, sig, "init: hyperhive meta repo\n", root.write(), []
        )
        # The genesis commit is the controller's own bootstrap, not a change anyone
        # proposed or pushed: it gets no id, so the first proposal is proposal/1.
        repo.references.create(LAST_DEPLOY_REF, genesis, force=True)

    def _configure(self) -> None:
        cfg = self.repo.config
        for key, value in GIT_CONFIG.items():
            current = None
            with contextlib.suppress(KeyError):
                current = cfg[key]
            if current != value:
                cfg[key] = value

    def hook_script(self, kind: str, python: str = sys.executable) -> str:
        """The shell script installed as ``hooks/<kind>`` (pre-receive / post-receive)."""
        root = Path(controller.__file__).resolve().parent.parent
        return (
            "#!/bin/sh\n"
            f"# hyperhive meta.git {kind} hook: written by the controller at every start;\n"
            "# local edits are overwritten. See docs/approvals.md.\n"
            f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
            "export PYTHONPATH\n"
            f"exec {shlex.quote(python)} -m controller.hook {kind}"
            f" --state-dir {shlex.quote(str(self.layout.state))}"
            f" --run-dir {shlex.quote(str(self.layout.run))}\n"
        )

    def install_hooks(self, python: str = sys.executable) -> None:
        """(Re)write ``pre-receive`` and ``post-receive`` when their content differs."""
        hooks = self.path / "hooks"
        hooks.mkdir(exist_ok=True)
        for kind in ("pre-receive", "post-receive"):
            target = hooks / kind
            text = self.hook_script(kind, python)
            try:
                if target.read_text() == text and os.access(target, os.X_OK):
                    continue
            except OSError:
                pass
            tmp = hooks / f".{kind}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o755)
            os.replace(tmp, target)

    def ensure_manager_clone(self) -> Path:
        """Create ``<state>/manager/meta`` (a normal clone, branch main) if missing.

        The manager's sandbox binds this clone read-write, so it must share no file
        with meta.git: it is cloned from a ``file://`` URL (a fetch, which writes its
        own pack; a plain local path makes libgit2 hardlink meta.git's object files,
        and the manager could then rewrite them in place). An existing clone made the
        old way has its hardlinked object files copied once (``unshare_object_files``).
        """
        clone = self.layout.manager_meta
        if (clone / ".git").exists():
            if (n := unshare_object_files(clone)) > 0:
                log.info("%s: copied %d object file(s) hardlinked with meta.git", clone, n)
            return clone
        clone.parent.mkdir(parents=True, exist_ok=True)
        if clone.exists() and any(clone.iterdir()):
            return clone  # something else lives there: leave it alone
        url = Path(os.path.abspath(self.path)).as_uri()
        repo = pygit2.clone_repository(url, str(clone), checkout_branch="main")
        repo.config["user.name"] = MANAGER
        repo.config["user.email"] = f"{MANAGER}@hyperhive.local"
        return clone

    def sync_manager_clone(self) -> bool:
        """Point the clone's ``origin/main`` at main (objects copied; working tree untouched).

        Returns True when it moved. The manager rebases onto ``origin/main``.
        """
        clone = self.layout.manager_meta
        if not (clone / ".git").exists():
            return False
        with self._lock:
            main = self._main_oid()
            try:
                dst = pygit2.Repository(str(clone))
            except pygit2.GitError:
                return False
            ref = dst.references.get("refs/remotes/origin/main")
            if ref is not None and ref.target == main:
                return False
            copy_objects(self.repo, dst, main)
            dst.references.create("refs/remotes/origin/main", main, force=True)
            return True

    # ---------------------------------------------------------------- main

    def _main_oid(self) -> pygit2.Oid:
        ref = self.repo.references.get(MAIN_REF)
        if ref is None:
            raise NotFound(f"{self.path}: refs/heads/main is missing")
        return ref.resolve().target  # type: ignore[return-value]

    def main_commit(self) -> str:
        """The commit id (hex) at ``refs/heads/main``."""
        with self._lock:
            return str(self._main_oid())

    def last_deploy(self) -> str | None:
        """The main commit of the newest ``building/<id>`` (``refs/hyperhive/last-deploy``)."""
        with self._lock:
            ref = self.repo.references.get(LAST_DEPLOY_REF)
            return None if ref is None else str(ref.target)

    def _update_main(self, new: pygit2.Oid, expected: pygit2.Oid, message: str) -> None:
        """Compare-and-swap main; ApplyFailed if it moved meanwhile."""
        with self.repo.transaction() as txn:
            txn.lock_ref(MAIN_REF)
            if self._main_oid() != expected:
                raise _MainMoved()
            txn.set_target(MAIN_REF, new, message=message)

    # ---------------------------------------------------------------- desired

    def desired(self) -> DesiredState:
        """Desired state at main: every ``agents/<name>/agent.yaml`` that is valid.

        Invalid agent dirs are left out (see ``desired_checked``). Cached by main
        commit; agents by tree id, so a new commit re-reads only changed agents.
        """
        return self.desired_checked()[0]

    def desired_checked(self) -> tuple[DesiredState, Mapping[str, str]]:
        """``(desired, invalid)``: ``invalid`` maps agent dir → error message."""
        with self._lock:
            main = self._main_oid()
            key = str(main)
            if self._desired is not None and self._desired[0] == key:
                return self._desired[1], self._desired[2]
            commit = self.repo[main]
            assert isinstance(commit, pygit2.Commit)
            tree = commit.tree
            flake_id = _entry_id(tree, FLAKE_FILE)
            lock_id = _entry_id(tree, LOCK_FILE)
            agents_tree = subtree(self.repo, tree, AGENTS_DIR)
            agents: dict[str, DesiredAgent] = {}
            invalid: dict[str, str] = {}
            cache: dict[tuple[str, str], _AgentRead] = {}
            for entry in agents_tree if agents_tree is not None else ():
                name = entry.name or ""
                ckey = (name, str(entry.id))
                read = self._agent_cache.get(ckey) or self._read_agent(name, entry)
                cache[ckey] = read
                if read.manifest is None:
                    invalid[name] = read.error or "invalid"
                    continue
                agents[name] = DesiredAgent(
                    name=name,
                    manifest=read.manifest,
                    commit=key,
                    config_digest=read.config_digest,
                    build_digest=build_digest(read.nix_id, flake_id, lock_id, self.version),
                    has_nix=bool(read.nix_id),
                )
            self._agent_cache = cache
            state = DesiredState(commit=key, agents=agents, hyperhive_version=self.version)
            self._desired = (key, state, invalid)
            return state, invalid

    def _read_agent(self, name: str, entry: pygit2.Object) -> _AgentRead:
        path = manifest_path(name)
        if not is_agent_name(name):
            return _AgentRead(None, "", "", f"agents/{name}/: not a valid agent name")
        if not isinstance(entry, pygit2.Tree):
            return _AgentRead(None, "", "", f"agents/{name}: must be a directory")
        if MANIFEST_FILE not in entry:
            return _AgentRead(None, "", "", f"{path}: is missing")
        blob = entry[MANIFEST_FILE]
        nix_id = str(entry[NIX_FILE].id) if NIX_FILE in entry else ""
        if not isinstance(blob, pygit2.Blob):
            return _AgentRead(None, "", nix_id, f"{path}: must be a file")
        try:
            manifest = parse_manifest(blob.data, name)
        except ManifestInvalid as exc:
            return _AgentRead(None, str(blob.id), nix_id, str(exc))
        return _AgentRead(manifest, str(blob.id), nix_id, None)

    # ---------------------------------------------------------------- ref index

    def _fingerprint(self) -> tuple[tuple[Any, ...], bool]:
        git = self.path
        paths = [git / "packed-refs", git / "refs" / "tags", git / "refs" / "hyperhive"]
        paths += [git / "refs" / "tags" / p for p in TAG_PREFIXES]
        paths.append(git / "refs" / "hyperhive" / "notified")
        out: list[Any] = []
        newest = 0
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            newest = max(newest, st.st_mtime_ns)
        racy = newest >= time.time_ns() - RACY_NS
        return tuple(out), racy

    @contextlib.contextmanager
    def pass_scope(self) -> Iterator[None]:
        """Hold the ref index for one reconcile pass, in the calling thread only.

        The first lookup checks the ref storage as usual (and rebuilds the index
        if it changed, or is too recent to trust); later lookups in the scope use
        the index as is, with the controller's own ref writes applied to it in
        place (``_own``). A ref an operator pushes meanwhile is seen by the next
        pass — the hook's poke asks for one. So a pass that writes a few tags
        reads the ref storage once, not after every write.
        """
        with self._lock:
            self._scope_owner = threading.get_ident()
            self._scope_checked = False
        try:
            yield
        finally:
            with self._lock:
                self._scope_owner = None
                self._scope_checked = False

    def _frozen(self) -> bool:
        """True in the pass thread's scope once the ref storage was checked."""
        return self._scope_checked and self._scope_owner == threading.get_ident()

    def _own(self, prefix: str, id: int, target: pygit2.Oid | None) -> None:
        """Record a ref the controller itself just wrote (``notified``: target None)."""
        idx = self._index
        if idx is None or self._dirty or not self._frozen():
            self._dirty = True
            return
        e = idx.entries.setdefault(id, _Entry())
        if prefix == "notified":
            e.notified = True
        elif target is not None:
            e.targets[prefix] = target
            idx.max_id = max(idx.max_id, id)
        idx.open_builds.clear()
        idx.approved.clear()
        idx.denied.clear()
        idx.open_proposals.clear()
        idx.classify()

    def _refresh(self) -> _Index:
        idx = self._index
        if idx is not None and not self._dirty and self._frozen():
            return idx
        fp, racy = self._fingerprint()
        if idx is not None and not self._dirty and not idx.racy and idx.fingerprint == fp:
            if self._scope_owner == threading.get_ident():
                self._scope_checked = True
            return idx
        entries: dict[int, _Entry] = {}
        max_id = 0
        for ref in self.repo.references.iterator():
            name = ref.name
            if name.startswith(NOTIFIED_PREFIX):
                nid = parse_id(name[len(NOTIFIED_PREFIX) :])
                if nid is not None:
                    entries.setdefault(nid, _Entry()).notified = True
                continue
            parsed = split_tag(name)
            if parsed is None:
                continue
            prefix, id = parsed
            target = ref.target
            if not isinstance(target, pygit2.Oid):
                continue
            entries.setdefault(id, _Entry()).targets[prefix] = target
            max_id = max(max_id, id)
        index = _Index(entries, max_id, fp, racy)
        index.classify()
        self._index = index
        self._dirty = False
        if self._scope_owner == threading.get_ident():
            self._scope_checked = True
        return index

    def _entry(self, id: int) -> _Entry | None:
        return self._refresh().entries.get(id)

    def _peel(self, oid: pygit2.Oid) -> pygit2.Commit:
        obj = self.repo[oid]
        return obj.peel(pygit2.Commit)

    def _tag_message(self, oid: pygit2.Oid | None) -> str:
        if oid is None:
            return ""
        obj = self.repo.get(oid)
        return obj.message.strip() if isinstance(obj, pygit2.Tag) and obj.message else ""

    # ---------------------------------------------------------------- notes

    def _notes(self, commit: str) -> dict[str, Any]:
        try:
            note = self.repo.lookup_note(commit, NOTES_REF)
        except (KeyError, pygit2.GitError):
            return {}
        try:
            doc = json.loads(note.message)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _note_for(self, commit: str, id: int) -> dict[str, Any]:
        meta = self._notes(commit).get(str(id))
        return meta if isinstance(meta, dict) else {}

    def _set_note(self, commit: str, id: int, meta: Mapping[str, Any]) -> None:
        doc = self._notes(commit)
        doc[str(id)] = dict(meta)
        sig = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
        self.repo.create_note(json.dumps(doc, sort_keys=True), sig, sig, commit, NOTES_REF, True)

    # ---------------------------------------------------------------- ids

    def _allocate(self, prefix: str, target: pygit2.Oid) -> int:
        """Create ``refs/tags/<prefix>/<n>`` for the next free id; race-safe by the create."""
        n = self._refresh().max_id + 1
        while True:
            try:
                self.repo.references.create(tag_ref(prefix, n), target, force=False)
            except pygit2.AlreadyExistsError:
                n += 1
                continue
            self._own(prefix, n, target)
            return n

    # ---------------------------------------------------------------- proposals

    def _pending_ids(self) -> list[int]:
        """Proposals awaiting a decision or approved but not yet applied."""
        return list(self._refresh().open_proposals)

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
        with self._lock:
            main = self._main_oid()
            main_commit = self.repo[main]
            assert isinstance(main_commit, pygit2.Commit)
            tree = main_commit.tree
            agents = subtree(self.repo, tree, AGENTS_DIR)
            if agents is not None and name in agents:
                raise Conflict(f"agent {name!r} already exists at main", field="name")
            for pid in self._pending_ids():
                if name in self._added_agents(pid):
                    raise Conflict(f"proposal/{pid} already spawns {name!r}", field="name")
            blob = self.repo.create_blob(
                default_manifest_yaml(name, self.config.default_model).encode()
            )
            agent_tb = self.repo.TreeBuilder()
            agent_tb.insert(MANIFEST_FILE, blob, pygit2.GIT_FILEMODE_BLOB)
            agents_tb = (
                self.repo.TreeBuilder(agents) if agents is not None else self.repo.TreeBuilder()
            )
            agents_tb.insert(name, agent_tb.write(), pygit2.GIT_FILEMODE_TREE)
            root_tb = self.repo.TreeBuilder(tree)
            root_tb.insert(AGENTS_DIR, agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
            author = _sig(MANAGER, f"{MANAGER}@hyperhive.local", self._clock)
            committer = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
            commit = self.repo.create_commit(
                None, author, committer, f"spawn {name}\n", root_tb.write(), [main]
            )
            id = self._allocate("proposal", commit)
            self._set_note(
                str(commit),
                id,
                {
                    "kind": ProposalKind.SPAWN.value,
                    "base": str(main),
                    "note": "",
                    "created_at": self._clock(),
                },
            )
            return self.proposal(id)

    def _added_agents(self, id: int) -> set[str]:
        e = self._entry(id)
        if e is None or "proposal" not in e.targets:
            return set()
        commit = self._peel(e.targets["proposal"])
        base = self._base_of(id, commit)
        base_agents = (
            subtree(self.repo, self.repo[base].peel(pygit2.Tree), AGENTS_DIR) if base else None
        )
        new_agents = subtree(self.repo, commit.tree, AGENTS_DIR)
        if new_agents is None:
            return set()
        return {
            e.name or ""
            for e in new_agents
            if base_agents is None or (e.name or "") not in base_agents
        }

    def _base_of(self, id: int, commit: pygit2.Commit) -> str | None:
        base = self._note_for(str(commit.id), id).get("base")
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
        src_path = source or self.layout.manager_meta
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
            with self._lock:
                obj = self.pushed_commit(commit)
            if obj is None:
                raise NotFound(
                    f"{missing}, nor pushed to {MANAGER_PREFIX}* on meta.git (a remote "
                    f"manager pushes it first: git push origin {commit}:{MANAGER_PREFIX}<name>)",
                    field="commit",
                )
            src = self.repo
        with self._lock:
            if src is not None and src is not self.repo:
                copy_objects(src, self.repo, obj.id)
            else:  # pushed to meta.git: its objects are there already, unchecked
                history = {c.id for c in self.repo.walk(self._main_oid())}
                new_objects(self.repo, obj.id, history.__contains__, blob_limit=None)
            new = self.repo[obj.id]
            assert isinstance(new, pygit2.Commit)
            main = self._main_oid()
            if new.id == main or self.repo.descendant_of(main, new.id):
                raise Conflict(f"commit {new.id} is already part of main", field="commit")
            try:
                base_oid = self.repo.merge_base(new.id, main)
            except pygit2.GitError:
                base_oid = None
            if base_oid is None:
                raise Invalid(
                    f"commit {new.id} shares no history with main; commit on top of origin/main "
                    "in the meta clone",
                    field="commit",
                )
            base_commit = self.repo[base_oid]
            assert isinstance(base_commit, pygit2.Commit)
            change = tree_change(self.repo, base_commit.tree, new.tree)
            if change.empty:
                raise Conflict(f"commit {new.id} changes nothing relative to main", field="commit")
            big = oversized(self.repo, new.tree, base_commit.tree)
            if big is not None:
                raise Invalid(big[1], field=big[0])
            errors = tree_errors(self.repo, new.tree, base_commit.tree)
            if errors:
                path, message = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise Invalid(message + more, field=path)
            for pid in self._pending_ids():
                e = self._entry(pid)
                if e is not None and self._peel(e.targets["proposal"]).id == new.id:
                    raise Conflict(
                        f"commit {new.id} is already pending as proposal/{pid}", field="commit"
                    )
            id = self._allocate("proposal", new.id)
            self._set_note(
                str(new.id),
                id,
                {
                    "kind": ProposalKind.APPLY_COMMIT.value,
                    "base": str(base_oid),
                    "note": note,
                    "created_at": self._clock(),
                },
            )
            if src is self.repo:
                self._drop_handed_over(new.id)
            return self.proposal(id)

    def _drop_handed_over(self, oid: pygit2.Oid) -> None:
        """Delete the manager's refs that point at ``oid`` once ``proposal/<id>`` holds it:
        the hand-over is done, and the namespace stays small (the hook caps it,
        ``controller.hooks.updates.MAX_MANAGER_REFS``). Call with ``self._lock`` held."""
        for name in list(self.repo.references):
            if not name.startswith(MANAGER_PREFIX):
                continue
            with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
                # sized from headers first (_peel_small): the manager made these objects
                tip = _peel_small(self.repo, self.repo.references[name].target)
                if tip is not None and tip.id == oid:
                    self.repo.references.delete(name)
        self._dirty = True

    def pushed_commit(self, commit: str) -> pygit2.Commit | None:
        """The commit ``commit`` names among what the manager pushed to meta.git, or None.

        ``commit`` is a ref under ``refs/hyperhive/manager/`` (full, or the part after
        it) or a hex object id (full or abbreviated) of a commit reachable from one of
        those refs; anything else in meta.git (main, proposals, other objects) is not
        the manager's to name here. Raises ``Invalid`` (``new_objects``) when what the
        manager pushed holds an object too large to load. Call with ``self._lock`` held.
        """
        tips: dict[str, pygit2.Oid] = {}
        for name in self.repo.references:
            if not name.startswith(MANAGER_PREFIX):
                continue
            try:
                peeled = _peel_small(self.repo, self.repo.references[name].target)
            except (KeyError, ValueError, TypeError, pygit2.GitError):
                continue
            if peeled is not None:
                tips[name] = peeled.id
        if not tips:
            return None
        for name in (commit, MANAGER_PREFIX + commit):
            if name in tips:
                found = self.repo[tips[name]]
                return found if isinstance(found, pygit2.Commit) else None
        if not 4 <= len(commit) <= 64 or any(c not in "0123456789abcdef" for c in commit.lower()):
            return None
        try:  # expand_id reads no object; _peel_small loads it only if it is small
            obj = _peel_small(self.repo, self.repo.expand_id(commit.lower()))
        except (KeyError, ValueError, pygit2.GitError):
            return None
        if obj is None:
            return None
        # descendant_of loads the history between: the manager's objects, checked first
        history = {c.id for c in self.repo.walk(self._main_oid())}
        for tip in tips.values():
            new_objects(self.repo, tip, history.__contains__, blob_limit=None)
        for tip in tips.values():
            if tip == obj.id or self.repo.descendant_of(tip, obj.id):
                return obj
        return None

    # ---------------------------------------------------------------- decisions

    def approve(self, id: int, note: str = "", who: str = "operator") -> Proposal:
        """Write ``approved/<id>`` at the proposal commit (annotated when ``note`` is given).

        NotFound without ``proposal/<id>``; Conflict when already decided.
        """
        return self._decide("approved", id, note, who)

    def deny(self, id: int, note: str, who: str = "operator") -> Proposal:
        """Write annotated ``denied/<id>`` with ``note`` as the reason. NotFound / Conflict."""
        return self._decide("denied", id, note or "denied", who)

    def _decide(self, prefix: str, id: int, note: str, who: str) -> Proposal:
        with self._lock:
            e = self._entry(id)
            if e is None or "proposal" not in e.targets:
                raise NotFound(f"no proposal/{id}")
            for done in ("approved", "denied", "failed"):
                if done in e.targets:
                    raise Conflict(f"proposal/{id} is already {done}")
            target = e.targets["proposal"]
            try:
                if note:
                    sig = _sig(who, f"{who}@hyperhive.local", self._clock)
                    self.repo.create_tag(
                        f"{prefix}/{id}", target, ObjectType.COMMIT, sig, note + "\n"
                    )
                else:
                    self.repo.references.create(tag_ref(prefix, id), target, force=False)
            except pygit2.AlreadyExistsError as exc:
                raise Conflict(f"proposal/{id} was decided meanwhile") from exc
            finally:
                self._dirty = True
            return self.proposal(id)

    # ---------------------------------------------------------------- listing

    def _state(self, e: _Entry) -> ProposalState:
        t = e.targets
        for prefix, state in (
            ("failed", ProposalState.FAILED),
            ("deployed", ProposalState.DEPLOYED),
            ("building", ProposalState.BUILDING),
            ("denied", ProposalState.DENIED),
            ("approved", ProposalState.APPROVED),
        ):
            if prefix in t:
                return state
        return ProposalState.PENDING

    def _kind(self, e: _Entry, meta: Mapping[str, Any], commit: pygit2.Commit) -> ProposalKind:
        kind = meta.get("kind")
        with contextlib.suppress(ValueError):
            if isinstance(kind, str):
                return ProposalKind(kind)
        if "proposal" not in e.targets:
            return ProposalKind.PUSH
        return (
            ProposalKind.SPAWN if commit.message.startswith("spawn ") else ProposalKind.APPLY_COMMIT
        )

    def _compare(
        self, e: _Entry, meta: Mapping[str, Any], commit: pygit2.Commit
    ) -> tuple[ProposalKind, str | None, pygit2.Tree | None, TreeChange]:
        """The kind of a proposal's ``commit`` (ref entry ``e``, note ``meta``) and its change.

        The base is the note's ``base``, else the commit's first parent (not for
        a push); returns (kind, base, the base's tree or None when there is none
        or it is unknown, ``tree_change`` from that tree to the commit's).
        """
        kind = self._kind(e, meta, commit)
        base = meta.get("base") if isinstance(meta.get("base"), str) else None
        if base is None and kind is not ProposalKind.PUSH and commit.parent_ids:
            base = str(commit.parent_ids[0])
        base_tree = None
        if base:
            with contextlib.suppress(KeyError, ValueError):
                base_tree = self.repo[base].peel(pygit2.Tree)
        return kind, base, base_tree, tree_change(self.repo, base_tree, commit.tree)

    def _subject(self, id: int) -> tuple[pygit2.Commit, dict[str, Any]]:
        e = self._entry(id)
        if e is None:
            raise NotFound(f"no proposal/{id}")
        oid = e.targets.get("proposal") or e.targets.get("building")
        if oid is None:
            # an outcome without building (crash) or a stray decision: show what we have
            oid = next(iter(e.targets.values()), None)
        if oid is None:
            raise NotFound(f"no proposal/{id}")
        commit = self._peel(oid)
        return commit, self._note_for(str(commit.id), id)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy by id. NotFound if no ref carries ``id``."""
        with self._lock:
            e = self._entry(id)
            if e is None or not ({"proposal", "building"} & e.targets.keys()):
                raise NotFound(f"no proposal/{id}")
            commit, meta = self._subject(id)
            kind, base, _, change = self._compare(e, meta, commit)
            note = (
                self._tag_message(e.targets.get("failed"))
                or self._tag_message(e.targets.get("deployed"))
                or self._tag_message(e.targets.get("denied"))
                or self._tag_message(e.targets.get("approved"))
                or str(meta.get("note") or "")
            )
            created = meta.get("created_at")
            return Proposal(
                id=id,
                kind=kind,
                state=self._state(e),
                commit=str(commit.id),
                base=base,
                title=(commit.message.splitlines() or [""])[0],
                agents=change.agents,
                diff=self._diff(base, commit),
                note=note,
                created_at=float(created)
                if isinstance(created, int | float)
                else float(commit.commit_time),
            )

    def _diff(self, base: str | None, commit: pygit2.Commit) -> str:
        key = (base, str(commit.id))
        cached = self._diff_cache.get(key)
        if cached is not None:
            return cached
        if base:
            try:
                diff = self.repo[base].peel(pygit2.Tree).diff_to_tree(commit.tree)
            except (KeyError, ValueError):
                diff = commit.tree.diff_to_tree(swap=True)
        else:
            diff = commit.tree.diff_to_tree(swap=True)
        text = diff.patch or ""
        if len(text) > MAX_DIFF_CHARS:
            text = text[:MAX_DIFF_CHARS] + f"\n[diff truncated at {MAX_DIFF_CHARS} characters]\n"
        if len(self._diff_cache) > 512:
            self._diff_cache.clear()
        self._diff_cache[key] = text
        return text

    def proposals(self, pending_only: bool = False, limit: int | None = None) -> list[Proposal]:
        """Proposals and deploys, newest id first; ``pending_only``: awaiting a decision."""
        with self._lock:
            idx = self._refresh()
            ids = sorted(idx.entries, reverse=True)
            out: list[Proposal] = []
            for id in ids:
                e = idx.entries[id]
                if not ({"proposal", "building"} & e.targets.keys()):
                    continue
                if pending_only and self._state(e) is not ProposalState.PENDING:
                    continue
                out.append(self.proposal(id))
                if limit is not None and len(out) >= limit:
                    break
            return out

    def ids_by_state(self) -> dict[ProposalState, list[int]]:
        """Ids per state (cheap: refs only)."""
        with self._lock:
            idx = self._refresh()
            out: dict[ProposalState, list[int]] = {s: [] for s in ProposalState}
            for id, e in sorted(idx.entries.items()):
                if {"proposal", "building"} & e.targets.keys():
                    out[self._state(e)].append(id)
            return out

    # ---------------------------------------------------------------- reconcile side

    def _build(self, id: int, main_commit: str | None = None) -> Build:
        commit, meta = self._subject(id)
        e = self._entry(id)
        assert e is not None
        kind, base, base_tree, change = self._compare(e, meta, commit)
        target = main_commit
        if target is None:
            b = e.targets.get("building")
            target = str(self._peel(b).id) if b is not None else str(commit.id)
        return Build(
            id=id,
            kind=kind,
            commit=target,
            base=base,
            agents=change.agents,
            flake_changed=change.flake_changed or base_tree is None,
            title=(commit.message.splitlines() or [""])[0],
        )

    def open_builds(self) -> list[Build]:
        """Every ``building/<id>`` without ``deployed/<id>`` or ``failed/<id>``, oldest first."""
        with self._lock:
            return [self._build(id) for id in self._refresh().open_builds]

    def approved_unapplied(self) -> list[int]:
        """Ids with ``approved/<id>`` and no building / outcome yet, oldest first."""
        with self._lock:
            return list(self._refresh().approved)

    def denied_unnotified(self) -> list[Denial]:
        """``denied/<id>`` the manager has not been told about, oldest first."""
        with self._lock:
            idx = self._refresh()
            out = []
            for id in idx.denied:
                e = idx.entries[id]
                commit, meta = self._subject(id)
                out.append(
                    Denial(
                        id=id,
                        kind=self._kind(e, meta, commit),
                        agents=self._build(id).agents,
                        note=self._tag_message(e.targets["denied"]) or "(no reason given)",
                    )
                )
            return out

    def mark_notified(self, id: int) -> None:
        """Record that the manager was told about ``denied/<id>``."""
        with self._lock:
            e = self._entry(id)
            if e is None or "denied" not in e.targets:
                raise NotFound(f"no denied/{id}")
            self.repo.references.create(
                f"{NOTIFIED_PREFIX}{id}", self._peel(e.targets["denied"]).id, force=True
            )
            self._own("notified", id, None)

    def apply_approved(self, id: int) -> Build:
        """Apply approved ``proposal/<id>`` to main and write ``building/<id>``.

        Fast-forward when main is an ancestor of the proposal; a no-op when main
        already contains it (crash recovery); else a 3-way merge of trees with the
        merge base, committed on main with parents (main, proposal). Raises
        ApplyFailed (main untouched) on conflicts — naming the paths — or when the
        result's manifests fail the schema. The caller writes ``failed/<id>``.
        """
        with self._lock:
            for _ in range(5):
                try:
                    return self._apply_once(id)
                except _MainMoved:
                    continue
            raise ApplyFailed("main kept moving while applying; will retry")

    def _apply_once(self, id: int) -> Build:
        e = self._entry(id)
        if e is None or "proposal" not in e.targets or "approved" not in e.targets:
            raise NotFound(f"no approved proposal/{id}")
        prop = self._peel(e.targets["proposal"])
        approved = self._peel(e.targets["approved"])
        if approved.id != prop.id:
            raise ApplyFailed(f"approved/{id} does not point at proposal/{id}'s commit")
        main = self._main_oid()
        main_commit = self.repo[main]
        assert isinstance(main_commit, pygit2.Commit)
        title = (prop.message.splitlines() or [""])[0]
        if prop.id == main or self.repo.descendant_of(main, prop.id):
            new_main = main
        elif self.repo.descendant_of(prop.id, main):
            errors = tree_errors(self.repo, prop.tree, main_commit.tree)
            if errors:
                raise ApplyFailed("the proposal is invalid: " + "; ".join(m for _, m in errors))
            new_main = prop.id
            self._update_main(new_main, main, f"proposal/{id}: fast-forward ({title})")
        else:
            base_oid = self.repo.merge_base(main, prop.id)
            ancestor = self.repo[base_oid].peel(pygit2.Tree) if base_oid is not None else None
            if ancestor is None:
                raise ApplyFailed(f"proposal/{id} shares no history with main")
            index = self.repo.merge_trees(ancestor, main_commit.tree, prop.tree)
            if index.conflicts is not None:
                paths = sorted(
                    {side.path for triple in index.conflicts for side in triple if side is not None}
                )
                raise ApplyFailed(
                    f"merge conflict with main in {', '.join(paths)}; main was left untouched "
                    "(rebase the change on origin/main and propose it again)"
                )
            tree_id = index.write_tree(self.repo)
            if tree_id == main_commit.tree_id:
                new_main = main
            else:
                merged = self.repo[tree_id]
                assert isinstance(merged, pygit2.Tree)
                errors = tree_errors(self.repo, merged, main_commit.tree)
                if errors:
                    raise ApplyFailed(
                        "the merged result is invalid: " + "; ".join(m for _, m in errors)
                    )
                sig = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
                new_main = self.repo.create_commit(
                    None, sig, sig, f"merge proposal/{id}: {title}\n", tree_id, [main, prop.id]
                )
                self._update_main(new_main, main, f"proposal/{id}: merge ({title})")
        try:
            self.repo.references.create(tag_ref("building", id), new_main, force=False)
            self._own("building", id, new_main)
        except pygit2.AlreadyExistsError:
            self._dirty = True
        self.repo.references.create(LAST_DEPLOY_REF, new_main, force=True)
        return self._build(id, str(new_main))

    def record_push(self) -> Build | None:
        """If main moved with no deploy for it (a GitOps push): new id, ``building/<id>``.

        Returns the new Build, or None when main is already being/been deployed.
        """
        with self._lock:
            main = self._main_oid()
            last = self.repo.references.get(LAST_DEPLOY_REF)
            if last is not None and last.target == main:
                return None
            idx = self._refresh()
            for e in idx.entries.values():
                b = e.targets.get("building")
                if b is not None and b == main and not ({"deployed", "failed"} & e.targets.keys()):
                    self.repo.references.create(LAST_DEPLOY_REF, main, force=True)
                    return None
            base = str(last.target) if last is not None else None
            id = self._allocate("building", main)
            self._set_note(
                str(main),
                id,
                {
                    "kind": ProposalKind.PUSH.value,
                    "base": base,
                    "note": "",
                    "created_at": self._clock(),
                },
            )
            self.repo.references.create(LAST_DEPLOY_REF, main, force=True)
            return self._build(id, str(main))

    def finish(self, id: int, ok: bool, message: str) -> None:
        """Write annotated ``deployed/<id>`` (ok) or ``failed/<id>`` with ``message``.

        Targets ``building/<id>``'s commit, else the proposal commit (a proposal
        that failed before building). Idempotent: an existing outcome is kept.
        """
        with self._lock:
            e = self._entry(id)
            if e is None:
                raise NotFound(f"no id {id}")
            if {"deployed", "failed"} & e.targets.keys():
                return
            target = e.targets.get("building") or e.targets.get("proposal")
            if target is None:
                raise NotFound(f"no building/{id} or proposal/{id}")
            prefix = "deployed" if ok else "failed"
            sig = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
            try:
                tag = self.repo.create_tag(
                    f"{prefix}/{id}",
                    self._peel(target).id,
                    ObjectType.COMMIT,
                    sig,
                    message.rstrip() + "\n",
                )
                self._own(prefix, id, tag)
            except pygit2.AlreadyExistsError:
                self._dirty = True

    # ---------------------------------------------------------------- operator edits

    def remove_agent(self, name: str, message: str, who: str = "operator") -> str:
        """Commit on main removing ``agents/<name>/`` (the operator's ``destroy``); returns it.

        Written like an operator push (the next pass records it as a ``push``
        deploy and prunes the agent). NotFound when main has no such directory;
        Invalid for the manager.
        """
        if name == MANAGER:
            raise Invalid("the manager cannot be removed from desired state", field="name")
        with self._lock:
            for _ in range(5):
                main = self._main_oid()
                main_commit = self.repo[main]
                assert isinstance(main_commit, pygit2.Commit)
                tree = main_commit.tree
                agents = subtree(self.repo, tree, AGENTS_DIR)
                if agents is None or name not in agents:
                    raise NotFound(f"agents/{name}/ is not in main", field="name")
                agents_tb = self.repo.TreeBuilder(agents)
                agents_tb.remove(name)
                root_tb = self.repo.TreeBuilder(tree)
                root_tb.insert(AGENTS_DIR, agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
                author = _sig(who, f"{who}@hyperhive.local", self._clock)
                committer = _sig(CONTROLLER_NAME, CONTROLLER_EMAIL, self._clock)
                new = self.repo.create_commit(
                    None, author, committer, message.rstrip() + "\n", root_tb.write(), [main]
                )
                try:
                    self._update_main(new, main, f"{message.splitlines()[0]} (by {who})")
                except _MainMoved:
                    continue
                self._desired = None
                return str(new)
            raise Conflict("main kept moving; try again")

    # ---------------------------------------------------------------- per agent

    def agent_files(self, commit: str, name: str) -> tuple[str | None, str | None]:
        """``(agent.yaml, agent.nix)`` texts of ``agents/<name>/`` at ``commit`` (None: absent)."""
        with self._lock:
            try:
                tree = self.repo[commit].peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError) as exc:
                raise NotFound(f"no commit {commit} in {self.path}") from exc
            agent = subtree(self.repo, subtree(self.repo, tree, AGENTS_DIR), name)
            out: list[str | None] = []
            for fname in (MANIFEST_FILE, NIX_FILE):
                blob = agent[fname] if agent is not None and fname in agent else None
                if isinstance(blob, pygit2.Blob):
                    out.append(blob.data.decode("utf-8", errors="replace"))
                else:
                    out.append(None)
            return out[0], out[1]

    def deploys_for(self, agent: str, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` deploys that touched ``agent`` (its directory, or the flake).

        Each ``{"id", "kind", "state", "title", "commit", "note", "at", "tags"}``:
        ``tags`` the refs of that id (``proposal/3``, ``approved/3``, ``building/3``,
        ``deployed/3``), ``note`` the outcome's message, ``at`` unix seconds of the
        outcome (else of the proposal). A deploy's Build is cached by id, so
        describing an agent again reads nothing new.
        """
        with self._lock:
            idx = self._refresh()
            out: list[dict[str, Any]] = []
            for id in sorted(idx.entries, reverse=True):
                e = idx.entries[id]
                if "building" not in e.targets and not (
                    "failed" in e.targets and "proposal" in e.targets
                ):
                    continue
                build = self._build_cache.get(id)
                if build is None:
                    build = self._build(id)
                    if "building" in e.targets:
                        self._build_cache[id] = build
                if not build.touches(agent):
                    continue
                outcome = e.targets.get("failed") or e.targets.get("deployed")
                at: float | None = None
                if outcome is not None:
                    obj = self.repo.get(outcome)
                    if isinstance(obj, pygit2.Tag) and obj.tagger is not None:
                        at = float(obj.tagger.time)
                anchor = e.targets.get("building") or outcome
                if at is None and anchor is not None:
                    at = float(self._peel(anchor).commit_time)
                out.append(
                    {
                        "id": id,
                        "kind": build.kind.value,
                        "state": self._state(e).value,
                        "title": build.title,
                        "commit": build.commit,
                        "note": self._tag_message(outcome),
                        "at": at,
                        "tags": [f"{p}/{id}" for p in TAG_PREFIXES if p in e.targets],
                    }
                )
                if len(out) >= limit:
                    break
            return out

    def flake_ref(self, commit: str, agent: str) -> str:
        """The flake ref to build ``agent`` at ``commit``: ``git+file://<meta.git>?rev=<commit>#<agent>``."""
        return f"git+file://{self.path}?rev={commit}#{agent}"


class _MainMoved(Exception):
    """main changed between reading it and the compare-and-swap."""


def build_digest(nix_id: str, flake_id: str, lock_id: str, version: str) -> str:
    """sha256 of (agent.nix blob id or "", flake.nix id, flake.lock id or "", hyperhive version)."""
    text = f"agent.nix={nix_id}\nflake.nix={flake_id}\nflake.lock={lock_id}\nhyperhive={version}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def unshare_object_files(clone: Path) -> int:
    """Give every object file of ``clone/.git/objects`` with other hard links its own copy.

    Returns how many files were copied. The clone is the manager's (it may be
    writing to it right now): no symlink is followed anywhere (every step goes
    through a directory fd opened with ``O_NOFOLLOW``), the copy is written to a
    fresh ``O_EXCL`` file beside the original and renamed over it, so a reader sees
    the old or the new file, both with the same content and mode. A file that
    changes under us is skipped. ``OSError`` when ``.git/objects`` cannot be opened.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(clone, flags)
    try:
        git_dir = os.open(".git", flags, dir_fd=top)
        try:
            objects = os.open("objects", flags, dir_fd=git_dir)
        finally:
            os.close(git_dir)
    finally:
        os.close(top)
    copied = 0
    try:
        for _dir, _subdirs, files, dir_fd in os.fwalk(".", dir_fd=objects, follow_symlinks=False):
            for name in files:
                with contextlib.suppress(OSError):
                    copied += _unshare_file(name, dir_fd)
    finally:
        os.close(objects)
    return copied


def _unshare_file(name: str, dir_fd: int) -> int:
    """Copy ``name`` (in ``dir_fd``) over itself if it is a regular file with nlink > 1.

    Returns 1 when copied, else 0.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return 0
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    tmp = f".{name}.{os.urandom(6).hex()}.unshare"
    try:
        got = os.fstat(src)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            return 0  # replaced meanwhile
        dst = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            stat.S_IMODE(st.st_mode) | stat.S_IWUSR,
            dir_fd=dir_fd,
        )
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(dst, chunk)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.fsync(dst)
        finally:
            os.close(dst)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return 1
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(src)


def _peel_small(repo: pygit2.Repository, oid: object) -> pygit2.Commit | None:
    """The commit ``oid`` names (through annotated tags), None when it names something else
    or any object on the way is over ``MAX_PROPOSAL_OBJECT_BYTES`` (read from its header
    before it is loaded: a manager made it)."""
    for _ in range(8):
        if not isinstance(oid, pygit2.Oid):
            return None
        if repo.odb.read_header(oid)[1] > MAX_PROPOSAL_OBJECT_BYTES:
            return None
        obj = repo[oid]
        if isinstance(obj, pygit2.Commit):
            return obj
        if not isinstance(obj, pygit2.Tag):
            return None
        oid = obj.target
    return None


def new_objects(
    repo: pygit2.Repository,
    tip: pygit2.Oid,
    have: Callable[[pygit2.Oid], bool],
    blob_limit: int | None = MAX_PROPOSAL_BLOB_BYTES,
) -> list[pygit2.Oid]:
    """Every object reachable from ``tip`` that ``have`` does not know, tip first (a walk
    stops at objects ``have`` knows). Each object's size is read from its header before
    it is loaded, so an object a manager made cannot make the controller inflate
    gigabytes: ``Invalid`` (field ``commit``) for a blob over ``MAX_PROPOSAL_BLOB_BYTES``
    (``blob_limit``; None: blobs are not judged here, ``oversized`` names them by path) or
    another object over ``MAX_PROPOSAL_OBJECT_BYTES``."""
    order: list[pygit2.Oid] = []
    seen: set[pygit2.Oid] = set()
    stack: list[pygit2.Oid] = [tip]
    while stack:
        oid = stack.pop()
        if oid in seen or have(oid):
            continue
        seen.add(oid)
        order.append(oid)
        kind, size = repo.odb.read_header(oid)
        blob = kind == pygit2.GIT_OBJECT_BLOB
        limit = (blob_limit if blob else MAX_PROPOSAL_OBJECT_BYTES) or size
        if size > limit:
            what = "files" if blob else "commits, trees and tags"
            raise Invalid(
                f"object {oid} is {size} bytes; a proposal's {what} are at most {limit} bytes",
                field="commit",
            )
        if blob:  # a leaf: its header is enough, nothing inflated
            continue
        obj = repo[oid]
        if isinstance(obj, pygit2.Commit):
            stack.append(obj.tree_id)
            stack.extend(obj.parent_ids)
        elif isinstance(obj, pygit2.Tree):
            stack.extend(e.id for e in obj if e.filemode != pygit2.GIT_FILEMODE_COMMIT)
        elif isinstance(obj, pygit2.Tag):
            stack.append(obj.target)
    return order


def copy_objects(src: pygit2.Repository, dst: pygit2.Repository, tip: pygit2.Oid) -> int:
    """Copy ``tip`` and everything reachable from it that ``dst`` lacks; returns objects copied.

    Stops at objects ``dst`` already has (a repo holds everything reachable from
    what it holds), so the cost is the number of new objects. Objects are written
    children first, so an interrupted copy never leaves a commit without its tree.
    Raises ``Invalid`` (``new_objects``: an object too large, found from its header)
    before anything is copied.
    """
    order = new_objects(src, tip, dst.odb.exists)
    for oid in reversed(order):
        typ, data = src.odb.read(oid)
        dst.odb.write(int(typ), data)
    return len(order)


__all__ = [
    "ApplyFailed",
    "Build",
    "Denial",
    "MetaRepo",
    "TreeChange",
    "build_digest",
    "copy_objects",
    "tree_change",
    "tree_errors",
    "unshare_object_files",
]
