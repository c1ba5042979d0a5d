"""Per-agent status as Kubernetes-style conditions, persisted to ``<state>/status.json``.

The condition computation (``compute_conditions``, ``merge_conditions``) is
pure; ``load_status`` / ``save_status`` are the only I/O here.

Conditions (``type``: ``status`` / CamelCase ``reason``):

- ``Ready``: True/Running when the agent's process or container runs; False with
  Suspended, StoppedByRequest, NotDeployed, Stopped, Failed, InvalidManifest, Pruning.
- ``Reconciling``: True while an action is still owed (Creating, Rebuilding,
  ApplyingManifest, Starting, Stopping, Destroying, RetryScheduled); False/Reconciled.
- ``Stalled``: True on a permanent error (PermanentError) or a manifest at main that
  fails the schema (InvalidManifest) — until desired state changes; False/NotStalled.
- ``UpToDate``: True when the deployed digests match main; False with NotDeployed,
  NeedsRebuild, ManifestChanged; Unknown/NotDesired while being pruned. Under a
  runtime that does not build agent.nix (``local``) the message says so.
- ``LoggedIn``: True when claude credentials are present (or an API key is passed
  through), False/NeedsLogin, Unknown/NotProbed.

``lastTransitionTime`` changes only when status, reason or message change.

status.json shape::

    {"version": 1, "updated_at": "<rfc3339>", "main": "<hex>", "runtime": "local",
     "agents": {"alice": {"name", "phase", "observed_commit", "desired_commit",
                          "held", "web_port", "model", "suspended", "detail",
                          "conditions": [{"type", "status", "reason", "message",
                                          "lastTransitionTime"}]}},
     "holds": {"alice": {"reason": "stopped by request", "since": <unix seconds>}}}
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.model import Action, ActionKind, DesiredAgent, ObservedAgent, Phase
from schemas.wire import parse_rfc3339, rfc3339

STATUS_VERSION = 1


class CondStatus(enum.StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class CondType(enum.StrEnum):
    """The condition types every agent carries."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    UP_TO_DATE = "UpToDate"
    LOGGED_IN = "LoggedIn"


@dataclass(frozen=True)
class Condition:
    """One condition; ``last_transition_time`` is unix seconds (0 = not yet merged)."""

    type: CondType
    status: CondStatus
    reason: str
    message: str = ""
    last_transition_time: float = 0.0

    def same_state(self, other: Condition) -> bool:
        """True when status, reason and message are equal (transition time ignored)."""
        return (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )

    def to_json(self) -> dict[str, Any]:
        """``{"type", "status", "reason", "message", "lastTransitionTime"}``."""
        return {
            "type": str(self.type),
            "status": str(self.status),
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": rfc3339(self.last_transition_time),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Condition:
        """Inverse of ``to_json``; raises KeyError / ValueError on a malformed entry."""
        return cls(
            type=CondType(d["type"]),
            status=CondStatus(d["status"]),
            reason=str(d["reason"]),
            message=str(d.get("message", "")),
            last_transition_time=parse_rfc3339(d["lastTransitionTime"]),
        )


class FailureKind(enum.StrEnum):
    """How the last action on an agent failed."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Failure:
    """The last failed action on an agent: retried with backoff (transient) or Stalled."""

    kind: FailureKind
    action: ActionKind
    message: str
    attempts: int = 1
    retry_at: float | None = None


@dataclass(frozen=True)
class AgentFacts:
    """Everything the conditions of one agent are computed from (no I/O).

    ``pending`` is what the planner still wants for the agent after this pass;
    ``invalid`` the error of a manifest at main that fails the schema;
    ``builds_nix`` False under a runtime that does not build agent.nix;
    ``logged_in`` None when not probed.
    """

    name: str
    desired: DesiredAgent | None
    observed: ObservedAgent | None
    pending: Action | None = None
    failure: Failure | None = None
    held: bool = False
    invalid: str | None = None
    builds_nix: bool = True
    logged_in: bool | None = None
    login_reason: str = ""


_PENDING_REASON = {
    ActionKind.CREATE: "Creating",
    ActionKind.REBUILD: "Rebuilding",
    ActionKind.APPLY_MANIFEST: "ApplyingManifest",
    ActionKind.START: "Starting",
    ActionKind.STOP: "Stopping",
    ActionKind.DESTROY: "Destroying",
}


def _ready(f: AgentFacts) -> Condition:
    t = CondType.READY
    obs = f.observed
    phase = Phase.ABSENT if obs is None else obs.phase
    if phase is Phase.RUNNING:
        commit = (obs.commit or "")[:12] if obs else ""
        return Condition(t, CondStatus.TRUE, "Running", f"running at {commit or 'unknown commit'}")
    if f.desired is None and f.invalid is None:
        return Condition(t, CondStatus.FALSE, "Pruning", "no longer in desired state")
    if f.invalid is not None and obs is None:
        return Condition(t, CondStatus.FALSE, "InvalidManifest", f.invalid)
    if f.desired is not None and f.desired.manifest.suspend:
        return Condition(t, CondStatus.FALSE, "Suspended", "spec.suspend is true")
    if f.held:
        return Condition(
            t, CondStatus.FALSE, "StoppedByRequest", "stopped by request until started"
        )
    if phase is Phase.ABSENT:
        return Condition(t, CondStatus.FALSE, "NotDeployed", "not deployed yet")
    detail = obs.detail if obs else ""
    if phase is Phase.FAILED:
        return Condition(t, CondStatus.FALSE, "Failed", detail or "exited unexpectedly")
    return Condition(t, CondStatus.FALSE, "Stopped", detail or "stopped")


def _reconciling(f: AgentFacts) -> Condition:
    t = CondType.RECONCILING
    if f.pending is None:
        return Condition(t, CondStatus.FALSE, "Reconciled", "nothing to do")
    if f.failure is not None and f.failure.kind is FailureKind.PERMANENT:
        return Condition(t, CondStatus.FALSE, "Stalled", f"{f.pending.kind.value} is stalled")
    if f.failure is not None:
        return Condition(
            t,
            CondStatus.TRUE,
            "RetryScheduled",
            f"{f.failure.action.value} failed (attempt {f.failure.attempts}): "
            f"{f.failure.message}; retrying with backoff",
        )
    return Condition(t, CondStatus.TRUE, _PENDING_REASON[f.pending.kind], f.pending.reason)


def _stalled(f: AgentFacts) -> Condition:
    t = CondType.STALLED
    if f.invalid is not None:
        return Condition(t, CondStatus.TRUE, "InvalidManifest", f.invalid)
    if f.failure is not None and f.failure.kind is FailureKind.PERMANENT and f.pending is not None:
        return Condition(
            t,
            CondStatus.TRUE,
            "PermanentError",
            f"{f.failure.action.value} failed: {f.failure.message}; waiting for desired state "
            "to change",
        )
    return Condition(t, CondStatus.FALSE, "NotStalled", "")


def _up_to_date(f: AgentFacts) -> Condition:
    t = CondType.UP_TO_DATE
    want, have = f.desired, f.observed
    if want is None:
        return Condition(t, CondStatus.UNKNOWN, "NotDesired", "not in desired state")
    if have is None or have.phase is Phase.ABSENT or have.build_digest is None:
        return Condition(t, CondStatus.FALSE, "NotDeployed", f"main is at {want.commit[:12]}")
    if have.build_digest != want.build_digest:
        return Condition(
            t, CondStatus.FALSE, "NeedsRebuild", "agent.nix, the flake or hyperhive changed"
        )
    if have.config_digest != want.config_digest:
        return Condition(t, CondStatus.FALSE, "ManifestChanged", "agent.yaml changed")
    msg = f"deployed {(have.commit or want.commit)[:12]}"
    if want.has_nix and not f.builds_nix:
        msg += "; agent.nix is not built under the local runtime"
    return Condition(t, CondStatus.TRUE, "UpToDate", msg)


def _logged_in(f: AgentFacts) -> Condition:
    t = CondType.LOGGED_IN
    if f.logged_in is None:
        return Condition(t, CondStatus.UNKNOWN, "NotProbed", f.login_reason)
    if f.logged_in:
        return Condition(t, CondStatus.TRUE, "CredentialsPresent", f.login_reason)
    return Condition(t, CondStatus.FALSE, "NeedsLogin", f.login_reason or "no claude credentials")


def compute_conditions(f: AgentFacts) -> tuple[Condition, ...]:
    """Ready, Reconciling, Stalled, UpToDate, LoggedIn for one agent (transition time 0)."""
    return (_ready(f), _reconciling(f), _stalled(f), _up_to_date(f), _logged_in(f))


def merge_conditions(
    previous: Sequence[Condition], current: Sequence[Condition], now: float
) -> tuple[Condition, ...]:
    """Stamp ``current`` with transition times: ``previous``'s when unchanged, else ``now``."""
    prev = {c.type: c for c in previous}
    out: list[Condition] = []
    for c in current:
        old = prev.get(c.type)
        when = old.last_transition_time if old is not None and old.same_state(c) else now
        out.append(Condition(c.type, c.status, c.reason, c.message, last_transition_time=when))
    return tuple(out)


def condition(conditions: Sequence[Condition], type_: CondType) -> Condition | None:
    """The condition of ``type_`` in ``conditions``, if present."""
    return next((c for c in conditions if c.type is type_), None)


@dataclass(frozen=True)
class AgentStatus:
    """One agent's row in status.json, ``list_agents`` and the dashboard."""

    name: str
    phase: str
    conditions: tuple[Condition, ...]
    observed_commit: str | None = None
    desired_commit: str | None = None
    held: str | None = None
    web_port: int | None = None
    model: str | None = None
    suspended: bool = False
    detail: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The status.json / ``list_agents`` row."""
        doc: dict[str, Any] = {
            "name": self.name,
            "phase": self.phase,
            "observed_commit": self.observed_commit,
            "desired_commit": self.desired_commit,
            "held": self.held,
            "web_port": self.web_port,
            "model": self.model,
            "suspended": self.suspended,
            "detail": self.detail,
            "conditions": [c.to_json() for c in self.conditions],
        }
        doc.update(self.extra)
        return doc


def conditions_from_json(rows: Any) -> tuple[Condition, ...]:
    """Parse a stored conditions list, skipping malformed entries."""
    out: list[Condition] = []
    if isinstance(rows, list):
        for row in rows:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                out.append(Condition.from_json(row))
    return tuple(out)


def load_status(path: Path) -> dict[str, Any]:
    """Read status.json; ``{}`` if it is missing or unreadable (it is rebuilt every pass)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def save_status(path: Path, doc: Mapping[str, Any]) -> None:
    """Write status.json atomically (temp file + rename), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
