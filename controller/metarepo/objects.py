"""Objects a manager made: sized from their headers before anything is loaded, then copied.

A manager's clone or push can hold a blob of gigabytes of zeros in a few hundred
KiB of pack, so every walk here reads an object's size from its header
(``repo.odb.read_header``) and refuses it before inflating it: ``oversized`` (new
files of a proposed tree), ``peel_small`` (a ref's commit), ``new_objects`` (a
history walk), ``copy_objects`` (clone → meta.git, or meta.git → clone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pygit2

from controller.errors import Invalid
from controller.metarepo.names import (
    MAX_PROPOSAL_BLOB_BYTES,
    MAX_PROPOSAL_NEW_BYTES,
    MAX_PROPOSAL_OBJECT_BYTES,
)


def object_size(repo: pygit2.Repository, oid: pygit2.Oid) -> int:
    """An object's size in bytes from its header: nothing is inflated (a blob a manager
    made could be gigabytes of zeros in a few hundred KiB of pack)."""
    return int(repo.odb.read_header(oid)[1])


def blobs(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = ""
) -> Iterator[tuple[str, pygit2.Oid]]:
    """``(path, id)`` of every blob under ``tree`` (submodule links skipped); no blob read."""
    for e in tree:
        path = f"{prefix}{e.name}"
        if e.filemode == pygit2.GIT_FILEMODE_TREE:
            sub = repo[e.id]
            if isinstance(sub, pygit2.Tree):
                yield from blobs(repo, sub, path + "/")
        elif e.filemode != pygit2.GIT_FILEMODE_COMMIT:
            yield path, e.id


def oversized(
    repo: pygit2.Repository, new: pygit2.Tree, old: pygit2.Tree | None
) -> tuple[str, str] | None:
    """``(path, message)`` when ``new`` adds a file over ``MAX_PROPOSAL_BLOB_BYTES`` or more
    than ``MAX_PROPOSAL_NEW_BYTES`` of files ``old`` lacks; None when it is within both.
    Reads object headers only."""
    known = {oid for _, oid in blobs(repo, old)} if old is not None else set()
    total = 0
    for path, oid in blobs(repo, new):
        if oid in known:
            continue
        known.add(oid)
        size = object_size(repo, oid)
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


def peel_small(repo: pygit2.Repository, oid: object) -> pygit2.Commit | None:
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
