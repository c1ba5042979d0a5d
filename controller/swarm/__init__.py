"""The swarm: reconcile passes and every verb of ``controller.ops.SwarmOps``.

``Swarm`` is a thin facade composing one object per job (kopf's ``_core`` /
``_cogs`` layering); each module below has one job and gets only what it calls:

- ``observe``    the observed-state cache (one ``driver.observe()`` per change);
- ``triggers``   pass requests from the hook, the dashboard, the verbs;
- ``reports``    what each agent's harness reports it has (claude, credentials,
                 turn and API health);
- ``core``       the shared state (collaborators, pass lock, bookkeeping loaded from
                 ``<state>/status.json``) and small pure helpers;
- ``events``     events to the manager's inbox and per-agent recent events;
- ``rows``       per-agent status rows and conditions (login, ports), cached;
- ``record``     end-of-pass bookkeeping and status.json;
- ``graveyard``  tombstones: bury after destroy, restore before create, purge;
- ``execute``    gate, set up and run a plan's actions through the driver;
- ``watch``      crash watch (restart backoff, CrashLoopBackOff) and login /
                 update transitions;
- ``reconcile``  the pass: decisions → observe → plan → execute → record;
- ``lifecycle``  start / kill / restart / update, destroy, purge;
- ``proposals``  spawn / apply-commit proposals, approve, deny;
- ``queries``    status, rows, describe, tombstones, journal, agent config.

Layering: a module imports only modules listed above it. Backoff, stalls, crash
records and recent per-agent events are persisted in status.json, so a controller
restart does not reset them. docs/architecture.md describes the whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from controller.auth.agents import AgentCredentials
from controller.config import Config
from controller.drivers.base import Driver
from controller.metarepo import MetaRepo
from controller.metrics.passes import observed_pass
from controller.ops import Lifecycle, PassResult, Proposal
from controller.paths import Layout
from controller.swarm.core import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    DEPLOYS_SHOWN,
    EVENTS_KEEP,
    HOLD_REASON,
    MAX_JOURNAL_LINES,
    WEB_PORT_FILE,
    EventSink,
    SwarmCore,
    backoff,
)
from controller.swarm.events import Events
from controller.swarm.execute import Executor
from controller.swarm.graveyard import Graveyard
from controller.swarm.lifecycle import Verbs
from controller.swarm.proposals import Proposals
from controller.swarm.queries import Queries
from controller.swarm.reconcile import Reconciler
from controller.swarm.record import Recorder
from controller.swarm.rows import Rows
from controller.swarm.watch import CrashWatch

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "DEPLOYS_SHOWN",
    "EVENTS_KEEP",
    "HOLD_REASON",
    "MAX_JOURNAL_LINES",
    "WEB_PORT_FILE",
    "EventSink",
    "Swarm",
    "backoff",
]


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
        core = SwarmCore(
            layout,
            config,
            meta,
            broker,
            driver,
            on_deploy,
            on_destroy,
            clock,
            credentials if credentials is not None else AgentCredentials(layout),
        )
        self.core = core
        self.events = Events(core)
        self.rows = Rows(core)
        self.recorder = Recorder(core, self.rows)
        self.graveyard = Graveyard(core, self.events)
        self.executor = Executor(core, self.events, self.graveyard)
        self.crash_watch = CrashWatch(core, self.events, self.rows, self.executor, self.recorder)
        self.reconciler = Reconciler(
            core, self.events, self.executor, self.crash_watch, self.recorder
        )
        self.verbs = Verbs(
            core,
            self.events,
            self.recorder,
            self.executor,
            self.graveyard,
            self.reconciler,
            self.crash_watch,
        )
        self.proposals_ = Proposals(core)
        self.queries = Queries(core, self.rows)

    def attach_budgets(self, held: Callable[[str], str | None], rev: Callable[[], int]) -> None:
        """Show budget holds in the ``Ready`` condition (``BudgetExceeded``): ``held(agent)``
        says why ``agent`` may take no turn now (None: it may; no I/O), ``rev()`` moves
        whenever that changes (``controller.budget.service.Budgets``)."""
        self.core.budget_hold = held
        self.core.budget_rev = rev

    # ---------------------------------------------------------------- collaborators

    @property
    def layout(self) -> Layout:
        """The state/run directory layout."""
        return self.core.layout

    @property
    def config(self) -> Config:
        """The controller's configuration."""
        return self.core.config

    @config.setter
    def config(self, value: Config) -> None:
        self.core.config = value

    @property
    def meta(self) -> MetaRepo:
        """The meta repo (desired state as git refs)."""
        return self.core.meta

    @property
    def broker(self) -> EventSink:
        """Where events to the manager go."""
        return self.core.broker

    @property
    def driver(self) -> Driver:
        """The agent runtime."""
        return self.core.driver

    @property
    def credentials(self) -> AgentCredentials:
        """The agents' broker credentials."""
        return self.core.credentials

    # ---------------------------------------------------------------- passes

    def request_pass(self, reason: str) -> None:
        """Ask the serve loop for a pass soon (hook poke, approval, dashboard). Never blocks."""
        self.core.requests.request(reason)

    def wait_for_pass_request(self, timeout: float | None = None) -> str | None:
        """Block until ``request_pass`` (→ the reasons, joined) or ``timeout`` (→ None)."""
        return self.core.requests.wait(timeout)

    def reconcile(self, dry_run: bool = False) -> PassResult:
        """Run one pass now (serialized with other passes and lifecycle verbs); ``dry_run``
        plans only and writes nothing (``controller.swarm.reconcile``). A pass that writes is
        counted and traced (``controller.metrics.passes``)."""
        if dry_run:
            return self.reconciler.reconcile(True)
        return observed_pass(lambda: self.reconciler.reconcile(False))

    def watch(self) -> list[str]:
        """One crash-watch tick between passes; the reasons it requested a pass for
        (``controller.swarm.watch``)."""
        return self.crash_watch.tick()

    def web_port(self, agent: str, existing: bool = False) -> int:
        """The agent's web UI port, chosen once and persisted (``Executor.web_port``)."""
        return self.executor.web_port(agent, existing)

    # ---------------------------------------------------------------- manager verbs

    def request_spawn(self, name: str) -> Proposal:
        """``proposal/<id>`` adding ``agents/<name>/agent.yaml``; see ``MetaRepo.propose_spawn``."""
        return self.proposals_.request_spawn(name)

    def request_apply_commit(self, commit: str, note: str) -> Proposal:
        """Import ``commit`` from ``<state>/manager/meta`` as ``proposal/<id>``."""
        return self.proposals_.request_apply_commit(commit, note)

    def lifecycle(self, verb: Lifecycle, name: str) -> str:
        """start / kill / restart / update one agent now; a one-line outcome."""
        return self.verbs.lifecycle(verb, name)

    def list_agents(self) -> list[dict[str, Any]]:
        """Per-agent rows (``AgentStatus.to_json`` plus ``dead_letters``)."""
        return self.queries.list_agents()

    def agent_names(self) -> frozenset[str]:
        """Agents in desired state plus ``manager``: the valid recipients."""
        return self.queries.agent_names()

    def allowed_recipients(self, agent: str) -> tuple[str, ...]:
        """``spec.allowedRecipients`` as deployed, else as desired (empty = anyone)."""
        return self.queries.allowed_recipients(agent)

    def agent_report(self, agent: str, report: dict[str, Any]) -> bool:
        """Keep ``agent``'s own report of what it has (``controller.swarm.reports``)."""
        return self.core.reports.put(agent, report)

    # ---------------------------------------------------------------- operator verbs

    def proposals(self, pending_only: bool = False) -> list[Proposal]:
        """Every proposal/deploy, newest first (or only those awaiting a decision)."""
        return self.proposals_.proposals(pending_only)

    def proposal(self, id: int) -> Proposal:
        """One proposal or deploy; NotFound."""
        return self.proposals_.proposal(id)

    def approve(self, id: int, note: str = "") -> Proposal:
        """Write ``approved/<id>`` and ask for a pass. NotFound / Conflict."""
        return self.proposals_.approve(id, note)

    def deny(self, id: int, note: str) -> Proposal:
        """Annotated ``denied/<id>`` (reason: ``note``) and a pass request; NotFound, Conflict."""
        return self.proposals_.deny(id, note)

    def destroy(self, name: str, purge: bool = False) -> str:
        """Remove ``agents/<name>/`` from main and run a pass; state kept unless ``purge``."""
        return self.verbs.destroy(name, purge)

    def purge(self, name: str) -> str:
        """Delete the kept state of a destroyed agent (a name or one tombstone id)."""
        return self.verbs.purge(name)

    # ---------------------------------------------------------------- queries

    def version(self) -> str:
        """A token that changes whenever ``status()`` / ``tombstones()`` may change."""
        return self.queries.version()

    def describe(self, name: str) -> dict[str, Any]:
        """One agent in depth (row, deploys, events, failure, crash, tombstones)."""
        return self.queries.describe(name)

    def tombstones(self) -> list[dict[str, Any]]:
        """Destroyed agents whose state is kept, oldest first."""
        return self.queries.tombstones()

    def journal(self, name: str, unit: str | None = None, lines: int = 200) -> str:
        """The agent runtime's recent log lines."""
        return self.queries.journal(name, unit, lines)

    def agent_config(self, name: str) -> dict[str, Any]:
        """What ``name`` is deployed from (manifest, agent.nix, settings)."""
        return self.queries.agent_config(name)

    def status_json(self) -> bytes:
        """``status()`` as compact JSON, re-encoded only when something in it moved."""
        return self.queries.status_json()

    def status(self) -> dict[str, Any]:
        """The swarm summary: agents, pending count, main, runtime, last pass, holds."""
        return self.queries.status()
