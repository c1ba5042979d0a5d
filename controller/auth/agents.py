"""Per-agent broker credentials: ``<state>/agents/<agent>/credential`` (0600).

``Swarm`` issues one before an agent (or the manager) is first created and
issues a fresh one on every recreate (rotation), and removes it on destroy,
so a tombstone never carries a live credential. The agent's sandbox sees
only its own file (``/etc/hyperhive/credential`` in a container,
``$HYPERHIVE_CREDENTIAL_FILE``); the harness sends it as ``Authorization:
Bearer`` on every broker request and the agent socket checks it against the
socket's identity (``verify``). The token alone also names its agent
(``identify``), for surfaces that have no per-agent socket (TCP, later).

Reads are cached per agent and keyed by the file's identity (inode, size,
mtime), so a file rotated by another process (or by hand) is honoured on the
next request at the cost of one ``stat``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from controller.auth.secretfile import (
    CredentialError,
    create_secret,
    new_secret,
    read_secret,
    write_secret,
)
from controller.paths import Layout
from schemas.names import is_agent_name


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int, int]
    token: str
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", errors="replace")).digest()


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


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

    def _remember(self, agent: str, path: Path, token: str) -> None:
        try:
            stamp = _stamp(os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            return
        with self._lock:
            self._put(agent, _Cached(stamp, token, _digest(token)))

    def issue(self, agent: str) -> str:
        """Write a fresh credential for ``agent`` (replacing any: rotation); returns it.

        The old credential stops working at once. Raises ``OSError`` when the
        agent's directory is not writable.
        """
        path = self.path(agent)
        token = new_secret()
        write_secret(path, token)
        self._remember(agent, path, token)
        return token

    def ensure(self, agent: str) -> str:
        """``agent``'s credential, issued if it has none (an agent deployed before credentials
        existed, or whose file was deleted). A malformed file is replaced."""
        path = self.path(agent)
        token = new_secret()
        if create_secret(path, token):
            self._remember(agent, path, token)
            return token
        current = self.current(agent)
        return current if current is not None else self.issue(agent)

    def current(self, agent: str) -> str | None:
        """``agent``'s credential as on disk now (cached), or None when it has none or the
        file is unreadable or malformed."""
        path = self.path(agent)
        try:
            stamp = _stamp(os.stat(path, follow_symlinks=False))
        except OSError:
            with self._lock:
                self._drop(agent)
            return None
        with self._lock:
            cached = self._cache.get(agent)
        if cached is not None and cached.stamp == stamp:
            return cached.token
        try:
            token = read_secret(path, f"{agent}'s credential")
        except (OSError, CredentialError):
            with self._lock:
                self._drop(agent)
            return None
        with self._lock:
            self._put(agent, _Cached(stamp, token, _digest(token)))
        return token

    def verify(self, agent: str, token: str | None) -> bool:
        """True when ``token`` is ``agent``'s current credential (constant-time compare).

        False for a missing/None token, an agent without a credential, a bad
        agent name, or a token that is not ASCII.
        """
        if not token or not token.isascii() or not is_agent_name(agent):
            return False
        expected = self.current(agent)
        if expected is None:
            return False
        return hmac.compare_digest(expected.encode("ascii"), token.encode("ascii"))

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
