"""The controller's note on each proposal / pushed main commit (``refs/notes/hyperhive``).

One JSON note per commit, ``{"<id>": {"kind", "base", "note", "created_at"}}``
(``git log --notes=hyperhive``): a commit proposed or pushed twice carries one
entry per id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pygit2

from controller.metarepo.core import MetaCore, retry_locked
from controller.metarepo.names import NOTES_REF


class Notes:
    """Read and write the per-id notes; callers hold ``core.lock``."""

    def __init__(self, core: MetaCore) -> None:
        self.core = core

    def read(self, commit: str) -> dict[str, Any]:
        """The whole note on ``commit`` (hex) as a dict; ``{}`` when absent or not JSON."""
        try:
            note = self.core.repo.lookup_note(commit, NOTES_REF)
        except (KeyError, pygit2.GitError):
            return {}
        try:
            doc = json.loads(note.message)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def for_id(self, commit: str, id: int) -> dict[str, Any]:
        """The entry of ``id`` in ``commit``'s note; ``{}`` when absent."""
        meta = self.read(commit).get(str(id))
        return meta if isinstance(meta, dict) else {}

    def set(self, commit: str, id: int, meta: Mapping[str, Any]) -> None:
        """Write ``meta`` as ``id``'s entry on ``commit``, keeping the other ids' entries."""
        doc = self.read(commit)
        doc[str(id)] = dict(meta)
        sig = self.core.controller_sig()
        text = json.dumps(doc, sort_keys=True)
        retry_locked(lambda: self.core.repo.create_note(text, sig, sig, commit, NOTES_REF, True))
