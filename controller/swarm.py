"""The swarm: one reconcile pass (decisions → observe → plan → execute → record) and the verbs.

``Swarm`` implements ``controller.ops.SwarmOps`` for every surface (sockets,
dashboard, CLI). A pass is serialized by a lock and runs:

1. decisions (ref work, docs/approvals.md): a ``building/<id>`` left without
   outcome by a crash is finished by this pass (never re-applied); every
   ``approved/<id>`` without outcome is applied to main (fast-forward or merge)
   and gets ``building/<id>`` — a conflict gets ``failed/<id>`` instead, main
   untouched; every ``denied/<id>`` is reported to the manager exactly once; a
   main that moved with no deploy (an operator push) gets a new id + ``building/<id>``.
2. observe → crash watch → plan (``controller.plan``) → execute through the
   driver: the manager first, then up to ``config.parallel_actions`` agents at
   once (one action per agent per pass). A driver ``TransientError`` (or any
   unexpected exception) is retried on later passes with exponential backoff; a
   ``PermanentError`` stalls the agent until its desired digests change.
3. record: ``deployed/<id>`` when every agent a build touches converged,
   else ``failed/<id>`` with the errors; ``ApprovalResolved`` events to the
   manager; per-agent conditions to ``<state>/status.json``; login / needs-update
   transitions to the manager.

``dry_run`` plans without executing or writing anything; ref work it would do is
returned in ``PassResult.pending``.

Crash watch (``watch``, called by the serve loop every few seconds, and the
start of every pass): an agent that was running and is now stopped or failed,
with no transition of ours under way (passes and lifecycle verbs hold the pass
lock; ``watch`` skips while one runs), crashed. The manager gets a
``ContainerCrash`` (coalesced while unread); the agent is restarted at once,
then with exponential backoff (``controller.status.crash_backoff``); after
``CRASH_LIMIT`` crashes in ``CRASH_WINDOW`` it is Stalled (CrashLoopBackOff) and
no longer restarted until it is started by request or its desired state changes.
``NeedsLogin`` / ``LoggedIn`` / ``NeedsUpdate`` fire on transitions only; the
first pass after a start seeds every agent's state silently.

Lifecycle overrides: ``kill`` records a hold ("stopped by request") in
status.json so the next pass does not start the agent again; ``start``,
``restart``, ``update`` and the next deploy touching the agent clear it (and
any crash-loop or failure backoff).

Prune: a destroyed agent's state directory becomes a tombstone
(``controller.tombstones``); spawning the name again restores it; ``purge``
deletes it.

Backoff, stalls, crash records and recent per-agent events are persisted in
status.json, so a controller restart does not reset them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller import tombstones
from controller.auth.agents import AgentCredentials
from controller.config import Config
from controller.drivers.base import Deployment, Driver
from controller.errors import (
    Conflict,
    HyperhiveError,
    Invalid,
    NotFound,
    PermanentError,
    TransientError,
)
from controller.manifest import render_settings
from controller.metarepo import ApplyFailed, Build, MetaRepo
from controller.model import (
    Action,
    ActionKind,
    DesiredAgent,
    DesiredState,
    ObservedAgent,
    Phase,
)
from controller.ops import Lifecycle, PassResult, Proposal, ProposalKind, ProposalState
from controller.paths import Layout
from controller.plan import agent_order, plan, plan_agent
from controller.status import (
    CRASH_WINDOW,
    STATUS_VERSION,
    AgentFacts,
    AgentStatus,
    Condition,
    CrashState,
    Failure,
    FailureKind,
    compute_conditions,
    conditions_from_json,
    driver_isolation,
    load_status,
    merge_conditions,
    save_status,
)
from schemas.names import MANAGER, InvalidName, check_agent_name, default_web_port, is_agent_name
from schemas.wire import EventType, rfc3339

log = logging.getLogger("hyperhive.swarm")

WEB_PORT_FILE = "web-port"
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
HOLD_REASON = "stopped by request"
EVENTS_KEEP = 20
"""Recent lifecycle events kept per agent (``describe``, status.json)."""
DEPLOYS_SHOWN = 10
MAX_JOURNAL_LINES = 5000

_DONE_EVENT = {
    ActionKind.CREATE: "Created",
    ActionKind.REBUILD: "Rebuilt",
    ActionKind.APPLY_MANIFEST: "ManifestApplied",
    ActionKind.START: "Started",
    ActionKind.STOP: "Stopped",
    ActionKind.DESTROY: "Destroyed",
}

Key = tuple[str | None, str | None]


# environment variables that authenticate the claude CLI (docs/claude-cli.md)
_CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")


class EventSink(Protocol):
    """The part of ``controller.broker.Broker`` the swarm uses."""

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Any:
        """Deliver a typed event to ``recipient``'s inbox (coalesced by ``dedup_key``)."""
        ...

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        """Close every open thread ``agent`` asked or was asked; returns how many."""
        ...

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per recipient (messages whose lease ran out too often)."""
        ...


@dataclass(frozen=True)
class _Fail:
    failure: Failure
    key: Key


@dataclass(frozen=True)
class _Crash:
    state: CrashState
    key: Key


def _desired_key(want: DesiredAgent | None) -> Key:
    return (None, None) if want is None else (want.config_digest, want.build_digest)


def _key_from_json(raw: Any) -> Key:
    if isinstance(raw, list | tuple) and len(raw) == 2:
        a, b = raw
        return (a if isinstance(a, str) else None, b if isinstance(b, str) else None)
    return (None, None)


def backoff(attempts: int) -> float:
    """Seconds before retry number ``attempts`` (5, 10, 20, ... capped at 300)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


def _check_name(name: str) -> None:
    if name == MANAGER:
        return
    try:
        check_agent_name(name)
    except InvalidName as exc:
        raise Invalid(str(exc), field="name") from exc


class Swarm:
    """The controller's core: reconcile passes and every verb of ``SwarmOps``.

    ``broker`` needs ``emit_event(recipient, event, dedup_key)``; ``driver`` is a
    ``controller.drivers.base.Driver``; ``on_deploy(agent)`` runs before an
    agent's process/container is created or started (the serve layer opens its
    socket there); ``on_destroy(agent)`` after it was destroyed. ``clock`` gives
    unix seconds (backoff, transition times). ``credentials`` (default: over
    ``layout``) holds the agents' broker credentials: a fresh one is issued
    before every create (first deploy or recreate: rotation), one is made if
    missing before any other start, and it is removed when the agent is
    destroyed (a tombstone never keeps a live credential).
    """

    def __init__(
        self,
        layout: Layout,
        config: Config,
        meta: MetaRepo,
        broker: EventSink,
        driver: Driver,
        on_deploy: Callable[[str], None] = lambda a: None,
        *,
        on_destroy: Callable[[str], None] = lambda a: None,
        clock: Callable[[], float] = time.time,
        credentials: AgentCredentials | None = None,
    ) -> None:
        self.layout = layout
        self.config = config
        self.meta = meta
        self.broker = broker
        self.driver = driver
        self.credentials = credentials if credentials is not None else AgentCredentials(layout)

        def deploying(agent: str) -> None:
            # every (re)start needs a credential: agents deployed before credentials existed
            self.credentials.ensure(agent)
            on_deploy(agent)

        self.on_deploy = deploying
        self.on_destroy = on_destroy
        self._clock = clock
        self._pass_lock = threading.RLock()
        self._req_lock = threading.Lock()
        self._requested = threading.Event()
        self._reasons: list[str] = []
        # the crash watch's view: None until the first pass seeds it
        self._seen_phase: dict[str, Phase] | None = None
        self._seen_login: dict[str, bool] | None = None
        self._seen_stale: dict[str, bool] | None = None
        self._last_pass: dict[str, Any] = {}
        self._recipients: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._ports: dict[str, int | None] = {}
        self._row_cache: dict[str, tuple[tuple[Any, ...], AgentStatus]] = {}
        self._saved: tuple[Any, ...] | None = None
        self._rev = 0  # bumped whenever failures / crashes / events / purge change
        self._rev_saved = 0
        self._rows_lock = threading.RLock()
        # the observed state requests are served from: (driver generation, observed),
        # refreshed by every pass, crash-watch tick and verb (``_observe``)
        self._view: tuple[int | None, dict[str, ObservedAgent]] | None = None
        self._view_lock = threading.Lock()
        self._view_rev = 0  # bumped whenever a fresh observation differs from the last
        self._list_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self._json_rows: dict[str, tuple[AgentStatus, dict[str, Any]]] = {}
        self._tomb_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self._login_cache: dict[str, tuple[tuple[int, ...], tuple[bool | None, str]]] = {}
        self._claude_dirs: dict[str, str] = {}
        self._recorded: tuple[Any, ...] | None = None  # what the last ``_record`` saw
        self._status_cache: tuple[tuple[Any, ...], bytes] | None = None
        self._quiet: tuple[Any, ...] | None = None  # the key of the last pass with no plan
        self._view_at = float("-inf")  # time.monotonic() of the last fresh observe
        doc = load_status(layout.status_file)
        self._status_doc: dict[str, Any] = doc
        holds = doc.get("holds")
        self._holds: dict[str, dict[str, Any]] = (
            {str(k): dict(v) for k, v in holds.items() if isinstance(v, dict)}
            if isinstance(holds, dict)
            else {}
        )
        agents = doc.get("agents")
        self._conditions: dict[str, tuple[Condition, ...]] = {}
        if isinstance(agents, dict):
            for name, row in agents.items():
                if isinstance(row, dict):
                    self._conditions[str(name)] = conditions_from_json(row.get("conditions"))
        self._failures: dict[str, _Fail] = {}
        for name, d in _mapping(doc.get("failures")).items():
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                self._failures[name] = _Fail(Failure.from_json(d), _key_from_json(d.get("key")))
        self._crashes: dict[str, _Crash] = {}
        for name, d in _mapping(doc.get("crashes")).items():
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                self._crashes[name] = _Crash(CrashState.from_json(d), _key_from_json(d.get("key")))
        self._events: dict[str, list[dict[str, Any]]] = {}
        for name, rows in _mapping(doc.get("events")).items():
            if isinstance(rows, list):
                self._events[name] = [dict(r) for r in rows if isinstance(r, dict)][-EVENTS_KEEP:]
        purge = doc.get("purge")
        self._purge: set[str] = (
            {str(x) for x in purge if isinstance(x, str)} if isinstance(purge, list) else set()
        )

    # ================================================================ observed state

    def _generation(self) -> int | None:
        """The driver's change counter (``LocalDriver.generation``), None if it keeps none."""
        fn = getattr(self.driver, "generation", None)
        return int(fn()) if callable(fn) else None

    def _observe(self) -> dict[str, ObservedAgent]:
        """A fresh ``driver.observe()``; it becomes the view requests are served from."""
        gen = self._generation()  # read first: a change during observe is seen next time
        observed = self.driver.observe()
        with self._view_lock:
            if self._view is None or self._view[1] != observed:
                self._view_rev += 1
            self._view = (gen, observed)
            self._view_at = time.monotonic()
        return observed

    def _observed(self) -> dict[str, ObservedAgent]:
        """The observed state for a request: the last observation while the driver reports
        no change since (its ``generation``), else a fresh one. Never mutate the result.

        What the driver cannot report (an agent it did not start dying) shows up at the
        next crash-watch tick (``config.crash_watch_seconds``) or pass. A driver without
        ``generation`` is observed on every call.
        """
        gen = self._generation()
        if gen is not None:
            with self._view_lock:
                view = self._view
            if view is not None and view[0] == gen:
                return view[1]
        return self._observe()

    def version(self) -> str:
        """A token that changes whenever ``status()`` / ``tombstones()`` may change: observed
        state, desired state, holds, failures, crashes, events, the last pass and refs.

        Cheap (no process probing): the dashboard derives its ETag from it.
        """
        self._observed()
        desired, _ = self.meta.desired_checked()
        return ".".join(
            (
                str(self._view_rev),
                desired.commit,
                str(self._rev),
                str(hash(json.dumps(self._holds, sort_keys=True, default=str))),
                str(self._last_pass.get("at")),
                str(self.meta.last_deploy()),
            )
        )

    # ================================================================ triggers

    def request_pass(self, reason: str) -> None:
        """Ask the serve loop for a pass soon (hook poke, approval, dashboard). Never blocks."""
        with self._req_lock:
            self._reasons.append(reason)
            self._requested.set()

    def wait_for_pass_request(self, timeout: float | None = None) -> str | None:
        """Block until ``request_pass`` (→ the reasons, joined) or ``timeout`` (→ None)."""
        if not self._requested.wait(timeout):
            return None
        with self._req_lock:
            reasons, self._reasons = self._reasons, []
            self._requested.clear()
        return ", ".join(dict.fromkeys(reasons)) or "requested"

    # ================================================================ the pass

    def reconcile(self, dry_run: bool = False) -> PassResult:
        """Run one pass now (serialized with other passes and lifecycle verbs).

        ``dry_run``: plan only; write nothing (no refs, no status, no processes);
        ref work that is due is listed in ``PassResult.pending``.
        """
        with self._pass_lock:
            if dry_run:
                return self._dry_run()
            return self._pass()

    def _pass(self) -> PassResult:
        with self.meta.pass_scope():
            return self._pass_scoped()

    def _dry_run(self) -> PassResult:
        pending: list[str] = []
        for b in self.meta.open_builds():
            pending.append(f"building/{b.id}: record the outcome of {b.title or b.commit[:12]}")
        for id in self.meta.approved_unapplied():
            pending.append(f"approved/{id}: apply proposal/{id} to main and deploy it")
        for d in self.meta.denied_unnotified():
            pending.append(f"denied/{d.id}: tell the manager")
        main, last = self.meta.main_commit(), self.meta.last_deploy()
        if main != last:
            pending.append(f"main {main[:12]}: not deployed yet (pushed); deploy it")
        desired, invalid = self.meta.desired_checked()
        observed = {n: o for n, o in self._observed().items() if n not in invalid}
        actions = plan(desired, observed, held=frozenset(self._holds))
        return PassResult(tuple(actions), (), True, tuple(pending))

    def _emit(self, event: dict[str, Any], dedup_key: str) -> bool:
        try:
            self.broker.emit_event(MANAGER, event, dedup_key)
        except Exception:
            log.exception("could not deliver %s to the manager", event.get("type"))
            return False
        return True

    def _approval_event(
        self, id: int, kind: str, agents: tuple[str, ...], decision: str, note: str
    ) -> bool:
        return self._emit(
            {
                "type": EventType.APPROVAL_RESOLVED.value,
                "id": id,
                "kind": kind,
                "agents": list(agents),
                "decision": decision,
                "note": note,
            },
            f"approval:{id}:{decision}",
        )

    def _event(self, agent: str, type_: str, message: str) -> None:
        """Append a lifecycle event to ``agent``'s recent events (``describe``)."""
        rows = self._events.setdefault(agent, [])
        rows.append({"at": self._clock(), "type": type_, "message": message})
        del rows[:-EVENTS_KEEP]
        self._rev += 1

    def _decisions(self, errors: list[str]) -> list[Build]:
        meta = self.meta
        builds: list[Build] = list(meta.open_builds())
        for b in builds:
            log.info("building/%d found without outcome: finishing it in this pass", b.id)
        # an operator push first, so it gets its own id before approvals merge onto it
        pushed = meta.record_push()
        if pushed is not None:
            builds.append(pushed)
        for id in meta.approved_unapplied():
            try:
                builds.append(meta.apply_approved(id))
            except ApplyFailed as exc:
                p = meta.proposal(id)
                meta.finish(id, False, f"not applied: {exc}")
                self._approval_event(id, p.kind.value, p.agents, "failed", f"not applied: {exc}")
                errors.append(f"proposal/{id}: {exc}")
        for d in meta.denied_unnotified():
            if self._approval_event(d.id, d.kind.value, d.agents, "denied", d.note):
                meta.mark_notified(d.id)
        return builds

    def _pass_scoped(self) -> PassResult:
        now = self._clock()
        errors: list[str] = []
        builds = self._decisions(errors)
        desired, invalid = self.meta.desired_checked()
        for b in builds:
            for name in list(self._holds):
                if b.touches(name):
                    del self._holds[name]
        # the view is fresh enough while the driver reports no change and the crash watch's
        # period has not run out (what it cannot report, the watch's own observe finds)
        recent = time.monotonic() - self._view_at < self.config.crash_watch_seconds
        observed = self._observed() if recent and not builds else self._observe()
        quiet = self._quiet_key(desired, invalid)
        if not builds and not errors and quiet == self._quiet:
            # nothing moved since a pass that planned nothing: it plans nothing again
            # (the plan is a function of desired, observed, invalid and holds, all in the key)
            errors += [f"{name}: {why}" for name, why in invalid.items()]
            self._last_pass = {"at": rfc3339(now), "plan": [], "errors": errors, "builds": []}
            return PassResult((), tuple(errors))
        self._watch_phases(desired, observed, now)
        plannable = {n: o for n, o in observed.items() if n not in invalid}
        actions = plan(desired, plannable, held=frozenset(self._holds))
        done = self._execute_all(actions, desired, observed, now)
        for action in actions:
            outcome = done.get(action.agent, "")
            if outcome.startswith("error: "):
                errors.append(f"{action.agent}: {action.kind.value}: {outcome[7:]}")
        after = self._observe() if actions else observed
        for b in builds:
            self._finish_build(b, desired, invalid, after, actions, done)
        if builds:
            with contextlib.suppress(Exception):
                self.meta.sync_manager_clone()
        self._seen_phase = {n: o.phase for n, o in after.items()}
        for name, why in invalid.items():
            errors.append(f"{name}: {why}")
        self._last_pass = {
            "at": rfc3339(now),
            "plan": [a.to_json() for a in actions],
            "errors": list(errors),
            "builds": [b.id for b in builds],
        }
        self._watch_flags(desired, after)
        self._record(desired, invalid, after, now)
        self._quiet = None if actions or builds else self._quiet_key(desired, invalid)
        return PassResult(tuple(actions), tuple(errors))

    def _quiet_key(self, desired: DesiredState, invalid: Mapping[str, str]) -> tuple[Any, ...]:
        """What a pass's plan and record depend on: the same key, the same outcome."""
        return (
            self._view_rev,
            desired.commit,
            id(desired),
            tuple(sorted(invalid.items())),
            self._rev,
            json.dumps(self._holds, sort_keys=True, default=str),
        )

    # ---------------------------------------------------------------- crash watch

    def watch(self) -> list[str]:
        """One crash-watch tick between passes: observe, report crashes and transitions.

        Never waits for a running pass (it returns ``[]`` at once: a pass is a
        transition under way). Requests a pass when an agent crashed or when an
        action is due (a backoff ran out); returns the reasons it requested one.
        Before the first pass has seeded the watch, does nothing.
        """
        if not self._pass_lock.acquire(blocking=False):
            return []
        try:
            if self._seen_phase is None:
                return []
            now = self._clock()
            desired, invalid = self.meta.desired_checked()
            observed = self._observe()
            reasons = [f"crash: {n}" for n in self._watch_phases(desired, observed, now)]
            self._watch_flags(desired, observed)
            if not reasons:
                plannable = {n: o for n, o in observed.items() if n not in invalid}
                for a in plan(desired, plannable, held=frozenset(self._holds)):
                    if self._gate(a, desired, now) is None:
                        reasons.append(f"due: {a.agent} {a.kind.value}")
                        break
            if self._rev != self._rev_saved:
                self._save_now()
            rotate = getattr(self.driver, "rotate_logs", None)
            if callable(rotate):
                try:
                    rotate()
                except OSError:
                    log.exception("log rotation failed")
            for r in reasons:
                self.request_pass(r)
            return reasons
        finally:
            self._pass_lock.release()

    def _watch_phases(
        self, desired: DesiredState, observed: Mapping[str, ObservedAgent], now: float
    ) -> list[str]:
        """Crash detection: running before, stopped/failed now, not on purpose. Returns names."""
        seen = self._seen_phase
        self._seen_phase = {n: o.phase for n, o in observed.items()}
        if seen is None:
            return []  # the first pass only seeds: no events for what happened before we ran
        crashed: list[str] = []
        for name, o in observed.items():
            if seen.get(name) is not Phase.RUNNING or o.phase not in (Phase.STOPPED, Phase.FAILED):
                continue
            want = desired.agents.get(name)
            if want is None or want.manifest.suspend or name in self._holds:
                continue
            self._on_crash(name, want, o, now)
            crashed.append(name)
        return crashed

    def _on_crash(self, name: str, want: DesiredAgent, o: ObservedAgent, now: float) -> None:
        key = _desired_key(want)
        prev = self._crashes.get(name)
        state = prev.state if prev is not None and prev.key == key else CrashState()
        state = state.crashed(now)
        self._crashes[name] = _Crash(state, key)
        self._rev += 1
        n = len(state.times)
        what = o.detail or f"{o.phase.value} without being asked to"
        minutes = int(CRASH_WINDOW // 60)
        if state.stalled:
            note = (
                f"{what}; crashed {n} times in {minutes} minutes: not restarted any more "
                "(Stalled, CrashLoopBackOff) until it is started by request or its desired "
                "state changes"
            )
            key_ = f"crashloop:{name}:{int(state.times[0])}"
            self._event(name, "CrashLoopBackOff", note)
            log.error("%s: crash loop: %s", name, note)
        else:
            wait = max(0.0, (state.restart_at or now) - now)
            when = "restarting now" if wait <= 0 else f"restarting in {int(wait)} s"
            note = f"{what}; {when} (crash {n} in {minutes} minutes)"
            key_ = f"crash:{name}"
            self._event(name, "Crashed", note)
            log.warning("%s: crashed: %s", name, note)
        self._emit(
            {"type": EventType.CONTAINER_CRASH.value, "agent": name, "restarts": n, "note": note},
            key_,
        )

    def _watch_flags(self, desired: DesiredState, observed: Mapping[str, ObservedAgent]) -> None:
        """``NeedsLogin`` / ``LoggedIn`` / ``NeedsUpdate`` on transitions (seeded on first use).

        Only deployed agents count. A newly deployed agent that is not logged in
        gets ``NeedsLogin`` (one that existed at start-up was seeded silently);
        ``NeedsUpdate`` fires when an up-to-date agent becomes stale and stays so
        after the pass (suspended, held, a failing rebuild) — a successful rebuild
        is announced by ``Rebuilt`` instead.
        """
        login: dict[str, bool] = {}
        stale: dict[str, bool] = {}
        for name, want in desired.agents.items():
            o = observed.get(name)
            if o is None or o.phase is Phase.ABSENT:
                continue
            login[name] = bool(self._logged_in(name)[0])
            stale[name] = o.build_digest != want.build_digest or (
                o.hyperhive_version is not None and o.hyperhive_version != desired.hyperhive_version
            )
        prev_login, prev_stale = self._seen_login, self._seen_stale
        self._seen_login, self._seen_stale = login, stale
        if prev_login is None or prev_stale is None:
            return
        for name, ok in login.items():
            before = prev_login.get(name)
            if ok and before is False:
                self._event(name, "LoggedIn", "claude credentials appeared")
                self._emit({"type": EventType.LOGGED_IN.value, "agent": name}, f"login:{name}:in")
            elif not ok and before is not False:
                why = "claude credentials are gone" if before else "deployed without credentials"
                self._event(name, "NeedsLogin", f"{why}; log in from the agent's web UI")
                self._emit(
                    {"type": EventType.NEEDS_LOGIN.value, "agent": name}, f"login:{name}:needs"
                )
        for name, st in stale.items():
            if st and prev_stale.get(name) is False:
                o = observed[name]
                if o.hyperhive_version and o.hyperhive_version != desired.hyperhive_version:
                    note = f"hyperhive {o.hyperhive_version} → {desired.hyperhive_version}"
                else:
                    note = "agent.nix or the flake changed; it needs a rebuild"
                self._event(name, "NeedsUpdate", note)
                self._emit(
                    {"type": EventType.NEEDS_UPDATE.value, "agent": name, "note": note},
                    f"update:{name}:{desired.agents[name].build_digest}",
                )

    # ---------------------------------------------------------------- execute

    def _gate(self, action: Action, desired: DesiredState, now: float) -> str | None:
        """Why ``action`` must wait (backoff, stall, crash loop), or None when it may run."""
        name = action.agent
        key = _desired_key(desired.agents.get(name))
        prev = self._failures.get(name)
        if prev is not None and prev.key == key:
            f = prev.failure
            if f.kind is FailureKind.PERMANENT:
                return f"stalled: {f.message}"
            if f.retry_at is not None and now < f.retry_at:
                return f"retry after backoff: {f.message}"
        crash = self._crashes.get(name)
        if action.kind is ActionKind.START and crash is not None and crash.key == key:
            if crash.state.stalled:
                return "crash loop: not restarted until started by request"
            if crash.state.restart_at is not None and now < crash.state.restart_at:
                return f"restart after crash backoff (at {rfc3339(crash.state.restart_at)})"
        return None

    def _execute_all(
        self,
        actions: list[Action],
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> dict[str, str]:
        """Run the plan: each agent's outcome ("ok", "skipped: …", "error: …").

        Gating, ports, tombstone restores and sockets are done here, one agent
        after the other; the driver calls then run in parallel (up to
        ``config.parallel_actions``), the manager's alone and first (the others
        may need it); outcomes are recorded here again, in plan order. One
        agent never has two actions in a pass (the plan has one per agent).
        """
        done: dict[str, str] = {}
        jobs: list[tuple[Action, Callable[[], None]]] = []
        for action in actions:
            outcome, job = self._prepare(action, desired, observed, now)
            if job is None:
                done[action.agent] = outcome
            else:
                jobs.append((action, job))
        first = [j for j in jobs if j[0].agent == MANAGER]
        rest = [j for j in jobs if j[0].agent != MANAGER]
        for action, job in first:
            done[action.agent] = self._record_action(action, desired, observed, now, _call(job))
        workers = max(1, min(self.config.parallel_actions, len(rest)))
        if workers == 1:
            for action, job in rest:
                done[action.agent] = self._record_action(action, desired, observed, now, _call(job))
            return done
        with ThreadPoolExecutor(workers, thread_name_prefix="hyperhive-action") as pool:
            futures = [(action, pool.submit(_call, job)) for action, job in rest]
            for action, future in futures:
                done[action.agent] = self._record_action(
                    action, desired, observed, now, future.result()
                )
        return done

    def _prepare(
        self,
        action: Action,
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> tuple[str, Callable[[], None] | None]:
        """Gate one action and set it up: ``("", job)`` to run, or ``(outcome, None)``."""
        name = action.agent
        key = _desired_key(desired.agents.get(name))
        prev = self._failures.get(name)
        if prev is not None and prev.key != key:
            self._failures.pop(name, None)
            self._rev += 1
        crash = self._crashes.get(name)
        if crash is not None and crash.key != key:
            self._crashes.pop(name, None)
            self._rev += 1
        why = self._gate(action, desired, now)
        if why is not None:
            return f"skipped: {why}", None
        try:
            return "", self._job(action, desired, observed)
        except Exception as exc:
            return self._record_action(action, desired, observed, now, exc), None

    def _record_action(
        self,
        action: Action,
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
        now: float,
        exc: BaseException | None,
    ) -> str:
        """Bookkeeping after one action ran (``exc`` None: it succeeded): "ok" / "error: …"."""
        name = action.agent
        key = _desired_key(desired.agents.get(name))
        prev = self._failures.get(name)
        if isinstance(exc, PermanentError):
            attempts = prev.failure.attempts + 1 if prev else 1
            fail = Failure(FailureKind.PERMANENT, action.kind, exc.message, attempts)
            self._failures[name] = _Fail(fail, key)
            self._rev += 1
            self._event(name, "FailedPermanently", f"{action.kind.value}: {exc.message}")
            log.error("%s: %s failed permanently: %s", name, action.kind.value, exc.message)
            return f"error: {exc.message}"
        if exc is not None:
            message = exc.message if isinstance(exc, HyperhiveError) else f"{exc}"
            if not isinstance(exc, TransientError | HyperhiveError | OSError):
                log.error("%s: %s crashed", name, action.kind.value, exc_info=exc)
            attempts = prev.failure.attempts + 1 if prev else 1
            wait = backoff(attempts)
            fail = Failure(FailureKind.TRANSIENT, action.kind, message, attempts, now + wait)
            self._failures[name] = _Fail(fail, key)
            self._rev += 1
            self._event(
                name,
                "Failed",
                f"{action.kind.value} (attempt {attempts}): {message}; retrying in {int(wait)} s",
            )
            log.warning(
                "%s: %s failed (attempt %d): %s", name, action.kind.value, attempts, message
            )
            return f"error: {message}"
        if self._failures.pop(name, None) is not None:
            self._rev += 1
        if action.kind is ActionKind.REBUILD:
            want = desired.agents[name]
            self._emit(
                {"type": EventType.REBUILT.value, "agent": name, "commit": want.commit},
                f"rebuilt:{name}:{want.build_digest}",
            )
        elif action.kind is ActionKind.DESTROY:
            self.on_destroy(name)
            self.credentials.remove(name)
            have = observed.get(name)
            self._bury(name, have.commit if have is not None else None, desired.commit)
        self._event(name, _DONE_EVENT[action.kind], action.reason)
        log.info("%s: %s (%s)", name, action.kind.value, action.reason)
        return "ok"

    def _job(
        self,
        action: Action,
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
    ) -> Callable[[], None]:
        """Set ``action`` up (tombstone restore, port, settings, socket) and return the
        driver call that carries it out (run on a worker thread)."""
        name, kind = action.agent, action.kind
        driver = self.driver

        def sink(line: str) -> None:
            log.info("[%s] %s", name, line)

        if kind in (ActionKind.CREATE, ActionKind.REBUILD, ActionKind.APPLY_MANIFEST):
            want = desired.agents[name]
            have = observed.get(name)
            if kind is ActionKind.CREATE:
                self._restore(name)
                self.credentials.issue(name)  # first deploy or recreate: a fresh credential
            d = self._deployment(want, existing=have is not None and have.phase is not Phase.ABSENT)
            self.on_deploy(name)
            if kind is ActionKind.CREATE:
                return lambda: driver.create(d, sink)
            if kind is ActionKind.REBUILD:
                return lambda: driver.rebuild(d, sink)
            return lambda: driver.apply_manifest(d)
        if kind is ActionKind.START:
            self.on_deploy(name)
            return lambda: driver.start(name)
        if kind is ActionKind.STOP:
            return lambda: driver.stop(name)
        return lambda: driver.destroy(name)

    # ---------------------------------------------------------------- tombstones

    def _forget_caches(self, name: str) -> None:
        self._ports.pop(name, None)
        self._recipients.pop(name, None)

    def _bury(self, name: str, commit: str | None, main: str) -> None:
        """After a destroy: keep the agent's state as a tombstone, or delete it (purge)."""
        self._forget_caches(name)
        # peers waiting on an answer from a gone agent would wait forever
        try:
            self.broker.close_threads(name, f"{name} was destroyed")
        except Exception:
            log.exception("%s: could not close its open threads", name)
        self._failures.pop(name, None)
        self._crashes.pop(name, None)
        self._rev += 1
        if name in self._purge:
            self._purge.discard(name)
            self._purge_dirs(name, [self.layout.agent_dir(name)])
            return
        try:
            path = tombstones.bury(
                self.layout, name, self._clock(), {"commit": commit, "main": main}
            )
        except OSError as exc:
            log.error("%s: could not move its state to %s: %s", name, self.layout.tombstones, exc)
            self._event(name, "TombstoneFailed", f"state kept in place: {exc}")
            return
        if path is not None:
            self._event(name, "Tombstoned", f"state kept in {path}")
            log.info("%s: state kept as tombstone %s", name, path)

    def _restore(self, name: str) -> None:
        """Before a create: bring back the newest tombstone of ``name`` (notes, login, port)."""
        try:
            src = tombstones.restore(self.layout, name)
        except OSError as exc:
            log.error("%s: could not restore its tombstone: %s", name, exc)
            return
        if src is not None:
            self._forget_caches(name)
            self._event(name, "Restored", f"state restored from tombstone {src.name}")
            log.info("%s: restored state from tombstone %s", name, src)

    def _purge_dirs(self, name: str, paths: list[Path]) -> int:
        freed = 0
        for p in paths:
            freed += tombstones.dir_bytes(p)
            try:
                tombstones.remove(p)
            except FileNotFoundError:
                continue
        if not tombstones.moved(self.layout, name) and not self.layout.agent_dir(name).exists():
            for log_file in (
                self.layout.log_dir / f"{name}.log",
                self.layout.log_dir / f"{name}.log.1",
                self.layout.log_dir / f"{name}.build.log",
            ):
                with contextlib.suppress(FileNotFoundError):
                    log_file.unlink()
            self._events.pop(name, None)
        self._forget_caches(name)
        self._rev += 1
        log.info("%s: purged %d path(s), %d bytes", name, len(paths), freed)
        return freed

    def _dashboard_url(self) -> str:
        host = self.config.dashboard_host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.config.dashboard_port}"

    def web_port(self, agent: str, existing: bool = False) -> int:
        """The agent's web UI port, persisted in ``<state>/agents/<a>/web-port`` once chosen.

        First time: ``schemas.names.default_web_port`` with the configured ports; a
        fresh agent probes forward past ports other agents' files already hold
        (and the dashboard/manager ports); an agent that already runs without a
        file (``existing``) keeps the hashed port, so its UI does not move.
        """
        path = self.layout.agent_dir(agent) / WEB_PORT_FILE
        with contextlib.suppress(OSError, ValueError):
            port_ = int(path.read_text().strip())
            self._ports[agent] = port_
            return port_
        cfg = self.config
        port = default_web_port(agent, cfg.manager_port, cfg.agent_port_base, cfg.agent_port_range)
        if agent != MANAGER and not existing:
            used = {cfg.dashboard_port, cfg.manager_port}
            root = self.layout.state / "agents"
            with contextlib.suppress(OSError):
                for other in root.iterdir():
                    if other.name == agent:
                        continue
                    with contextlib.suppress(OSError, ValueError):
                        used.add(int((other / WEB_PORT_FILE).read_text().strip()))
            base, span = cfg.agent_port_base, cfg.agent_port_range
            for _ in range(span):
                if port not in used:
                    break
                port = base + (port - base + 1) % span
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{port}\n")
        self._ports[agent] = port
        return port

    def _deployment(self, want: DesiredAgent, existing: bool) -> Deployment:
        port = self.web_port(want.name, existing)
        settings = render_settings(
            want.manifest,
            web_port=port,
            dashboard_url=self._dashboard_url(),
            meta_commit=want.commit,
            hyperhive_version=self.meta.version,
        )
        return Deployment(
            agent=want,
            settings=settings,
            web_port=port,
            flake_ref=self.meta.flake_ref(want.commit, want.name),
        )

    # ---------------------------------------------------------------- record

    def _finish_build(
        self,
        b: Build,
        desired: DesiredState,
        invalid: Mapping[str, str],
        after: Mapping[str, ObservedAgent],
        actions: list[Action],
        done: Mapping[str, str],
    ) -> None:
        names = sorted(
            {
                n
                for n in set(desired.agents) | set(after) | set(invalid) | set(b.agents)
                if b.touches(n)
            },
            key=agent_order,
        )
        problems: list[str] = []
        for name in names:
            if name in invalid:
                problems.append(f"{name}: {invalid[name]}")
                continue
            outcome = done.get(name, "")
            if outcome.startswith(("error: ", "skipped: ")):
                problems.append(f"{name}: {outcome.partition(': ')[2]}")
                continue
            left = plan_agent(
                desired.agents.get(name),
                after.get(name),
                desired.hyperhive_version,
                name in self._holds,
            )
            if left is not None:
                problems.append(f"{name}: still needs {left.kind.value} ({left.reason})")
        steps = [f"{a.agent}: {a.kind.value}" for a in actions if b.touches(a.agent)]
        what = "; ".join(steps) if steps else "no runtime change needed"
        title = b.title or b.commit[:12]
        subject = title if title.startswith(f"{b.kind.value} ") else f"{b.kind.value}: {title}"
        if problems:
            message = f"failed {b.commit[:12]} ({subject})\n\n" + "\n".join(problems)
            note = "; ".join(problems)
        else:
            message = f"deployed {b.commit[:12]} ({subject})\n\n{what}"
            note = what
        ok = not problems
        agents = b.agents if not b.flake_changed else tuple(names)
        if b.base is not None or b.kind is not ProposalKind.PUSH:
            # (the bootstrap deploy of a new meta repo approves nothing: not announced)
            self._approval_event(b.id, b.kind.value, agents, "deployed" if ok else "failed", note)
        self.meta.finish(b.id, ok, message)
        log.info("%s/%d: %s", "deployed" if ok else "failed", b.id, note)

    def _logged_in(self, agent: str) -> tuple[bool | None, str]:
        """Whether ``agent`` has claude credentials, and how; re-read only when its claude
        dir or claude's settings.json changed (two ``stat`` calls otherwise)."""
        claude = self._claude_dirs.get(agent)
        if claude is None:
            claude = self._claude_dirs[agent] = str(self.layout.agent_claude(agent))
        key: list[int] = []
        for path in (claude, f"{claude}/settings.json"):
            try:
                st = os.stat(path)
                key += (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                key += (0, 0, 0)
        cached = self._login_cache.get(agent)
        if cached is not None and cached[0] == tuple(key):
            return cached[1]
        found = self._read_login(Path(claude))
        # a change within the last tick may be followed by another with the same mtime
        if all(time.time_ns() - m > 50_000_000 for m in key[1::3]):
            self._login_cache[agent] = (tuple(key), found)
        else:
            self._login_cache.pop(agent, None)
        return found

    def _read_login(self, claude: Path) -> tuple[bool | None, str]:
        if (claude / ".credentials.json").exists():
            return True, "claude credentials present"
        # a key or token pasted in the agent UI lands in the env block of claude's own
        # settings.json, which the CLI reads before the process environment (docs/turn-loop.md)
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((claude / "settings.json").read_text())
            if isinstance(doc, dict):
                env_block = doc.get("env")
                if isinstance(env_block, dict) and any(env_block.get(k) for k in _CREDENTIAL_VARS):
                    return True, "API key or token stored in the agent's claude settings"
                if doc.get("apiKeyHelper"):
                    return True, "apiKeyHelper set in the agent's claude settings"
        env = getattr(self.driver, "env", None)
        if isinstance(env, Mapping) and any(env.get(k) for k in _CREDENTIAL_VARS):
            return True, "API key or token passed through from the controller's environment"
        return False, "no claude credentials; log in from the agent's web UI"

    def _port_of(self, agent: str) -> int | None:
        if agent not in self._ports:
            port = None
            with contextlib.suppress(OSError, ValueError):
                port = int((self.layout.agent_dir(agent) / WEB_PORT_FILE).read_text().strip())
            self._ports[agent] = port
        return self._ports[agent]

    def _rows(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> list[AgentStatus]:
        """Status rows; a row whose inputs did not change is reused (a no-op pass is cheap)."""
        with self._rows_lock:
            return self._rows_locked(desired, invalid, observed, now)

    def _rows_locked(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> list[AgentStatus]:
        builds_nix = bool(getattr(self.driver, "builds_nix", True))
        names = sorted(set(desired.agents) | set(observed) | set(invalid), key=agent_order)
        rows: list[AgentStatus] = []
        for name in names:
            want = desired.agents.get(name)
            have = observed.get(name)
            raw_hold = self._holds.get(name)
            hold = dict(raw_hold) if raw_hold is not None else None
            key_ = _desired_key(want)
            fail = self._failures.get(name)
            failure = fail.failure if fail is not None and fail.key == key_ else None
            c = self._crashes.get(name)
            crash = c.state if c is not None and c.key == key_ else None
            login = self._logged_in(name)
            port = self._port_of(name)
            isolation = driver_isolation(self.driver, name)
            key = (
                want,
                have,
                hold,
                failure,
                crash,
                invalid.get(name),
                login,
                port,
                builds_nix,
                desired.commit,
                isolation,
            )
            cached = self._row_cache.get(name)
            if cached is not None and cached[0] == key:
                rows.append(cached[1])
                continue
            pending = None
            if name not in invalid:
                pending = plan_agent(want, have, desired.hyperhive_version, hold is not None)
            facts = AgentFacts(
                name=name,
                desired=want,
                observed=have,
                pending=pending,
                failure=failure,
                held=hold is not None,
                invalid=invalid.get(name),
                builds_nix=builds_nix,
                logged_in=login[0],
                login_reason=login[1],
                crash=crash,
                version=desired.hyperhive_version,
                isolation=isolation,
            )
            previous = cached[1].conditions if cached else self._conditions.get(name, ())
            conditions = merge_conditions(previous, compute_conditions(facts), now, desired.commit)
            extra: dict[str, Any] = {
                "flavor": "manager" if name == MANAGER else "agent",
                "commit": have.commit if have else None,
                "since": have.since if have else None,
                "hyperhive_version": have.hyperhive_version if have else None,
            }
            if crash is not None:
                extra["crashes"] = len(crash.times)
            row = AgentStatus(
                name=name,
                phase=(have.phase if have else Phase.ABSENT).value,
                conditions=conditions,
                observed_commit=have.commit if have else None,
                desired_commit=want.commit if want else None,
                held=hold.get("reason", HOLD_REASON) if hold is not None else None,
                web_port=port,
                model=want.manifest.model if want else None,
                suspended=bool(want and want.manifest.suspend),
                detail=have.detail if have else "",
                extra=extra,
            )
            self._row_cache[name] = (key, row)
            rows.append(row)
        for gone in set(self._row_cache) - set(names):
            del self._row_cache[gone]
        return rows

    def _record(
        self,
        desired: DesiredState,
        invalid: Mapping[str, str],
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> None:
        live = set(desired.agents) | set(invalid) | set(observed)
        self._holds = {k: v for k, v in self._holds.items() if k in desired.agents}
        if self._purge & set(desired.agents):
            # back in desired state before it was destroyed: the purge intent is void
            self._purge -= set(desired.agents)
            self._rev += 1
        for table in (self._failures, self._crashes):
            for name in [n for n in table if n not in live]:
                del table[name]
                self._rev += 1
        for name, c in list(self._crashes.items()):
            if c.state.expired(now):
                del self._crashes[name]
                self._rev += 1
        # nothing a row shows moved since the last record (a no-op pass): skip the rows
        key = self._quiet_key(desired, invalid)
        if key == self._recorded and self._saved is not None:
            return
        rows = self._rows(desired, invalid, observed, now)
        self._conditions = {r.name: r.conditions for r in rows}
        self._save(rows, desired.commit, now)
        self._recorded = key

    def _extra_doc(self) -> dict[str, Any]:
        return {
            "failures": {
                n: {**f.failure.to_json(), "key": list(f.key)}
                for n, f in sorted(self._failures.items())
            },
            "crashes": {
                n: {**c.state.to_json(), "key": list(c.key)}
                for n, c in sorted(self._crashes.items())
            },
            "events": {n: list(rows) for n, rows in sorted(self._events.items()) if rows},
            "purge": sorted(self._purge),
        }

    def _save(self, rows: list[AgentStatus], main: str, now: float) -> None:
        """Write status.json unless nothing changed since the last write."""
        holds = json.dumps(self._holds, sort_keys=True)
        fingerprint = (tuple(id(r) for r in rows), main, holds, self._rev)
        if fingerprint == self._saved:
            return
        doc: dict[str, Any] = {
            "version": STATUS_VERSION,
            "main": main,
            "runtime": self.driver.name,
            "agents": {r.name: r.to_json() for r in rows},
            "holds": json.loads(holds),
            **self._extra_doc(),
        }
        if {k: v for k, v in self._status_doc.items() if k != "updated_at"} == doc:
            self._saved = fingerprint
            self._rev_saved = self._rev
            return
        doc["updated_at"] = rfc3339(now)
        try:
            save_status(self.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.layout.status_file)
            return
        self._status_doc = doc
        self._saved = fingerprint
        self._rev_saved = self._rev

    def _save_now(self) -> None:
        """Write holds, failures, crashes, events and purge intents now (rows as last saved)."""
        doc = dict(self._status_doc)
        doc["holds"] = self._holds
        doc.update(self._extra_doc())
        doc["updated_at"] = rfc3339(self._clock())
        try:
            save_status(self.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.layout.status_file)
            return
        self._status_doc = json.loads(json.dumps(doc))
        self._saved = None
        self._rev_saved = self._rev

    # ================================================================ manager verbs

    def request_spawn(self, name: str) -> Proposal:
        """``proposal/<id>`` adding ``agents/<name>/agent.yaml``; see ``MetaRepo.propose_spawn``."""
        p = self.meta.propose_spawn(name)
        log.info("proposal/%d: spawn %s (pending operator approval)", p.id, name)
        return p

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        """Import ``commit`` from ``<state>/manager/meta`` as ``proposal/<id>``.

        NotFound (no such commit), Invalid (a manifest fails the schema, field =
        the file), Conflict (nothing to change / already pending / in main).
        """
        p = self.meta.propose_commit(commit, self.layout.manager_meta, note)
        log.info("proposal/%d: apply %s (pending operator approval)", p.id, p.commit[:12])
        return p

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        """start / kill / restart / update one agent now; a one-line outcome.

        NotFound for an unknown agent; Conflict when the agent's state forbids it
        (suspended in its manifest, not deployed yet) or the runtime failed.
        Start, restart and update clear a hold, a crash loop and a failure backoff.
        """
        with self._pass_lock:
            desired, _ = self.meta.desired_checked()
            observed = self._observe()
            want = desired.agents.get(name)
            have = observed.get(name)
            if want is None and have is None:
                raise NotFound(f"no agent {name!r}")
            try:
                return self._lifecycle(verb, name, want, have)
            except PermanentError as exc:
                raise Conflict(f"{verb.value} {name} failed: {exc.message}") from exc
            except TransientError as exc:
                raise Conflict(f"{verb.value} {name} failed (try again): {exc.message}") from exc
            finally:
                self._note_phase(name)

    def _note_phase(self, name: str) -> None:
        """After a verb changed an agent on purpose: the crash watch's view follows it."""
        if self._seen_phase is None:
            return
        with contextlib.suppress(Exception):
            o = self._observe().get(name)
            if o is None:
                self._seen_phase.pop(name, None)
            else:
                self._seen_phase[name] = o.phase

    def _lifecycle(
        self,
        verb: Lifecycle,
        name: str,
        want: DesiredAgent | None,
        have: ObservedAgent | None,
    ) -> str:
        deployed = have is not None and have.phase is not Phase.ABSENT
        if verb is Lifecycle.KILL:
            self._holds[name] = {"reason": HOLD_REASON, "since": self._clock()}
            self._event(name, "Stopped", "stopped by request (kill)")
            self._save_now()
            self.driver.stop(name)
            return f"{name} stopped; it stays stopped until start, restart or its next deploy"
        if want is None:
            raise Conflict(f"{name} is being removed (not in desired state)")
        if want.manifest.suspend:
            raise Conflict(
                f"{name} is suspended by spec.suspend in agents/{name}/agent.yaml; "
                "propose a change to resume it"
            )
        self._holds.pop(name, None)
        self._failures.pop(name, None)
        self._crashes.pop(name, None)
        self._event(name, "Requested", f"{verb.value} by request")
        self._save_now()
        if not deployed:
            self.request_pass(f"{verb.value} {name}")
            return f"{name} is not deployed yet; a reconcile pass was requested"
        self.on_deploy(name)
        if verb is Lifecycle.START:
            self.driver.start(name)
            return f"{name} running"
        if verb is Lifecycle.RESTART:
            self.driver.restart(name)
            return f"{name} restarted"
        d = self._deployment(want, existing=True)
        self.driver.rebuild(d, lambda line: log.info("[%s] %s", name, line))
        return f"{name} updated to {want.commit[:12]} and restarted"

    def list_agents(self) -> list[dict[str, Any]]:
        """Per-agent rows (``AgentStatus.to_json``): name, phase, conditions, commit
        (deployed) / observed_commit / desired_commit, since, web_port, model, held."""
        dead = self.broker.dead_letter_counts()
        return [
            {**row, "dead_letters": dead.get(str(row.get("name")), 0)} for row in self._row_docs()
        ]

    def _row_docs(self) -> list[dict[str, Any]]:
        """``AgentStatus.to_json`` of every row, reused while nothing they show changed
        (observed and desired state, holds, failures, crashes, events). Shared: copy before
        changing one."""
        desired, invalid = self.meta.desired_checked()
        observed = self._observed()
        key = (
            self._view_rev,
            desired.commit,
            id(desired),
            self._rev,
            json.dumps(self._holds, sort_keys=True, default=str),
        )
        with self._rows_lock:
            cached = self._list_cache
            if cached is not None and cached[0] == key:
                return cached[1]
            docs: list[dict[str, Any]] = []
            json_rows: dict[str, tuple[AgentStatus, dict[str, Any]]] = {}
            for r in self._rows(desired, invalid, observed, self._clock()):
                prev = self._json_rows.get(r.name)
                doc = prev[1] if prev is not None and prev[0] is r else r.to_json()
                json_rows[r.name] = (r, doc)
                docs.append(doc)
            self._json_rows = json_rows
            self._list_cache = (key, docs)
            return docs

    def agent_names(self) -> frozenset[str]:
        """Agents in desired state plus ``manager``: the valid recipients."""
        return frozenset(self.meta.desired().agents) | {MANAGER}

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        """``spec.allowedRecipients`` as deployed (settings.json), else as desired.

        Empty = anyone. A non-empty list always includes ``manager``.
        """
        path = self.layout.agent_settings(agent)
        allowed: tuple[str, ...] | None = None
        try:
            mtime = path.stat().st_mtime_ns
            cached = self._recipients.get(agent)
            if cached is not None and cached[0] == mtime:
                allowed = cached[1]
            else:
                doc = json.loads(path.read_text())
                allowed = tuple(str(x) for x in doc.get("allowed_recipients") or ())
                self._recipients[agent] = (mtime, allowed)
        except (OSError, ValueError, AttributeError):
            want = self.meta.desired().agents.get(agent)
            allowed = want.manifest.allowed_recipients if want else ()
        if allowed and MANAGER not in allowed:
            allowed = (*allowed, MANAGER)
        return allowed

    # ================================================================ operator verbs

    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        """Every proposal/deploy, newest first (or only those awaiting a decision)."""
        return self.meta.proposals(pending_only)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy; NotFound."""
        return self.meta.proposal(id)

    def approve(self, id: int, note: str = "") -> Proposal:
        """Write ``approved/<id>`` and ask for a pass. NotFound / Conflict."""
        p = self.meta.approve(id, note)
        self.request_pass(f"approved/{id}")
        return p

    def deny(self, id: int, note: str) -> Proposal:
        """Annotated ``denied/<id>`` (reason: ``note``) and a pass request; NotFound, Conflict."""
        p = self.meta.deny(id, note)
        self.request_pass(f"denied/{id}")
        return p

    # ================================================================ agents in depth

    def describe(self, name: str) -> dict[str, Any]:
        """One agent: its ``list_agents`` row plus ``deploys`` (newest first), ``events``
        (oldest first, the last 20), ``failure`` and ``crash`` (backoff state) and
        ``tombstones`` (kept state of earlier incarnations). NotFound when the agent is
        neither desired nor observed."""
        _check_name(name)
        desired, invalid = self.meta.desired_checked()
        observed = self._observed()
        rows = self._rows(desired, invalid, observed, self._clock())
        row = next((r for r in rows if r.name == name), None)
        if row is None:
            hint = ""
            if tombstones.moved(self.layout, name):
                hint = "; it was destroyed and its state is kept (hyperhive tombstones)"
            raise NotFound(f"no agent {name!r}{hint}", field="name")
        doc = row.to_json()
        key = _desired_key(desired.agents.get(name))
        fail = self._failures.get(name)
        crash = self._crashes.get(name)
        doc["failure"] = fail.failure.to_json() if fail is not None and fail.key == key else None
        doc["crash"] = crash.state.to_json() if crash is not None and crash.key == key else None
        doc["deploys"] = self.meta.deploys_for(name, DEPLOYS_SHOWN)
        doc["events"] = [dict(e) for e in self._events.get(name, ())]
        doc["tombstones"] = [
            {"id": p.name, "destroyed_at": info["destroyed_at"], "path": str(p)}
            for _, p, info in tombstones.moved(self.layout, name)
        ]
        return doc

    def destroy(self, name: str, purge: bool = False) -> str:
        """Remove ``agents/<name>/`` from main (a commit by the operator) and run a pass.

        The pass destroys the runtime and keeps the agent's state as a tombstone
        (``purge``: deletes it). An agent already gone from main but still running
        is just reconciled; one that is entirely gone but has tombstones is purged
        when ``purge``. Invalid for the manager or a bad name; NotFound otherwise.
        """
        _check_name(name)
        if name == MANAGER:
            raise Invalid("the manager cannot be destroyed", field="name")
        with self._pass_lock:
            desired, invalid = self.meta.desired_checked()
            at_main = name in desired.agents or name in invalid
            running = name in self._observe()
            if not at_main and not running:
                if purge and self._tombstone_paths(name):
                    return self._purge_locked(name)
                raise NotFound(f"no agent {name!r} in desired state or running", field="name")
            if purge:
                self._purge.add(name)
                self._rev += 1
            commit = None
            if at_main:
                what = "destroy" + (" --purge" if purge else "")
                commit = self.meta.remove_agent(name, f"{what} {name}")
            self._save_now()
            result = self._pass()
            if name in self._observe():
                errs = "; ".join(e for e in result.errors if e.startswith(f"{name}:"))
                return (
                    f"{name} removed from main"
                    + (f" ({commit[:12]})" if commit else "")
                    + f" but not destroyed yet: {errs or 'see hyperhive status ' + name}; "
                    "the next passes retry"
                )
            builds = self._last_pass.get("builds") or []
            tag = f" (deployed/{builds[-1]})" if builds else ""
            if purge:
                return f"{name} destroyed{tag}; its state and credentials were deleted"
            kept = tombstones.moved(self.layout, name)
            where = f" in {kept[-1][1]}" if kept else ""
            return (
                f"{name} destroyed{tag}; its state is kept{where} — spawning {name} again "
                f"restores it, `hyperhive purge {name}` deletes it"
            )

    def _tombstone_paths(self, name: str) -> list[Path]:
        paths = [p for _, p, _ in tombstones.moved(self.layout, name)]
        agent_dir = self.layout.agent_dir(name)
        if agent_dir.is_dir():
            paths.append(agent_dir)
        return paths

    def purge(self, name: str) -> str:
        """Delete the kept state of a destroyed agent: every tombstone of ``name`` (an agent
        name), or the one tombstone ``name`` (a tombstone id ``<agent>-<unix>``).

        Invalid for a bad name or the manager; Conflict while the agent is in desired state
        or still running; NotFound when nothing is kept.
        """
        m = tombstones.TOMBSTONE_ID_RE.match(name)
        agent = m.group(1) if m and not is_agent_name(name) else name
        _check_name(agent)
        if agent == MANAGER:
            raise Invalid("the manager's state is never a tombstone", field="name")
        with self._pass_lock:
            desired, invalid = self.meta.desired_checked()
            if agent in desired.agents or agent in invalid:
                raise Conflict(
                    f"{agent} is in desired state (agents/{agent}/ at main); "
                    f"`hyperhive destroy {agent} --purge` removes and purges it",
                    field="name",
                )
            if agent in self._observe():
                raise Conflict(
                    f"{agent} is still being destroyed; try again after the next pass",
                    field="name",
                )
            if agent != name:
                path = self.layout.tombstones / name
                if not path.is_dir():
                    raise NotFound(f"no tombstone {name!r}", field="name")
                freed = self._purge_dirs(agent, [path])
                self._save_now()
                return f"purged tombstone {name} ({_size(freed)})"
            return self._purge_locked(agent)

    def _purge_locked(self, name: str) -> str:
        paths = self._tombstone_paths(name)
        if not paths:
            raise NotFound(f"nothing is kept for {name!r}", field="name")
        freed = self._purge_dirs(name, paths)
        self._purge.discard(name)
        self._save_now()
        return f"purged {name}: {len(paths)} tombstone(s), {_size(freed)} deleted"

    def tombstones(self) -> list[dict[str, Any]]:
        """Destroyed agents whose state is kept, oldest first: ``{"name", "id",
        "destroyed_at", "bytes", "path", "commit", "in_place"}``."""
        desired, invalid = self.meta.desired_checked()
        live = frozenset(desired.agents) | frozenset(invalid) | frozenset(self._observed())
        stamps = []
        for d in (self.layout.tombstones, self.layout.state / "agents"):
            try:
                st = d.stat()
                stamps.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                stamps.append((0, 0))
        key = (live, *stamps)
        cached = self._tomb_cache
        if cached is not None and cached[0] == key:
            return [dict(t) for t in cached[1]]
        listing = tombstones.listing(self.layout, live)
        # a dir changed within the last tick may change again with the same mtime: no cache
        if all(time.time_ns() - m > 50_000_000 for _, m in stamps):
            self._tomb_cache = (key, listing)
        return [dict(t) for t in listing]

    def journal(self, name: str, unit: str | None = None, lines: int = 200) -> str:
        """The agent runtime's recent log lines (``driver.journal``): the container journal
        under nixos-container, the tail of ``<state>/logs/<a>.log`` under local.

        Invalid (name, unit, lines outside 1..5000), NotFound (unknown agent).
        """
        _check_name(name)
        if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= 5000:
            raise Invalid("lines must be between 1 and 5000", field="lines")
        desired, invalid = self.meta.desired_checked()
        if name not in desired.agents and name not in invalid and name not in self._observed():
            raise NotFound(f"no agent {name!r}", field="name")
        reader = getattr(self.driver, "journal", None)
        if not callable(reader):
            raise Conflict(f"the {self.driver.name} runtime keeps no journal")
        text = reader(name, unit, lines)
        return str(text)

    def agent_config(self, name: str) -> dict[str, Any]:
        """What ``name`` is deployed from: ``{"name", "commit" (deployed, else desired),
        "desired_commit", "manifest" (agent.yaml text), "agent_nix" (text or None),
        "settings" (the rendered settings.json, or None)}``. NotFound for an unknown agent."""
        _check_name(name)
        desired, invalid = self.meta.desired_checked()
        have = self._observed().get(name)
        want = desired.agents.get(name)
        if want is None and have is None and name not in invalid:
            raise NotFound(f"no agent {name!r}", field="name")
        commit = (have.commit if have is not None else None) or desired.commit
        try:
            manifest, nix = self.meta.agent_files(commit, name)
        except NotFound:
            commit = desired.commit
            manifest, nix = self.meta.agent_files(commit, name)
        settings: Any = None
        with contextlib.suppress(OSError, ValueError):
            settings = json.loads(self.layout.agent_settings(name).read_text())
        return {
            "name": name,
            "commit": commit,
            "desired_commit": want.commit if want is not None else None,
            "manifest": manifest,
            "agent_nix": nix,
            "settings": settings,
        }

    def status_json(self) -> bytes:
        """``status()`` as compact JSON (UTF-8), encoded again only when ``version()``, the
        pending count or a dead-letter count moved: an unchanged swarm costs no per-agent
        work (host.sock ``/status``)."""
        dead = self.broker.dead_letter_counts()
        pending = len(self.meta.ids_by_state()[ProposalState.PENDING])
        key = (self.version(), pending, tuple(sorted(dead.items())))
        cached = self._status_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        body = json.dumps(self.status(), separators=(",", ":"), default=str).encode()
        self._status_cache = (key, body)
        return body

    def status(self) -> dict[str, Any]:
        """``{"agents": [rows], "pending": n, "main", "last_deploy", "runtime", "runtime_note",
        "last_pass": {"at", "plan", "errors", "builds"}, "holds", "version"}``."""
        ids = self.meta.ids_by_state()
        note = ""
        if not getattr(self.driver, "builds_nix", True):
            note = "local runtime: agents are processes on this host; agent.nix is not built"
        return {
            "agents": self.list_agents(),
            "pending": len(ids[ProposalState.PENDING]),
            "main": self.meta.main_commit(),
            "last_deploy": self.meta.last_deploy(),
            "runtime": self.driver.name,
            "runtime_note": note,
            "last_pass": dict(self._last_pass),
            "holds": {k: dict(v) for k, v in self._holds.items()},
            "version": self.meta.version,
        }


def _call(job: Callable[[], None]) -> BaseException | None:
    """Run ``job``; the exception it raised, or None."""
    try:
        job()
    except Exception as exc:
        return exc
    return None


def _mapping(raw: Any) -> dict[str, Any]:
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
