"""Reading proposals and deploys back: ``Proposal`` and ``Build`` values from the refs.

An id's subject is the commit of ``proposal/<id>`` (else ``building/<id>``); its
kind and base come from the controller's note (``controller.metarepo.notes``),
its agents from ``tree_change`` base → commit. Diffs are cached by (base, commit).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import pygit2

from controller.errors import NotFound
from controller.metarepo.core import MetaCore
from controller.metarepo.index import RefIndex
from controller.metarepo.names import MAX_DIFF_CHARS
from controller.metarepo.notes import Notes
from controller.metarepo.tags import Entry, state_of
from controller.metarepo.trees import TreeChange, tree_change
from controller.metarepo.values import Build
from controller.ops import Proposal, ProposalKind, ProposalState

DIFF_CACHE_MAX = 512


def kind_of(e: Entry, meta: Mapping[str, Any], commit: pygit2.Commit) -> ProposalKind:
    """An id's kind: the note's ``kind``, else ``push`` without ``proposal/<id>``, else
    from the commit message (``spawn …`` or an applied commit)."""
    kind = meta.get("kind")
    with contextlib.suppress(ValueError):
        if isinstance(kind, str):
            return ProposalKind(kind)
    if "proposal" not in e.targets:
        return ProposalKind.PUSH
    return ProposalKind.SPAWN if commit.message.startswith("spawn ") else ProposalKind.APPLY_COMMIT


def title_of(commit: pygit2.Commit) -> str:
    """The first line of ``commit``'s message."""
    return (commit.message.splitlines() or [""])[0]


class Describe:
    """Proposals and builds by id, over the ref index and the notes; callers of the
    public methods need not hold ``core.lock`` (they take it)."""

    def __init__(self, core: MetaCore, index: RefIndex, notes: Notes) -> None:
        self.core = core
        self.index = index
        self.notes = notes
        self._diffs: dict[tuple[str | None, str], str] = {}

    def compare(
        self, e: Entry, meta: Mapping[str, Any], commit: pygit2.Commit
    ) -> tuple[ProposalKind, str | None, pygit2.Tree | None, TreeChange]:
        """The kind of a proposal's ``commit`` (ref entry ``e``, note ``meta``) and its change.

        The base is the note's ``base``, else the commit's first parent (not for
        a push); returns (kind, base, the base's tree or None when there is none
        or it is unknown, ``tree_change`` from that tree to the commit's).
        """
        kind = kind_of(e, meta, commit)
        base = meta.get("base") if isinstance(meta.get("base"), str) else None
        if base is None and kind is not ProposalKind.PUSH and commit.parent_ids:
            base = str(commit.parent_ids[0])
        base_tree = None
        if base:
            with contextlib.suppress(KeyError, ValueError):
                base_tree = self.core.repo[base].peel(pygit2.Tree)
        return kind, base, base_tree, tree_change(self.core.repo, base_tree, commit.tree)

    def subject(self, id: int) -> tuple[pygit2.Commit, dict[str, Any]]:
        """``(commit, note entry)`` of ``id``: the proposal's commit, else the build's,
        else whatever ref carries the id. NotFound when none does."""
        e = self.index.entry(id)
        if e is None:
            raise NotFound(f"no proposal/{id}")
        oid = e.targets.get("proposal") or e.targets.get("building")
        if oid is None:
            # an outcome without building (crash) or a stray decision: show what we have
            oid = next(iter(e.targets.values()), None)
        if oid is None:
            raise NotFound(f"no proposal/{id}")
        commit = self.core.peel(oid)
        return commit, self.notes.for_id(str(commit.id), id)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy by id. NotFound if no ``proposal/<id>`` or
        ``building/<id>`` carries ``id``."""
        with self.core.lock:
            e = self.index.entry(id)
            if e is None or not ({"proposal", "building"} & e.targets.keys()):
                raise NotFound(f"no proposal/{id}")
            commit, meta = self.subject(id)
            kind, base, _, change = self.compare(e, meta, commit)
            tag_message = self.core.tag_message
            note = (
                tag_message(e.targets.get("failed"))
                or tag_message(e.targets.get("deployed"))
                or tag_message(e.targets.get("denied"))
                or tag_message(e.targets.get("approved"))
                or str(meta.get("note") or "")
            )
            created = meta.get("created_at")
            return Proposal(
                id=id,
                kind=kind,
                state=state_of(e),
                commit=str(commit.id),
                base=base,
                title=title_of(commit),
                agents=change.agents,
                diff=self.diff(base, commit),
                note=note,
                created_at=float(created)
                if isinstance(created, int | float)
                else float(commit.commit_time),
            )

    def diff(self, base: str | None, commit: pygit2.Commit) -> str:
        """The patch base → ``commit`` (from nothing when ``base`` is None or unknown),
        cut at ``MAX_DIFF_CHARS``."""
        key = (base, str(commit.id))
        cached = self._diffs.get(key)
        if cached is not None:
            return cached
        if base:
            try:
                diff = self.core.repo[base].peel(pygit2.Tree).diff_to_tree(commit.tree)
            except (KeyError, ValueError):
                diff = commit.tree.diff_to_tree(swap=True)
        else:
            diff = commit.tree.diff_to_tree(swap=True)
        text = diff.patch or ""
        if len(text) > MAX_DIFF_CHARS:
            text = text[:MAX_DIFF_CHARS] + f"\n[diff truncated at {MAX_DIFF_CHARS} characters]\n"
        if len(self._diffs) > DIFF_CACHE_MAX:
            self._diffs.clear()
        self._diffs[key] = text
        return text

    def proposals(self, pending_only: bool = False, limit: int | None = None) -> list[Proposal]:
        """Proposals and deploys, newest id first; ``pending_only``: awaiting a decision."""
        with self.core.lock:
            by_state = self.index.refresh().by_state()
            if pending_only:
                ids = sorted(by_state[ProposalState.PENDING], reverse=True)
            else:
                ids = sorted(itertools.chain.from_iterable(by_state.values()), reverse=True)
            out: list[Proposal] = []
            for id in ids:
                out.append(self.proposal(id))
                if limit is not None and len(out) >= limit:
                    break
            return out

    def ids_by_state(self) -> Mapping[ProposalState, tuple[int, ...]]:
        """Ids per state, ascending (refs only; worked out again only after a ref changed:
        ``Index.by_state``; read-only)."""
        with self.core.lock:
            return self.index.refresh().by_state()

    def build(self, id: int, main_commit: str | None = None) -> Build:
        """The ``Build`` of ``id``: deploying ``main_commit`` when given, else the commit of
        ``building/<id>``, else the subject's. NotFound when no ref carries ``id``."""
        commit, meta = self.subject(id)
        e = self.index.entry(id)
        assert e is not None
        kind, base, base_tree, change = self.compare(e, meta, commit)
        target = main_commit
        if target is None:
            b = e.targets.get("building")
            target = str(self.core.peel(b).id) if b is not None else str(commit.id)
        return Build(
            id=id,
            kind=kind,
            commit=target,
            base=base,
            agents=change.agents,
            flake_changed=change.flake_changed or base_tree is None,
            title=title_of(commit),
        )
