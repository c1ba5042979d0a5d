"""Per agent: its files at a commit, the deploys that touched it, its flake ref, and the
operator's removal of it from main (``destroy``)."""

from __future__ import annotations

from typing import Any

import pygit2

from controller.errors import Conflict, Invalid, NotFound
from controller.manifest import MANIFEST_FILE, NIX_FILE
from controller.metarepo.core import MetaCore
from controller.metarepo.describe import Describe
from controller.metarepo.desired import Desired
from controller.metarepo.index import RefIndex
from controller.metarepo.names import AGENTS_DIR, CONTROLLER_EMAIL, CONTROLLER_NAME, TAG_PREFIXES
from controller.metarepo.tags import state_of
from controller.metarepo.trees import subtree
from controller.metarepo.values import Build, MainMoved
from schemas.names import MANAGER

REMOVE_ATTEMPTS = 5
"""Compare-and-swap attempts on main before ``remove_agent`` gives up (Conflict)."""


class Agents:
    """Per-agent reads and the operator's edit of main."""

    def __init__(
        self, core: MetaCore, index: RefIndex, describe: Describe, desired: Desired
    ) -> None:
        self.core = core
        self.index = index
        self.describe = describe
        self.desired = desired
        self._builds: dict[int, Build] = {}  # a started deploy's Build never changes

    def remove_agent(self, name: str, message: str, who: str = "operator") -> str:
        """Commit on main removing ``agents/<name>/`` (the operator's ``destroy``); returns it.

        Written like an operator push (the next pass records it as a ``push``
        deploy and prunes the agent). NotFound when main has no such directory;
        Invalid for the manager; Conflict when main kept moving meanwhile.
        """
        if name == MANAGER:
            raise Invalid("the manager cannot be removed from desired state", field="name")
        core = self.core
        repo = core.repo
        with core.lock:
            for _ in range(REMOVE_ATTEMPTS):
                main = core.main_oid()
                tree = core.commit(main).tree
                agents = subtree(repo, tree, AGENTS_DIR)
                if agents is None or name not in agents:
                    raise NotFound(f"agents/{name}/ is not in main", field="name")
                agents_tb = repo.TreeBuilder(agents)
                agents_tb.remove(name)
                root_tb = repo.TreeBuilder(tree)
                root_tb.insert(AGENTS_DIR, agents_tb.write(), pygit2.GIT_FILEMODE_TREE)
                author = core.sig(who, f"{who}@hyperhive.local")
                committer = core.sig(CONTROLLER_NAME, CONTROLLER_EMAIL)
                new = repo.create_commit(
                    None, author, committer, message.rstrip() + "\n", root_tb.write(), [main]
                )
                try:
                    core.update_main(new, main, f"{message.splitlines()[0]} (by {who})")
                except MainMoved:
                    continue
                self.desired.forget()
                return str(new)
            raise Conflict("main kept moving; try again")

    def agent_files(self, commit: str, name: str) -> tuple[str | None, str | None]:
        """``(agent.yaml, agent.nix)`` texts of ``agents/<name>/`` at ``commit`` (None: absent).
        NotFound when ``commit`` is not in meta.git."""
        core = self.core
        with core.lock:
            try:
                tree = core.repo[commit].peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError) as exc:
                raise NotFound(f"no commit {commit} in {core.path}") from exc
            agent = subtree(core.repo, subtree(core.repo, tree, AGENTS_DIR), name)
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
        core = self.core
        with core.lock:
            idx = self.index.refresh()
            out: list[dict[str, Any]] = []
            for id in sorted(idx.entries, reverse=True):
                e = idx.entries[id]
                if "building" not in e.targets and not (
                    "failed" in e.targets and "proposal" in e.targets
                ):
                    continue
                build = self._builds.get(id)
                if build is None:
                    build = self.describe.build(id)
                    if "building" in e.targets:
                        self._builds[id] = build
                if not build.touches(agent):
                    continue
                outcome = e.targets.get("failed") or e.targets.get("deployed")
                at: float | None = None
                if outcome is not None:
                    obj = core.repo.get(outcome)
                    if isinstance(obj, pygit2.Tag) and obj.tagger is not None:
                        at = float(obj.tagger.time)
                anchor = e.targets.get("building") or outcome
                if at is None and anchor is not None:
                    at = float(core.peel(anchor).commit_time)
                out.append(
                    {
                        "id": id,
                        "kind": build.kind.value,
                        "state": state_of(e).value,
                        "title": build.title,
                        "commit": build.commit,
                        "note": core.tag_message(outcome),
                        "at": at,
                        "tags": [f"{p}/{id}" for p in TAG_PREFIXES if p in e.targets],
                    }
                )
                if len(out) >= limit:
                    break
            return out

    def flake_ref(self, commit: str, agent: str) -> str:
        """The flake ref to build ``agent`` at ``commit``: ``git+file://<meta.git>?rev=<commit>#<agent>``."""
        return f"git+file://{self.core.path}?rev={commit}#{agent}"
