"""Check that the manager's meta clone holds its own objects before the controller reads it.

The manager owns its clone (``<state>/manager/meta``, writable inside its
sandbox), and ``MetaRepo.propose_commit`` opens it with libgit2 on the host to
copy a proposed commit into ``meta.git``. libgit2 follows whatever the clone
says, so without this check the manager could make the controller read other
repositories on the host and import their commits, which it could then read
back:

* ``.git`` as a file (``gitdir: /elsewhere``) or a symlink: the "clone" is
  another repository;
* ``objects/info/alternates`` (or ``http-alternates``): objects looked up in
  other object stores;
* a ``commondir`` file (worktrees): refs and objects from elsewhere;
* a symlink anywhere under ``objects/``: loose objects or packs read from
  elsewhere.

Anything of the kind refuses the proposal (``Invalid``, field ``commit``) and
names what was found and how to fix the clone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from controller.errors import Invalid

MAX_ENTRIES = 200_000
"""Object files a clone may hold before the check gives up (a meta repo holds far fewer)."""


def _refuse(clone: Path, what: str) -> Invalid:
    return Invalid(
        f"the meta clone {clone} {what}; the controller reads only a clone that holds its own "
        "objects (re-clone it: `git clone <meta.git> meta`)",
        field="commit",
    )


def contained_git_dir(clone: Path) -> Path:
    """``clone``'s ``.git`` directory after checking it reads nothing outside itself.

    Returns the path to open (``<clone>/.git``, or ``clone`` itself for a bare
    repository). Raises ``Invalid`` (field ``commit``) when the clone points
    anywhere else (see the module doc); ``NotADirectoryError`` /
    ``FileNotFoundError`` propagate for a clone that does not exist.
    """
    st = os.lstat(clone)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(clone, "is not a directory")
    git_dir = clone / ".git"
    try:
        st = os.lstat(git_dir)
    except FileNotFoundError:
        git_dir = clone  # a bare repository
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(clone, "has a .git that is a file or a link, not a directory")
    if os.path.lexists(git_dir / "commondir"):
        raise _refuse(clone, "is a linked worktree (it has a commondir file)")
    objects = git_dir / "objects"
    st = os.lstat(objects)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(clone, "has an objects entry that is not a directory")
    for name in ("alternates", "http-alternates"):
        alt = objects / "info" / name
        if os.path.lexists(alt) and (os.path.islink(alt) or alt.read_bytes().strip()):
            raise _refuse(clone, f"borrows objects from elsewhere (objects/info/{name})")
    seen = 0
    for root, dirs, files in os.walk(objects, followlinks=False):
        for name in dirs + files:
            seen += 1
            if os.path.islink(os.path.join(root, name)):
                rel = os.path.relpath(os.path.join(root, name), git_dir)
                raise _refuse(clone, f"has a symbolic link among its objects ({rel})")
        if seen > MAX_ENTRIES:
            raise _refuse(clone, f"holds more than {MAX_ENTRIES} object files")
    return git_dir
