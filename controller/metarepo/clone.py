"""The manager's working clone ``<state>/manager/meta``: made, kept in sync, unshared.

The manager's sandbox binds this clone read-write, so it must share no file with
meta.git (``ensure_manager_clone`` clones over ``file://``; ``unshare_object_files``
gives a clone made the old way, with hardlinked object files, its own copies).
``sync_manager_clone`` points the clone's ``origin/main`` at main.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

import pygit2

from controller.metarepo.core import MetaCore
from controller.metarepo.objects import copy_objects
from schemas.names import MANAGER

log = logging.getLogger("controller.metarepo")

ORIGIN_MAIN = "refs/remotes/origin/main"


def ensure_manager_clone(core: MetaCore) -> Path:
    """Create ``<state>/manager/meta`` (a normal clone, branch main) if missing; its path.

    The manager's sandbox binds this clone read-write, so it must share no file
    with meta.git: it is cloned from a ``file://`` URL (a fetch, which writes its
    own pack; a plain local path makes libgit2 hardlink meta.git's object files,
    and the manager could then rewrite them in place). An existing clone made the
    old way has its hardlinked object files copied once (``unshare_object_files``).
    A non-empty directory that is no clone is left alone.
    """
    clone = core.layout.manager_meta
    if (clone / ".git").exists():
        if (n := unshare_object_files(clone)) > 0:
            log.info("%s: copied %d object file(s) hardlinked with meta.git", clone, n)
        return clone
    clone.parent.mkdir(parents=True, exist_ok=True)
    if clone.exists() and any(clone.iterdir()):
        return clone  # something else lives there: leave it alone
    url = Path(os.path.abspath(core.path)).as_uri()
    repo = pygit2.clone_repository(url, str(clone), checkout_branch="main")
    repo.config["user.name"] = MANAGER
    repo.config["user.email"] = f"{MANAGER}@hyperhive.local"
    return clone


def sync_manager_clone(core: MetaCore) -> bool:
    """Point the clone's ``origin/main`` at main (objects copied; working tree untouched).

    Returns True when it moved, False when it was there already or there is no
    clone. The manager rebases onto ``origin/main``.
    """
    clone = core.layout.manager_meta
    if not (clone / ".git").exists():
        return False
    with core.lock:
        main = core.main_oid()
        try:
            dst = pygit2.Repository(str(clone))
        except pygit2.GitError:
            return False
        ref = dst.references.get(ORIGIN_MAIN)
        if ref is not None and ref.target == main:
            return False
        copy_objects(core.repo, dst, main)
        dst.references.create(ORIGIN_MAIN, main, force=True)
        return True


def unshare_object_files(clone: Path) -> int:
    """Give every object file of ``clone/.git/objects`` with other hard links its own copy.

    Returns how many files were copied. The clone is the manager's (it may be
    writing to it right now): no symlink is followed anywhere (every step goes
    through a directory fd opened with ``O_NOFOLLOW``), the copy is written to a
    fresh ``O_EXCL`` file beside the original and renamed over it, so a reader sees
    the old or the new file, both with the same content and mode. A file that
    changes under us is skipped. ``OSError`` when ``.git/objects`` cannot be opened.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(clone, flags)
    try:
        git_dir = os.open(".git", flags, dir_fd=top)
        try:
            objects = os.open("objects", flags, dir_fd=git_dir)
        finally:
            os.close(git_dir)
    finally:
        os.close(top)
    copied = 0
    try:
        for _dir, _subdirs, files, dir_fd in os.fwalk(".", dir_fd=objects, follow_symlinks=False):
            for name in files:
                with contextlib.suppress(OSError):
                    copied += _unshare_file(name, dir_fd)
    finally:
        os.close(objects)
    return copied


def _unshare_file(name: str, dir_fd: int) -> int:
    """Copy ``name`` (in ``dir_fd``) over itself if it is a regular file with nlink > 1.

    Returns 1 when copied, else 0.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return 0
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    tmp = f".{name}.{os.urandom(6).hex()}.unshare"
    try:
        got = os.fstat(src)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            return 0  # replaced meanwhile
        dst = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            stat.S_IMODE(st.st_mode) | stat.S_IWUSR,
            dir_fd=dir_fd,
        )
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(dst, chunk)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.fsync(dst)
        finally:
            os.close(dst)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return 1
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(src)
