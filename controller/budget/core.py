"""The pure part of budgets: limits, windows, standings, notices, extensions (no I/O).

A budget is a set of :class:`Limits` per **UTC day** (the window): ``usdPerDay``
and ``tokensPerDay``, each optional, plus ``warnAt`` (the fraction at which a
``BudgetWarning`` goes out, 0.8 unless set). Spend in a window is the sum of the
turns that *started* in it (:class:`Spend`). Tokens are input + output + cache
writes; cache reads are left out (they are billed at a tenth of input and a Claude
Code turn re-reads its whole prompt prefix on every request, so counting them would
make ``tokensPerDay`` a count of requests; their cost is in ``usd`` anyway).

An :class:`Extension` (``hyperhive budget NAME --allow USD``) raises the limits of
one window only. :func:`assess` folds limits, spend and extension into a
:class:`Standing`: ``exceeded`` once spend reaches a limit (a limit of 0 allows no
turn), ``warning`` once it reaches ``warnAt`` of one. :func:`due_notices` says which
of the two events are still owed in a window, each at most once per window.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY_SECONDS = 86400.0
DEFAULT_WARN_AT = 0.8
SWARM = "*"
"""The ledger's scope key of the swarm-wide budget (no agent name starts with ``*``); JSON
says ``"scope": "swarm"``, an agent's standing ``"scope": "agent"`` and its ``"agent"``."""


class BudgetError(ValueError):
    """A budget document or an extension is malformed; ``field`` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """One budget per UTC day: ``usd_per_day`` dollars, ``tokens_per_day`` tokens (None: no
    limit on that), ``warn_at`` the fraction (0 < f <= 1) that raises a warning,
    ``usd_per_turn`` the cap handed to each claude run (agents only)."""

    usd_per_day: float | None = None
    tokens_per_day: int | None = None
    warn_at: float = DEFAULT_WARN_AT
    usd_per_turn: float | None = None
    """A cap on one turn (``claude --max-budget-usd``); not a window limit."""

    @property
    def empty(self) -> bool:
        """True when neither dollars nor tokens are limited."""
        return self.usd_per_day is None and self.tokens_per_day is None

    @classmethod
    def from_doc(cls, doc: Any, field: str = "budget") -> Limits | None:
        """``{usdPerDay, tokensPerDay, warnAt, usdPerTurn}`` (schema-valid or not) → ``Limits``;
        None for an absent or empty budget. Raises :class:`BudgetError` naming the field."""
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise BudgetError("must be a mapping", field)
        usd = doc.get("usdPerDay")
        tokens = doc.get("tokensPerDay")
        warn = doc.get("warnAt", DEFAULT_WARN_AT)
        if usd is not None and (
            isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 <= usd < math.inf
        ):
            raise BudgetError("must be a number >= 0", f"{field}.usdPerDay")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or tokens < 0):  # fmt: skip
            raise BudgetError("must be an integer >= 0", f"{field}.tokensPerDay")
        if isinstance(warn, bool) or not isinstance(warn, int | float) or not 0 < warn <= 1:
            raise BudgetError("must be a number in (0, 1]", f"{field}.warnAt")
        per_turn = doc.get("usdPerTurn")
        if per_turn is not None and (
            isinstance(per_turn, bool)
            or not isinstance(per_turn, int | float)
            or not 0 < per_turn < math.inf
        ):
            raise BudgetError("must be a number > 0", f"{field}.usdPerTurn")
        limits = cls(
            float(usd) if usd is not None else None,
            int(tokens) if tokens is not None else None,
            float(warn),
            float(per_turn) if per_turn is not None else None,
        )
        return None if limits.empty and limits.usd_per_turn is None else limits

    def to_json(self) -> dict[str, Any]:
        """The manifest spelling: ``{"usdPerDay", "tokensPerDay", "warnAt", "usdPerTurn"}``
        (unset left out)."""
        out: dict[str, Any] = {"warnAt": self.warn_at}
        if self.usd_per_day is not None:
            out["usdPerDay"] = self.usd_per_day
        if self.tokens_per_day is not None:
            out["tokensPerDay"] = self.tokens_per_day
        if self.usd_per_turn is not None:
            out["usdPerTurn"] = self.usd_per_turn
        return out


@dataclass(frozen=True)
class Window:
    """A half-open interval ``[start, end)`` of unix seconds; ``key`` names it (``2026-12-07``)."""

    start: float
    end: float
    key: str

    def contains(self, t: float) -> bool:
        """True when ``t`` (unix seconds) falls in the window."""
        return self.start <= t < self.end


def day_window(t: float) -> Window:
    """The UTC day holding ``t`` (unix seconds)."""
    start = math.floor(t / DAY_SECONDS) * DAY_SECONDS
    key = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
    return Window(start, start + DAY_SECONDS, key)


@dataclass(frozen=True)
class Spend:
    """What was spent: ``usd`` dollars, ``tokens`` (input + output + cache writes), ``turns``."""

    usd: float = 0.0
    tokens: int = 0
    turns: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.usd + other.usd, self.tokens + other.tokens, self.turns + other.turns)


@dataclass(frozen=True)
class Extension:
    """One-off additions to a window's limits (sums of every grant in that window)."""

    usd: float = 0.0
    tokens: int = 0
    grants: int = 0

    def __add__(self, other: Extension) -> Extension:
        return Extension(
            self.usd + other.usd, self.tokens + other.tokens, self.grants + other.grants
        )


MAX_EXTENSION_USD = 1_000_000.0
MAX_EXTENSION_TOKENS = 10**12


def check_extension(usd: Any, tokens: Any = 0) -> Extension:
    """A grant of ``usd`` dollars and ``tokens`` tokens → ``Extension``. Both >= 0, at
    least one > 0, finite and not absurd. Raises :class:`BudgetError` naming the field."""
    if (
        isinstance(usd, bool)
        or not isinstance(usd, int | float)
        or not (0 <= usd <= MAX_EXTENSION_USD)
    ):
        raise BudgetError(f"must be a number from 0 to {MAX_EXTENSION_USD:.0f}", "usd")
    if (
        isinstance(tokens, bool)
        or not isinstance(tokens, int)
        or not (0 <= tokens <= MAX_EXTENSION_TOKENS)
    ):
        raise BudgetError(f"must be an integer from 0 to {MAX_EXTENSION_TOKENS}", "tokens")
    if usd == 0 and tokens == 0:
        raise BudgetError("an extension must add dollars or tokens", "usd")
    return Extension(float(usd), int(tokens), 1)


class Level(enum.StrEnum):
    """Where spend stands against a budget."""

    UNLIMITED = "unlimited"
    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


@dataclass(frozen=True)
class Standing:
    """One scope (an agent, or ``swarm``) in one window: its limits, spend, extension and
    the resulting ``level``. ``usd_limit`` / ``tokens_limit`` include the extension;
    ``fraction`` is the larger of spend / limit over the limited dimensions (None: no limit).
    """

    scope: str
    window: Window
    limits: Limits | None
    spend: Spend
    extension: Extension
    level: Level
    usd_limit: float | None
    tokens_limit: int | None
    fraction: float | None

    @property
    def exceeded(self) -> bool:
        """True when no new turn may start."""
        return self.level is Level.EXCEEDED

    def message(self) -> str:
        """One line for conditions, events and the CLI: spend, limit, window, extension."""
        who = "the swarm" if self.scope == SWARM else self.scope
        parts: list[str] = []
        if self.usd_limit is not None:
            parts.append(f"${self.spend.usd:.4f} of ${self.usd_limit:.4f}")
        if self.tokens_limit is not None:
            parts.append(f"{self.spend.tokens} of {self.tokens_limit} tokens")
        if not parts:
            parts.append(f"${self.spend.usd:.4f} (no limit)")
        ext = ""
        if self.extension.grants:
            bits = []
            if self.extension.usd:
                bits.append(f"${self.extension.usd:.4f}")
            if self.extension.tokens:
                bits.append(f"{self.extension.tokens} tokens")
            ext = f" (limit includes an extension of {' + '.join(bits)})"
        text = f"{who} spent {', '.join(parts)} on UTC day {self.window.key}{ext}"
        if self.exceeded:
            end = datetime.fromtimestamp(self.window.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            text += f"; no new turn until {end} or an extension"
        return text

    def to_json(self) -> dict[str, Any]:
        """``{"scope": "agent" | "swarm", "agent": name | None, "window", "window_start",
        "window_end", "level", "spent_usd", "spent_tokens", "turns", "limit_usd",
        "limit_tokens", "extension_usd", "extension_tokens", "extensions", "fraction",
        "warn_at", "budget", "message"}``."""
        out: dict[str, Any] = {
            "scope": "swarm" if self.scope == SWARM else "agent",
            "agent": None if self.scope == SWARM else self.scope,
            "window": self.window.key,
            "window_start": self.window.start,
            "window_end": self.window.end,
            "level": self.level.value,
            "spent_usd": round(self.spend.usd, 6),
            "spent_tokens": self.spend.tokens,
            "turns": self.spend.turns,
            "limit_usd": None if self.usd_limit is None else round(self.usd_limit, 6),
            "limit_tokens": self.tokens_limit,
            "extension_usd": round(self.extension.usd, 6),
            "extension_tokens": self.extension.tokens,
            "extensions": self.extension.grants,
            "fraction": None if self.fraction is None else round(self.fraction, 4),
            "warn_at": None if self.limits is None else self.limits.warn_at,
            "budget": None if self.limits is None else self.limits.to_json(),
            "message": self.message(),
        }
        return out


def _ratio(spent: float, limit: float) -> float:
    if limit <= 0:
        return math.inf if spent > 0 else 1.0  # a zero limit is always reached
    return spent / limit


def assess(
    scope: str,
    limits: Limits | None,
    spend: Spend,
    window: Window,
    extension: Extension | None = None,
) -> Standing:
    """Fold ``limits`` + ``extension`` and ``spend`` into a :class:`Standing`.

    Exceeded when spend has reached a limit (``>=``: the turn that reached it ran, the
    next does not start); warning when it has reached ``warn_at`` of a limit.
    """
    ext = extension or Extension()
    if limits is None or limits.empty:
        return Standing(scope, window, None, spend, ext, Level.UNLIMITED, None, None, None)
    usd_limit = None if limits.usd_per_day is None else limits.usd_per_day + ext.usd
    tok_limit = None if limits.tokens_per_day is None else limits.tokens_per_day + ext.tokens
    ratios: list[float] = []
    if usd_limit is not None:
        ratios.append(_ratio(spend.usd, usd_limit))
    if tok_limit is not None:
        ratios.append(_ratio(float(spend.tokens), float(tok_limit)))
    fraction = max(ratios)
    if fraction >= 1.0:
        level = Level.EXCEEDED
    elif fraction >= limits.warn_at:
        level = Level.WARNING
    else:
        level = Level.OK
    return Standing(scope, window, limits, spend, ext, level, usd_limit, tok_limit, fraction)


NOTICE_WARNING = "BudgetWarning"
NOTICE_EXCEEDED = "BudgetExceeded"


def due_notices(standing: Standing, sent: frozenset[str]) -> tuple[str, ...]:
    """The notices (``BudgetWarning``, ``BudgetExceeded``) owed for ``standing`` that were not
    yet ``sent`` in its window — each at most once per window. Crossing straight past the
    warning fraction to the limit owes only ``BudgetExceeded`` (the warning would be stale);
    the caller records both as sent."""
    if standing.level is Level.EXCEEDED:
        return () if NOTICE_EXCEEDED in sent else (NOTICE_EXCEEDED,)
    if standing.level is Level.WARNING:
        return () if (NOTICE_WARNING in sent or NOTICE_EXCEEDED in sent) else (NOTICE_WARNING,)
    return ()


def notice_event(kind: str, standing: Standing) -> dict[str, Any]:
    """The typed event (``events.schema.json`` ``BudgetWarning`` / ``BudgetExceeded``)."""
    event: dict[str, Any] = {
        "type": kind,
        "scope": "swarm" if standing.scope == SWARM else "agent",
        "window": standing.window.key,
        "spent_usd": round(standing.spend.usd, 6),
        "spent_tokens": standing.spend.tokens,
        "note": standing.message(),
    }
    if standing.scope != SWARM:
        event["agent"] = standing.scope
    if standing.usd_limit is not None:
        event["limit_usd"] = round(standing.usd_limit, 6)
    if standing.tokens_limit is not None:
        event["limit_tokens"] = standing.tokens_limit
    return event


def hold_message(own: Standing, swarm: Standing | None) -> str | None:
    """Why an agent may not start a turn (``None``: it may): its own budget, or the swarm's."""
    reasons = [s.message() for s in (own, swarm) if s is not None and s.exceeded]
    return "; ".join(reasons) if reasons else None
