"""The swarm's shared state: what every cog of ``controller.swarm`` reads and writes.

``SwarmCore`` holds the collaborators (layout, config, meta repo, broker, driver,
credentials, deploy/destroy hooks, clock), the pass lock, the observed-state view
(``controller.swarm.observe``), the pass requests (``controller.swarm.triggers``)
and the bookkeeping persisted in ``<state>/status.json``: holds, failures and
crashes (with the desired-state key they belong to), recent per-agent events,
purge intents and the last conditions. ``rev`` is bumped whenever failures,
crashes, events or purge intents change; it feeds every cache key.

The cogs (one module each) get this object and the cogs they call; ``Swarm``
(``controller.swarm``) composes them. Nothing here does I/O but the status.json
load in ``__init__``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.auth.agents import AgentCredentials
from controller.config import Config
from controller.drivers.base import Driver
from controller.errors import Invalid
from controller.metarepo import MetaRepo
from controller.model import DesiredAgent, DesiredState, Phase
from controller.paths import Layout
from controller.status import (
    Condition,
    CrashState,
    Failure,
    conditions_from_json,
    load_status,
)
from controller.swarm.observe import ObservedView
from controller.swarm.reports import Reports
from controller.swarm.triggers import PassRequests
from schemas.names import MANAGER, InvalidName, check_agent_name

WEB_PORT_FILE = "web-port"
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
HOLD_REASON = "stopped by request"
EVENTS_KEEP = 20
"""Recent lifecycle events kept per agent (``describe``, status.json)."""
DEPLOYS_SHOWN = 10
MAX_JOURNAL_LINES = 5000

Key = tuple[str | None, str | None]
"""An agent's desired-state key (config digest, build digest): a failure or crash
record applies only while the agent's desired state keeps this key."""


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
class FailRecord:
    """An action's failure, kept for the desired-state ``key`` it happened under."""

    failure: Failure
    key: Key


@dataclass(frozen=True)
class CrashRecord:
    """An agent's crash backoff state, kept for the desired-state ``key`` it crashed under."""

    state: CrashState
    key: Key


def desired_key(want: DesiredAgent | None) -> Key:
    """``want``'s (config digest, build digest); ``(None, None)`` for no desired agent."""
    return (None, None) if want is None else (want.config_digest, want.build_digest)


def key_from_json(raw: Any) -> Key:
    """A ``Key`` read back from status.json (a two-element list); ``(None, None)`` if malformed."""
    if isinstance(raw, list | tuple) and len(raw) == 2:
        a, b = raw
        return (a if isinstance(a, str) else None, b if isinstance(b, str) else None)
    return (None, None)


def backoff(attempts: int) -> float:
    """Seconds before retry number ``attempts`` (5, 10, 20, ... capped at 300)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


def check_name(name: str) -> None:
    """Raise ``Invalid`` (field ``name``) unless ``name`` is the manager or a valid agent name."""
    if name == MANAGER:
        return
    try:
        check_agent_name(name)
    except InvalidName as exc:
        raise Invalid(str(exc), field="name") from exc


def mapping(raw: Any) -> dict[str, Any]:
    """``raw`` with string keys if it is a dict, else ``{}`` (status.json read defensively)."""
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ... ``2.0 GiB``."""
    amount = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{n} B"


class SwarmCore:
    """The state the cogs share; see the module docstring.

    ``on_deploy(agent)`` runs before an agent's process/container is created or
    started (it ensures the agent has a broker credential first); ``on_destroy(agent)``
    after it was destroyed. ``clock`` gives unix seconds.
    """

    def __init__(
        self,
        layout: Layout,
        config: Config,
        meta: MetaRepo,
        broker: EventSink,
        driver: Driver,
        on_deploy: Callable[[str], None],
        on_destroy: Callable[[str], None],
        clock: Callable[[], float],
        credentials: AgentCredentials,
    ) -> None:
        self.layout = layout
        self.config = config
        self.meta = meta
        self.broker = broker
        self.driver = driver
        self.credentials = credentials

        def deploying(agent: str) -> None:
            # every (re)start needs a credential: agents deployed before credentials existed
            self.credentials.ensure(agent)
            on_deploy(agent)

        self.on_deploy: Callable[[str], None] = deploying
        self.on_destroy = on_destroy
        self.clock = clock
        self.pass_lock = threading.RLock()
        self.requests = PassRequests()
        self.view = ObservedView(driver)
        self.reports = Reports()  # what each agent's harness says it has
        # the crash watch's view: None until the first pass seeds it
        self.seen_phase: dict[str, Phase] | None = None
        self.seen_login: dict[str, bool] | None = None
        self.seen_stale: dict[str, bool] | None = None
        self.last_pass: dict[str, Any] = {}
        self.recipients: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.ports: dict[str, int | None] = {}
        self.rev = 0  # bumped whenever failures / crashes / events / purge change
        # budgets (controller/budget, set by Swarm.attach_budgets): why an agent may take no
        # turn now (None: it may), and a counter that moves whenever that changes
        self.budget_hold: Callable[[str], str | None] = lambda agent: None
        self.budget_rev: Callable[[], int] = lambda: 0
        self.rev_saved = 0  # ``rev`` as last written to status.json
        doc = load_status(layout.status_file)
        self.status_doc: dict[str, Any] = doc
        holds = doc.get("holds")
        self.holds: dict[str, dict[str, Any]] = (
            {str(k): dict(v) for k, v in holds.items() if isinstance(v, dict)}
            if isinstance(holds, dict)
            else {}
        )
        agents = doc.get("agents")
        self.conditions: dict[str, tuple[Condition, ...]] = {}
        if isinstance(agents, dict):
            for name, row in agents.items():
                if isinstance(row, dict):
                    self.conditions[str(name)] = conditions_from_json(row.get("conditions"))
        self.failures: dict[str, FailRecord] = {}
        for name, d in mapping(doc.get("failures")).items():
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                self.failures[name] = FailRecord(Failure.from_json(d), key_from_json(d.get("key")))
        self.crashes: dict[str, CrashRecord] = {}
        for name, d in mapping(doc.get("crashes")).items():
            with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
                self.crashes[name] = CrashRecord(
                    CrashState.from_json(d), key_from_json(d.get("key"))
                )
        self.recent_events: dict[str, list[dict[str, Any]]] = {}
        for name, rows in mapping(doc.get("events")).items():
            if isinstance(rows, list):
                self.recent_events[name] = [dict(r) for r in rows if isinstance(r, dict)][
                    -EVENTS_KEEP:
                ]
        purge = doc.get("purge")
        self.purging: set[str] = (
            {str(x) for x in purge if isinstance(x, str)} if isinstance(purge, list) else set()
        )

    def quiet_key(self, desired: DesiredState, invalid: Mapping[str, str]) -> tuple[Any, ...]:
        """What a pass's plan and record depend on: the same key, the same outcome."""
        return (
            self.view.rev,
            desired.commit,
            id(desired),
            tuple(sorted(invalid.items())),
            self.rev,
            json.dumps(self.holds, sort_keys=True, default=str),
        )

    def forget_caches(self, name: str) -> None:
        """Drop what is cached about ``name``'s port and recipients (destroyed or restored)."""
        self.ports.pop(name, None)
        self.recipients.pop(name, None)
