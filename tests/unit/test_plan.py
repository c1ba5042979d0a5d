"""controller.plan: the pure planner — rules, ordering, and plan∘execute idempotence."""

from __future__ import annotations

import itertools
import random

from controller.model import (
    ActionKind,
    AgentManifest,
    DesiredAgent,
    DesiredState,
    ObservedAgent,
    Phase,
)
from controller.plan import plan, simulate

V = "0.1.0"


def want(name: str, cfg: str = "c1", build: str = "b1", suspend: bool = False) -> DesiredAgent:
    return DesiredAgent(
        name=name,
        manifest=AgentManifest(name=name, suspend=suspend),
        commit="main1",
        config_digest=cfg,
        build_digest=build,
    )


def have(
    name: str,
    phase: Phase = Phase.RUNNING,
    cfg: str | None = "c1",
    build: str | None = "b1",
    version: str | None = V,
) -> ObservedAgent:
    return ObservedAgent(name, phase, "old", cfg, build, version)


def state(*agents: DesiredAgent, version: str = V) -> DesiredState:
    return DesiredState("main1", {a.name: a for a in agents}, version)


def kinds(actions: list) -> list[tuple[str, ActionKind]]:  # type: ignore[type-arg]
    return [(a.agent, a.kind) for a in actions]


def test_in_sync_is_empty() -> None:
    assert (
        plan(
            state(want("manager"), want("alice")),
            {"manager": have("manager"), "alice": have("alice")},
        )
        == []
    )


def test_rules() -> None:
    d = state(
        want("manager"),
        want("absent"),
        want("rebuild", build="b2"),
        want("config", cfg="c2"),
        want("stopped"),
        want("failed"),
        want("susprun", suspend=True),
        want("suspstop", suspend=True),
        want("suspgone", suspend=True),
    )
    o = {
        "manager": have("manager"),
        "rebuild": have("rebuild"),
        "config": have("config"),
        "stopped": have("stopped", Phase.STOPPED),
        "failed": have("failed", Phase.FAILED),
        "susprun": have("susprun"),
        "suspstop": have("suspstop", Phase.STOPPED),
        "orphan": have("orphan"),
    }
    assert kinds(plan(d, o)) == [
        ("absent", ActionKind.CREATE),
        ("config", ActionKind.APPLY_MANIFEST),
        ("failed", ActionKind.START),
        ("orphan", ActionKind.DESTROY),
        ("rebuild", ActionKind.REBUILD),
        ("stopped", ActionKind.START),
        ("susprun", ActionKind.STOP),
    ]


def test_build_wins_over_config_and_version_triggers_rebuild() -> None:
    d = state(want("alice", cfg="c2", build="b2"))
    assert kinds(plan(d, {"alice": have("alice")})) == [("alice", ActionKind.REBUILD)]
    a = plan(state(want("alice")), {"alice": have("alice", version="0.0.9")})
    assert kinds(a) == [("alice", ActionKind.REBUILD)]
    assert "0.0.9 → 0.1.0" in a[0].reason


def test_stopped_with_changed_config_is_applied_not_started_twice() -> None:
    d = state(want("alice", cfg="c2"))
    assert kinds(plan(d, {"alice": have("alice", Phase.STOPPED)})) == [
        ("alice", ActionKind.APPLY_MANIFEST)
    ]


def test_manager_first_then_by_name_and_manager_never_pruned() -> None:
    d = state(want("zed"), want("amy"), want("manager"))
    assert [a.agent for a in plan(d, {})] == ["manager", "amy", "zed"]
    assert plan(state(), {"manager": have("manager")}) == []


def test_held_agents_are_stopped_and_not_started() -> None:
    d = state(want("alice"), want("bob"), want("carl", build="b9"))
    o = {
        "alice": have("alice"),
        "bob": have("bob", Phase.STOPPED),
        "carl": have("carl", Phase.STOPPED),
    }
    assert kinds(plan(d, o, held={"alice", "bob", "carl"})) == [("alice", ActionKind.STOP)]
    assert plan(state(want("dan")), {}, held={"dan"}) == []


def test_absent_phase_counts_as_not_deployed() -> None:
    assert kinds(plan(state(want("alice")), {"alice": have("alice", Phase.ABSENT)})) == [
        ("alice", ActionKind.CREATE)
    ]


def test_plan_then_execute_is_idempotent_exhaustive() -> None:
    """Every single-agent situation: after executing the plan, planning again yields []."""
    phases = [None, *Phase]
    digests = [None, "c1", "c2"]
    builds = [None, "b1", "b2"]
    versions = [None, V, "0.0.1"]
    count = 0
    for in_desired, suspend, held, phase, cfg, build, version in itertools.product(
        [True, False], [True, False], [True, False], phases, digests, builds, versions
    ):
        d = state(want("alice", suspend=suspend)) if in_desired else state()
        o = {} if phase is None else {"alice": have("alice", phase, cfg, build, version)}
        h = {"alice"} if held else set()
        actions = plan(d, o, held=h)
        assert len(actions) <= 1
        after = simulate(d, o, actions)
        assert plan(d, after, held=h) == [], (in_desired, suspend, held, phase, cfg, build, version)
        count += 1
    assert count > 1000


def test_plan_then_execute_is_idempotent_random_swarms() -> None:
    rng = random.Random(20261122)
    names = ["manager", "alice", "bob", "carl", "dora", "ed"]
    for _ in range(2000):
        d = state(
            *[
                want(
                    n,
                    cfg=rng.choice(["c1", "c2"]),
                    build=rng.choice(["b1", "b2"]),
                    suspend=rng.random() < 0.2,
                )
                for n in names
                if rng.random() < 0.7
            ],
            version=rng.choice([V, "0.2.0"]),
        )
        o = {
            n: have(
                n,
                rng.choice(list(Phase)),
                rng.choice([None, "c1", "c2"]),
                rng.choice([None, "b1", "b2"]),
                rng.choice([None, V, "0.2.0"]),
            )
            for n in names
            if rng.random() < 0.7
        }
        held = {n for n in names if rng.random() < 0.1}
        actions = plan(d, o, held=held)
        assert len({a.agent for a in actions}) == len(actions)
        order = [a.agent for a in actions]
        assert order == sorted(order, key=lambda n: (n != "manager", n))
        assert plan(d, simulate(d, o, actions), held=held) == []


def test_plan_is_pure() -> None:
    d = state(want("alice", cfg="c2"))
    o = {"alice": have("alice")}
    assert plan(d, o) == plan(d, o)
    assert o == {"alice": have("alice")}


# ---------------------------------------------------------------- conditions (controller.status)
# The condition computation is part of the pure core; its tests live next to the planner's.


def _conds(**kw: object) -> dict[str, tuple[str, str]]:
    from controller.status import AgentFacts, compute_conditions

    facts = AgentFacts(**kw)  # type: ignore[arg-type]
    return {str(c.type): (str(c.status), c.reason) for c in compute_conditions(facts)}


def test_conditions_running_in_sync() -> None:
    c = _conds(name="alice", desired=want("alice"), observed=have("alice"), logged_in=True)
    assert c == {
        "Ready": ("True", "Running"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "NotStalled"),
        "UpToDate": ("True", "UpToDate"),
        "LoggedIn": ("True", "CredentialsPresent"),
        "Degraded": ("Unknown", "NotReported"),
    }


def test_conditions_pending_failed_stalled_held() -> None:
    from controller.model import Action
    from controller.status import Failure, FailureKind

    pending = Action(ActionKind.CREATE, "alice", "not deployed yet")
    c = _conds(name="alice", desired=want("alice"), observed=None, pending=pending)
    assert c["Ready"] == ("False", "NotDeployed") and c["Reconciling"] == ("True", "Creating")
    assert c["UpToDate"] == ("False", "NotDeployed") and c["LoggedIn"][0] == "Unknown"

    transient = Failure(FailureKind.TRANSIENT, ActionKind.CREATE, "boom", 2, 10.0)
    c = _conds(
        name="alice", desired=want("alice"), observed=None, pending=pending, failure=transient
    )
    assert c["Reconciling"] == ("True", "RetryScheduled") and c["Stalled"][0] == "False"

    permanent = Failure(FailureKind.PERMANENT, ActionKind.CREATE, "no such image")
    c = _conds(
        name="alice", desired=want("alice"), observed=None, pending=pending, failure=permanent
    )
    assert c["Stalled"] == ("True", "PermanentError") and c["Reconciling"][0] == "False"

    c = _conds(
        name="alice", desired=want("alice"), observed=have("alice", Phase.STOPPED), held=True
    )
    assert c["Ready"] == ("False", "StoppedByRequest")
    c = _conds(name="alice", desired=want("alice", suspend=True), observed=None)
    assert c["Ready"] == ("False", "Suspended")
    c = _conds(
        name="alice", desired=None, observed=have("alice"), invalid="agents/alice/agent.yaml: x"
    )
    assert c["Stalled"] == ("True", "InvalidManifest")
    c = _conds(name="alice", desired=want("alice", cfg="c2"), observed=have("alice"))
    assert c["UpToDate"] == ("False", "ManifestChanged")
    c = _conds(name="alice", desired=want("alice", build="b2"), observed=have("alice"))
    assert c["UpToDate"] == ("False", "NeedsRebuild")


def test_local_runtime_says_agent_nix_is_not_built() -> None:
    from dataclasses import replace

    from controller.status import AgentFacts, CondType, compute_conditions, condition

    facts = AgentFacts(
        name="alice",
        desired=replace(want("alice"), has_nix=True),
        observed=have("alice"),
        builds_nix=False,
    )
    up = condition(compute_conditions(facts), CondType.UP_TO_DATE)
    assert up is not None and "agent.nix is not built under the local runtime" in up.message


def test_transition_time_changes_only_with_the_condition() -> None:
    from controller.status import Condition, CondStatus, CondType, merge_conditions

    ready = Condition(CondType.READY, CondStatus.TRUE, "Running", "running at abc")
    first = merge_conditions((), (ready,), 100.0)
    assert first[0].last_transition_time == 100.0
    same = merge_conditions(first, (ready,), 200.0)
    assert same[0].last_transition_time == 100.0
    moved = Condition(CondType.READY, CondStatus.TRUE, "Running", "running at def")
    assert merge_conditions(same, (moved,), 300.0)[0].last_transition_time == 300.0
    down = Condition(CondType.READY, CondStatus.FALSE, "Stopped", "stopped")
    assert merge_conditions(same, (down,), 400.0)[0].last_transition_time == 400.0
    assert Condition.from_json(first[0].to_json()) == first[0]
