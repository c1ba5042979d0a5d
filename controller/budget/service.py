"""Budgets at run time: spend against limits per agent and swarm-wide, the hold, notices.

:class:`Budgets` ties the pure core to the controller: the agents' limits come from
desired state (``spec.budget`` at main, through ``limits()``), the swarm's from the
controller config, spend from the :class:`~controller.budget.ledger.Ledger`, time from an
injectable clock. The agent socket's ``POST /recv`` asks :meth:`Budgets.hold` before it
takes a message: while the agent (or the swarm) is over budget, the request is held (no
message is taken, so nothing is consumed, leased or dead-lettered) and answers no message
when its wait runs out; it is let through as soon as the window turns or an extension is
granted (checked every ``tick`` seconds while held). Each check that finds a new level
sends the owed notices (``BudgetWarning`` / ``BudgetExceeded``, once per scope and window)
to the manager's inbox and the operator's; every extension sends ``BudgetExtended`` to both
(the audit trail, kept in the broker's message log) and is recorded in the ledger.

Spend is what the agents report (their harness's ``POST /spend`` and their own turn-stats
file), so it is bounded before it can hold anyone else: in the swarm-wide sum each agent
counts each of its turns at most the per-turn ceiling (:meth:`Budgets.turn_ceiling`), and
all of them at most its own daily limit (with its extension) or, without one, that ceiling ×
the messages the controller leased to it in the window. Each agent's
own check sees the swarm sum with its *unclamped* spend, so an agent that over-reports
holds only itself, and its condition says its reports were clamped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.budget.clock import Clock
from controller.budget.core import (
    DAY_SECONDS,
    NOTICE_EXCEEDED,
    NOTICE_WARNING,
    SWARM,
    BudgetError,
    Extension,
    Limits,
    Spend,
    Standing,
    Window,
    assess,
    check_extension,
    day_window,
    due_notices,
    hold_message,
    notice_event,
)
from controller.budget.ledger import RETENTION_SECONDS, Ledger

log = logging.getLogger(__name__)

Notify = Callable[[str, dict[str, Any], str], object]
"""``notify(recipient, event, dedup_key)``: the broker's ``emit_event``."""

NOTIFY_TO = ("manager", "operator")
HOLD_TICK = 1.0
"""Seconds between two checks of a held ``recv`` (a check is two ``stat``s and a sum)."""
HELD_ANSWER_AFTER = 15.0
"""Seconds a held ``recv`` waits at most before it answers ``held`` (the harness shows it and
asks again), however long its own wait."""
DEFAULT_TURN_CEILING_USD = 10.0
"""Dollars one turn counts at most in the swarm-wide sum when neither the agent's
``usdPerTurn`` nor the swarm's (config ``budget.usdPerTurn``) is set."""
RUNS_PER_TURN = 3
"""Claude runs one turn may take (a failed resume, a retry, a compaction): with a
``usdPerTurn`` cap, a turn's ceiling is this many runs' worth."""
TURN_CEILING_TOKENS = 20_000_000
"""Tokens one turn counts at most in the swarm-wide sum."""
FREE_TURNS = 4
"""Spend reports kept on top of the messages leased in a window (compactions, a turn that
started before midnight). They count for the agent itself, not in the swarm-wide sum."""
PRUNE_EVERY = 3600.0
"""Seconds between two prunes of the ledger (rows older than ``RETENTION_SECONDS``)."""
SWARM_REFRESH = 1.0
"""Seconds the swarm-wide ingest of every agent's stats file is reused."""
LIMITS_TTL = 2.0
"""Seconds a reading of the agents' limits lets ``hold`` skip the check of an agent without
a budget inline (no worker thread, no sqlite): a new budget bites within this."""


class WindowTables:
    """One window's ledger figures, each read once for every agent and kept: spend per
    per-turn ceiling (one grouped query per distinct ceiling), messages leased and
    extensions (one query each, on first use). For one swarm-wide sum (blocking)."""

    def __init__(self, ledger: Ledger, window: Window) -> None:
        self.ledger = ledger
        self.window = window
        self._spend: dict[float, dict[str, Spend]] = {}
        self._deliveries: dict[str, int] | None = None
        self._extensions: dict[str, Extension] | None = None

    def spend(self, agent: str, ceiling: float) -> Spend:
        """``agent``'s spend in the window, each turn at most ``ceiling`` dollars and
        ``TURN_CEILING_TOKENS`` tokens."""
        by_agent = self._spend.get(ceiling)
        if by_agent is None:
            by_agent = self.ledger.spend_by_agent(self.window, ceiling, TURN_CEILING_TOKENS)
            self._spend[ceiling] = by_agent
        return by_agent.get(agent, Spend())

    def deliveries(self, agent: str) -> int:
        """Messages leased to ``agent`` in the window."""
        if self._deliveries is None:
            self._deliveries = self.ledger.deliveries_by_agent(self.window)
        return self._deliveries.get(agent, 0)

    def extension(self, scope: str) -> Extension:
        """The sum of ``scope``'s grants in the window."""
        if self._extensions is None:
            self._extensions = self.ledger.extensions_by_scope(self.window)
        return self._extensions.get(scope, Extension())


@dataclass(frozen=True)
class SwarmTerms:
    """What each agent counts in the swarm-wide sum of ``window`` (``counted``, sorted by
    name) and the swarm's extension there."""

    window: Window
    counted: dict[str, Spend]
    extension: Extension


class Budgets:
    """Budgets of one controller (see the module doc).

    ``ledger``: where spend is kept; ``stats_file(agent)``: that agent's turn-stats path;
    ``limits()``: ``{agent: Limits | None}`` from desired state (may block: called in a
    worker thread by the async verbs); ``swarm``: the config's swarm-wide limits;
    ``notify``: where events go; ``clock``: unix seconds; ``on_change()``: called when
    an agent becomes held or free (the status view recomputes its conditions).
    """

    def __init__(
        self,
        ledger: Ledger,
        stats_file: Callable[[str], Path],
        limits: Callable[[], Mapping[str, Limits | None]],
        *,
        swarm: Limits | None = None,
        notify: Notify | None = None,
        clock: Clock = time.time,
        on_change: Callable[[], None] | None = None,
        tick: float = HOLD_TICK,
        answer_after: float = HELD_ANSWER_AFTER,
        known: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.ledger = ledger
        self._stats_file = stats_file
        self._limits = limits
        self.swarm = swarm if swarm is not None and not swarm.empty else None
        self._notify = notify
        self.clock = clock
        self._on_change = on_change
        self.tick = tick
        self.answer_after = answer_after
        self._known = known
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._swarm_ingested = 0.0
        self._pruned = 0.0
        self._limits_read: tuple[float, Mapping[str, Limits | None]] | None = None
        self.generation = 0
        """Moves whenever the set of held agents or their messages change."""

    # ------------------------------------------------------------ reading

    def limits_of(self, agent: str) -> Limits | None:
        """``agent``'s limits as desired state has them (blocking)."""
        limits = self._limits()
        self._limits_read = (time.monotonic(), limits)
        return limits.get(agent)

    def unbudgeted(self, agent: str) -> bool:
        """True when a fresh reading (``LIMITS_TTL``) shows no budget can hold ``agent``: no
        swarm budget, no daily limit of its own, not held. No I/O (the event loop asks)."""
        read = self._limits_read
        if self.swarm is not None or read is None or agent in self._held:
            return False
        if time.monotonic() - read[0] > LIMITS_TTL:
            return False
        own = read[1].get(agent)
        return own is None or own.empty

    def _ingest(self, agent: str) -> None:
        self.ledger.ingest(agent, self._stats_file(agent))

    def _ingest_all(self, names: Iterable[str]) -> None:
        now = time.monotonic()
        if now - self._swarm_ingested < SWARM_REFRESH:
            return
        for name in names:
            self._ingest(name)
        self._swarm_ingested = now

    def names(self) -> set[str]:
        """Every agent with a manifest at main or known to the controller (blocking)."""
        names = set(self._limits())
        if self._known is not None:
            names.update(self._known())
        return names

    def standing(self, agent: str, now: float | None = None) -> Standing:
        """``agent``'s standing in the current window (reads its stats file first; blocking)."""
        self._ingest(agent)
        window = day_window(self.clock() if now is None else now)
        return assess(
            agent,
            self.limits_of(agent),
            self.ledger.spend(agent, window),
            window,
            self.ledger.extension(agent, window),
        )

    def turn_ceiling(self, limits: Limits | None) -> float:
        """Dollars one turn of an agent with ``limits`` counts at most in the swarm-wide sum:
        ``RUNS_PER_TURN`` × its ``usdPerTurn``, else × the swarm config's, else
        ``DEFAULT_TURN_CEILING_USD``."""
        for lim in (limits, self.swarm):
            if lim is not None and lim.usd_per_turn is not None:
                return RUNS_PER_TURN * lim.usd_per_turn
        return DEFAULT_TURN_CEILING_USD

    def contribution(
        self, agent: str, window: Window, limits: Limits | None, tables: WindowTables | None = None
    ) -> Spend:
        """What ``agent`` counts in the swarm-wide sum of ``window``: its spend with each turn
        at most the per-turn ceiling, and all of it at most its own daily limit (with its
        extension) or, in a dimension it has no limit in, the ceiling × the messages leased
        to it. ``tables``: the window's figures already read for a swarm-wide sum."""
        t = tables if tables is not None else WindowTables(self.ledger, window)
        ceiling = self.turn_ceiling(limits)
        raw = t.spend(agent, ceiling)
        # no slack on the deliveries: a free turn would let an agent that was given nothing
        # add a ceiling's worth to every other agent's sum
        turns = t.deliveries(agent)
        usd_cap, tokens_cap = ceiling * turns, TURN_CEILING_TOKENS * turns
        if limits is not None and not limits.empty:
            ext = t.extension(agent)
            if limits.usd_per_day is not None:
                usd_cap = limits.usd_per_day + ext.usd
            if limits.tokens_per_day is not None:
                tokens_cap = limits.tokens_per_day + ext.tokens
        return Spend(min(raw.usd, usd_cap), min(raw.tokens, tokens_cap), raw.turns)

    def swarm_standing(self, now: float | None = None, own: str | None = None) -> Standing | None:
        """The swarm-wide standing (None when the config sets no swarm budget; blocking):
        every agent's :meth:`contribution`, but ``own``'s unclamped spend when given (what
        that agent's own check sees)."""
        terms = self._swarm_terms(now)
        return None if terms is None else self._swarm_assess(terms, own)

    def _swarm_terms(self, now: float | None) -> SwarmTerms | None:
        """What each agent counts in the swarm-wide sum now (None: no swarm budget). The
        window's figures are read once for all of them (``WindowTables``): a handful of
        queries, not a few per agent."""
        if self.swarm is None:
            return None
        names = self.names()
        self._ingest_all(names)
        window = day_window(self.clock() if now is None else now)
        limits = self._limits()
        names.update(self.ledger.spend_by_agent(window, math.inf, 2**62))
        tables = WindowTables(self.ledger, window)
        counted = {n: self.contribution(n, window, limits.get(n), tables) for n in sorted(names)}
        return SwarmTerms(window, counted, tables.extension(SWARM))

    def _swarm_assess(self, terms: SwarmTerms, own: str | None) -> Standing:
        assert self.swarm is not None
        total = Spend()
        for name, spend in terms.counted.items():  # sorted by name
            total += self.ledger.spend(name, terms.window) if name == own else spend
        return assess(SWARM, self.swarm, total, terms.window, terms.extension)

    def clamped(self, agent: str, now: float | None = None) -> str | None:
        """Why ``agent``'s reports count less in the swarm-wide sum than it reported (None:
        they count in full). Blocking."""
        window = day_window(self.clock() if now is None else now)
        limits = self.limits_of(agent)
        raw = self.ledger.spend(agent, window)
        counted = self.contribution(agent, window, limits)
        if raw.usd <= counted.usd + 1e-9 and raw.tokens <= counted.tokens:
            return None
        leased = self.ledger.deliveries(agent, window)
        return (
            f"{agent}'s spend reports were clamped: it reported ${raw.usd:.4f} / {raw.tokens} "
            f"tokens, the swarm counts ${counted.usd:.4f} / {counted.tokens} tokens "
            f"({leased} messages leased today, at most ${self.turn_ceiling(limits):.4f} a turn)"
            f"; the swarm budget holds only {agent}"
        )

    def held(self, agent: str) -> str | None:
        """Why ``agent`` is held, as of its last check (None: not held). No I/O."""
        return self._held.get(agent)

    # ------------------------------------------------------------ the gate

    def check(self, agent: str) -> str | None:
        """May ``agent`` start a turn now? None if so, else why not (spend and limit).

        Sends the notices a new level owes and updates :meth:`held`. Blocking.
        """
        now = self.clock()
        self._prune(now)
        own = self.standing(agent, now)
        terms = self._swarm_terms(now)
        swarm = None if terms is None else self._swarm_assess(terms, None)
        for s in (own, swarm):
            if s is not None:
                self._send_due(s, now)
        why = hold_message(own, swarm)
        if why is None and terms is not None:
            mine = self._swarm_assess(terms, agent)  # its own unclamped spend
            if mine.exceeded:
                why = f"{mine.message()}; {self.clamped(agent, now)}"
        self._set_held(agent, why)
        return why

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        gone = self.ledger.prune(now - RETENTION_SECONDS)
        if gone:
            log.info("budget: pruned %d spend rows older than %d days", gone,
                     RETENTION_SECONDS // DAY_SECONDS)  # fmt: skip

    def note_delivery(self, agent: str) -> None:
        """Count one message leased to ``agent`` (the agent API's ``recv``): the bound on the
        turns its reports may count in the swarm-wide sum. Blocking (one sqlite write); a
        failed write is logged, never raised (the message is already taken)."""
        try:
            self.ledger.add_delivery(agent, day_window(self.clock()))
        except Exception:
            log.exception("budget: could not count a delivery to %s", agent)

    def _set_held(self, agent: str, why: str | None) -> None:
        with self._lock:
            if self._held.get(agent) == why:
                return
            if why is None:
                self._held.pop(agent, None)
                log.info("budget: %s may take turns again", agent)
            else:
                if agent not in self._held:
                    log.warning("budget: holding %s: %s", agent, why)
                self._held[agent] = why
            self.generation += 1
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("budget: on_change failed")

    def _send_due(self, s: Standing, now: float) -> None:
        sent = self.ledger.sent(s.scope, s.window)
        for kind in due_notices(s, sent):
            # claim it first: two agents' checks racing for the swarm notice send it once
            if not self.ledger.mark_sent(s.scope, s.window, kind, now):
                continue
            if kind == NOTICE_EXCEEDED:
                self.ledger.mark_sent(s.scope, s.window, NOTICE_WARNING, now)
            self._emit(notice_event(kind, s), f"budget:{kind}:{s.scope}:{s.window.key}")

    def _emit(self, event: dict[str, Any], dedup: str) -> None:
        if self._notify is None:
            return
        for to in NOTIFY_TO:
            try:
                self._notify(to, event, dedup)
            except Exception:
                log.exception("budget: could not deliver %s to %s", event.get("type"), to)

    async def hold(
        self, agent: str, wait_seconds: float, abandoned: asyncio.Event | None = None
    ) -> tuple[str | None, float]:
        """Wait until ``agent`` may take a message, at most ``wait_seconds``.

        Returns ``(None, seconds left of the wait)`` when it may, ``(why, 0)`` when it is
        still over budget after ``answer_after`` seconds held (or the wait, if shorter) or
        the client left: a held caller hears why within ``answer_after`` and asks again.
        Checks run in a worker thread; while held, one check per ``tick`` seconds.
        """
        if self.unbudgeted(agent):
            return None, max(0.0, wait_seconds)
        deadline = time.monotonic() + max(0.0, wait_seconds)
        answer_at: float | None = None
        while True:
            why = await asyncio.to_thread(self.check, agent)
            now = time.monotonic()
            if why is None:
                return None, max(0.0, deadline - now)
            if answer_at is None:
                answer_at = min(deadline, now + self.answer_after)
            if now >= answer_at or (abandoned is not None and abandoned.is_set()):
                return why, 0.0
            pause = min(answer_at - now, self.tick)
            if abandoned is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(abandoned.wait(), pause)

    def record_turn(
        self, agent: str, turn_id: int, started_at: float, cost_usd: float, tokens: int
    ) -> bool:
        """Count one turn ``agent``'s harness reports (``POST /spend``); False when it was
        already counted. A start time outside the last two days (or in the future) is taken
        as now: an agent cannot file today's spend under another day. At most one report per
        message leased to it in that window (+ ``FREE_TURNS``) is kept: more are dropped
        (False), so reports cannot grow the ledger faster than turns are delivered. Blocking."""
        now = self.clock()
        if not now - 2 * DAY_SECONDS <= started_at <= now + 60:
            started_at = now
        window = day_window(started_at)
        allowed = self.ledger.deliveries(agent, window) + FREE_TURNS
        if self.ledger.spend(agent, window).turns >= allowed:
            log.warning("budget: %s reported more turns than the %d messages leased to it on %s;"
                        " report dropped", agent, allowed - FREE_TURNS, window.key)  # fmt: skip
            return False
        return self.ledger.add_turn(agent, turn_id, started_at, cost_usd, tokens)

    # ------------------------------------------------------------ the operator's verbs

    def allow(
        self, scope: str, usd: Any, tokens: Any = 0, *, by: str = "operator", note: str = ""
    ) -> Standing:
        """Grant ``scope`` (an agent, or ``SWARM``) a one-off extension of ``usd`` dollars and
        ``tokens`` tokens for the current window. Records it, sends ``BudgetExtended`` to
        the manager and the operator (the audit trail) and returns the new standing.
        Raises ``BudgetError`` (field ``usd`` / ``tokens``) for a bad amount, (``name`` /
        ``scope``) when the scope has no budget to extend. Blocking.
        """
        ext: Extension = check_extension(usd, tokens)
        if scope == SWARM and self.swarm is None:
            raise BudgetError("no swarm-wide budget is set (controller config: budget)", "scope")
        if scope != SWARM and self.limits_of(scope) is None:
            raise BudgetError(f"{scope} has no budget (spec.budget in its manifest)", "name")
        now = self.clock()
        window = day_window(now)
        grant = self.ledger.add_extension(scope, window, ext, now, by, note)
        standing = self.swarm_standing(now) if scope == SWARM else self.standing(scope, now)
        assert standing is not None
        event: dict[str, Any] = {
            "type": "BudgetExtended",
            "scope": "swarm" if scope == SWARM else "agent",
            "window": window.key,
            "grant": grant,
            "usd": round(ext.usd, 6),
            "tokens": ext.tokens,
            "by": by,
            "note": (note + "; " if note else "") + standing.message(),
        }
        if scope != SWARM:
            event["agent"] = scope
        self._emit(event, f"budget:extended:{grant}")
        for agent in list(self._held):
            if scope == SWARM or agent == scope:
                self.check(agent)
        log.info("budget: %s granted %s an extension of $%.4f / %d tokens for %s",
                 by, scope, ext.usd, ext.tokens, window.key)  # fmt: skip
        return standing

    def report(self, name: str | None = None) -> dict[str, Any]:
        """``{"now", "window", "window_end", "agents": [Standing json + "held"], "swarm":
        Standing json | None}``: every agent with a budget or recorded turns (only ``name``
        when given). Blocking."""
        now = self.clock()
        window = day_window(now)
        names = [name] if name is not None else sorted(self.names())
        rows = []
        for n in names:
            s = self.standing(n, now).to_json()
            s["held"] = self._held.get(n)
            rows.append(s)
        swarm = self.swarm_standing(now)
        return {
            "now": now,
            "window": window.key,
            "window_end": window.end,
            "agents": rows,
            "swarm": None if swarm is None else swarm.to_json(),
        }
