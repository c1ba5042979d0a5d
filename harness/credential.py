"""The agent's broker credential: read from ``$HYPERHIVE_CREDENTIAL_FILE``, sent as a bearer.

The controller makes one credential per agent at deploy (rotated on recreate) and puts
it where only that agent's sandbox sees it (container: ``/etc/hyperhive/credential``).
Every request the harness makes to its broker API (the socket, or the TCP listener
named by ``HYPERHIVE_API_URL``: ``broker_target``) carries
``Authorization: Bearer <credential>`` (serve loop, web UI, MCP server, ``wake``), and
the opt-in TCP listener of the web UI requires the same bearer from its callers.

File format: one line, urlsafe base64 (the controller writes 32 random bytes); blank
lines and surrounding whitespace are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # schemas.client (http.client, ssl) is imported on use: not on serve's
    from schemas.client import ApiClient  # path to its web UI (harness.serve.main)

DEFAULT_CREDENTIAL_FILE = "/etc/hyperhive/credential"
ENV_VAR = "HYPERHIVE_CREDENTIAL_FILE"
DEFAULT_SOCKET = "/run/hive/mcp.sock"
API_URL_VAR = "HYPERHIVE_API_URL"
"""The agent API on TCP (``http(s)://host:port``); when set it is used instead of
``HYPERHIVE_SOCKET`` (an agent on another machine than the controller)."""
API_CA_VAR = "HYPERHIVE_API_CA"
"""A PEM CA bundle an ``https`` ``HYPERHIVE_API_URL``'s certificate must chain to
(default: the system's CAs)."""
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


@dataclass(frozen=True)
class BrokerTarget:
    """Where the agent reaches its API: ``target`` (a socket path, or the URL of the TCP
    listener) and ``ca_file`` (for an ``https`` URL; None: the system's CAs)."""

    target: str
    ca_file: str | None = None

    @property
    def is_url(self) -> bool:
        """True when the API is reached over TCP."""
        from schemas.client import parse_target

        return parse_target(self.target).path is None


def broker_target(environ: Mapping[str, str]) -> BrokerTarget:
    """``$HYPERHIVE_API_URL`` (with ``$HYPERHIVE_API_CA``) when set, else
    ``$HYPERHIVE_SOCKET`` (default ``/run/hive/mcp.sock``).

    Raises ``ValueError`` naming the variable when the URL is not an ``http://`` or
    ``https://`` URL with a host, or the CA file (for an ``https`` URL) is not a
    readable PEM bundle.
    """
    url = (environ.get(API_URL_VAR) or "").strip()
    if not url:
        return BrokerTarget(environ.get("HYPERHIVE_SOCKET") or DEFAULT_SOCKET)
    import ssl

    from schemas.client import parse_target

    try:
        ep = parse_target(url)
    except ValueError as exc:
        raise ValueError(f"{API_URL_VAR}: {exc}") from None
    if ep.path is not None:
        raise ValueError(f"{API_URL_VAR}: {url!r} is not an http:// or https:// URL")
    ca = (environ.get(API_CA_VAR) or "").strip() or None
    if ca is None or not ep.tls:
        return BrokerTarget(url, None)
    try:
        ssl.create_default_context(cafile=ca)  # refused here, not at the first request
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{API_CA_VAR}: {ca} is not a readable PEM CA bundle: {exc}") from None
    return BrokerTarget(url, ca)


def broker_client(
    socket: str | BrokerTarget, token: str | None, timeout: float = 30.0
) -> ApiClient:
    """A client of the agent's API (its socket path, or a ``BrokerTarget``, which may be a
    URL) that sends ``token`` as its bearer."""
    from schemas.client import ApiClient

    if isinstance(socket, BrokerTarget):
        return ApiClient(socket.target, timeout, token=token, ca_file=socket.ca_file)
    return ApiClient(socket, timeout, token=token)
