"""The operations the APIs expose, as one interface.

The admin socket, the manager socket, the dashboard and the CLI all call these
methods, so no surface can drift from another (the seeds' "actions are
factored" rule). ``controller.swarm.Swarm`` implements it; API tests may use a
fake. Errors: ``controller.errors`` (Invalid / NotFound / Conflict / Forbidden).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from controller.model import Action


class ProposalKind(enum.StrEnum):
    """Where a proposal came from."""

    SPAWN = "spawn"
    APPLY_COMMIT = "apply_commit"
    PUSH = "push"


class ProposalState(enum.StrEnum):
    """The ref state machine (docs/approvals.md)."""

    PENDING = "pending"  # proposal/<id> only
    APPROVED = "approved"  # approved/<id>, not yet building
    DENIED = "denied"
    BUILDING = "building"
    DEPLOYED = "deployed"
    FAILED = "failed"


@dataclass(frozen=True)
class Proposal:
    """One proposal/deploy id and where it stands.

    ``commit`` is the proposal commit (hex); ``base`` the main it was based on;
    ``diff`` a unified diff of base..commit; ``note`` the manager's note or the
    decision/outcome message; ``created_at`` unix seconds.
    """

    id: int
    kind: ProposalKind
    state: ProposalState
    commit: str
    base: str | None
    title: str
    agents: tuple[str, ...]
    diff: str
    note: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """Wire shape for admin API / dashboard."""
        return {
            "id": self.id,
            "kind": str(self.kind),
            "state": str(self.state),
            "commit": self.commit,
            "base": self.base,
            "title": self.title,
            "agents": list(self.agents),
            "diff": self.diff,
            "note": self.note,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class PassResult:
    """Outcome of one reconcile pass: the plan and, unless dry-run, what failed."""

    plan: tuple[Action, ...]
    errors: tuple[str, ...] = ()
    dry_run: bool = False
    pending: tuple[str, ...] = ()
    """Ref work a dry run would do (``approved/3: apply to main``, ``main moved: deploy``)."""

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """``{"plan": [..], "errors": [..], "dry_run": bool, "pending": [..], "in_sync": bool}``."""
        return {
            "plan": [a.to_json() for a in self.plan],
            "errors": list(self.errors),
            "dry_run": self.dry_run,
            "pending": list(self.pending),
            "in_sync": not self.plan and not self.pending,
        }


class Lifecycle(enum.StrEnum):
    """Manager lifecycle verbs on one agent."""

    START = "start"
    KILL = "kill"
    RESTART = "restart"
    UPDATE = "update"


class SwarmOps(Protocol):
    """Everything the sockets, dashboard and CLI can ask of the controller."""

    # --- manager verbs -------------------------------------------------
    def request_spawn(self, name: str) -> Proposal:
        """Validate ``name`` and write ``proposal/<id>`` adding ``agents/<name>/agent.yaml``.

        Raises Invalid (bad or reserved name, field ``name``) or Conflict (agent exists
        or a pending proposal already spawns it). Writes nothing on error.
        """
        ...

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        """Import ``commit`` from the manager's working clone as ``proposal/<id>``.

        Raises NotFound (no such commit), Invalid (a manifest in it fails the schema,
        field = the file path), Conflict (nothing to change).
        """
        ...

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        """start / kill / restart / update one agent now; returns a one-line outcome.

        Raises NotFound for an unknown agent.
        """
        ...

    def list_agents(self) -> list[dict[str, Any]]:
        """Per-agent status rows (name, phase, conditions, deployed commit, web_port)."""
        ...

    def agent_names(self) -> frozenset[str]:
        """Names of the agents in desired state (plus ``manager``) — valid recipients."""
        ...

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        """``spec.allowedRecipients`` of ``agent`` as deployed (empty = anyone)."""
        ...

    def agent_report(self, agent: str, report: dict[str, Any]) -> bool:
        """Keep what ``agent``'s harness reports it has (a validated wire ``AgentReport``,
        received on ``agent``'s own socket); True when it changed. Never blocks."""
        ...

    # --- operator verbs ------------------------------------------------
    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        """All proposals/deploys, newest first (or only those awaiting a decision)."""
        ...

    def proposal(self, id: int) -> Proposal:
        """One proposal; NotFound if there is no ``proposal/<id>``."""
        ...

    def approve(self, id: int, note: str = "") -> Proposal:
        """Write ``approved/<id>`` and ask for a pass. NotFound / Conflict (already decided)."""
        ...

    def deny(self, id: int, note: str) -> Proposal:
        """Write annotated ``denied/<id>`` with ``note`` as the reason. NotFound / Conflict."""
        ...

    def reconcile(self, dry_run: bool = False) -> PassResult:
        """Run one pass now (or only plan it) and return the result."""
        ...

    def request_pass(self, reason: str) -> None:
        """Ask the loop for a pass soon (hook poke, dashboard, resync). Never blocks."""
        ...

    def describe(self, name: str) -> dict[str, Any]:
        """One agent in depth: its ``list_agents`` row plus ``deploys`` (newest first:
        ``{"id", "state", "commit", "note", "at"}``) and ``events`` (recent lifecycle events:
        ``{"at", "type", "message"}``). NotFound if the agent is neither desired nor observed.
        """
        ...

    def destroy(self, name: str, purge: bool = False) -> str:
        """Remove ``agents/<name>/`` from main (a commit by the operator) and reconcile; its
        state is kept as a tombstone unless ``purge``. NotFound / Invalid (the manager).
        """
        ...

    def purge(self, name: str) -> str:
        """Delete a tombstone's kept state and credentials. NotFound if there is none;
        Conflict if the agent is still in desired state.
        """
        ...

    def tombstones(self) -> list[dict[str, Any]]:
        """Destroyed agents whose state is kept: ``{"name", "destroyed_at", "bytes", "path"}``."""
        ...

    def journal(self, name: str, unit: str | None = None, lines: int = 200) -> str:
        """Recent log lines of one agent's runtime (journalctl -M under nixos-container, the
        harness log file under local). NotFound / Invalid (unit, lines out of 1..5000).
        """
        ...

    def agent_config(self, name: str) -> dict[str, Any]:
        """What an agent is deployed from: ``{"commit", "manifest" (YAML text),
        "agent_nix" (text or None), "settings" (the rendered settings.json)}``. NotFound.
        """
        ...

    def status(self) -> dict[str, Any]:
        """Swarm summary: agents (as ``list_agents``), pending count, main commit, runtime."""
        ...

    def status_json(self) -> bytes:
        """``status()`` as compact UTF-8 JSON; the swarm keeps the encoded document while
        nothing in it moved (host.sock ``/status``)."""
        ...

    def version(self) -> str:
        """A token that changes whenever ``status()`` / ``tombstones()`` may change; cheap
        (no process probing): the dashboard keys its agent cards and ETag on it."""
        ...
