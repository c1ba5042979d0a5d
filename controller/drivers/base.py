"""The runtime driver interface.

Every method is idempotent: asking for the state an agent is already in is a
no-op. Failures raise ``controller.errors.TransientError`` (retry with backoff)
or ``PermanentError`` (Stalled until desired state changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controller.model import DesiredAgent, ObservedAgent

LineSink = Callable[[str], None]
"""Receives build/start output one line at a time (no trailing newline)."""


@dataclass(frozen=True)
class Deployment:
    """What a driver needs to bring one agent to its desired state.

    ``settings`` is the rendered manifest written to ``settings.json``;
    ``web_port`` the agent UI's TCP port; ``flake_ref`` the meta flake ref at
    the deployed commit (``<meta.git>?rev=<commit>#<agent>``) for nixos-container.
    """

    agent: DesiredAgent
    settings: dict[str, Any]
    web_port: int
    flake_ref: str


class Driver(Protocol):
    """A runtime that can run agents (``local`` processes, ``nixos-container``)."""

    name: str

    def observe(self) -> dict[str, ObservedAgent]:
        """Every agent this driver owns (running or not), keyed by agent name."""
        ...

    def create(self, d: Deployment, log: LineSink) -> None:
        """Build (if the runtime builds) and start an agent that is absent."""
        ...

    def rebuild(self, d: Deployment, log: LineSink) -> None:
        """Rebuild an existing agent for a new build digest, then (re)start it."""
        ...

    def apply_manifest(self, d: Deployment) -> None:
        """Write new settings and restart the harness without a build."""
        ...

    def start(self, name: str) -> None:
        """Start a stopped agent."""
        ...

    def stop(self, name: str) -> None:
        """Stop a running agent (graceful, then forced)."""
        ...

    def restart(self, name: str) -> None:
        """Stop then start."""
        ...

    def destroy(self, name: str) -> None:
        """Remove the agent's runtime; its state dir is kept (tombstone) by the caller."""
        ...
