"""Desired state at main: every valid ``agents/<name>/agent.yaml``, with its digests.

Cached by main commit, and each agent by its tree id, so a pass with no change
reads one ref and a new commit re-reads only the agents it changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import pygit2

from controller.manifest import (
    MANIFEST_FILE,
    NIX_FILE,
    ManifestInvalid,
    manifest_path,
    parse_manifest,
)
from controller.metarepo.core import MetaCore
from controller.metarepo.digests import build_digest
from controller.metarepo.names import AGENTS_DIR, FLAKE_FILE, LOCK_FILE
from controller.metarepo.trees import entry_id, subtree
from controller.metarepo.values import AgentRead
from controller.model import DesiredAgent, DesiredState
from schemas.names import is_agent_name


def read_agent(name: str, entry: pygit2.Object) -> AgentRead:
    """``agents/<name>`` (tree entry ``entry``) read and validated; never raises: an
    invalid agent is an ``AgentRead`` with ``manifest`` None and ``error`` set."""
    path = manifest_path(name)
    if not is_agent_name(name):
        return AgentRead(None, "", "", f"agents/{name}/: not a valid agent name")
    if not isinstance(entry, pygit2.Tree):
        return AgentRead(None, "", "", f"agents/{name}: must be a directory")
    if MANIFEST_FILE not in entry:
        return AgentRead(None, "", "", f"{path}: is missing")
    blob = entry[MANIFEST_FILE]
    nix_id = str(entry[NIX_FILE].id) if NIX_FILE in entry else ""
    if not isinstance(blob, pygit2.Blob):
        return AgentRead(None, "", nix_id, f"{path}: must be a file")
    try:
        manifest = parse_manifest(blob.data, name)
    except ManifestInvalid as exc:
        return AgentRead(None, str(blob.id), nix_id, str(exc))
    return AgentRead(manifest, str(blob.id), nix_id, None)


class Desired:
    """The desired-state reader and its caches."""

    def __init__(self, core: MetaCore) -> None:
        self.core = core
        self._desired: tuple[str, DesiredState, dict[str, str]] | None = None
        self._agents: dict[tuple[str, str], AgentRead] = {}

    def forget(self) -> None:
        """Drop the cached state (main was moved by the controller itself)."""
        with self.core.lock:
            self._desired = None

    def checked(self) -> tuple[DesiredState, Mapping[str, str]]:
        """``(desired, invalid)`` at main: ``invalid`` maps agent dir → error message.
        NotFound when main is missing."""
        core = self.core
        with core.lock:
            main = core.main_oid()
            key = str(main)
            if self._desired is not None and self._desired[0] == key:
                return self._desired[1], self._desired[2]
            commit = core.repo[main]
            assert isinstance(commit, pygit2.Commit)
            tree = commit.tree
            flake_id = entry_id(tree, FLAKE_FILE)
            lock_id = entry_id(tree, LOCK_FILE)
            agents_tree = subtree(core.repo, tree, AGENTS_DIR)
            agents: dict[str, DesiredAgent] = {}
            invalid: dict[str, str] = {}
            cache: dict[tuple[str, str], AgentRead] = {}
            for entry in agents_tree if agents_tree is not None else ():
                name = entry.name or ""
                ckey = (name, str(entry.id))
                read = self._agents.get(ckey) or read_agent(name, entry)
                cache[ckey] = read
                if read.manifest is None:
                    invalid[name] = read.error or "invalid"
                    continue
                agents[name] = DesiredAgent(
                    name=name,
                    manifest=read.manifest,
                    commit=key,
                    config_digest=read.config_digest,
                    build_digest=build_digest(read.nix_id, flake_id, lock_id, core.version),
                    has_nix=bool(read.nix_id),
                )
            self._agents = cache
            state = DesiredState(commit=key, agents=agents, hyperhive_version=core.version)
            self._desired = (key, state, invalid)
            return state, invalid
