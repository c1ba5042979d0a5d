"""The meta repo's values and errors (pure): a deploy, a denial, why an apply failed."""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import AgentManifest
from controller.ops import ProposalKind


@dataclass(frozen=True)
class Build:
    """One deploy in progress (``building/<id>``).

    ``commit`` is the main commit being deployed; ``base`` what it was based on;
    ``agents`` the agent dirs changed base..proposal; ``flake_changed`` True when
    flake.nix / flake.lock changed (every agent rebuilds).
    """

    id: int
    kind: ProposalKind
    commit: str
    base: str | None
    agents: tuple[str, ...]
    flake_changed: bool
    title: str = ""

    def touches(self, agent: str) -> bool:
        """True when this deploy affects ``agent``."""
        return self.flake_changed or agent in self.agents


@dataclass(frozen=True)
class Denial:
    """A ``denied/<id>`` the manager has not been told about yet."""

    id: int
    kind: ProposalKind
    agents: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class AgentRead:
    """One ``agents/<name>/`` as read at some tree: its manifest (None when invalid, then
    ``error`` says why), the agent.yaml blob id (``config_digest``) and the agent.nix
    blob id (``nix_id``, "" when absent)."""

    manifest: AgentManifest | None
    config_digest: str
    nix_id: str
    error: str | None


class ApplyFailed(Exception):
    """An approved proposal cannot be applied to main (conflict, invalid result)."""


class MainMoved(Exception):
    """main changed between reading it and the compare-and-swap."""
