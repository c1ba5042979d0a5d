"""The planner: a pure function from (desired, observed) to the actions that converge them.

No I/O, no clock. ``plan(desired, observed)`` returns at most one action per
agent, manager first, then agents by name. Rules, per agent:

=====================================  ==================================================
desired / observed                      action
=====================================  ==================================================
desired, not observed (absent)          CREATE (unless suspended or held: stays absent)
build_digest or hyperhive version       REBUILD (builds and starts)
differs
only config_digest differs              APPLY_MANIFEST (new settings, restart)
stopped / failed, same digests          START
suspended (or held) and running         STOP
observed, not desired                   DESTROY (prune) — never the manager
=====================================  ==================================================

A suspended or held agent (``held``: stopped on request, see controller/swarm/lifecycle.py)
gets no CREATE / REBUILD / APPLY_MANIFEST / START: changes to it land when it is
resumed. Planning again against the observed state that executing the plan
produces (``simulate``) yields ``[]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import replace

from controller.model import (
    Action,
    ActionKind,
    DesiredAgent,
    DesiredState,
    Observed,
    ObservedAgent,
    Phase,
)
from schemas.names import MANAGER


def agent_order(name: str) -> tuple[int, str]:
    """Sort key: the manager first, then agents by name."""
    return (0 if name == MANAGER else 1, name)


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:12]


def plan_agent(
    want: DesiredAgent | None,
    have: ObservedAgent | None,
    version: str,
    held: bool = False,
) -> Action | None:
    """The single action (or None) that brings one agent from ``have`` to ``want``."""
    if want is None:
        if have is None or have.name == MANAGER:
            return None
        return Action(ActionKind.DESTROY, have.name, "not in desired state (pruned)")
    name = want.name
    stopped_on_purpose = want.manifest.suspend or held
    why_stopped = "spec.suspend is true" if want.manifest.suspend else "stopped by request"
    if have is None or have.phase is Phase.ABSENT:
        if stopped_on_purpose:
            return None
        return Action(ActionKind.CREATE, name, "not deployed yet")
    if stopped_on_purpose:
        if have.phase is Phase.RUNNING:
            return Action(ActionKind.STOP, name, why_stopped)
        return None
    if have.build_digest != want.build_digest or (
        have.hyperhive_version is not None and have.hyperhive_version != version
    ):
        if have.hyperhive_version is not None and have.hyperhive_version != version:
            why = f"hyperhive {have.hyperhive_version} → {version}"
        else:
            why = (
                f"build changed (agent.nix / flake): {_short(have.build_digest)} → "
                f"{_short(want.build_digest)}"
            )
        return Action(ActionKind.REBUILD, name, why)
    if have.config_digest != want.config_digest:
        return Action(
            ActionKind.APPLY_MANIFEST,
            name,
            f"manifest changed: {_short(have.config_digest)} → {_short(want.config_digest)}",
        )
    if have.phase in (Phase.STOPPED, Phase.FAILED):
        detail = f": {have.detail}" if have.detail else ""
        return Action(ActionKind.START, name, f"{have.phase.value}{detail}")
    return None


def plan(
    desired: DesiredState,
    observed: Observed,
    held: AbstractSet[str] = frozenset(),
) -> list[Action]:
    """Actions that converge ``observed`` to ``desired``; ``[]`` when in sync.

    ``held`` names agents stopped on request (treated like ``spec.suspend``).
    Ordered manager first, then by agent name; at most one action per agent.
    """
    names = sorted(set(desired.agents) | set(observed), key=agent_order)
    actions: list[Action] = []
    for name in names:
        action = plan_agent(
            desired.agents.get(name), observed.get(name), desired.hyperhive_version, name in held
        )
        if action is not None:
            actions.append(action)
    return actions


def simulate(
    desired: DesiredState, observed: Observed, actions: Iterable[Action]
) -> dict[str, ObservedAgent]:
    """The observed state a driver would report after executing ``actions`` successfully.

    Used by tests (plan∘simulate is idempotent) and by dry-run reporting.
    """
    out: dict[str, ObservedAgent] = dict(observed)
    for a in actions:
        want = desired.agents.get(a.agent)
        if a.kind is ActionKind.DESTROY:
            out.pop(a.agent, None)
            continue
        if a.kind is ActionKind.STOP:
            out[a.agent] = replace(out[a.agent], phase=Phase.STOPPED, detail="")
            continue
        if a.kind is ActionKind.START:
            out[a.agent] = replace(out[a.agent], phase=Phase.RUNNING, detail="")
            continue
        assert want is not None
        out[a.agent] = ObservedAgent(
            name=a.agent,
            phase=Phase.RUNNING,
            commit=want.commit,
            config_digest=want.config_digest,
            build_digest=want.build_digest,
            hyperhive_version=desired.hyperhive_version,
        )
    return out
