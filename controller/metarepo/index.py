"""The tag index: every id's refs, read from the ref storage only when it changed.

``RefIndex.refresh`` rebuilds the ``controller.metarepo.tags.Index`` when the ref
storage's fingerprint (packed-refs and the tag directories' stat) changed, or
was too recent to trust (``RACY_NS``), or the controller wrote a ref it did not
record (``dirty``); so a no-op pass does not grow with the number of tags.
Inside ``pass_scope`` the index is read once and then held for the pass thread,
with the controller's own ref writes applied in place (``own``). ``allocate``
hands out ids. Callers hold ``core.lock``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pygit2

from controller.metarepo.core import MetaCore, retry_locked
from controller.metarepo.names import NOTIFIED_PREFIX, RACY_NS, TAG_PREFIXES, parse_id, tag_ref
from controller.metarepo.tags import Entry, Index, split_tag


class RefIndex:
    """The cached tag index of ``core.repo`` and when it must be re-read."""

    def __init__(self, core: MetaCore) -> None:
        self.core = core
        self.index: Index | None = None
        self.dirty = True  # the controller wrote a ref the index does not show
        self.scope_owner: int | None = None  # the thread in pass_scope, if any
        self.scope_checked = False  # ...and whether it checked the ref storage yet

    def fingerprint(self) -> tuple[tuple[Any, ...], bool]:
        """``(stat of the ref storage, racy)``: (inode, mtime ns, size) of packed-refs and
        the tag directories (None: absent); ``racy`` when one changed within ``RACY_NS``."""
        git = self.core.path
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
        place (``own``). A ref an operator pushes meanwhile is seen by the next
        pass — the hook's poke asks for one. So a pass that writes a few tags
        reads the ref storage once, not after every write.
        """
        with self.core.lock:
            self.scope_owner = threading.get_ident()
            self.scope_checked = False
        try:
            yield
        finally:
            with self.core.lock:
                self.scope_owner = None
                self.scope_checked = False

    def frozen(self) -> bool:
        """True in the pass thread's scope once the ref storage was checked."""
        return self.scope_checked and self.scope_owner == threading.get_ident()

    def own(self, prefix: str, id: int, target: pygit2.Oid | None) -> None:
        """Record a ref the controller itself just wrote (``notified``: target None)."""
        idx = self.index
        if idx is None or self.dirty or not self.frozen():
            self.dirty = True
            return
        e = idx.entries.setdefault(id, Entry())
        if prefix == "notified":
            e.notified = True
        elif target is not None:
            e.targets[prefix] = target
            idx.max_id = max(idx.max_id, id)
        idx.classify()

    def refresh(self) -> Index:
        """The index, rebuilt from every ref when the ref storage may have changed."""
        idx = self.index
        if idx is not None and not self.dirty and self.frozen():
            return idx
        fp, racy = self.fingerprint()
        if idx is not None and not self.dirty and not idx.racy and idx.fingerprint == fp:
            if self.scope_owner == threading.get_ident():
                self.scope_checked = True
            return idx
        entries: dict[int, Entry] = {}
        max_id = 0
        for ref in self.core.repo.references.iterator():
            name = ref.name
            if name.startswith(NOTIFIED_PREFIX):
                nid = parse_id(name[len(NOTIFIED_PREFIX) :])
                if nid is not None:
                    entries.setdefault(nid, Entry()).notified = True
                continue
            parsed = split_tag(name)
            if parsed is None:
                continue
            prefix, id = parsed
            target = ref.target
            if not isinstance(target, pygit2.Oid):
                continue
            entries.setdefault(id, Entry()).targets[prefix] = target
            max_id = max(max_id, id)
        index = Index(entries, max_id, fp, racy)
        index.classify()
        self.index = index
        self.dirty = False
        if self.scope_owner == threading.get_ident():
            self.scope_checked = True
        return index

    def entry(self, id: int) -> Entry | None:
        """The refs of ``id``; None when no ref carries it."""
        return self.refresh().entries.get(id)

    def allocate(self, prefix: str, target: pygit2.Oid) -> int:
        """Create ``refs/tags/<prefix>/<n>`` for the next free id; race-safe by the create."""
        n = self.refresh().max_id + 1
        while True:
            try:
                create = self.core.repo.references.create
                retry_locked(partial(create, tag_ref(prefix, n), target, force=False))
            except pygit2.AlreadyExistsError:
                n += 1
                continue
            self.own(prefix, n, target)
            return n
