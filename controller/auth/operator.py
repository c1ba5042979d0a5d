"""The operator key: ``<state>/operator.key``, the one secret that commands the swarm.

``hyperhive serve`` makes it on first start (``ensure_operator_key``); the
CLI and the meta.git hook read it (``load_operator_key``) and send it as
``Authorization: Bearer`` on every ``host.sock`` request. The dashboard's
session cookies are signed with a key derived from it, so replacing the file
(delete it and restart ``hyperhive serve``) logs every browser out.
"""

from __future__ import annotations

import logging
import os
import stat

from controller.auth.secretfile import CredentialError, create_secret, new_secret, read_secret
from controller.paths import Layout

log = logging.getLogger(__name__)

WHAT = "the operator key"


def ensure_operator_key(layout: Layout) -> str:
    """The operator key, made (0600, atomically) if ``layout.operator_key`` does not exist.

    A key file readable by group or others is narrowed to 0600 (with a
    warning). Raises ``CredentialError`` for a malformed or unreadable file
    (never silently replaces it: that would log every browser out) and
    ``OSError`` when the state dir is not writable.
    """
    path = layout.operator_key
    if create_secret(path, new_secret()):
        log.info("made the operator key %s", path)
    try:
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
    except FileNotFoundError as exc:  # deleted between create and stat
        raise CredentialError(f"{path} vanished while it was being made; retry", path) from exc
    if mode & 0o077:
        log.warning("%s was mode %03o; narrowing it to 0600", path, mode)
        os.chmod(path, 0o600, follow_symlinks=False)
    return read_secret(path, WHAT)


def load_operator_key(layout: Layout) -> str:
    """The operator key from ``layout.operator_key`` (for the CLI and the hook).

    Raises ``CredentialError`` naming the file: missing ("start `hyperhive
    serve` first"), unreadable (wrong user) or malformed.
    """
    path = layout.operator_key
    try:
        return read_secret(path, WHAT)
    except FileNotFoundError as exc:
        raise CredentialError(
            f"no operator key at {path}: start `hyperhive serve` first (it makes the key), "
            "or pass the --state-dir it uses",
            path,
        ) from exc
