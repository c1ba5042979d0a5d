"""The swarm: one reconcile pass (decisions → observe → plan → execute → record) and the verbs.

``Swarm`` implements ``controller.ops.SwarmOps`` for every surface (sockets,
dashboard, CLI). A pass is serialized by a lock and runs:

1. decisions (ref work, docs/approvals.md): a ``building/<id>`` left without
   outcome by a crash is finished by this pass (never re-applied); every
   ``approved/<id>`` without outcome is applied to main (fast-forward or merge)
   and gets ``building/<id>`` — a conflict gets ``failed/<id>`` instead, main
   untouched; every ``denied/<id>`` is reported to the manager exactly once; a
   main that moved with no deploy (an operator push) gets a new id + ``building/<id>``.
2. observe → plan (``controller.plan``) → execute through the driver. A driver
   ``TransientError`` (or any unexpected exception) is retried on later passes
   with exponential backoff; a ``PermanentError`` stalls the agent until its
   desired digests change.
3. record: ``deployed/<id>`` when every agent a build touches converged,
   else ``failed/<id>`` with the errors; ``ApprovalResolved`` events to the
   manager; per-agent conditions to ``<state>/status.json``.

``dry_run`` plans without executing or writing anything; ref work it would do is
returned in ``PassResult.pending``.

Lifecycle overrides: ``kill`` records a hold ("stopped by request") in
status.json so the next pass does not start the agent again; ``start``,
``restart``, ``update`` and the next deploy touching the agent clear it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.config import Config
from controller.drivers.base import Deployment, Driver
from controller.errors import (
    Conflict,
    HyperhiveError,
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
    STATUS_VERSION,
    AgentFacts,
    AgentStatus,
    Condition,
    Failure,
    FailureKind,
    compute_conditions,
    conditions_from_json,
    load_status,
    merge_conditions,
    save_status,
)
from schemas.names import MANAGER, default_web_port
from schemas.wire import EventType, rfc3339

log = logging.getLogger("hyperhive.swarm")

WEB_PORT_FILE = "web-port"
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
HOLD_REASON = "stopped by request"


class EventSink(Protocol):
    """The part of ``controller.broker.Broker`` the swarm uses."""

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Any:
        """Deliver a typed event to ``recipient``'s inbox (coalesced by ``dedup_key``)."""
        ...


@dataclass(frozen=True)
class _Fail:
    failure: Failure
    key: tuple[str | None, str | None]


def _desired_key(want: DesiredAgent | None) -> tuple[str | None, str | None]:
    return (None, None) if want is None else (want.config_digest, want.build_digest)


def backoff(attempts: int) -> float:
    """Seconds before retry number ``attempts`` (5, 10, 20, ... capped at 300)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


class Swarm:
    """The controller's core: reconcile passes and every verb of ``SwarmOps``.

    ``broker`` needs ``emit_event(recipient, event, dedup_key)``; ``driver`` is a
    ``controller.drivers.base.Driver``; ``on_deploy(agent)`` runs before an
    agent's process/container is created or started (the serve layer opens its
    socket there); ``on_destroy(agent)`` after it was destroyed. ``clock`` gives
    unix seconds (backoff, transition times).
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
    ) -> None:
        self.layout = layout
        self.config = config
        self.meta = meta
        self.broker = broker
        self.driver = driver
        self.on_deploy = on_deploy
        self.on_destroy = on_destroy
        self._clock = clock
        self._pass_lock = threading.RLock()
        self._req_lock = threading.Lock()
        self._requested = threading.Event()
        self._reasons: list[str] = []
        self._failures: dict[str, _Fail] = {}
        self._last_phase: dict[str, Phase] | None = None
        self._crashes: dict[str, int] = {}
        self._last_pass: dict[str, Any] = {}
        self._recipients: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._ports: dict[str, int | None] = {}
        self._row_cache: dict[str, tuple[tuple[Any, ...], AgentStatus]] = {}
        self._saved: tuple[Any, ...] | None = None
        self._rows_lock = threading.RLock()
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
        observed = {n: o for n, o in self.driver.observe().items() if n not in invalid}
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

    def _pass(self) -> PassResult:
        now = self._clock()
        errors: list[str] = []
        builds = self._decisions(errors)
        desired, invalid = self.meta.desired_checked()
        for b in builds:
            for name in list(self._holds):
                if b.touches(name):
                    del self._holds[name]
        observed = self.driver.observe()
        self._detect_crashes(observed)
        plannable = {n: o for n, o in observed.items() if n not in invalid}
        actions = plan(desired, plannable, held=frozenset(self._holds))
        done: dict[str, str] = {}
        for action in actions:
            outcome = self._run_action(action, desired, observed, now)
            if outcome is not None:
                if outcome.startswith("error: "):
                    errors.append(f"{action.agent}: {action.kind.value}: {outcome[7:]}")
                done[action.agent] = outcome
        after = self.driver.observe() if actions else observed
        for b in builds:
            self._finish_build(b, desired, invalid, after, actions, done)
        if builds:
            with contextlib.suppress(Exception):
                self.meta.sync_manager_clone()
        self._last_phase = {n: o.phase for n, o in after.items()}
        for name, why in invalid.items():
            errors.append(f"{name}: {why}")
        self._last_pass = {
            "at": rfc3339(now),
            "plan": [a.to_json() for a in actions],
            "errors": list(errors),
            "builds": [b.id for b in builds],
        }
        self._record(desired, invalid, after, now)
        return PassResult(tuple(actions), tuple(errors))

    # ---------------------------------------------------------------- execute

    def _run_action(
        self,
        action: Action,
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
        now: float,
    ) -> str | None:
        """Run one action unless backoff/stall holds it: "ok", "skipped: …" or "error: …"."""
        name = action.agent
        key = _desired_key(desired.agents.get(name))
        prev = self._failures.get(name)
        if prev is not None and prev.key != key:
            self._failures.pop(name, None)
            prev = None
        if prev is not None:
            f = prev.failure
            if f.kind is FailureKind.PERMANENT:
                return f"skipped: stalled: {f.message}"
            if f.retry_at is not None and now < f.retry_at:
                return f"skipped: retry after backoff: {f.message}"
        try:
            self._execute(action, desired, observed)
        except PermanentError as exc:
            attempts = prev.failure.attempts + 1 if prev else 1
            fail = Failure(FailureKind.PERMANENT, action.kind, exc.message, attempts)
            self._failures[name] = _Fail(fail, key)
            log.error("%s: %s failed permanently: %s", name, action.kind.value, exc.message)
            return f"error: {exc.message}"
        except Exception as exc:
            message = exc.message if isinstance(exc, HyperhiveError) else f"{exc}"
            if not isinstance(exc, TransientError | HyperhiveError | OSError):
                log.exception("%s: %s crashed", name, action.kind.value)
            attempts = prev.failure.attempts + 1 if prev else 1
            fail = Failure(
                FailureKind.TRANSIENT, action.kind, message, attempts, now + backoff(attempts)
            )
            self._failures[name] = _Fail(fail, key)
            log.warning(
                "%s: %s failed (attempt %d): %s", name, action.kind.value, attempts, message
            )
            return f"error: {message}"
        self._failures.pop(name, None)
        log.info("%s: %s (%s)", name, action.kind.value, action.reason)
        return "ok"

    def _execute(
        self,
        action: Action,
        desired: DesiredState,
        observed: Mapping[str, ObservedAgent],
    ) -> None:
        name, kind = action.agent, action.kind
        driver = self.driver
        if kind in (ActionKind.CREATE, ActionKind.REBUILD, ActionKind.APPLY_MANIFEST):
            want = desired.agents[name]
            have = observed.get(name)
            d = self._deployment(want, existing=have is not None and have.phase is not Phase.ABSENT)
            self.on_deploy(name)

            def sink(line: str) -> None:
                log.info("[%s] %s", name, line)

            if kind is ActionKind.CREATE:
                driver.create(d, sink)
            elif kind is ActionKind.REBUILD:
                driver.rebuild(d, sink)
                self._emit(
                    {"type": EventType.REBUILT.value, "agent": name, "commit": want.commit},
                    f"rebuilt:{name}:{want.build_digest}",
                )
            else:
                driver.apply_manifest(d)
        elif kind is ActionKind.START:
            self.on_deploy(name)
            driver.start(name)
        elif kind is ActionKind.STOP:
            driver.stop(name)
        elif kind is ActionKind.DESTROY:
            driver.destroy(name)
            self.on_destroy(name)

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

    def _detect_crashes(self, observed: Mapping[str, ObservedAgent]) -> None:
        last = self._last_phase
        if last is None:
            return  # the first pass only seeds: no events for what happened before we ran
        for name, o in observed.items():
            if o.phase is Phase.FAILED and last.get(name) is Phase.RUNNING:
                count = self._crashes.get(name, 0) + 1
                self._crashes[name] = count
                log.warning("%s: crashed (%s)", name, o.detail)
                self._emit(
                    {
                        "type": EventType.CONTAINER_CRASH.value,
                        "agent": name,
                        "restarts": count,
                        "note": o.detail or "exited unexpectedly; restarting",
                    },
                    f"crash:{name}:{count}",
                )

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
        creds = os.path.join(self.layout.state, "agents", agent, "claude", ".credentials.json")
        if os.path.exists(creds):
            return True, "claude credentials present"
        env = getattr(self.driver, "env", None)
        if isinstance(env, Mapping) and (
            env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN")
        ):
            return True, "API key passed through from the controller's environment"
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
            fail = self._failures.get(name)
            failure = fail.failure if fail is not None and fail.key == _desired_key(want) else None
            login = self._logged_in(name)
            port = self._port_of(name)
            key = (want, have, hold, failure, invalid.get(name), login, port, builds_nix)
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
            )
            previous = cached[1].conditions if cached else self._conditions.get(name, ())
            conditions = merge_conditions(previous, compute_conditions(facts), now)
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
                extra={
                    "flavor": "manager" if name == MANAGER else "agent",
                    "commit": have.commit if have else None,
                    "since": have.since if have else None,
                },
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
        self._holds = {k: v for k, v in self._holds.items() if k in desired.agents}
        rows = self._rows(desired, invalid, observed, now)
        self._conditions = {r.name: r.conditions for r in rows}
        self._save(rows, desired.commit, now)

    def _save(self, rows: list[AgentStatus], main: str, now: float) -> None:
        """Write status.json unless nothing changed since the last write."""
        holds = json.dumps(self._holds, sort_keys=True)
        fingerprint = (tuple(id(r) for r in rows), main, holds)
        if fingerprint == self._saved:
            return
        doc: dict[str, Any] = {
            "version": STATUS_VERSION,
            "main": main,
            "runtime": self.driver.name,
            "agents": {r.name: r.to_json() for r in rows},
            "holds": json.loads(holds),
        }
        if {k: v for k, v in self._status_doc.items() if k != "updated_at"} == doc:
            self._saved = fingerprint
            return
        doc["updated_at"] = rfc3339(now)
        try:
            save_status(self.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.layout.status_file)
            return
        self._status_doc = doc
        self._saved = fingerprint

    def _save_holds(self) -> None:
        doc = dict(self._status_doc)
        doc["holds"] = self._holds
        doc["updated_at"] = rfc3339(self._clock())
        try:
            save_status(self.layout.status_file, doc)
        except OSError:
            log.exception("could not write %s", self.layout.status_file)
            return
        self._status_doc = json.loads(json.dumps(doc))
        self._saved = None

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
        """
        with self._pass_lock:
            desired, _ = self.meta.desired_checked()
            observed = self.driver.observe()
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
            self._save_holds()
            self.driver.stop(name)
            return f"{name} stopped; it stays stopped until start, restart or its next deploy"
        if want is None:
            raise Conflict(f"{name} is being removed (not in desired state)")
        if want.manifest.suspend:
            raise Conflict(
                f"{name} is suspended by spec.suspend in agents/{name}/agent.yaml; "
                "propose a change to resume it"
            )
        if self._holds.pop(name, None) is not None:
            self._save_holds()
        self._failures.pop(name, None)
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
        desired, invalid = self.meta.desired_checked()
        observed = self.driver.observe()
        return [r.to_json() for r in self._rows(desired, invalid, observed, self._clock())]

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

    def status(self) -> dict[str, Any]:
        """``{"agents": [rows], "pending": n, "main", "last_deploy", "runtime", "runtime_note",
        "last_pass": {"at", "plan", "errors", "builds"}}``."""
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
        }
