"""Turn series, read at scrape time from the turn stats every harness already records.

Each harness appends one row per turn to ``<state>/agents/<a>/state/hyperhive-turn-stats.sqlite``
(``controller.stats`` reads the same files for ``hyperhive stats``). :class:`TurnCollector`
folds each file's rows into running sums once: a scrape ``stat``s each file and its WAL and
reads only the rows added since the last scrape (``id > last``), so 200 agents that did
nothing cost 400 ``stat`` calls, not 200 sqlite opens (the files are listed again when an
agent directory comes or goes, and every 10 s for an agent's first file). A file that was
replaced (its rows went backwards, or it was purged) is folded again from the start.

Series (labels ``agent``, ``model``, ``outcome`` = ok / failed / cancelled /
prompt_too_long, ``type``, ``tool``): ``hyperhive_turns_total``,
``hyperhive_turn_duration_seconds{model}`` (a histogram per model over every agent: per
agent and model it would be 13 series each), ``hyperhive_turn_seconds_total{agent,model}``
(time spent in turns), ``hyperhive_turn_tokens_total``
(``type`` = input / output / cache_read / cache_write), ``hyperhive_turn_cost_usd_total``,
``hyperhive_turn_compactions_total``, ``hyperhive_turn_tool_calls_total``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.agentfile import sqlite_snapshot
from controller.metrics.events import render
from controller.paths import Layout
from controller.stats import RESULT_KINDS, STATS_DB, TurnRecord, stats_files

log = logging.getLogger(__name__)

RELIST_SECONDS = 10.0
"""How long a listing of the turn-stats files is trusted while no agent directory changed."""
TURN_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Turn durations in seconds: a short reply takes seconds, a long task half an hour."""
TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_creation_tokens"),
)


@dataclass
class _ModelSums:
    """Running sums of one agent's turns on one model."""

    outcomes: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(TURN_BUCKETS) + 1))
    duration_sum: float = 0.0


@dataclass
class _FileSums:
    """Everything folded from one agent's file so far."""

    key: tuple[int, ...] = ()
    last_id: int = 0
    models: dict[str, _ModelSums] = field(default_factory=dict)
    tools: dict[str, int] = field(default_factory=dict)
    compactions: int = 0

    def fold(self, rec: TurnRecord, compactions: int) -> None:
        """Add one turn. The agent writes its file, so what becomes a label is bounded
        (``_label``: at most ``MAX_MODELS`` models and ``MAX_TOOLS`` tools per agent, the
        rest ``other``; outcomes outside ``RESULT_KINDS`` are ``other``) and what is summed
        into a counter is never negative, NaN or infinite (a counter only goes up)."""
        m = self.models.setdefault(_label(rec.model, self.models, MAX_MODELS), _ModelSums())
        outcome = rec.result_kind if rec.result_kind in RESULT_KINDS else OTHER
        m.outcomes[outcome] = m.outcomes.get(outcome, 0) + 1
        for label, attr in TOKEN_TYPES:
            m.tokens[label] = m.tokens.get(label, 0) + _count(getattr(rec, attr))
        m.cost_usd += _amount(rec.cost_usd)
        seconds = _count(rec.duration_ms) / 1000.0
        m.buckets[bisect.bisect_left(TURN_BUCKETS, seconds)] += 1
        m.duration_sum += seconds
        for tool, n in rec.tool_breakdown.items():
            key = _label(tool, self.tools, MAX_TOOLS)
            self.tools[key] = self.tools.get(key, 0) + _count(n)
        self.compactions += _count(compactions)


MAX_MODELS = 16
"""Distinct ``model`` label values per agent; later ones are counted as ``other``."""
MAX_TOOLS = 64
"""Distinct ``tool`` label values per agent; later ones are counted as ``other``."""
MAX_LABEL = 120
"""Longest label value kept (characters); a longer one is ``other``."""
OTHER = "other"


def _label(value: str, seen: Mapping[str, object], cap: int) -> str:
    """``value`` as a label: itself when already seen, or new, short and under ``cap``
    distinct values (``other`` taken into account); else ``other``."""
    if value in seen:
        return value
    if len(value) > MAX_LABEL or len(seen) >= cap - 1:
        return OTHER
    return value


def _count(value: int) -> int:
    """``value`` for a counter: 0 when negative, capped at 2**53."""
    return min(max(0, value), 1 << 53)


def _amount(value: float) -> float:
    """``value`` for a counter: 0.0 when negative, NaN or infinite; capped at 1e12."""
    return min(value, 1e12) if math.isfinite(value) and value > 0 else 0.0


def _stat_key(path: Path) -> tuple[int, ...] | None:
    """What changes when the file gains rows: inode, size and mtime of the file and its WAL."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        wal = os.stat(f"{path}-wal")
        w: tuple[int, ...] = (wal.st_size, wal.st_mtime_ns)
    except OSError:
        w = (-1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns, *w)


def _rows(con: sqlite3.Connection, agent: str, after: int) -> Iterator[tuple[int, TurnRecord, int]]:
    """``(id, record, compactions)`` of every ``turns`` row with ``id > after``, oldest
    first, streamed (a file may hold millions of rows)."""
    con.row_factory = sqlite3.Row
    for r in con.execute("SELECT * FROM turns WHERE id > ? ORDER BY id", (after,)):
        row = dict(r)
        comp = row.get("compactions")
        if isinstance(row.get("id"), int):
            compactions = max(0, min(comp, 1 << 32)) if isinstance(comp, int) else 0
            yield int(row["id"]), TurnRecord.from_row(agent, row), compactions


class TurnCollector(Collector):
    """The turn series of every agent's turn-stats file under ``layout`` (see the module doc).

    Thread-safe (scrapes may overlap). An unreadable file keeps its last sums and is logged.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._lock = threading.Lock()
        self._files: dict[str, _FileSums] = {}
        self._rendered: tuple[object, bytes] | None = None
        self._listed: tuple[int, float, dict[str, Path]] | None = None

    def _found(self) -> dict[str, Path]:
        """The turn-stats files: listed again when an agent directory came or went, or
        :data:`RELIST_SECONDS` after the last listing (an agent's first turn makes its
        file), else the last listing (a file that went is skipped by its ``stat``)."""
        try:
            mtime = os.stat(self.layout.state / "agents").st_mtime_ns
        except OSError:
            mtime = -1
        now = time.monotonic()
        listed = self._listed
        if listed is None or listed[0] != mtime or now - listed[1] >= RELIST_SECONDS:
            listed = (mtime, now, stats_files(self.layout))
            self._listed = listed
        return listed[2]

    def refresh(self) -> dict[str, _FileSums]:
        """Fold what was added since the last call; returns the sums per agent."""
        with self._lock:
            found = self._found()
            for gone in set(self._files) - set(found):
                del self._files[gone]
            for agent, path in found.items():
                key = _stat_key(path)
                sums = self._files.get(agent)
                if key is None:  # purged since the listing
                    self._files.pop(agent, None)
                    continue
                if sums is not None and sums.key == key:
                    continue
                if sums is None or sums.key[:1] != key[:1]:
                    sums = _FileSums()
                try:
                    fresh = self._fold(path, agent, sums)
                except (sqlite3.Error, OSError) as exc:
                    log.warning("metrics: cannot read turn stats %s: %s", path, exc)
                    continue
                fresh.key = key
                self._files[agent] = fresh
            return dict(self._files)

    @staticmethod
    def _fold(path: Path, agent: str, sums: _FileSums) -> _FileSums:
        """Fold the rows added since ``sums``. The agent writes the file: it is read from a
        private copy (``controller.agentfile``: no symlink, FIFO or huge file); one that
        is refused adds nothing."""
        with sqlite_snapshot(path) as con:
            if con is None:
                return sums
            has = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'turns'"
            ).fetchone()
            if not has:
                return sums
            top = con.execute("SELECT COALESCE(MAX(id), 0) FROM turns").fetchone()[0]
            if isinstance(top, int) and top < sums.last_id:
                sums = _FileSums()  # the file restarted from scratch
            for id_, rec, comp in _rows(con, agent, sums.last_id):
                sums.fold(rec, comp)
                sums.last_id = max(sums.last_id, id_)
        return sums

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (the registry asks once)."""
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        """The families with one sample set per agent and model."""
        return list(self._families(self.refresh()))

    def render(self) -> bytes:
        """:meth:`collect` in the text format, rendered again only when a file changed."""
        files = self.refresh()
        key = tuple((a, f.key) for a, f in sorted(files.items()))
        cached = self._rendered
        if cached is not None and cached[0] == key:
            return cached[1]
        text = render(self._families(files))
        self._rendered = (key, text)
        return text

    @staticmethod
    def _families(files: dict[str, _FileSums]) -> Iterator[Metric]:
        turns = CounterMetricFamily(
            "hyperhive_turns",
            "Turns per agent, model and outcome.",
            labels=["agent", "model", "outcome"],
        )
        duration = HistogramMetricFamily(
            "hyperhive_turn_duration_seconds",
            "Turn duration per model, over every agent (claude run, compaction and retry "
            "included).",
            labels=["model"],
        )
        busy = CounterMetricFamily(
            "hyperhive_turn_seconds",
            "Seconds spent in turns per agent and model (its rate is how busy the agent is).",
            labels=["agent", "model"],
        )
        tokens = CounterMetricFamily(
            "hyperhive_turn_tokens",
            "Tokens per agent, model and type (input, output, cache_read, cache_write).",
            labels=["agent", "model", "type"],
        )
        cost = CounterMetricFamily(
            "hyperhive_turn_cost_usd",
            "Cost claude reported, in US dollars.",
            labels=["agent", "model"],
        )
        compactions = CounterMetricFamily(
            "hyperhive_turn_compactions", "Context compactions per agent.", labels=["agent"]
        )
        tools = CounterMetricFamily(
            "hyperhive_turn_tool_calls", "Tool calls per agent and tool.", labels=["agent", "tool"]
        )
        per_model: dict[str, tuple[list[int], list[float]]] = {}
        for agent in sorted(files):
            f = files[agent]
            for model in sorted(f.models):
                m = f.models[model]
                for outcome in sorted(m.outcomes):
                    turns.add_metric([agent, model, outcome], m.outcomes[outcome])
                for label, _ in TOKEN_TYPES:
                    tokens.add_metric([agent, model, label], m.tokens.get(label, 0))
                cost.add_metric([agent, model], m.cost_usd)
                busy.add_metric([agent, model], m.duration_sum)
                per = per_model.setdefault(model, ([0] * len(m.buckets), [0.0]))
                for i, n in enumerate(m.buckets):
                    per[0][i] += n
                per[1][0] += m.duration_sum
            compactions.add_metric([agent], f.compactions)
            for tool in sorted(f.tools):
                tools.add_metric([agent, tool], f.tools[tool])
        for model in sorted(per_model):
            buckets, total = per_model[model]
            cumulative, acc = [], 0
            for bound, n in zip((*TURN_BUCKETS, float("inf")), buckets, strict=True):
                acc += n
                cumulative.append((_bound(bound), acc))
            duration.add_metric([model], cumulative, total[0])
        yield from (turns, duration, busy, tokens, cost, compactions, tools)


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


__all__ = ["STATS_DB", "TURN_BUCKETS", "TurnCollector"]
