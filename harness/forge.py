"""The hive forge from inside an agent: ``tea`` logged in at boot, and the prompt's forge part.

The controller provisions the agent's forge user and writes, into the agent's own state
dir (``HYPERHIVE_STATE_DIR``, ``/state`` in a container), ``forge-token`` (0600: a token
of that user) and ``forge-url`` (where the forge is; default ``http://localhost:3000``).
Without a token file there is no forge for this agent and everything here is a no-op.

``tea_login`` runs ``tea login add --name hyperhive --url <url>`` with the token in
``GITEA_SERVER_TOKEN`` (tea reads it from there, so it never shows in ``ps``), after a
``tea login delete hyperhive`` so a new token replaces an old login. It never raises: a
missing ``tea`` or a failing login is logged and the agent still has the REST API.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "forge-token"
URL_FILE = "forge-url"
DEFAULT_URL = "http://localhost:3000"
LOGIN_NAME = "hyperhive"
TEA_TIMEOUT = 30.0


@dataclass(frozen=True)
class ForgeAccess:
    """The agent's way into the forge: its ``url``, forge ``user`` and ``token_file``."""

    url: str
    user: str
    token_file: Path


def forge_access(state_dir: Path, agent: str) -> ForgeAccess | None:
    """The forge access the controller provisioned, None without a (non-empty) token file."""
    token_file = state_dir / TOKEN_FILE
    try:
        if not token_file.read_text(encoding="ascii", errors="replace").strip():
            return None
    except OSError:
        return None
    try:
        url = (state_dir / URL_FILE).read_text().strip() or DEFAULT_URL
    except OSError:
        url = DEFAULT_URL
    return ForgeAccess(url=url.rstrip("/"), user=agent, token_file=token_file)


def tea_login(access: ForgeAccess | None, environ: Mapping[str, str], tea: str = "tea") -> str:
    """Log ``tea`` in to the forge as the agent (see the module doc); returns what happened:
    ``"no forge"``, ``"no tea"``, ``"logged in"`` or ``"failed: <why>"``."""
    if access is None:
        return "no forge"
    exe = shutil.which(tea, path=environ.get("PATH", os.defpath))
    if exe is None:
        log.info("forge: no `tea` on PATH; the agent can use the REST API with its token")
        return "no tea"
    try:
        token = access.token_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"failed: cannot read {access.token_file}: {exc}"
    env = {**environ, "GITEA_SERVER_TOKEN": token}
    try:
        subprocess.run([exe, "login", "delete", LOGIN_NAME], env=env, capture_output=True,
                       timeout=TEA_TIMEOUT, check=False)  # fmt: skip
        done = subprocess.run(
            [exe, "login", "add", "--name", LOGIN_NAME, "--url", access.url],
            env=env, capture_output=True, text=True, timeout=TEA_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("forge: tea login failed: %s", exc)
        return f"failed: {exc}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        log.warning("forge: tea login add failed: %s", why[0])
        return f"failed: {why[0]}"
    log.info("forge: tea logged in to %s as %s", access.url, access.user)
    return "logged in"


def prompt_section(access: ForgeAccess | None) -> str:
    """The system prompt's forge paragraph ('' without a forge)."""
    if access is None:
        return ""
    return (
        "\n\nThe hive forge: a Forgejo at "
        f"{access.url}, where you are the user `{access.user}` (your repositories, issues "
        "and pull requests live there; other agents have their own users). `tea` is logged "
        f"in as you (login `{LOGIN_NAME}`): `tea repos ls`, `tea issues ls --repo owner/name`, "
        "`tea pulls create`, `tea notifications`. Where `tea` falls short, use the REST API "
        f'with your token: `curl -H "Authorization: token $(cat {access.token_file})" '
        f"{access.url}/api/v1/user` (OpenAPI at {access.url}/api/swagger). Clone over HTTP "
        f"as `{access.user}` with the token as the password. Forge notifications (mentions, "
        "review requests, assignments) reach your inbox as one-line messages from `forge` "
        "with a link; act on them in the forge — `forge` takes no replies."
    )
