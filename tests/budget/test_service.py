"""Budgets against real files: the harness' own turn-stats writer, the ledger in sqlite,
the hold, notices once per window, extensions, restarts of either side (no mocks; the
clock is injected)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.budget.core import DAY_SECONDS, SWARM, BudgetError, Limits, day_window
from controller.budget.ledger import RETENTION_SECONDS, Ledger
from controller.budget.service import FREE_TURNS, Budgets
from harness.turnstats import TurnRow, TurnStats
from schemas.validate import validate

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    """A settable clock (unix seconds)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stats_path(root: Path, agent: str) -> Path:
    return root / "agents" / agent / "state" / "hyperhive-turn-stats.sqlite"


def turn(stats: TurnStats, at: float, usd: float, tokens: int = 100) -> None:
    stats.record(
        TurnRow(
            model="haiku",
            result_kind="ok",
            started_at=at,
            ended_at=at + 1,
            duration_ms=1000,
            input_tokens=tokens,
            output_tokens=0,
            cache_read_tokens=99_999,
            cost_usd=usd,
        )
    )


class World:
    def __init__(self, root: Path, limits: dict[str, Limits | None],
                 swarm: Limits | None = None) -> None:  # fmt: skip
        self.root = root
        self.limits = limits
        self.clock = Clock(T0)
        self.events: list[tuple[str, dict[str, Any], str]] = []
        self.changes = 0
        self.swarm = swarm
        self.stats: dict[str, TurnStats] = {}
        self.budgets = self.open()

    def open(self) -> Budgets:
        def notify(to: str, event: dict[str, Any], key: str) -> None:
            validate(event, "events")
            self.events.append((to, event, key))

        def changed() -> None:
            self.changes += 1

        return Budgets(
            Ledger(self.root / "budget.sqlite"),
            lambda a: stats_path(self.root, a),
            lambda: self.limits,
            swarm=self.swarm,
            notify=notify,
            clock=self.clock,
            on_change=changed,
            tick=0.01,
        )

    def harness(self, agent: str) -> TurnStats:
        if agent not in self.stats:
            p = stats_path(self.root, agent)
            p.parent.mkdir(parents=True, exist_ok=True)
            self.stats[agent] = TurnStats(p)
        return self.stats[agent]

    def kinds(self, to: str = "manager") -> list[str]:
        return [e["type"] for t, e, _ in self.events if t == to]


def test_spend_counts_turns_of_the_window_and_tokens_without_cache_reads(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": Limits(usd_per_day=1.0, tokens_per_day=1000)})
    h = w.harness("alice")
    turn(h, T0 - 86400, 5.0)  # yesterday: not counted today
    turn(h, T0, 0.25, tokens=100)
    turn(h, T0 + 60, 0.25, tokens=100)
    s = w.budgets.standing("alice")
    assert (s.spend.usd, s.spend.tokens, s.spend.turns) == (0.5, 200, 2)
    assert s.level.value == "ok" and w.budgets.check("alice") is None


def test_hold_notices_extension_and_the_window_turning(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": Limits(usd_per_day=1.0)})
    h = w.harness("alice")
    b = w.budgets
    turn(h, T0, 0.5)
    assert b.check("alice") is None and w.kinds() == []
    turn(h, T0 + 1, 0.35)  # 0.85: warning, once
    assert b.check("alice") is None
    assert b.check("alice") is None
    assert w.kinds() == ["BudgetWarning"] and w.kinds("operator") == ["BudgetWarning"]
    turn(h, T0 + 2, 0.3)  # 1.15: held
    why = b.check("alice")
    assert why is not None and "alice spent $1.1500 of $1.0000" in why
    assert b.held("alice") == why and w.changes == 1
    assert b.check("alice") == why  # no second notice, no change
    assert w.kinds() == ["BudgetWarning", "BudgetExceeded"] and w.changes == 1
    ev = next(e for _, e, _ in w.events if e["type"] == "BudgetExceeded")
    assert ev["agent"] == "alice" and ev["spent_usd"] == 1.15 and ev["limit_usd"] == 1.0

    # an extension lets the next turn through, and only until spend reaches the new limit
    st = b.allow("alice", 0.2)
    assert not st.exceeded and b.held("alice") is None and w.changes == 2
    assert w.kinds()[-1] == "BudgetExtended" and w.kinds("operator")[-1] == "BudgetExtended"
    turn(h, T0 + 3, 0.1)  # 1.25 of 1.2
    assert b.check("alice") is not None
    assert w.kinds().count("BudgetExceeded") == 1  # once per window, even after an extension

    # the next UTC day: free again, the extension gone, notices owed again
    w.clock.t = T0 + 43200 + 1
    assert b.check("alice") is None and b.held("alice") is None
    st = b.standing("alice")
    assert st.spend.usd == 0 and st.extension.grants == 0 and st.window.key == "2026-12-08"
    turn(h, w.clock.t, 2.0)
    assert b.check("alice") is not None
    assert w.kinds().count("BudgetExceeded") == 2


def test_bad_extensions_are_refused(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": Limits(usd_per_day=1.0), "bob": None})
    with pytest.raises(BudgetError) as exc:
        w.budgets.allow("alice", -1)
    assert exc.value.field == "usd"
    with pytest.raises(BudgetError) as exc:
        w.budgets.allow("bob", 1)
    assert exc.value.field == "name"
    with pytest.raises(BudgetError) as exc:
        w.budgets.allow(SWARM, 1)
    assert exc.value.field == "scope"


def test_swarm_budget_holds_everyone(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": None, "bob": Limits(usd_per_day=10.0)},
              swarm=Limits(usd_per_day=1.0))  # fmt: skip
    for name in ("alice", "bob"):
        w.budgets.note_delivery(name)  # the message each turn answered
    turn(w.harness("alice"), T0, 0.6)
    turn(w.harness("bob"), T0, 0.5)
    why = w.budgets.check("bob")
    assert why is not None and why.startswith("the swarm spent $1.1000 of $1.0000")
    assert w.budgets.check("alice") == why
    assert w.kinds().count("BudgetExceeded") == 1
    ev = next(e for _, e, _ in w.events if e["type"] == "BudgetExceeded")
    assert ev["scope"] == "swarm" and "agent" not in ev
    w.budgets.allow(SWARM, 1.0)
    assert w.budgets.held("alice") is None and w.budgets.held("bob") is None
    rep = w.budgets.report()
    assert [a["agent"] for a in rep["agents"]] == ["alice", "bob"]
    assert rep["swarm"]["limit_usd"] == 2.0 and rep["swarm"]["extensions"] == 1


def test_spend_survives_harness_file_loss_and_controller_restart(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": Limits(usd_per_day=1.0)})
    h = w.harness("alice")
    turn(h, T0, 0.7)
    turn(h, T0 + 1, 0.4)
    assert w.budgets.check("alice") is not None
    w.budgets.allow("alice", 0.5)
    w.budgets.ledger.close()
    # the agent wipes its stats file and starts afresh; the controller restarts
    h.close()
    for p in stats_path(tmp_path, "alice").parent.glob("hyperhive-turn-stats.sqlite*"):
        p.unlink()
    del w.stats["alice"]
    h = w.harness("alice")
    turn(h, T0 + 2, 0.1)  # id 1 again, in a new file
    w.budgets = w.open()
    st = w.budgets.standing("alice")
    assert st.spend.usd == pytest.approx(1.2) and st.spend.turns == 3
    assert st.extension.usd == 0.5 and not st.exceeded
    turn(h, T0 + 3, 0.4)
    assert w.budgets.check("alice") is not None
    # ingesting twice adds nothing
    assert w.budgets.ledger.ingest("alice", stats_path(tmp_path, "alice")) == 0
    assert w.budgets.standing("alice").spend.turns == 4
    # and the notices sent before the restart are not sent again
    assert w.kinds().count("BudgetExceeded") == 1


def test_hold_waits_and_lets_go_on_extension(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": Limits(usd_per_day=1.0)})
    turn(w.harness("alice"), T0, 1.0)
    b = w.budgets

    async def scenario() -> None:
        why, left = await b.hold("alice", 0.05)
        assert why is not None and left == 0.0
        waiter = asyncio.create_task(b.hold("alice", 30.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await asyncio.to_thread(b.allow, "alice", 1.0)
        why, left = await asyncio.wait_for(waiter, 10)
        assert why is None and left > 0
        # held again, then the window turns under a parked hold
        turn(w.harness("alice"), T0 + 1, 1.5)
        waiter = asyncio.create_task(b.hold("alice", 30.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        w.clock.t = T0 + 86400
        why, _ = await asyncio.wait_for(waiter, 10)
        assert why is None
        gone = asyncio.Event()
        w.clock.t = T0
        waiter = asyncio.create_task(b.hold("alice", 30.0, gone))
        await asyncio.sleep(0.05)
        gone.set()
        why, _ = await asyncio.wait_for(waiter, 10)
        assert why is not None

    asyncio.run(scenario())


def test_the_config_sets_the_swarm_budget(tmp_path: Path) -> None:
    from controller.budget.wiring import open_budgets
    from controller.config import ConfigError, load_config
    from controller.model import DesiredState
    from controller.paths import Layout

    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text("budget: {usdPerDay: 20, warnAt: 0.9}\n")
    cfg = load_config(cfg_file)
    assert cfg.budget == Limits(usd_per_day=20.0, warn_at=0.9)
    cfg_file.write_text("budget: {usdPerDay: -1}\n")
    with pytest.raises(ConfigError, match=r"budget\.usdPerDay"):
        load_config(cfg_file)
    layout = Layout.for_state(tmp_path / "state", tmp_path / "run")
    events: list[dict[str, Any]] = []

    class Sink:
        def emit_event(self, to: str, event: dict[str, Any], key: str | None = None) -> None:
            events.append(event)

    b = open_budgets(layout, cfg, lambda: DesiredState("c" * 40, {}, "0"), Sink(),
                     clock=Clock(T0))  # fmt: skip
    try:
        assert b.swarm == Limits(usd_per_day=20.0, warn_at=0.9)
        assert b.swarm_standing() is not None and b.report()["swarm"]["limit_usd"] == 20.0
    finally:
        b.ledger.close()


def test_made_up_spend_holds_only_its_reporter(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": None, "bob": Limits(usd_per_day=0.5)},
              swarm=Limits(usd_per_day=20.0))  # fmt: skip
    w.budgets.note_delivery("alice")
    turn(w.harness("alice"), T0, 1e6)  # one delivered turn, a made-up cost
    turn(w.harness("bob"), T0, 1e6)  # bob's own limit caps what he adds
    assert w.budgets.check("bob") is not None  # over his own $0.50
    swarm = w.budgets.swarm_standing()
    assert swarm is not None and swarm.spend.usd == 10.0 + 0.5  # the $10 ceiling + bob's limit
    why = w.budgets.check("alice")
    assert why is not None and "alice's spend reports were clamped" in why
    # bob without a limit and without a delivery counts nothing
    assert w.budgets.contribution("bob", day_window(T0), None).usd == 0.0


def test_the_swarm_sum_reads_the_window_once_and_counts_what_each_agent_would(
    tmp_path: Path,
) -> None:
    limits = {
        "alice": Limits(usd_per_day=2.0, usd_per_turn=0.5),  # its own per-turn ceiling
        "bob": Limits(usd_per_day=0.5),
        "carol": None,
    }
    w = World(tmp_path, limits, swarm=Limits(usd_per_day=100.0))  # fmt: skip
    window = day_window(T0)
    for agent, n in (("alice", 3), ("bob", 1), ("carol", 2)):
        for _ in range(n):
            w.budgets.note_delivery(agent)
        turn(w.harness(agent), T0, 4.0)
        turn(w.harness(agent), T0 + 1, 0.25)
    w.budgets.allow("bob", 1.0)
    w.budgets.allow(SWARM, 5.0)
    ledger = w.budgets.ledger
    assert ledger.deliveries_by_agent(window) == {"alice": 3, "bob": 1, "carol": 2}
    assert {a: ledger.extension(a, window) for a in ("bob", SWARM)} == ledger.extensions_by_scope(
        window
    )
    swarm = w.budgets.swarm_standing()
    one_by_one = [w.budgets.contribution(a, window, limits[a]) for a in sorted(limits)]
    assert swarm is not None and swarm.spend.usd == sum(c.usd for c in one_by_one)
    assert [c.usd for c in one_by_one] == [1.5 + 0.25, 0.5 + 1.0, 4.0 + 0.25]  # ceiling, limit
    assert swarm.extension.usd == 5.0
    # an agent's own check sees its unclamped spend in the sum, the others' clamped
    mine = w.budgets.swarm_standing(own="alice")
    assert mine is not None and mine.spend.usd == 4.25 + 1.5 + 4.25


def test_spend_reports_are_one_per_delivery_and_pruned(tmp_path: Path) -> None:
    w = World(tmp_path, {"alice": None})
    kept = [w.budgets.record_turn("alice", i, T0, 0.0, 0) for i in range(1, 11)]
    assert kept == [True] * FREE_TURNS + [False] * (10 - FREE_TURNS)
    w.budgets.note_delivery("alice")
    assert w.budgets.record_turn("alice", 11, T0, 0.0, 0)
    assert not w.budgets.record_turn("alice", 12, T0, 0.0, 0)
    w.clock.t = T0 + RETENTION_SECONDS + 2 * DAY_SECONDS
    w.budgets.check("alice")  # prunes
    assert w.budgets.ledger.spend("alice", day_window(T0)).turns == 0
