"""The custom front-end files of an agent, read from the meta repo at main.

``FrontendFiles.lookup(agent, path)`` maps a URL path under the agent's UI to a blob of
``agents/<agent>/`` at main's commit:

- ``ui/<rest>`` → ``<frontend.dist>/<rest>`` (``ui/`` itself → ``index.html``);
- ``<target>/<rest>`` → ``<extraFiles[k].source>/<rest>`` for the entry whose target
  is the path or a prefix of it (a directory's ``<target>/`` → its ``index.html``; a
  file source answers only at ``<target>`` itself).

Only main is read: what is there was pushed by the operator or approved by them (the
push hook and the proposal flow check every manifest, ``controller.frontend.paths``).
Nothing an agent serves or writes is ever read here.

``Capabilities`` signs the short-lived path prefix (``files/<cap>/``) under which the
dashboard serves these files to sandboxed documents, which carry no session cookie:
``<cap>`` = ``<expiry>.<mac>``, an HMAC of agent and expiry under a key derived from the
operator key. It grants reading that agent's custom files until it expires, nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from controller.frontend.paths import BadPath, check_relative
from controller.model import DesiredState, Frontend

MAX_FILE_BYTES = 32 * 1024 * 1024
"""Largest custom file served (a bigger blob is a 404 with the reason)."""

DIST_PREFIX = "ui"
"""Where ``frontend.dist`` is served under the agent UI."""

CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "htm": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "mjs": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "map": "application/json",
    "txt": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "ico": "image/x-icon",
    "wasm": "application/wasm",
    "woff": "font/woff",
    "woff2": "font/woff2",
}


def content_type(name: str) -> str:
    """The Content-Type for a file name (``application/octet-stream`` when unknown)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


@dataclass(frozen=True)
class Found:
    """A custom file: its bytes, Content-Type and where it came from (``agents/<a>/…``)."""

    data: bytes
    content_type: str
    source: str


class Missing(LookupError):
    """No such custom file; ``str()`` says why (for the 404's message)."""


class FrontendFiles:
    """Custom UI files of the agents, from ``meta_git`` at main (``desired()``'s commit)."""

    def __init__(self, meta_git: Path, desired: Callable[[], DesiredState]) -> None:
        self.meta_git = meta_git
        self.desired = desired
        self._lock = threading.Lock()
        self._repo: pygit2.Repository | None = None

    def frontend(self, agent: str) -> Frontend | None:
        """The agent's ``spec.frontend`` at main, None when it has no custom files."""
        want = self.desired().agents.get(agent)
        if want is None:
            return None
        fe = want.manifest.frontend
        return fe if fe.dist or fe.extra_files else None

    def prefixes(self, agent: str) -> frozenset[str]:
        """First URL segments with custom files (``ui`` for a dist, each target's first)."""
        fe = self.frontend(agent)
        if fe is None:
            return frozenset()
        out = {e.target.split("/", 1)[0] for e in fe.extra_files}
        if fe.dist:
            out.add(DIST_PREFIX)
        return frozenset(out)

    def _source(self, fe: Frontend, path: str) -> tuple[str, str]:
        """``(source in the agent's dir, rest)`` for a URL path, or ``Missing``."""
        if fe.dist and (path == DIST_PREFIX or path.startswith(DIST_PREFIX + "/")):
            return fe.dist, path[len(DIST_PREFIX) :].strip("/")
        for e in fe.extra_files:
            if path == e.target or path.startswith(e.target + "/"):
                return e.source, path[len(e.target) :].strip("/")
        raise Missing(f"no custom file at {path!r}")

    def lookup(self, agent: str, path: str) -> Found:
        """The blob behind ``path`` (a URL path under the agent UI, no leading ``/``).

        Raises ``Missing`` when there is no such entry or file."""
        fe = self.frontend(agent)
        if fe is None:
            raise Missing(f"{agent} has no custom front-end files")
        trailing = path.endswith("/") or path == ""
        try:
            clean = check_relative(path) if path.strip("/") else ""
        except BadPath as exc:
            raise Missing(str(exc)) from None
        source, rest = self._source(fe, clean)
        where = f"agents/{agent}/{source}"
        with self._lock:
            if self._repo is None:
                self._repo = pygit2.Repository(str(self.meta_git))
            commit = self._repo[self.desired().commit]
            assert isinstance(commit, pygit2.Commit)
            try:
                obj = commit.tree[where]
            except KeyError:
                raise Missing(f"{where} is not in the meta repo at main") from None
            if isinstance(obj, pygit2.Tree):
                name = f"{rest}/index.html" if rest and trailing else rest or "index.html"
                try:
                    obj = obj[name]
                except KeyError:
                    raise Missing(f"{where}/{name} is not in the meta repo at main") from None
                where = f"{where}/{name}"
            elif rest:
                raise Missing(f"{where} is a file: nothing lies under it")
            if not isinstance(obj, pygit2.Blob):
                raise Missing(f"{where} is a directory")
            if obj.size > MAX_FILE_BYTES:
                raise Missing(f"{where} is larger than {MAX_FILE_BYTES} bytes")
            return Found(obj.data, content_type(where), where)


CAP_SECONDS = 12 * 3600
"""How long a ``files/<cap>/`` prefix stays valid."""


class Capabilities:
    """Signs and checks the ``<expiry>.<mac>`` path capability of one agent's files."""

    def __init__(self, operator_key: str, clock: Callable[[], float] = time.time) -> None:
        if not operator_key:
            raise ValueError("operator_key is empty")
        self._key = hmac.new(operator_key.encode(), b"hyperhive frontend files", "sha256").digest()
        self._clock = clock

    def _mac(self, agent: str, expiry: int) -> str:
        msg = f"{agent}\n{expiry}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, agent: str) -> str:
        """A capability for ``agent``'s files, valid ``CAP_SECONDS``."""
        expiry = int(self._clock()) + CAP_SECONDS
        return f"{expiry}.{self._mac(agent, expiry)}"

    def verify(self, agent: str, cap: str) -> bool:
        """True when ``cap`` was issued for ``agent`` and has not expired."""
        expiry_text, _, mac = cap.partition(".")
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        if expiry < self._clock():
            return False
        return hmac.compare_digest(mac, self._mac(agent, expiry))
