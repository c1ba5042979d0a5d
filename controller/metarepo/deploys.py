"""The reconcile side: apply approved proposals, record pushes, write outcomes.

A deploy is ``building/<id>`` at the main commit being deployed, closed by
``deployed/<id>`` or ``failed/<id>`` (annotated: what happened);
``refs/hyperhive/last-deploy`` follows the newest build, so main differing from it
means the operator pushed to main (``record_push``). Denials are told to the
manager once (``refs/hyperhive/notified/<id>``).
"""

from __future__ import annotations

import pygit2
from pygit2.enums import ObjectType

from controller.errors import NotFound
from controller.metarepo.core import MetaCore, retry_locked
from controller.metarepo.describe import Describe, kind_of, title_of
from controller.metarepo.index import RefIndex
from controller.metarepo.names import LAST_DEPLOY_REF, NOTIFIED_PREFIX, OUTCOMES, tag_ref
from controller.metarepo.notes import Notes
from controller.metarepo.trees import tree_errors
from controller.metarepo.values import ApplyFailed, Build, Denial, MainMoved
from controller.ops import ProposalKind

APPLY_ATTEMPTS = 5
"""Compare-and-swap attempts on main before an apply gives up for this pass."""


class Deploys:
    """Builds, outcomes and denials over the ref index."""

    def __init__(self, core: MetaCore, index: RefIndex, notes: Notes, describe: Describe) -> None:
        self.core = core
        self.index = index
        self.notes = notes
        self.describe = describe

    def open_builds(self) -> list[Build]:
        """Every ``building/<id>`` without ``deployed/<id>`` or ``failed/<id>``, oldest first."""
        with self.core.lock:
            return [self.describe.build(id) for id in self.index.refresh().open_builds]

    def approved_unapplied(self) -> list[int]:
        """Ids with ``approved/<id>`` and no building / outcome yet, oldest first."""
        with self.core.lock:
            return list(self.index.refresh().approved)

    def denied_unnotified(self) -> list[Denial]:
        """``denied/<id>`` the manager has not been told about, oldest first."""
        with self.core.lock:
            idx = self.index.refresh()
            out = []
            for id in idx.denied:
                e = idx.entries[id]
                commit, meta = self.describe.subject(id)
                out.append(
                    Denial(
                        id=id,
                        kind=kind_of(e, meta, commit),
                        agents=self.describe.build(id).agents,
                        note=self.core.tag_message(e.targets["denied"]) or "(no reason given)",
                    )
                )
            return out

    def mark_notified(self, id: int) -> None:
        """Record that the manager was told about ``denied/<id>``. NotFound without it."""
        with self.core.lock:
            e = self.index.entry(id)
            if e is None or "denied" not in e.targets:
                raise NotFound(f"no denied/{id}")
            denied = self.core.peel(e.targets["denied"]).id
            retry_locked(
                lambda: self.core.repo.references.create(
                    f"{NOTIFIED_PREFIX}{id}", denied, force=True
                )
            )
            self.index.own("notified", id, None)

    def apply_approved(self, id: int) -> Build:
        """Apply approved ``proposal/<id>`` to main and write ``building/<id>``.

        Fast-forward when main is an ancestor of the proposal; a no-op when main
        already contains it (crash recovery); else a 3-way merge of trees with the
        merge base, committed on main with parents (main, proposal). Raises
        ApplyFailed (main untouched) on conflicts — naming the paths — or when the
        result's manifests fail the schema. The caller writes ``failed/<id>``.
        NotFound when ``id`` has no ``proposal/<id>`` and ``approved/<id>``.
        """
        with self.core.lock:
            for _ in range(APPLY_ATTEMPTS):
                try:
                    return self._apply_once(id)
                except MainMoved:
                    continue
            raise ApplyFailed("main kept moving while applying; will retry")

    def _apply_once(self, id: int) -> Build:
        core = self.core
        repo = core.repo
        e = self.index.entry(id)
        if e is None or "proposal" not in e.targets or "approved" not in e.targets:
            raise NotFound(f"no approved proposal/{id}")
        prop = core.peel(e.targets["proposal"])
        approved = core.peel(e.targets["approved"])
        if approved.id != prop.id:
            raise ApplyFailed(f"approved/{id} does not point at proposal/{id}'s commit")
        main = core.main_oid()
        main_commit = core.commit(main)
        title = title_of(prop)
        if prop.id == main or repo.descendant_of(main, prop.id):
            new_main = main
        elif repo.descendant_of(prop.id, main):
            errors = tree_errors(repo, prop.tree, main_commit.tree)
            if errors:
                raise ApplyFailed("the proposal is invalid: " + "; ".join(m for _, m in errors))
            new_main = prop.id
            core.update_main(new_main, main, f"proposal/{id}: fast-forward ({title})")
        else:
            base_oid = repo.merge_base(main, prop.id)
            ancestor = repo[base_oid].peel(pygit2.Tree) if base_oid is not None else None
            if ancestor is None:
                raise ApplyFailed(f"proposal/{id} shares no history with main")
            index = repo.merge_trees(ancestor, main_commit.tree, prop.tree)
            if index.conflicts is not None:
                paths = sorted(
                    {side.path for triple in index.conflicts for side in triple if side is not None}
                )
                raise ApplyFailed(
                    f"merge conflict with main in {', '.join(paths)}; main was left untouched "
                    "(rebase the change on origin/main and propose it again)"
                )
            tree_id = index.write_tree(repo)
            if tree_id == main_commit.tree_id:
                new_main = main
            else:
                merged = repo[tree_id]
                assert isinstance(merged, pygit2.Tree)
                errors = tree_errors(repo, merged, main_commit.tree)
                if errors:
                    raise ApplyFailed(
                        "the merged result is invalid: " + "; ".join(m for _, m in errors)
                    )
                sig = core.controller_sig()
                new_main = repo.create_commit(
                    None, sig, sig, f"merge proposal/{id}: {title}\n", tree_id, [main, prop.id]
                )
                core.update_main(new_main, main, f"proposal/{id}: merge ({title})")
        try:
            retry_locked(
                lambda: repo.references.create(tag_ref("building", id), new_main, force=False)
            )
            self.index.own("building", id, new_main)
        except pygit2.AlreadyExistsError:
            self.index.dirty = True
        retry_locked(lambda: repo.references.create(LAST_DEPLOY_REF, new_main, force=True))
        return self.describe.build(id, str(new_main))

    def record_push(self) -> Build | None:
        """If main moved with no deploy for it (a GitOps push): new id, ``building/<id>``.

        Returns the new Build, or None when main is already being/been deployed.
        """
        core = self.core
        repo = core.repo
        with core.lock:
            main = core.main_oid()
            last = repo.references.get(LAST_DEPLOY_REF)
            if last is not None and last.target == main:
                return None
            idx = self.index.refresh()
            for e in idx.entries.values():
                b = e.targets.get("building")
                if b is not None and b == main and not (OUTCOMES & e.targets.keys()):
                    retry_locked(lambda: repo.references.create(LAST_DEPLOY_REF, main, force=True))
                    return None
            base = str(last.target) if last is not None else None
            id = self.index.allocate("building", main)
            self.notes.set(
                str(main),
                id,
                {
                    "kind": ProposalKind.PUSH.value,
                    "base": base,
                    "note": "",
                    "created_at": core.clock(),
                },
            )
            retry_locked(lambda: repo.references.create(LAST_DEPLOY_REF, main, force=True))
            return self.describe.build(id, str(main))

    def finish(self, id: int, ok: bool, message: str) -> None:
        """Write annotated ``deployed/<id>`` (ok) or ``failed/<id>`` with ``message``.

        Targets ``building/<id>``'s commit, else the proposal commit (a proposal
        that failed before building). Idempotent: an existing outcome is kept.
        NotFound when ``id`` has neither.
        """
        core = self.core
        with core.lock:
            e = self.index.entry(id)
            if e is None:
                raise NotFound(f"no id {id}")
            if OUTCOMES & e.targets.keys():
                return
            target = e.targets.get("building") or e.targets.get("proposal")
            if target is None:
                raise NotFound(f"no building/{id} or proposal/{id}")
            prefix = "deployed" if ok else "failed"
            sig = core.controller_sig()
            try:
                commit = core.peel(target).id
                text = message.rstrip() + "\n"
                tag = retry_locked(
                    lambda: core.repo.create_tag(
                        f"{prefix}/{id}", commit, ObjectType.COMMIT, sig, text
                    )
                )
                self.index.own(prefix, id, tag)
            except pygit2.AlreadyExistsError:
                self.index.dirty = True
