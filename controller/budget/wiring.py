"""Build the controller's :class:`~controller.budget.service.Budgets` from its parts.

The agents' limits are ``spec.budget`` of the manifests at main (``desired()``, the
meta repo's cached desired state), the swarm's ``budget:`` in the controller config,
spend is kept in ``<state>/budget.sqlite``, events go to the broker (``emit_event``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from controller.budget.clock import Clock, clock_from_env
from controller.budget.core import Limits
from controller.budget.ledger import Ledger
from controller.budget.service import Budgets
from controller.config import Config
from controller.model import DesiredState
from controller.paths import Layout
from controller.stats import STATS_DB

LEDGER_FILE = "budget.sqlite"


class EventSink(Protocol):
    """The broker's ``emit_event``."""

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Any:
        """Queue a typed event for ``recipient``."""
        ...


def agent_limits(desired: DesiredState) -> Mapping[str, Limits | None]:
    """``{agent: spec.budget}`` of every agent in ``desired`` (the manager included)."""
    return {name: a.manifest.budget for name, a in desired.agents.items()}


class LimitsAtMain:
    """``agent_limits(desired())``, worked out again only when ``desired()`` hands back
    another object (the meta repo keeps one per main commit): a budget check asks for the
    limits a few times, and the report once per agent."""

    def __init__(self, desired: Callable[[], DesiredState]) -> None:
        self.desired = desired
        self._last: tuple[DesiredState, Mapping[str, Limits | None]] | None = None

    def __call__(self) -> Mapping[str, Limits | None]:
        """``{agent: spec.budget}`` at main (blocking: may read the meta repo)."""
        desired = self.desired()
        last = self._last
        if last is None or last[0] is not desired:
            last = self._last = (desired, agent_limits(desired))
        return last[1]


def open_budgets(
    layout: Layout,
    cfg: Config,
    desired: Callable[[], DesiredState],
    broker: EventSink,
    *,
    known: Callable[[], Iterable[str]] | None = None,
    on_change: Callable[[], None] | None = None,
    clock: Clock | None = None,
) -> Budgets:
    """The controller's budgets: ledger at ``<state>/budget.sqlite``, each agent's spend read
    from ``<state>/agents/<a>/state/hyperhive-turn-stats.sqlite``, the clock from
    ``clock_from_env()`` unless given. Raises ``sqlite3.Error`` when the ledger cannot be
    opened."""
    return Budgets(
        Ledger(layout.state / LEDGER_FILE),
        lambda agent: layout.agent_state(agent) / STATS_DB,
        LimitsAtMain(desired),
        swarm=cfg.budget,
        notify=broker.emit_event,
        clock=clock or clock_from_env(),
        on_change=on_change,
        known=known,
    )
