"""Does claude have credentials? (The interactive login flow itself is not built yet.)

Credentials count as present when any of these holds:

- an API key or token in the environment (``ANTHROPIC_API_KEY``,
  ``ANTHROPIC_AUTH_TOKEN``, ``CLAUDE_CODE_OAUTH_TOKEN``), or a cloud provider
  switch (``CLAUDE_CODE_USE_BEDROCK`` / ``_VERTEX`` / ``_FOUNDRY``);
- ``$CLAUDE_CONFIG_DIR/.credentials.json`` exists and is not empty (an OAuth
  login done with ``claude auth login``);
- ``$CLAUDE_CONFIG_DIR/settings.json`` names an ``apiKeyHelper``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

ENV_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
PROVIDER_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")


def has_credentials(environ: Mapping[str, str], config_dir: Path) -> bool:
    """True when claude can authenticate without an interactive login (see module doc)."""
    if any(environ.get(k) for k in ENV_KEYS):
        return True
    if any(environ.get(k, "").lower() in ("1", "true", "yes") for k in PROVIDER_SWITCHES):
        return True
    try:
        if (config_dir / ".credentials.json").stat().st_size > 2:
            return True
    except OSError:
        pass
    try:
        settings = json.loads((config_dir / "settings.json").read_text())
        return isinstance(settings, dict) and bool(settings.get("apiKeyHelper"))
    except (OSError, ValueError):
        return False
