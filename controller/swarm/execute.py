"""Executing the plan: gate each action (backoff, stall, crash loop), set it up
(tombstone restore, credential, port, settings, socket), run the driver calls — the
manager's alone and first, the others up to ``config.parallel_actions`` at once —
and record each outcome (failure backoff, events to the manager and the agent).

A driver ``TransientError`` (or any unexpected exception) is retried on later passes
with exponential backoff (``backoff``); a ``PermanentError`` stalls the agent until
its desired digests change.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from controller.drivers.base import Deployment
from controller.errors import HyperhiveError, PermanentError, TransientError
from controller.manifest import render_settings
from controller.metrics.tracing import TRACING
from controller.model import Action, ActionKind, DesiredAgent, DesiredState, ObservedAgent, Phase
from controller.status import Failure, FailureKind
from controller.swarm.core import (
    WEB_PORT_FILE,
    FailRecord,
    SwarmCore,
    backoff,
    desired_key,
)
from controller.swarm.events import Events
from controller.swarm.graveyard import Graveyard
from schemas.names import MANAGER, default_web_port
from schemas.wire import EventType, rfc3339

log = logging.getLogger("hyperhive.swarm")

_DONE_EVENT = {
    ActionKind.CREATE: "Created",
    ActionKind.REBUILD: "Rebuilt",
    ActionKind.APPLY_MANIFEST: "ManifestApplied",
    ActionKind.START: "Started",
    ActionKind.STOP: "Stopped",
    ActionKind.DESTROY: "Destroyed",
}


def _call(job: Callable[[], None]) -> BaseException | None:
    """Run ``job``; the exception it raised, or None."""
    try:
        job()
    except Exception as exc:
        return exc
    return None


class Executor:
    """Runs a pass's actions through ``core.driver``."""

    def __init__(self, core: SwarmCore, events: Events, graveyard: Graveyard) -> None:
        self.core = core
        self.events = events
        self.graveyard = graveyard

    def gate(self, action: Action, desired: DesiredState, now: float) -> str | None:
        """Why ``action`` must wait (backoff, stall, crash loop), or None when it may run."""
        name = action.agent
        key = desired_key(desired.agents.get(name))
        prev = self.core.failures.get(name)
        if prev is not None and prev.key == key:
            f = prev.failure
            if f.kind is FailureKind.PERMANENT:
                return f"stalled: {f.message}"
            if f.retry_at is not None and now < f.retry_at:
                return f"retry after backoff: {f.message}"
        crash = self.core.crashes.get(name)
        if action.kind is ActionKind.START and crash is not None and crash.key == key:
            if crash.state.stalled:
                return "crash loop: not restarted until started by request"
            if crash.state.restart_at is not None and now < crash.state.restart_at:
                return f"restart after crash backoff (at {rfc3339(crash.state.restart_at)})"
        return None

    def execute_all(
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
            else:  # a span per driver call when tracing is on (controller.metrics.tracing)
                jobs.append((action, TRACING.wrap(action.kind.value, action.agent, job)))
        first = [j for j in jobs if j[0].agent == MANAGER]
        rest = [j for j in jobs if j[0].agent != MANAGER]
        for action, job in first:
            done[action.agent] = self._record_action(action, desired, observed, now, _call(job))
        workers = max(1, min(self.core.config.parallel_actions, len(rest)))
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
        key = desired_key(desired.agents.get(name))
        prev = self.core.failures.get(name)
        if prev is not None and prev.key != key:
            self.core.failures.pop(name, None)
            self.core.rev += 1
        crash = self.core.crashes.get(name)
        if crash is not None and crash.key != key:
            self.core.crashes.pop(name, None)
            self.core.rev += 1
        why = self.gate(action, desired, now)
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
        key = desired_key(desired.agents.get(name))
        prev = self.core.failures.get(name)
        if isinstance(exc, PermanentError):
            attempts = prev.failure.attempts + 1 if prev else 1
            fail = Failure(FailureKind.PERMANENT, action.kind, exc.message, attempts)
            self.core.failures[name] = FailRecord(fail, key)
            self.core.rev += 1
            self.events.record(name, "FailedPermanently", f"{action.kind.value}: {exc.message}")
            log.error("%s: %s failed permanently: %s", name, action.kind.value, exc.message)
            return f"error: {exc.message}"
        if exc is not None:
            message = exc.message if isinstance(exc, HyperhiveError) else f"{exc}"
            if not isinstance(exc, TransientError | HyperhiveError | OSError):
                log.error("%s: %s crashed", name, action.kind.value, exc_info=exc)
            attempts = prev.failure.attempts + 1 if prev else 1
            wait = backoff(attempts)
            fail = Failure(FailureKind.TRANSIENT, action.kind, message, attempts, now + wait)
            self.core.failures[name] = FailRecord(fail, key)
            self.core.rev += 1
            self.events.record(
                name,
                "Failed",
                f"{action.kind.value} (attempt {attempts}): {message}; retrying in {int(wait)} s",
            )
            log.warning(
                "%s: %s failed (attempt %d): %s", name, action.kind.value, attempts, message
            )
            return f"error: {message}"
        if self.core.failures.pop(name, None) is not None:
            self.core.rev += 1
        if action.kind is ActionKind.REBUILD:
            want = desired.agents[name]
            self.events.emit(
                {"type": EventType.REBUILT.value, "agent": name, "commit": want.commit},
                f"rebuilt:{name}:{want.build_digest}",
            )
        elif action.kind is ActionKind.DESTROY:
            self.core.on_destroy(name)
            self.core.credentials.remove(name)
            have = observed.get(name)
            self.graveyard.bury(name, have.commit if have is not None else None, desired.commit)
        self.events.record(name, _DONE_EVENT[action.kind], action.reason)
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
        driver = self.core.driver
        if kind is not ActionKind.APPLY_MANIFEST:
            # the process goes away: its report with it (a new harness reports at once)
            self.core.reports.forget(name)

        def sink(line: str) -> None:
            log.info("[%s] %s", name, line)

        if kind in (ActionKind.CREATE, ActionKind.REBUILD, ActionKind.APPLY_MANIFEST):
            want = desired.agents[name]
            have = observed.get(name)
            if kind is ActionKind.CREATE:
                self.graveyard.restore(name)
                self.core.credentials.issue(name)  # first deploy or recreate: a fresh credential
            d = self.deployment(want, existing=have is not None and have.phase is not Phase.ABSENT)
            self.core.on_deploy(name)
            if kind is ActionKind.CREATE:
                return lambda: driver.create(d, sink)
            if kind is ActionKind.REBUILD:
                return lambda: driver.rebuild(d, sink)
            return lambda: driver.apply_manifest(d)
        if kind is ActionKind.START:
            self.core.on_deploy(name)
            return lambda: driver.start(name)
        if kind is ActionKind.STOP:
            return lambda: driver.stop(name)
        return lambda: driver.destroy(name)

    def _dashboard_url(self) -> str:
        """The dashboard's URL as an agent on this host reaches it (a wildcard → loopback)."""
        host = self.core.config.dashboard_host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.core.config.dashboard_port}"

    def web_port(self, agent: str, existing: bool = False) -> int:
        """The agent's web UI port, persisted in ``<state>/agents/<a>/web-port`` once chosen.

        First time: ``schemas.names.default_web_port`` with the configured ports; a
        fresh agent probes forward past ports other agents' files already hold
        (and the dashboard/manager ports); an agent that already runs without a
        file (``existing``) keeps the hashed port, so its UI does not move.
        """
        path = self.core.layout.agent_dir(agent) / WEB_PORT_FILE
        with contextlib.suppress(OSError, ValueError):
            port_ = int(path.read_text().strip())
            self.core.ports[agent] = port_
            return port_
        cfg = self.core.config
        port = default_web_port(agent, cfg.manager_port, cfg.agent_port_base, cfg.agent_port_range)
        if agent != MANAGER and not existing:
            used = {cfg.dashboard_port, cfg.manager_port}
            root = self.core.layout.state / "agents"
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
        self.core.ports[agent] = port
        return port

    def deployment(self, want: DesiredAgent, existing: bool) -> Deployment:
        """What the driver needs to deploy ``want``: its settings.json, port and flake ref."""
        port = self.web_port(want.name, existing)
        settings = render_settings(
            want.manifest,
            web_port=port,
            dashboard_url=self._dashboard_url(),
            meta_commit=want.commit,
            hyperhive_version=self.core.meta.version,
            operator_pronouns=self.core.config.operator_pronouns,
        )
        return Deployment(
            agent=want,
            settings=settings,
            web_port=port,
            flake_ref=self.core.meta.flake_ref(want.commit, want.name),
        )
