"""Build the forge worker from the controller config (``forge:``), or None without one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.config import Config
from controller.forge.client import ForgeClient
from controller.forge.hive import HiveForge
from controller.forge.notify import SENDER
from controller.forge.worker import ForgeWorker
from controller.model import DesiredState
from controller.paths import Layout

log = logging.getLogger("controller.forge")

ADMIN_TOKEN_FILE = "forge-admin-token"
"""Default name of the admin token file under ``<state>`` (the NixOS module writes it)."""


class ForgeSetupError(Exception):
    """The forge is configured but its admin token cannot be read; ``str()`` says how to fix."""


def make_forge(
    cfg: Config,
    layout: Layout,
    send: Callable[..., object],
    desired: Callable[[], DesiredState],
) -> ForgeWorker | None:
    """The forge worker for ``cfg.forge_url``, None when no forge is configured.

    ``send`` is ``Broker.send``. Raises ``ForgeSetupError`` when the admin token file is
    missing or empty (the NixOS module's ``hyperhive-forge-admin`` unit writes it).
    """
    if not cfg.forge_url:
        return None
    path = cfg.forge_admin_token_file or layout.state / ADMIN_TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ForgeSetupError(
            f"forge: cannot read the admin token {path}: {exc} (docs/forge.md: an admin token "
            "of the forge, e.g. `forgejo admin user generate-access-token --scopes all --raw`)"
        ) from exc
    if not token:
        raise ForgeSetupError(f"forge: the admin token file {path} is empty")

    def deliver(recipient: str, body: str, key: str) -> object:
        return send(SENDER, recipient, body, idempotency_key=key, idempotency_owner=SENDER)

    hive = HiveForge(layout, ForgeClient(cfg.forge_url, token), deliver)
    log.info("forge: %s (admin token %s), polling every %.0f s",
             cfg.forge_url, path, cfg.forge_poll_seconds)  # fmt: skip
    return ForgeWorker(hive, desired, cfg.forge_poll_seconds)
