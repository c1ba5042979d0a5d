"""Hook input and the meta.git ref names the hooks judge (stdlib only).

The names mirror ``controller.metarepo`` (a test checks they agree); they are
repeated here so a hook never imports pygit2 or the manifest schema just to
read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

MAIN_REF = "refs/heads/main"
NOTES_REF = "refs/notes/hyperhive"
LAST_DEPLOY_REF = "refs/hyperhive/last-deploy"
TAG_PREFIXES = ("proposal", "approved", "denied", "building", "deployed", "failed")
CONTROLLER_PREFIXES = ("proposal", "building", "deployed", "failed")
OUTCOME_PREFIXES = ("building", "deployed", "failed")
MANAGER_PREFIX = "refs/hyperhive/manager/"
"""The manager's push namespace on meta.git (``controller.githttp``): a remote manager
pushes the commit it proposes here, then ``request_apply_commit`` takes it from here."""
MAX_MANAGER_REFS = 100
"""Most refs the manager's namespace may hold after a push (each proposed commit's ref is
deleted when its proposal is written; refused ones stay until the manager deletes them)."""
PUSHER_ENV = "HYPERHIVE_PUSHER"
"""Who pushes, as ``controller.githttp`` tells the hooks: ``operator`` or ``manager``;
unset for a push on the file system (the operator's)."""


class RefUpdate(NamedTuple):
    """One line of hook input: ``<old> <new> <ref>`` (all-zero id = absent).

    A ``NamedTuple`` rather than a frozen dataclass: ``dataclasses`` imports ``inspect``,
    ~8 ms of CPU in every push's pre-receive check."""

    old: str
    new: str
    ref: str

    @property
    def creates(self) -> bool:
        """The ref did not exist before."""
        return set(self.old) == {"0"}

    @property
    def deletes(self) -> bool:
        """The push removes the ref."""
        return set(self.new) == {"0"}


def parse_updates(lines: Sequence[str]) -> list[RefUpdate]:
    """Parse hook stdin lines; blank or malformed lines are skipped."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            out.append(RefUpdate(parts[0], parts[1], parts[2]))
    return out


def tag_ref(prefix: str, id: int) -> str:
    """``refs/tags/<prefix>/<id>``."""
    return f"refs/tags/{prefix}/{id}"


def parse_id(text: str) -> int | None:
    """A positive decimal id without leading zeros, else None."""
    if not text or not text.isdigit() or text.startswith("0") or len(text) > 18:
        return None
    return int(text)


def is_object_id(text: str) -> bool:
    """True for a full lowercase hex object id (SHA-1 or SHA-256)."""
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)
