"""The agent's broker credential: read from ``$HYPERHIVE_CREDENTIAL_FILE``, sent as a bearer.

The controller makes one credential per agent at deploy (rotated on recreate) and puts
it where only that agent's sandbox sees it (container: ``/etc/hyperhive/credential``).
Every request the harness makes on its broker socket carries
``Authorization: Bearer <credential>`` (serve loop, web UI, MCP server, ``wake``), and
the opt-in TCP listener of the web UI requires the same bearer from its callers.

File format: one line, urlsafe base64 (the controller writes 32 random bytes); blank
lines and surrounding whitespace are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from schemas.client import UnixClient

DEFAULT_CREDENTIAL_FILE = "/etc/hyperhive/credential"
ENV_VAR = "HYPERHIVE_CREDENTIAL_FILE"
MAX_CHARS = 512
#: What may appear in a bearer token (RFC 6750 ``b64token``), so it is safe in a header.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")


class CredentialError(ValueError):
    """The credential file is missing, unreadable or malformed; ``str()`` names the file."""


def credential_path(environ: Mapping[str, str]) -> Path:
    """``$HYPERHIVE_CREDENTIAL_FILE``, else ``/etc/hyperhive/credential`` (absolute)."""
    return Path(environ.get(ENV_VAR) or DEFAULT_CREDENTIAL_FILE).absolute()


def read_credential(path: Path) -> str:
    """The token in ``path``.

    Raises ``CredentialError`` (naming the file and what to do) when the file is missing,
    unreadable, empty, longer than ``MAX_CHARS`` or holds characters a bearer token cannot.
    """
    try:
        raw = path.read_bytes()[: MAX_CHARS * 2]
    except FileNotFoundError:
        raise CredentialError(
            f"{ENV_VAR}: the agent credential file {path} does not exist (the controller "
            "writes it at deploy; redeploy the agent or point the variable at the file)"
        ) from None
    except OSError as exc:
        raise CredentialError(
            f"{ENV_VAR}: cannot read the agent credential file {path}: {exc.strerror or exc}"
        ) from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"{ENV_VAR}: {path} is not an ASCII token") from None
    if not token:
        raise CredentialError(f"{ENV_VAR}: the agent credential file {path} is empty")
    if len(token) > MAX_CHARS or not _TOKEN_RE.match(token):
        raise CredentialError(
            f"{ENV_VAR}: {path} does not hold one bearer token (urlsafe base64, one line)"
        )
    return token


def load_credential(environ: Mapping[str, str]) -> str:
    """Read the credential named by ``environ``; raises ``CredentialError``."""
    return read_credential(credential_path(environ))


def broker_client(socket: str, token: str | None, timeout: float = 30.0) -> UnixClient:
    """A ``UnixClient`` for the agent's broker socket that sends ``token`` as its bearer."""
    return UnixClient(socket, timeout, token=token)
