"""Build digests (pure): what an agent's build depends on, as one hash."""

from __future__ import annotations

import hashlib


def build_digest(nix_id: str, flake_id: str, lock_id: str, version: str) -> str:
    """sha256 hex of (agent.nix blob id or "", flake.nix id, flake.lock id or "", hyperhive
    version): an agent rebuilds exactly when one of them changes."""
    text = f"agent.nix={nix_id}\nflake.nix={flake_id}\nflake.lock={lock_id}\nhyperhive={version}\n"
    return hashlib.sha256(text.encode()).hexdigest()
