"""Turn stats across the swarm: load every agent's turn rows, summarise, render.

Each harness writes one row per turn to
``<state>/agents/<agent>/state/hyperhive-turn-stats.sqlite`` (table ``turns``; the
columns are documented in docs/turn-loop.md). The controller reads them
read-only and never imports the harness: the columns are taken from the file, and
a column that an older harness did not write reads as missing (0 / ``None``).

:func:`load_rows` → :func:`summarise` (pure: per agent, per model or per deployed
meta commit — turns, ok / failed / cancelled / prompt_too_long counts, tokens,
cost, tool calls, p50 / p95 duration) → :func:`render_stats` (a text table) or
:func:`stats_json`. ``hyperhive stats [NAME] [--by agent|model|commit] [-o json]``
is these three calls.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller.agentfile import sqlite_snapshot
from controller.paths import Layout

log = logging.getLogger(__name__)

STATS_DB = "hyperhive-turn-stats.sqlite"
GROUPINGS = ("agent", "model", "commit")
RESULT_KINDS = ("ok", "failed", "cancelled", "prompt_too_long")
NONE_KEY = "(none)"


@dataclass(frozen=True)
class TurnRecord:
    """One turn of one agent, as far as the stats need it (times unix s, durations ms)."""

    agent: str
    model: str
    result_kind: str
    started_at: float
    duration_ms: int
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    tool_breakdown: dict[str, int] = field(default_factory=dict)
    meta_commit: str | None = None
    wake_from: str | None = None

    @classmethod
    def from_row(cls, agent: str, row: dict[str, Any]) -> TurnRecord:
        """Build from a ``turns`` row (a dict of column → value); missing columns are 0 / None."""

        def num(key: str) -> int:
            v = row.get(key)
            return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0

        cost = row.get("cost_usd")
        started = row.get("started_at")
        try:
            tools = json.loads(row.get("tool_breakdown") or "{}")
        except (TypeError, ValueError):
            tools = {}
        breakdown = (
            {str(k): int(v) for k, v in tools.items() if isinstance(v, int)}
            if isinstance(tools, dict)
            else {}
        )
        commit = row.get("meta_commit")
        wake = row.get("wake_from")
        return cls(
            agent=agent,
            model=str(row.get("model") or "?"),
            result_kind=str(row.get("result_kind") or "?"),
            started_at=float(started) if isinstance(started, int | float) else 0.0,
            duration_ms=num("duration_ms"),
            input_tokens=num("input_tokens"),
            output_tokens=num("output_tokens"),
            cache_read_tokens=num("cache_read_tokens"),
            cache_creation_tokens=num("cache_creation_tokens"),
            cost_usd=float(cost) if isinstance(cost, int | float) else 0.0,
            tool_calls=num("tool_calls"),
            tool_breakdown=breakdown,
            meta_commit=commit if isinstance(commit, str) and commit else None,
            wake_from=wake if isinstance(wake, str) else None,
        )


def stats_files(layout: Layout, agents: Iterable[str] | None = None) -> dict[str, Path]:
    """``{agent: path}`` of every turn-stats file that exists (only ``agents`` when given)."""
    wanted = set(agents) if agents is not None else None
    out: dict[str, Path] = {}
    for path in sorted(layout.state.glob(f"agents/*/state/{STATS_DB}")):
        agent = path.parent.parent.name
        if path.is_file() and (wanted is None or agent in wanted):
            out[agent] = path
    return out


def read_turns(path: Path, agent: str, since: float | None = None) -> list[TurnRecord]:
    """The ``turns`` rows of one file, oldest first, opened read-only.

    A file without the table gives ``[]``; sqlite errors are raised. The agent writes the
    file: it is read from a private copy (``controller.agentfile``), and a symlink, FIFO or
    huge file gives ``[]``.
    """
    with sqlite_snapshot(path) as con:
        if con is None:
            return []
        con.row_factory = sqlite3.Row
        has = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'turns'"
        ).fetchone()
        if not has:
            return []
        if since is None:
            cur = con.execute("SELECT * FROM turns ORDER BY started_at, rowid")
        else:
            cur = con.execute(
                "SELECT * FROM turns WHERE started_at >= ? ORDER BY started_at, rowid", (since,)
            )
        return [TurnRecord.from_row(agent, dict(r)) for r in cur.fetchall()]


def load_rows(
    layout: Layout, agents: Iterable[str] | None = None, since: float | None = None
) -> list[TurnRecord]:
    """Every agent's turns (only ``agents`` when given; only turns started at or after ``since``),
    sorted by start time. An unreadable file is logged and skipped."""
    rows: list[TurnRecord] = []
    for agent, path in stats_files(layout, agents).items():
        try:
            rows.extend(read_turns(path, agent, since))
        except (sqlite3.Error, OSError) as exc:  # OSError: the private copy (agentfile)
            log.warning("turn stats: cannot read %s: %s", path, exc)
    rows.sort(key=lambda r: (r.started_at, r.agent))
    return rows


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0-100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


@dataclass
class Summary:
    """Figures of one group of turns (``key``: the agent, model or commit)."""

    key: str
    turns: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_too_long: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    first_at: float | None = None
    last_at: float | None = None
    agents: list[str] = field(default_factory=list)
    tools: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON object."""
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 6)
        return d


def group_key(row: TurnRecord, by: str) -> str:
    """The group ``row`` belongs to: its agent, model, or meta commit (first 12 hex digits)."""
    if by == "agent":
        return row.agent
    if by == "model":
        return row.model
    if by == "commit":
        return row.meta_commit[:12] if row.meta_commit else NONE_KEY
    raise ValueError(f"by: must be one of {list(GROUPINGS)}, got {by!r}")


def _fold(key: str, rows: Sequence[TurnRecord]) -> Summary:
    s = Summary(key)
    durations: list[float] = []
    agents: set[str] = set()
    tools: dict[str, int] = {}
    for r in rows:
        s.turns += 1
        if r.result_kind in RESULT_KINDS:
            setattr(s, r.result_kind, getattr(s, r.result_kind) + 1)
        s.input_tokens += r.input_tokens
        s.output_tokens += r.output_tokens
        s.cache_read_tokens += r.cache_read_tokens
        s.cache_creation_tokens += r.cache_creation_tokens
        s.cost_usd += r.cost_usd
        s.tool_calls += r.tool_calls
        durations.append(float(r.duration_ms))
        agents.add(r.agent)
        for name, n in r.tool_breakdown.items():
            tools[name] = tools.get(name, 0) + n
        s.first_at = r.started_at if s.first_at is None else min(s.first_at, r.started_at)
        s.last_at = r.started_at if s.last_at is None else max(s.last_at, r.started_at)
    s.p50_ms = percentile(durations, 50)
    s.p95_ms = percentile(durations, 95)
    s.agents = sorted(agents)
    s.tools = dict(sorted(tools.items(), key=lambda kv: (-kv[1], kv[0])))
    return s


def summarise(rows: Iterable[TurnRecord], by: str = "agent") -> list[Summary]:
    """One :class:`Summary` per group. Order: agents by name, models by turns (most first),
    commits by when they first ran (oldest first — the deploy history)."""
    if by not in GROUPINGS:
        raise ValueError(f"by: must be one of {list(GROUPINGS)}, got {by!r}")
    groups: dict[str, list[TurnRecord]] = {}
    for r in rows:
        groups.setdefault(group_key(r, by), []).append(r)
    out = [_fold(k, v) for k, v in groups.items()]
    if by == "agent":
        out.sort(key=lambda s: s.key)
    elif by == "model":
        out.sort(key=lambda s: (-s.turns, s.key))
    else:
        out.sort(key=lambda s: (s.first_at or 0.0, s.key))
    return out


def total(rows: Iterable[TurnRecord]) -> Summary:
    """All rows folded into one summary (key ``total``)."""
    return _fold("total", list(rows))


def stats_json(rows: Sequence[TurnRecord], by: str = "agent") -> dict[str, Any]:
    """``{"by", "groups": [Summary...], "total": Summary}`` — the ``-o json`` output."""
    return {
        "by": by,
        "groups": [s.to_json() for s in summarise(rows, by)],
        "total": total(rows).to_json(),
    }


def fmt_tokens(n: int) -> str:
    """``950`` / ``12.3k`` / ``4.56M``."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(n)


def fmt_ms(ms: float | None) -> str:
    """``-`` / ``850ms`` / ``4.2s`` / ``3m05s``."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    m, s = divmod(round(ms / 1000), 60)
    return f"{m}m{s:02d}s"


def render_stats(rows: Sequence[TurnRecord], by: str = "agent") -> str:
    """A text table: one line per group, then a total line. ``by``: agent / model / commit."""
    groups = summarise(rows, by)
    if not groups:
        return "no turns recorded yet\n"
    head = [by.upper(), "TURNS", "OK", "FAILED", "CANCELLED", "PTL", "IN", "OUT",
            "CACHE-R", "CACHE-W", "COST", "TOOLS", "P50", "P95"]  # fmt: skip

    def cells(s: Summary) -> list[str]:
        return [
            s.key, str(s.turns), str(s.ok), str(s.failed), str(s.cancelled),
            str(s.prompt_too_long), fmt_tokens(s.input_tokens), fmt_tokens(s.output_tokens),
            fmt_tokens(s.cache_read_tokens), fmt_tokens(s.cache_creation_tokens),
            f"${s.cost_usd:.4f}", str(s.tool_calls), fmt_ms(s.p50_ms), fmt_ms(s.p95_ms),
        ]  # fmt: skip

    table = [head, *(cells(s) for s in groups)]
    if len(groups) > 1:
        table.append(cells(total(rows)))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]

    def line(r: list[str]) -> str:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [line(r) for r in table]
    if len(groups) > 1:
        out.insert(len(out) - 1, "-" * len(out[0]))
    return "\n".join(out) + "\n"
