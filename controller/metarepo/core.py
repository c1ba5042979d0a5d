"""What every part of the meta repo shares: the repo, its lock, the clock, main.

``MetaCore`` holds the collaborators (layout, config, the pygit2 repo, clock,
hyperhive version) and the one lock every public method of ``MetaRepo`` takes
(re-entrant: a verb calls others under it). Its helpers read main, move it by
compare-and-swap, peel a ref's target and read a tag's message.

``retry_locked`` waits out another git process' lock on a ref, as git's own CLI does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pygit2

from controller.config import Config
from controller.errors import NotFound
from controller.metarepo.names import CONTROLLER_EMAIL, CONTROLLER_NAME, MAIN_REF
from controller.metarepo.values import MainMoved
from controller.paths import Layout

T = TypeVar("T")

LOCK_WAIT_SECONDS = 2.0
"""How long a ref write waits for another process' lock on that ref before it fails."""


def _held_lock(exc: Exception) -> bool:
    # libgit2 reports it as an OSError (a ref or note write) or a GitError (a transaction's
    # lock_ref), both worded so: "failed to lock file '<ref>.lock' for writing"
    return "failed to lock file" in str(exc)


def retry_locked(write: Callable[[], T], wait: float = LOCK_WAIT_SECONDS) -> T:
    """``write()``, tried again (5 ms, doubling to 100 ms apart) for up to ``wait`` seconds
    while another process holds the lock file of a ref it writes; then its error is raised.

    git's CLI waits for a held ref lock the same way (``core.filesRefLockTimeout``, 100 ms;
    ``core.packedRefsTimeout``, 1 s: git-config(1)); libgit2, under pygit2, fails at once.
    Who holds one on meta.git besides the controller: a push's ``receive-pack`` (its own
    refs), and ``git gc --auto`` after a receive packing loose refs (each locked while it is
    removed). A write that failed on a lock wrote no ref, so trying it again is safe. Any
    other error is raised at once.
    """
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            return write()
        except (OSError, pygit2.GitError) as exc:
            left = deadline - time.monotonic()
            if not _held_lock(exc) or left <= 0:
                raise
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


class MetaCore:
    """The shared state of one meta repo: ``repo`` at ``path`` (= ``layout.meta_git``),
    ``clock`` (unix seconds, for tag, note and commit times), ``version`` (the hyperhive
    version folded into build digests) and ``lock``."""

    def __init__(
        self,
        layout: Layout,
        config: Config,
        repo: pygit2.Repository,
        clock: Callable[[], float],
        version: str,
    ) -> None:
        self.layout = layout
        self.config = config
        self.repo = repo
        self.path: Path = layout.meta_git
        self.version = version
        self.clock = clock
        self.lock = threading.RLock()

    def sig(self, name: str, email: str) -> pygit2.Signature:
        """A signature for ``name <email>`` at the clock's time, UTC."""
        return pygit2.Signature(name, email, int(self.clock()), 0)

    def controller_sig(self) -> pygit2.Signature:
        """The controller's own signature (``hyperhive <hyperhive@localhost>``), now."""
        return self.sig(CONTROLLER_NAME, CONTROLLER_EMAIL)

    def main_oid(self) -> pygit2.Oid:
        """The commit at ``refs/heads/main``; NotFound when the ref is missing."""
        ref = self.repo.references.get(MAIN_REF)
        if ref is None:
            raise NotFound(f"{self.path}: refs/heads/main is missing")
        return ref.resolve().target  # type: ignore[return-value]

    def commit(self, oid: pygit2.Oid) -> pygit2.Commit:
        """The commit object ``oid`` (a main commit: known to be a commit)."""
        commit = self.repo[oid]
        assert isinstance(commit, pygit2.Commit)
        return commit

    def update_main(self, new: pygit2.Oid, expected: pygit2.Oid, message: str) -> None:
        """Compare-and-swap main from ``expected`` to ``new`` (reflog ``message``);
        ``MainMoved`` when main is no longer ``expected``. Waits out another process'
        lock on main (``retry_locked``)."""

        def swap() -> None:
            with self.repo.transaction() as txn:
                txn.lock_ref(MAIN_REF)
                if self.main_oid() != expected:
                    raise MainMoved()
                txn.set_target(MAIN_REF, new, message=message)

        retry_locked(swap)

    def peel(self, oid: pygit2.Oid) -> pygit2.Commit:
        """The commit ``oid`` names (through annotated tags)."""
        obj = self.repo[oid]
        return obj.peel(pygit2.Commit)

    def tag_message(self, oid: pygit2.Oid | None) -> str:
        """The stripped message of annotated tag ``oid``; "" for None or a lightweight ref."""
        if oid is None:
            return ""
        obj = self.repo.get(oid)
        return obj.message.strip() if isinstance(obj, pygit2.Tag) and obj.message else ""
