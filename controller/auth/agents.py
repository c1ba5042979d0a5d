"""Per-agent broker credentials: ``<state>/agents/<agent>/credential`` (0600).

``Swarm`` issues one before an agent (or the manager) is first created and
issues a fresh one on every recreate (rotation), and removes it on destroy,
so a tombstone never carries a live credential. The agent's sandbox sees
only its own file (``/etc/hyperhive/credential`` in a container,
``$HYPERHIVE_CREDENTIAL_FILE``); the harness sends it as ``Authorization:
Bearer`` on every broker request and the agent socket checks it against the
socket's identity (``verify``). The token alone also names its agent
(``identify``), for surfaces that have no per-agent socket (TCP, later).

Reads are cached per agent and keyed by the file's identity (device, inode,
size, mtime, ctime), so a file rotated by another process (or by hand) is
honoured on the next request at the cost of one ``stat``. That ``stat`` is
kept on every request: an inotify watch would tell of a change only once its
event is read, and would miss a directory above the file being replaced.
``header_check`` is the per-socket form of ``verify``: it takes the raw
``Authorization`` value, so the usual ``Bearer <token>`` header costs one
``stat`` and one constant-time compare.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.auth.bearer import bearer_token
from controller.auth.secretfile import (
    CredentialError,
    create_secret,
    new_secret,
    read_secret_stat,
    write_secret,
)
from controller.paths import Layout
from schemas.names import is_agent_name

Stamp = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class _Cached:
    """One agent's credential as read: the file's ``stamp`` (``_stamp``) when read, the
    ``token``, its SHA-256 ``digest`` (``identify``'s index), and the bytes compared on
    every request (``raw``: the token; ``header``: ``Bearer <token>``)."""

    stamp: Stamp
    token: str
    digest: bytes
    raw: bytes
    header: bytes


def _cached(stamp: Stamp, token: str) -> _Cached:
    raw = token.encode("ascii")  # read_secret only returns urlsafe base64
    return _Cached(stamp, token, hashlib.sha256(raw).digest(), raw, b"Bearer " + raw)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", errors="replace")).digest()


def _stamp(st: os.stat_result) -> Stamp:
    # ctime too: a rewrite in place that keeps the size and puts the mtime back (utime)
    # still moves it, and nobody can set it
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refuse(header: bytes | None) -> bool:
    return False


class AgentCredentials:
    """Issue, rotate, check and remove the agents' credentials under ``layout``.

    Thread-safe. Agent names are checked (``schemas.names.is_agent_name``):
    ``ValueError`` for anything else, so no name can reach outside
    ``<state>/agents``.

    ``rescan_every`` (seconds, default 0: every time) bounds how often ``identify``
    re-reads every agent's file on a miss. A TCP listener answers strangers, and
    each wrong token would otherwise cost a ``stat`` per agent; credentials this
    instance issues are known at once, so a bound only delays a credential written
    by another process.
    """

    def __init__(self, layout: Layout, *, rescan_every: float = 0.0) -> None:
        self.layout = layout
        self.rescan_every = rescan_every
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        # agent → its credential's path: building it with pathlib was ~15 µs of every
        # agent request (docs/broker.md); a name's path never changes
        self._paths: dict[str, Path] = {}
        # SHA-256 of each cached credential → its agent, for ``identify``: a dict lookup by
        # the digest of a secret leaks nothing about the secret through its timing
        self._index: dict[bytes, str] = {}
        self._scanned = float("-inf")

    def _put(self, agent: str, cached: _Cached) -> None:
        """Cache ``agent``'s credential (caller holds the lock)."""
        self._drop(agent)
        self._cache[agent] = cached
        self._index[cached.digest] = agent

    def _drop(self, agent: str) -> None:
        """Forget ``agent``'s cached credential (caller holds the lock)."""
        old = self._cache.pop(agent, None)
        if old is not None and self._index.get(old.digest) == agent:
            del self._index[old.digest]

    def path(self, agent: str) -> Path:
        """Where ``agent``'s credential lives; ``ValueError`` for a bad name."""
        path = self._paths.get(agent)
        if path is None:
            if not is_agent_name(agent):
                raise ValueError(f"not an agent name: {agent!r}")
            if len(self._paths) >= 4096:  # names come and go: never grow without bound
                self._paths.clear()
            path = self._paths[agent] = self.layout.agent_credential(agent)
        return path

    def _fresh(self, agent: str, path: Path) -> _Cached | None:
        """``agent``'s credential as on disk now (``path`` is its file), or None when it has
        none or the file is unreadable or malformed: one ``stat``, and a read only when the
        file is not the one cached.

        The cache is read without the lock: a dict lookup is atomic, entries are immutable
        and replaced whole, and an entry is used only when its stamp is the file's now.
        """
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            if agent in self._cache:
                with self._lock:
                    self._drop(agent)
            return None
        cached = self._cache.get(agent)
        if cached is not None and cached.stamp == _stamp(st):
            return cached
        return self._load(agent, path)

    def _load(self, agent: str, path: Path) -> _Cached | None:
        """Read ``agent``'s credential into the cache, stamped with the file it was read
        from (``read_secret_stat``); None (and no entry) when there is none to read."""
        try:
            token, st = read_secret_stat(path, f"{agent}'s credential")
        except (OSError, CredentialError):
            with self._lock:
                self._drop(agent)
            return None
        cached = _cached(_stamp(st), token)
        with self._lock:
            self._put(agent, cached)
        return cached

    def issue(self, agent: str) -> str:
        """Write a fresh credential for ``agent`` (replacing any: rotation); returns it.

        The old credential stops working at once. Raises ``OSError`` when the
        agent's directory is not writable.
        """
        path = self.path(agent)
        token = new_secret()
        write_secret(path, token)
        # cached as read back: a writer racing this one may have replaced it already, and
        # the cache must hold what the file holds
        self._load(agent, path)
        return token

    def ensure(self, agent: str) -> str:
        """``agent``'s credential, issued if it has none (an agent deployed before credentials
        existed, or whose file was deleted). A malformed file is replaced."""
        path = self.path(agent)
        token = new_secret()
        if create_secret(path, token):
            self._load(agent, path)
            return token
        current = self.current(agent)
        return current if current is not None else self.issue(agent)

    def current(self, agent: str) -> str | None:
        """``agent``'s credential as on disk now (cached), or None when it has none or the
        file is unreadable or malformed."""
        cached = self._fresh(agent, self.path(agent))
        return None if cached is None else cached.token

    def verify(self, agent: str, token: str | None) -> bool:
        """True when ``token`` is ``agent``'s current credential (constant-time compare).

        False for a missing/None token, an agent without a credential, a bad
        agent name, or a token that is not ASCII.
        """
        if not token or not token.isascii() or not is_agent_name(agent):
            return False
        expected = self._fresh(agent, self.path(agent))
        if expected is None:
            return False
        return hmac.compare_digest(expected.raw, token.encode("ascii"))

    def header_check(self, agent: str) -> Callable[[bytes | None], bool]:
        """``check(value)``: True when ``value``, a raw ``Authorization`` header value (None:
        no header), carries ``agent``'s current credential: the same verdict as
        ``verify(agent, bearer_token(value.decode("latin-1")))``, for a socket whose caller
        is known in advance. The file is checked on every call, as by ``verify``.

        The usual ``Bearer <token>`` value is compared whole, in constant time, with the one
        the credential makes; any other spelling (``bearer``, extra spaces) is parsed by
        ``bearer_token`` and its token compared. A bad agent name gives a check that
        refuses everything.
        """
        if not is_agent_name(agent):
            return _refuse
        path = self.path(agent)
        fresh = self._fresh

        def check(value: bytes | None) -> bool:
            if not value:
                return False
            expected = fresh(agent, path)
            if expected is None:
                return False
            if hmac.compare_digest(value, expected.header):
                return True
            token = bearer_token(value.decode("latin-1"))  # ASCII when not None
            return token is not None and hmac.compare_digest(expected.raw, token.encode("ascii"))

        return check

    def identify(self, token: str | None) -> str | None:
        """The agent whose current credential is ``token``, or None.

        Looks the token's SHA-256 up among the cached credentials (one dict lookup; refreshing
        the cache from ``<state>/agents/*/credential`` on a miss, at most once
        per ``rescan_every`` seconds), then confirms with ``verify``, so a
        rotated or removed credential never identifies anyone.
        """
        if not token or not token.isascii():
            return None
        want = _digest(token)
        for refresh in (False, True):
            if refresh:
                now = time.monotonic()
                with self._lock:
                    if now - self._scanned < self.rescan_every:
                        return None
                    self._scanned = now
                self._scan()
            with self._lock:
                agent = self._index.get(want)
            if agent is not None and self.verify(agent, token):
                return agent
        return None

    def _scan(self) -> None:
        root = self.layout.state / "agents"
        try:
            names = [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for name in names:
            if is_agent_name(name):
                self.current(name)

    def remove(self, agent: str) -> bool:
        """Delete ``agent``'s credential; True if there was one. It stops working at once."""
        path = self.path(agent)
        with self._lock:
            self._drop(agent)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
