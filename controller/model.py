"""Values of the reconcile core: manifests, desired and observed agents, actions.

Pure data: frozen dataclasses and enums, no I/O. ``plan`` (controller/plan.py)
maps ``(DesiredState, Observed)`` to ``list[Action]``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.budget.core import Limits


@dataclass(frozen=True)
class McpServer:
    """An extra MCP server from ``spec.mcpServers.<key>`` (merged into claude's --mcp-config)."""

    key: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Resources:
    """systemd resource limits from ``spec.resources`` (a drop-in for the container unit)."""

    memory_max: str | None = None
    cpu_quota: str | None = None
    tasks_max: int | None = None


@dataclass(frozen=True)
class ForgeSpec:
    """``spec.forge``: how the hive forge's notifications reach this agent (docs/forge.md).

    ``skip_notify_reasons``: reasons (``controller.forge.notify.REASONS``) dropped, not
    delivered; ``keep_subscriptions``: the agent's repo watches survive a redeploy.
    """

    skip_notify_reasons: tuple[str, ...] = ()
    keep_subscriptions: bool = False


@dataclass(frozen=True)
class ExtraFiles:
    """One ``spec.frontend.extraFiles`` entry: ``source`` (relative to ``agents/<name>/`` in
    the meta repo, a file or a directory) served under the agent UI at ``<target>/``."""

    key: str
    source: str
    target: str


@dataclass(frozen=True)
class Frontend:
    """``spec.frontend``: a replacement UI bundle (``dist``, a directory relative to
    ``agents/<name>/``) and extra static files; both served by the dashboard from the
    meta repo, sandboxed (docs/web-ui.md)."""

    dist: str | None = None
    extra_files: tuple[ExtraFiles, ...] = ()


@dataclass(frozen=True)
class AgentManifest:
    """A parsed, schema-valid ``agents/<name>/agent.yaml``."""

    name: str
    model: str = "haiku"
    suspend: bool = False
    allowed_recipients: tuple[str, ...] = ()
    mcp_servers: tuple[McpServer, ...] = ()
    plugins: tuple[str, ...] = ()
    marketplaces: tuple[str, ...] = ()
    resources: Resources = Resources()
    turn_timeout_seconds: int | None = None
    forge: ForgeSpec = ForgeSpec()
    frontend: Frontend = Frontend()
    budget: Limits | None = None
    """``spec.budget`` (docs/budgets.md); None: no per-agent budget."""


class Phase(enum.StrEnum):
    """Observed lifecycle phase of one agent's runtime (container or process)."""

    ABSENT = "absent"
    STOPPED = "stopped"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True)
class DesiredAgent:
    """One agent as the meta repo's main wants it.

    ``config_digest`` identifies the manifest (its blob id): a change restarts
    the harness with new settings. ``build_digest`` identifies what Nix builds
    (agent.nix + flake.nix + flake.lock blob ids and the hyperhive version): a
    change rebuilds the container.
    """

    name: str
    manifest: AgentManifest
    commit: str
    config_digest: str
    build_digest: str
    has_nix: bool = False


@dataclass(frozen=True)
class DesiredState:
    """The whole swarm at one main commit. ``agents`` maps name → agent."""

    commit: str
    agents: Mapping[str, DesiredAgent]
    hyperhive_version: str


@dataclass(frozen=True)
class ObservedAgent:
    """What the runtime driver sees of one agent it owns.

    ``config_digest`` / ``build_digest`` / ``commit`` are what was last deployed
    (None if never); ``since`` is unix seconds of the last phase change if known.
    """

    name: str
    phase: Phase
    commit: str | None = None
    config_digest: str | None = None
    build_digest: str | None = None
    hyperhive_version: str | None = None
    since: float | None = None
    detail: str = ""


Observed = Mapping[str, ObservedAgent]


class ActionKind(enum.StrEnum):
    """What the executor asks the driver to do. Ordered by how disruptive it is."""

    CREATE = "create"
    REBUILD = "rebuild"
    APPLY_MANIFEST = "apply-manifest"
    START = "start"
    STOP = "stop"
    DESTROY = "destroy"


@dataclass(frozen=True)
class Action:
    """One step of a plan: ``kind`` on ``agent``, with a human ``reason``."""

    kind: ActionKind
    agent: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """``{"action": ..., "agent": ..., "reason": ...}``."""
        return {"action": str(self.kind), "agent": self.agent, "reason": self.reason}
