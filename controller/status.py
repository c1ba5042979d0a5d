"""Per-agent status as Kubernetes-style conditions, persisted to ``<state>/status.json``.

The condition computation (``compute_conditions``, ``merge_conditions``) is
pure; ``load_status`` / ``save_status`` are the only I/O here.

Conditions (``type``: ``status`` / CamelCase ``reason``):

- ``Ready``: True/Running when the agent's process or container runs and its harness
  found claude; False/ClaudeMissing when it runs but reported no claude CLI;
  False/BudgetExceeded when it runs but is over its budget or the swarm's (it takes no
  new turn); False with
  Suspended, StoppedByRequest, NotDeployed, Stopped, Failed, CrashLoopBackOff,
  InvalidManifest, Pruning.
- ``Reconciling``: True while an action is still owed (Creating, Rebuilding,
  ApplyingManifest, Starting, Stopping, Destroying, RetryScheduled, CrashBackOff);
  False/Reconciled, False/Stalled.
- ``Stalled``: True on a permanent error (PermanentError), a manifest at main that
  fails the schema (InvalidManifest) or repeated crashes (CrashLoopBackOff) — until
  desired state changes or the operator starts the agent again; False/NotStalled.
- ``UpToDate``: True when the deployed digests match main; False with NotDeployed,
  NeedsUpdate (hyperhive version), NeedsRebuild (agent.nix / flake), ManifestChanged,
  EnvChanged (the controller's pass-through environment, say ``ANTHROPIC_API_KEY``,
  changed since the agent started: ``hyperhive restart NAME`` picks it up);
  Unknown/NotDesired while being pruned. Under a runtime that does not build
  agent.nix (``local``) the message says so.
- ``LoggedIn``: from the agent's own report (``HarnessReport``) when it sent one: True
  with where its credentials come from, False/NeedsLogin (none), False/CredentialsRejected
  (the API answered 401/403 to them). Before the first report, the controller's reading of
  the agent's claude dir: True/CredentialsPresent, False/NeedsLogin, Unknown/NotProbed.
- ``Degraded`` (turn health, from the agent's report; True is bad): True with
  ClaudeMissing, NotLoggedIn, ApiUnauthorized, ApiOverloaded (529), ApiRateLimited (429),
  ApiUnreachable (no answer), ApiError (another status), TurnFailed; False/Healthy;
  Unknown/NotReported (running, no report yet) or NotRunning.
- ``Isolated`` (only when the runtime reports it, see ``driver_isolation``): True
  with Bubblewrap (local runtime under bwrap) or Container (nixos-container);
  False/NoSandbox when a local agent runs (or would start) without a sandbox: it
  can read other agents' files and the operator's state as the controller's user.

``lastTransitionTime`` changes only when status, reason or message change;
``observedCommit`` is the main commit the condition was computed against (it
follows main without moving the transition time, like Kubernetes'
``observedGeneration``).

status.json shape::

    {"version": 1, "updated_at": "<rfc3339>", "main": "<hex>", "runtime": "local",
     "agents": {"alice": {"name", "phase", "observed_commit", "desired_commit",
                          "held", "web_port", "model", "suspended", "detail",
                          "conditions": [{"type", "status", "reason", "message",
                                          "lastTransitionTime", "observedCommit"}]}},
     "holds": {"alice": {"reason": "stopped by request", "since": <unix seconds>}},
     "failures": {"alice": {"kind", "action", "message", "attempts", "retry_at",
                            "key": [config_digest, build_digest]}},
     "crashes": {"alice": {"times": [<unix s>, ...], "restart_at", "stalled",
                           "key": [config_digest, build_digest]}},
     "events": {"alice": [{"at": <unix s>, "type": "Crashed", "message"}]},
     "purge": ["bob"]}

``failures`` (retry backoff, permanent stalls), ``crashes`` (crash-loop backoff)
and ``events`` survive a controller restart; ``key`` ties a record to the
desired digests it was made for, so a change of desired state clears it.
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
from schemas.wire import ApiTrouble, parse_rfc3339, rfc3339

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
    ISOLATED = "Isolated"
    DEGRADED = "Degraded"


@dataclass(frozen=True)
class Isolation:
    """How one agent is isolated from the others and from the operator's state.

    ``isolated`` False means it runs as the controller's user with the host's view
    (it can read other agents' credentials and ``<state>``); ``reason`` is the
    condition's CamelCase reason (``Bubblewrap``, ``Container``, ``NoSandbox``);
    ``message`` says what to do about it.
    """

    isolated: bool
    reason: str
    message: str


CONTAINER_ISOLATION = Isolation(True, "Container", "runs in its own NixOS container")


def driver_isolation(driver: object, agent: str) -> Isolation | None:
    """The isolation ``driver`` reports for ``agent``, or None when it reports none.

    Drivers with an ``isolation(agent)`` method are asked (the local driver: per
    agent, from how its running process was started); the ``nixos-container``
    runtime is always ``Container``.
    """
    probe = getattr(driver, "isolation", None)
    if callable(probe):
        found = probe(agent)
        return found if isinstance(found, Isolation) else None
    if getattr(driver, "name", None) == "nixos-container":
        return CONTAINER_ISOLATION
    return None


@dataclass(frozen=True)
class Condition:
    """One condition; ``last_transition_time`` is unix seconds (0 = not yet merged)."""

    type: CondType
    status: CondStatus
    reason: str
    message: str = ""
    last_transition_time: float = 0.0
    observed_commit: str | None = None

    def same_state(self, other: Condition) -> bool:
        """True when status, reason and message are equal (transition time ignored)."""
        return (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )

    def to_json(self) -> dict[str, Any]:
        """``{"type", "status", "reason", "message", "lastTransitionTime", "observedCommit"}``."""
        return {
            "type": str(self.type),
            "status": str(self.status),
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": rfc3339(self.last_transition_time),
            "observedCommit": self.observed_commit,
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
            observed_commit=str(d["observedCommit"]) if d.get("observedCommit") else None,
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

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "action", "message", "attempts", "retry_at"}`` (status.json ``failures``)."""
        return {
            "kind": str(self.kind),
            "action": str(self.action),
            "message": self.message,
            "attempts": self.attempts,
            "retry_at": self.retry_at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Failure:
        """Inverse of ``to_json``; raises KeyError / ValueError / TypeError when malformed."""
        retry = d.get("retry_at")
        return cls(
            kind=FailureKind(d["kind"]),
            action=ActionKind(d["action"]),
            message=str(d["message"]),
            attempts=int(d.get("attempts", 1)),
            retry_at=float(retry) if retry is not None else None,
        )


CRASH_LIMIT = 5
"""Crashes within ``CRASH_WINDOW`` seconds that stall an agent (CrashLoopBackOff)."""
CRASH_WINDOW = 600.0
CRASH_BACKOFF_BASE = 10.0
CRASH_BACKOFF_MAX = 300.0


def crash_backoff(crashes: int) -> float:
    """Seconds before restarting after crash number ``crashes`` in the window: 0, 10, 20, 40…

    The first crash restarts at once; each further one doubles the wait (capped
    at ``CRASH_BACKOFF_MAX``).
    """
    if crashes <= 1:
        return 0.0
    return float(min(CRASH_BACKOFF_MAX, CRASH_BACKOFF_BASE * 2 ** (crashes - 2)))


@dataclass(frozen=True)
class CrashState:
    """Recent crashes of one agent: restart backoff, and the crash-loop stall.

    ``times`` are the crashes within ``CRASH_WINDOW`` (unix seconds, oldest
    first); ``restart_at`` when the next automatic restart is allowed;
    ``stalled`` True after ``CRASH_LIMIT`` crashes in the window: no automatic
    restart until desired state changes or the agent is started by request.
    """

    times: tuple[float, ...] = ()
    restart_at: float | None = None
    stalled: bool = False

    def crashed(self, now: float) -> CrashState:
        """This state after one more crash at ``now``."""
        times = (*(t for t in self.times if now - t < CRASH_WINDOW), now)
        if len(times) >= CRASH_LIMIT:
            return CrashState(times, None, True)
        return CrashState(times, now + crash_backoff(len(times)), False)

    def expired(self, now: float) -> bool:
        """True when the last crash left the window and nothing is stalled: forget it."""
        return not self.stalled and (not self.times or now - self.times[-1] >= CRASH_WINDOW)

    def to_json(self) -> dict[str, Any]:
        """``{"times", "restart_at", "stalled"}``."""
        return {"times": list(self.times), "restart_at": self.restart_at, "stalled": self.stalled}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CrashState:
        """Inverse of ``to_json``; raises KeyError / ValueError / TypeError when malformed."""
        restart = d.get("restart_at")
        return cls(
            times=tuple(float(t) for t in d.get("times", ())),
            restart_at=float(restart) if restart is not None else None,
            stalled=bool(d.get("stalled", False)),
        )


@dataclass(frozen=True)
class HarnessReport:
    """What an agent's harness says it has (wire ``AgentReport``, ``POST /report`` on its own
    socket, so it speaks only for itself).

    ``claude_found`` / ``claude_path`` / ``claude_version``: the claude CLI it resolved;
    ``credentials`` / ``credential_source`` / ``credentials_rejected``: whether claude can
    authenticate and how; ``env``: digests of its ``ANTHROPIC_*`` / ``CLAUDE_CODE_*``
    variables (``schemas.wire.reported_env``); ``turn_*``: the running or last turn
    (``turn_outcome``: ``ok``, ``failed``, ``cancelled``, ``prompt_too_long``;
    ``turn_unreached``: why a failed turn never reached the model, its message back in the
    inbox); ``api``: the last API error since the model last answered, else None.
    """

    claude_found: bool
    credentials: bool
    claude_path: str = ""
    claude_version: str | None = None
    credential_source: str = ""
    credentials_rejected: bool = False
    env: tuple[tuple[str, str], ...] = ()
    turn_running: bool = False
    turn_number: int | None = None
    turn_outcome: str | None = None
    turn_unreached: str | None = None
    turn_note: str | None = None
    api: ApiTrouble | None = None
    started_at: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HarnessReport:
        """From a wire ``AgentReport`` (already validated against the schema)."""
        claude = d.get("claude") or {}
        creds = d.get("credentials") or {}
        turn = d.get("turn") or {}
        api = d.get("api")
        trouble = ApiTrouble.from_json(api) if isinstance(api, Mapping) else None
        env = d.get("env") or {}
        started = d.get("started_at")
        return cls(
            claude_found=bool(claude.get("found", False)),
            credentials=bool(creds.get("present", False)),
            claude_path=str(claude.get("path") or ""),
            claude_version=str(claude["version"]) if claude.get("version") else None,
            credential_source=str(creds.get("source") or ""),
            credentials_rejected=bool(creds.get("rejected", False)),
            env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
            turn_running=bool(turn.get("running", False)),
            turn_number=turn.get("number") if isinstance(turn.get("number"), int) else None,
            turn_outcome=str(turn["outcome"]) if turn.get("outcome") else None,
            turn_unreached=str(turn["unreached"]) if turn.get("unreached") else None,
            turn_note=str(turn["note"]) if turn.get("note") else None,
            api=trouble,
            started_at=float(started) if isinstance(started, int | float) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The row's ``harness`` summary (``status -o json``): no env digests."""
        api = self.api
        return {
            "claude": {
                "found": self.claude_found,
                "path": self.claude_path,
                "version": self.claude_version,
            },
            "credentials": {
                "present": self.credentials,
                "source": self.credential_source,
                "rejected": self.credentials_rejected,
            },
            "turn": {
                "running": self.turn_running,
                "number": self.turn_number,
                "outcome": self.turn_outcome,
                "unreached": self.turn_unreached,
                "note": self.turn_note,
            },
            "api": None
            if api is None
            else {
                "status": api.status,
                "error": api.error,
                "attempt": api.attempt,
                "max_retries": api.max_retries,
                "gave_up": api.gave_up,
                "at": api.at,
            },
        }


def env_drift(report: HarnessReport | None, passed: Mapping[str, str] | None) -> tuple[str, ...]:
    """Names of the pass-through variables (``passed``: name → digest, what the controller
    would give the agent now) whose value the running agent (``report.env``) does not have:
    set, changed or unset since it started. Empty without a report or a known environment."""
    if report is None or passed is None:
        return ()
    have = dict(report.env)
    names = set(have) | set(passed)
    return tuple(sorted(n for n in names if have.get(n) != passed.get(n)))


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
    runtime: str = "local"
    """The driver's name, for what is said about it (``agent.nix is not built under ...``)."""
    logged_in: bool | None = None
    login_reason: str = ""
    crash: CrashState | None = None
    version: str | None = None
    """The hyperhive version main wants (``DesiredState.hyperhive_version``)."""
    isolation: Isolation | None = None
    """What the runtime reports (``driver_isolation``); None: no ``Isolated`` condition."""
    report: HarnessReport | None = None
    """What the agent's harness last reported (None: nothing yet, or not running)."""
    env_drift: tuple[str, ...] = ()
    """Pass-through variables the running agent does not have as the controller would pass
    them now (``env_drift``)."""
    budget_hold: str | None = None
    """Why the agent may take no turn now: over its budget or the swarm's (spend and limit,
    ``controller.budget``); None when it may."""


_PENDING_REASON = {
    ActionKind.CREATE: "Creating",
    ActionKind.REBUILD: "Rebuilding",
    ActionKind.APPLY_MANIFEST: "ApplyingManifest",
    ActionKind.START: "Starting",
    ActionKind.STOP: "Stopping",
    ActionKind.DESTROY: "Destroying",
}


def budget_exceeded(why: str) -> Condition:
    """``Ready=False/BudgetExceeded``: the agent runs but takes no new turn (docs/budgets.md);
    ``why`` names spend and limit."""
    return Condition(CondType.READY, CondStatus.FALSE, "BudgetExceeded", why)


def _ready(f: AgentFacts) -> Condition:
    t = CondType.READY
    obs = f.observed
    phase = Phase.ABSENT if obs is None else obs.phase
    if phase is Phase.RUNNING:
        if f.report is not None and not f.report.claude_found:
            return Condition(t, CondStatus.FALSE, "ClaudeMissing", _claude_missing(f))
        if f.budget_hold is not None:
            return budget_exceeded(f.budget_hold)
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
    if f.crash is not None and f.crash.stalled:
        return Condition(
            t,
            CondStatus.FALSE,
            "CrashLoopBackOff",
            f"crashed {len(f.crash.times)} times in {int(CRASH_WINDOW // 60)} minutes; "
            "not restarted automatically",
        )
    if phase is Phase.FAILED:
        return Condition(t, CondStatus.FALSE, "Failed", detail or "exited unexpectedly")
    return Condition(t, CondStatus.FALSE, "Stopped", detail or "stopped")


def _reconciling(f: AgentFacts) -> Condition:
    t = CondType.RECONCILING
    if f.pending is None:
        return Condition(t, CondStatus.FALSE, "Reconciled", "nothing to do")
    if f.failure is not None and f.failure.kind is FailureKind.PERMANENT:
        return Condition(t, CondStatus.FALSE, "Stalled", f"{f.pending.kind.value} is stalled")
    if f.crash is not None and f.pending.kind is ActionKind.START:
        if f.crash.stalled:
            return Condition(t, CondStatus.FALSE, "Stalled", "crash loop: not restarting")
        if f.crash.restart_at is not None:
            n = len(f.crash.times)
            return Condition(
                t,
                CondStatus.TRUE,
                "CrashBackOff",
                f"crashed {n} time{'s' if n != 1 else ''} in {int(CRASH_WINDOW // 60)} "
                f"minutes; restarting at {rfc3339(f.crash.restart_at)}",
            )
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
    if (
        f.crash is not None
        and f.crash.stalled
        and f.pending is not None
        and f.pending.kind is ActionKind.START
    ):
        return Condition(
            t,
            CondStatus.TRUE,
            "CrashLoopBackOff",
            f"crashed {len(f.crash.times)} times in {int(CRASH_WINDOW // 60)} minutes; "
            "start or restart it (hyperhive status shows its log), or change its desired state",
        )
    return Condition(t, CondStatus.FALSE, "NotStalled", "")


def _up_to_date(f: AgentFacts) -> Condition:
    t = CondType.UP_TO_DATE
    want, have = f.desired, f.observed
    if want is None:
        return Condition(t, CondStatus.UNKNOWN, "NotDesired", "not in desired state")
    if have is None or have.phase is Phase.ABSENT or have.build_digest is None:
        return Condition(t, CondStatus.FALSE, "NotDeployed", f"main is at {want.commit[:12]}")
    if (
        f.version is not None
        and have.hyperhive_version is not None
        and have.hyperhive_version != f.version
    ):
        return Condition(
            t,
            CondStatus.FALSE,
            "NeedsUpdate",
            f"hyperhive {have.hyperhive_version} is deployed, {f.version} is current",
        )
    if have.build_digest != want.build_digest:
        return Condition(
            t, CondStatus.FALSE, "NeedsRebuild", "agent.nix, the flake or hyperhive changed"
        )
    if have.config_digest != want.config_digest:
        return Condition(t, CondStatus.FALSE, "ManifestChanged", "agent.yaml changed")
    if f.env_drift and have.phase is Phase.RUNNING:
        names = ", ".join(f.env_drift)
        return Condition(
            t,
            CondStatus.FALSE,
            "EnvChanged",
            f"started before the controller's environment changed ({names}): "
            f"hyperhive restart {f.name} picks it up",
        )
    msg = f"deployed {(have.commit or want.commit)[:12]}"
    if want.has_nix and not f.builds_nix:
        msg += f"; agent.nix is not built under the {f.runtime} runtime"
    return Condition(t, CondStatus.TRUE, "UpToDate", msg)


def _claude_missing(f: AgentFacts) -> str:
    where = f.report.claude_path if f.report is not None and f.report.claude_path else "claude"
    return (
        f"the agent found no claude CLI ({where!r} is not an executable on its PATH): start "
        "the controller with ./hh serve (it installs the pinned CLI), or install claude and "
        "set HYPERHIVE_CLAUDE_BIN before hyperhive serve; then "
        f"hyperhive restart {f.name} (a message waiting for it is delivered then)"
    )


def _no_credentials(f: AgentFacts) -> str:
    return (
        "claude has no credentials in the agent: export ANTHROPIC_API_KEY before "
        f"hyperhive serve and run hyperhive restart {f.name}, or log in from its web UI "
        f"(/agents/{f.name}/ on the dashboard)"
    )


def _rejected(f: AgentFacts) -> str:
    source = f.report.credential_source if f.report is not None else ""
    return (
        f"the Messages API rejected claude's credentials ({source or 'unknown source'}): "
        f"log in again from /agents/{f.name}/ or set a new ANTHROPIC_API_KEY and run "
        f"hyperhive restart {f.name}"
    )


def _logged_in(f: AgentFacts) -> Condition:
    t = CondType.LOGGED_IN
    r = f.report
    running = f.observed is not None and f.observed.phase is Phase.RUNNING
    if r is not None and running:
        if r.credentials_rejected:
            return Condition(t, CondStatus.FALSE, "CredentialsRejected", _rejected(f))
        if r.credentials:
            return Condition(
                t,
                CondStatus.TRUE,
                "CredentialsPresent",
                f"{r.credential_source or 'claude credentials present'} (reported by the agent)",
            )
        return Condition(t, CondStatus.FALSE, "NeedsLogin", _no_credentials(f))
    if f.logged_in is None:
        return Condition(t, CondStatus.UNKNOWN, "NotProbed", f.login_reason)
    if f.logged_in:
        return Condition(t, CondStatus.TRUE, "CredentialsPresent", f.login_reason)
    return Condition(t, CondStatus.FALSE, "NeedsLogin", f.login_reason or "no claude credentials")


#: HTTP status → (reason, what it means) for ``Degraded``.
_API_REASONS: dict[int, tuple[str, str]] = {
    401: ("ApiUnauthorized", "rejected the credentials"),
    403: ("ApiUnauthorized", "refused the credentials"),
    429: ("ApiRateLimited", "is rate limiting this key"),
    529: ("ApiOverloaded", "is overloaded"),
}


def _api_condition(f: AgentFacts, api: ApiTrouble) -> Condition:
    t = CondType.DEGRADED
    if api.status is None:
        reason, what = "ApiUnreachable", "did not answer (connection refused, reset or timed out)"
    else:
        reason, what = _API_REASONS.get(api.status, ("ApiError", f"answered {api.status}"))
        what = f"answered {api.status}: it {what}" if api.status in _API_REASONS else what
    when = f" at {rfc3339(api.at)}" if api.at is not None else ""
    if api.gave_up:
        tail = "claude gave up; the message goes back to the inbox and is delivered again"
    elif api.attempt:
        of = f" of {api.max_retries}" if api.max_retries else ""
        tail = f"claude is retrying (attempt {api.attempt}{of})"
    else:
        tail = "the next turn retries"
    fix = ""
    if reason == "ApiUnauthorized":
        fix = f"; {_rejected(f)}"
    elif reason == "ApiUnreachable":
        fix = "; check ANTHROPIC_BASE_URL, proxies and the network"
    return Condition(t, CondStatus.TRUE, reason, f"the Messages API {what}{when}; {tail}{fix}")


def _degraded(f: AgentFacts) -> Condition:
    """Turn health from the agent's report: can its next turn reach the model?"""
    t = CondType.DEGRADED
    running = f.observed is not None and f.observed.phase is Phase.RUNNING
    if not running:
        return Condition(t, CondStatus.UNKNOWN, "NotRunning", "not running")
    r = f.report
    if r is None:
        return Condition(t, CondStatus.UNKNOWN, "NotReported", "the agent has not reported yet")
    if not r.claude_found:
        return Condition(t, CondStatus.TRUE, "ClaudeMissing", _claude_missing(f))
    if r.credentials_rejected:
        return Condition(t, CondStatus.TRUE, "ApiUnauthorized", _rejected(f))
    if not r.credentials:
        return Condition(t, CondStatus.TRUE, "NotLoggedIn", _no_credentials(f))
    if r.api is not None:
        return _api_condition(f, r.api)
    if r.turn_outcome == "failed" and not r.turn_running:
        note = f": {r.turn_note}" if r.turn_note else ""
        return Condition(
            t,
            CondStatus.TRUE,
            "TurnFailed",
            f"turn {r.turn_number} failed{note}; see the agent's web UI (/agents/{f.name}/)",
        )
    if r.turn_number is None:
        return Condition(t, CondStatus.FALSE, "Healthy", "ready for its first turn")
    last = r.turn_outcome or "running"
    return Condition(t, CondStatus.FALSE, "Healthy", f"turn {r.turn_number}: {last}")


def _isolated(iso: Isolation) -> Condition:
    status = CondStatus.TRUE if iso.isolated else CondStatus.FALSE
    return Condition(CondType.ISOLATED, status, iso.reason, iso.message)


def compute_conditions(f: AgentFacts) -> tuple[Condition, ...]:
    """Ready, Reconciling, Stalled, UpToDate, LoggedIn, Degraded (and Isolated when the
    runtime reports it) for one agent (transition time 0)."""
    out = (_ready(f), _reconciling(f), _stalled(f), _up_to_date(f), _logged_in(f), _degraded(f))
    return out if f.isolation is None else (*out, _isolated(f.isolation))


def merge_conditions(
    previous: Sequence[Condition],
    current: Sequence[Condition],
    now: float,
    observed_commit: str | None = None,
) -> tuple[Condition, ...]:
    """Stamp ``current`` with transition times: ``previous``'s when unchanged, else ``now``.

    ``observed_commit`` (the main commit this pass evaluated) is set on every
    condition; it does not count as a change.
    """
    prev = {c.type: c for c in previous}
    out: list[Condition] = []
    for c in current:
        old = prev.get(c.type)
        when = old.last_transition_time if old is not None and old.same_state(c) else now
        out.append(
            Condition(
                c.type,
                c.status,
                c.reason,
                c.message,
                last_transition_time=when,
                observed_commit=observed_commit or c.observed_commit,
            )
        )
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
    """Write status.json atomically (temp file + rename), mode 0600 (the operator's alone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            # one line: json's C encoder only runs without indent (``jq . status.json``)
            fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
