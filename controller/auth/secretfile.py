"""Secret files: made from 32 random bytes, written atomically with mode 0600, read back checked.

A secret is one line: the urlsafe base64 (no padding) of ``SECRET_BYTES``
random bytes, 43 characters. Files are written to a temporary name in the
same directory (created 0600, so the secret is never readable by anyone
else, not even for an instant), fsynced, then renamed (replace) or hard-linked
(create only if absent) into place; a reader sees the old or the new
secret, never half of one.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

SECRET_BYTES = 32
"""Random bytes per secret (256 bits)."""

SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
"""What a secret looks like: urlsafe base64 of 32 bytes without padding."""

MAX_SECRET_FILE = 4096
"""A secret file larger than this is not a secret file; refuse to read more."""


class CredentialError(Exception):
    """A secret file is missing, unreadable or malformed; ``message`` names the file and a fix."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def new_secret() -> str:
    """A fresh secret: urlsafe base64 of 32 random bytes (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _temp_write(path: Path, value: str) -> Path:
    """Write ``value`` + newline to a new 0600 temp file next to ``path``; returns its path."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (value + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_secret(path: Path, value: str) -> None:
    """Replace ``path`` with ``value`` atomically (mode 0600); creates the parent (0700).

    Raises ``OSError`` when the directory is not writable.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _temp_write(path, value)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def create_secret(path: Path, value: str) -> bool:
    """Create ``path`` holding ``value`` (0600) unless it exists; True if this call made it.

    Atomic against a concurrent creator: of two racing calls exactly one
    wins, the other returns False and the file holds the winner's value.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _temp_write(path, value)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def read_secret(path: Path, what: str) -> str:
    """The secret in ``path``; ``what`` names it in errors ("the operator key").

    Raises ``FileNotFoundError`` when the file is missing, and
    ``CredentialError`` when it is unreadable (permissions), not a regular
    file, or does not hold a secret.
    """
    return read_secret_stat(path, what)[0]


def read_secret_stat(path: Path, what: str) -> tuple[str, os.stat_result]:
    """``read_secret``, with the ``fstat`` of the very file read, taken before reading it.

    A cache keyed by the file's identity (``AgentCredentials``) needs the identity of what
    it read: a ``stat`` of the path apart from the read may describe another file (a
    rotation in between), and one taken after the read would file the old secret under
    the new file's identity. Raises what ``read_secret`` raises.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise CredentialError(
            f"cannot read {what} at {path}: permission denied; run this as the user that "
            "runs `hyperhive serve` (root under the NixOS module)",
            path,
        ) from exc
    except OSError as exc:
        raise CredentialError(f"cannot read {what} at {path}: {exc.strerror}", path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"{what} at {path} is not a regular file", path)
        raw = os.read(fd, MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise CredentialError(f"cannot read {what} at {path}: {exc.strerror}", path) from exc
    finally:
        os.close(fd)
    text = raw.decode("ascii", errors="replace").strip()
    if len(raw) > MAX_SECRET_FILE or not SECRET_RE.fullmatch(text):
        raise CredentialError(
            f"{what} at {path} is malformed (expected one line of 43 urlsafe base64 "
            "characters); delete the file and restart `hyperhive serve` to make a new one",
            path,
        )
    return text, st
