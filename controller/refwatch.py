"""Notice the operator's decision tags landing in meta.git without waiting for the poke.

An approval reaches the controller through the post-receive hook's ``POST /poke``,
which runs only after ``git push``'s receive-pack has updated the refs and a fresh
Python interpreter has started (tens of milliseconds, more on a loaded machine).
The ref itself exists earlier: receive-pack writes ``refs/tags/approved/<id>``
as ``<id>.lock`` and renames it into place. :class:`RefWatch` watches those
directories with inotify (Linux, through ``ctypes``: no dependency) and asks for a
pass as soon as a decision tag appears; the poke still arrives and asks again (a
second pass with nothing left to do), so nothing depends on the watch.

Watched: ``refs/tags/approved/`` and ``refs/tags/denied/`` (created by git on the
first tag of each kind, so ``refs/tags/`` is watched for them), only tags the
operator writes: the controller's own refs (``building/``, ``deployed/``, main
after a merge) never wake it, so a pass does not ask for another. A push to main
(GitOps) and anything in ``packed-refs`` or a reftable still come through the poke.

Where inotify is missing (not Linux, or the per-user watch limit is reached), or
meta.git keeps its refs in a reftable (no files to watch), the watch logs why and
does nothing.

While the watch is on it keeps ``marker`` (``<run>/ref-watch.pid``, the controller's
pid): the post-receive hook's script (``controller.hooks.script``) then starts no
Python interpreter to poke for a push of decision tags only. The marker is removed
when the watch stops (or its thread ends); if the kernel drops events (its queue
overflowed), the watch asks for a pass anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

DECISIONS = ("approved", "denied")
"""The tag directories (under ``refs/tags/``) whose new refs ask for a pass."""


def parse_events(buf: bytes) -> list[tuple[int, int, str]]:
    """``(wd, mask, name)`` of each ``struct inotify_event`` in ``buf`` (name ``""`` when none)."""
    out: list[tuple[int, int, str]] = []
    at = 0
    while at + _HEADER.size <= len(buf):
        wd, mask, _cookie, size = _HEADER.unpack_from(buf, at)
        raw = buf[at + _HEADER.size : at + _HEADER.size + size]
        out.append((wd, mask, raw.split(b"\0", 1)[0].decode("utf-8", "replace")))
        at += _HEADER.size + size
    return out


def is_new_decision(mask: int, name: str) -> bool:
    """True for an event that means a decision ref appeared (not git's ``.lock`` file)."""
    return (
        bool(mask & (IN_MOVED_TO | IN_CREATE))
        and not mask & IN_ISDIR
        and (bool(name) and not name.endswith(".lock"))
    )


class _Inotify:
    """The three libc calls, raising ``OSError`` with errno."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd

    def add(self, path: Path, mask: int) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), str(path))
        return wd


class RefWatch:
    """Calls ``on_ref(reason)`` when a decision tag appears in ``meta_git`` (a bare repo).

    ``reason`` is ``approved/<id> (ref watch)`` (or ``denied/…``; the metrics count it
    as an approval trigger).

    :meth:`start` runs a daemon thread blocked in ``poll`` (no wake-ups while nothing
    changes); :meth:`stop` ends it. ``on_ref`` must not block (it is
    ``Swarm.request_pass``). ``marker``: a file holding this process's pid while the
    watch is on (see the module docstring); None writes none.
    """

    def __init__(
        self, meta_git: Path, on_ref: Callable[[str], None], marker: Path | None = None
    ) -> None:
        self.meta_git = meta_git
        self.on_ref = on_ref
        self.marker = marker
        self._ino: _Inotify | None = None
        self._tags_wd = -1
        self._decision_wds: dict[int, str] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Set the watches and start the thread; False (logged) when inotify is unavailable
        or the refs are not files."""
        self._drop_marker()  # a previous controller's, killed before it could remove it
        if (self.meta_git / "reftable").exists():
            log.warning("ref watch off: meta.git keeps its refs in a reftable (the "
                        "post-receive poke still starts passes)")  # fmt: skip
            self._close()
            return False
        try:
            self._ino = _Inotify()
            self._tags_wd = self._ino.add(self.meta_git / "refs" / "tags", IN_CREATE | IN_MOVED_TO)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.warning("ref watch off (the post-receive poke still starts passes): %s", exc)
            self._close()
            return False
        for kind in DECISIONS:
            self._watch_decisions(kind)
        self._thread = threading.Thread(target=self._run, name="ref-watch", daemon=True)
        self._thread.start()
        self._write_marker()
        return True

    def stop(self) -> None:
        """End the thread and close the inotify descriptor."""
        self._drop_marker()
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5.0)
            self._thread = None
        self._close()

    def _write_marker(self) -> None:
        if self.marker is None:
            return
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.marker.with_name(f".{self.marker.name}.tmp")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.marker)
        except OSError as exc:  # the hooks then poke, as without the watch
            log.warning("ref watch: cannot write %s: %s", self.marker, exc)

    def _drop_marker(self) -> None:
        if self.marker is not None:
            with contextlib.suppress(OSError):
                self.marker.unlink()

    def _close(self) -> None:
        if self._ino is not None:
            os.close(self._ino.fd)
            self._ino = None
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def _watch_decisions(self, kind: str) -> bool:
        """Watch ``refs/tags/<kind>/``; True when it exists and is now watched."""
        assert self._ino is not None
        try:
            wd = self._ino.add(self.meta_git / "refs" / "tags" / kind, IN_CREATE | IN_MOVED_TO)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("ref watch: cannot watch refs/tags/%s: %s", kind, exc)
            return False
        self._decision_wds[wd] = kind
        return True

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # no watch, no marker: the hooks poke again
            self._drop_marker()

    def _loop(self) -> None:
        assert self._ino is not None
        poller = select.poll()
        poller.register(self._ino.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._ino.fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.warning("ref watch stopped: %s", exc)
                return
            self._handle(parse_events(buf))

    def _handle(self, events: list[tuple[int, int, str]]) -> None:
        asked = False
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW and not asked:  # events were lost: look anyway
                asked = True
                self.on_ref("decisions (ref watch overflowed)")
            elif mask & IN_IGNORED:
                self._decision_wds.pop(wd, None)  # the directory went (git prunes empty ones)
            elif wd == self._tags_wd and mask & IN_ISDIR and name in DECISIONS:
                # a first tag of this kind: git made the directory and may have put the
                # tag there before the watch exists, so ask for a pass anyway
                if self._watch_decisions(name) and not asked:
                    asked = True
                    self.on_ref(f"{name}/ (ref watch)")
            elif wd in self._decision_wds and is_new_decision(mask, name) and not asked:
                asked = True
                self.on_ref(f"{self._decision_wds[wd]}/{name} (ref watch)")
