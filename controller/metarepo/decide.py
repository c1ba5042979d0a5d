"""The operator's decisions: ``approved/<id>`` and ``denied/<id>`` on a proposal."""

from __future__ import annotations

import pygit2
from pygit2.enums import ObjectType

from controller.errors import Conflict, NotFound
from controller.metarepo.core import MetaCore, retry_locked
from controller.metarepo.describe import Describe
from controller.metarepo.index import RefIndex
from controller.metarepo.names import tag_ref
from controller.ops import Proposal


class Decide:
    """Approve or deny a proposal (the dashboard's and the CLI's way; a push of the tag
    is the other, judged by the pre-receive hook)."""

    def __init__(self, core: MetaCore, index: RefIndex, describe: Describe) -> None:
        self.core = core
        self.index = index
        self.describe = describe

    def approve(self, id: int, note: str = "", who: str = "operator") -> Proposal:
        """Write ``approved/<id>`` at the proposal commit (annotated when ``note`` is given).

        NotFound without ``proposal/<id>``; Conflict when already decided.
        """
        return self._decide("approved", id, note, who)

    def deny(self, id: int, note: str, who: str = "operator") -> Proposal:
        """Write annotated ``denied/<id>`` with ``note`` as the reason. NotFound / Conflict."""
        return self._decide("denied", id, note or "denied", who)

    def _decide(self, prefix: str, id: int, note: str, who: str) -> Proposal:
        core = self.core
        with core.lock:
            e = self.index.entry(id)
            if e is None or "proposal" not in e.targets:
                raise NotFound(f"no proposal/{id}")
            for done in ("approved", "denied", "failed"):
                if done in e.targets:
                    raise Conflict(f"proposal/{id} is already {done}")
            target = e.targets["proposal"]
            try:
                if note:
                    sig = core.sig(who, f"{who}@hyperhive.local")
                    retry_locked(
                        lambda: core.repo.create_tag(
                            f"{prefix}/{id}", target, ObjectType.COMMIT, sig, note + "\n"
                        )
                    )
                else:
                    retry_locked(
                        lambda: core.repo.references.create(
                            tag_ref(prefix, id), target, force=False
                        )
                    )
            except pygit2.AlreadyExistsError as exc:
                raise Conflict(f"proposal/{id} was decided meanwhile") from exc
            finally:
                self.index.dirty = True
            return self.describe.proposal(id)
