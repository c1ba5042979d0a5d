"""The agent's event bus: a durable sqlite log plus live state, feeding the web UI.

Every event — parsed stream-json lines, turn boundaries, notes, state changes —
is appended to ``<state>/hyperhive-events.sqlite`` (WAL) and gets a
monotonically increasing ``id``. Subscribers (the SSE endpoint) follow the log
with :meth:`EventLog.wait`, so history backfill, live tail and
``Last-Event-ID`` resume are one code path. Retention is the host's job (the
controller sweeps the file); the harness only appends.

Event JSON (``Event.to_json``)::

    {"id": 42, "ts": 1795342504.33, "kind": "tool_use", "turn": 7, "data": {...}}

``ts`` is unix seconds. Kinds: the stream kinds of ``harness.stream``
(``system_init``, ``assistant_text``, ``tool_use``, ``tool_result``,
``user_text``, ``system``, ``result``, ``unknown``) plus ``turn_start``,
``turn_end``, ``note``, ``turn_state_changed``, ``model_changed``,
``token_usage_changed``, ``status_changed``, ``login``.

Live-only events (:meth:`EventLog.publish`: model text as it streams, ``text_delta``)
are not stored: they reach the subscribers that are connected at that moment
(without an ``id``, so they do not move a ``Last-Event-ID`` resume point) and
are superseded by the stored ``assistant_text`` of the same block.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.stream import Usage

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    ts    REAL    NOT NULL,
    kind  TEXT    NOT NULL,
    turn  INTEGER,
    data  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_turn ON events(turn);
"""

#: Live-only events kept in memory for subscribers that are a little behind.
LIVE_KEEP = 2000
#: Streaming text kept per block for late subscribers (the stored text is complete anyway).
MAX_PARTIAL_CHARS = 200_000


@dataclass(frozen=True)
class Event:
    """One logged event. ``ts`` is unix seconds; ``turn`` the turn number or ``None``."""

    id: int
    ts: float
    kind: str
    turn: int | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"id", "ts", "kind", "turn", "data"}``."""
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "turn": self.turn,
            "data": self.data,
        }


def connect(path: Path | None) -> sqlite3.Connection:
    """Open ``path`` in WAL mode (``None``: in memory), usable from any thread behind a lock."""
    target = ":memory:" if path is None else str(path)
    conn = sqlite3.connect(target, check_same_thread=False, timeout=10.0, isolation_level=None)
    if path is not None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class EventLog:
    """Append-only event log in sqlite; thread-safe; waiters wake on every append.

    If ``path`` cannot be opened the log falls back to memory (events still flow
    to live subscribers, nothing survives a restart) and says so in the log.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        try:
            self._db = connect(path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            log.error("cannot open event log %s (%s); keeping events in memory only", path, exc)
            self.path = None
            self._db = connect(None)
            self._db.executescript(_SCHEMA)
        row = self._db.execute(
            "SELECT COALESCE(MAX(id), 0), COALESCE(MAX(turn), 0) FROM events"
        ).fetchone()
        # ids never go back, even when the host's retention sweep deleted every row
        seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_id = max(int(row[0]), int(seq[0]) if seq else 0)
        self._max_turn = int(row[1])
        self._closed = False
        # live-only events: (sequence number, id of the newest stored event at publish time, event)
        self._live: collections.deque[tuple[int, int, Event]] = collections.deque(maxlen=LIVE_KEEP)
        self._live_seq = 0
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever waiters are woken (append, publish, notify, close).

        ``fn`` runs on the writer's thread with the log's lock held: it must only hand the
        news on (``loop.call_soon_threadsafe``), never block or call back into the log.
        This is how asyncio code follows the log without a thread per follower.
        """
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        """Undo :meth:`add_listener` (no error when ``fn`` is not registered)."""
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _wake_all(self) -> None:
        """``notify_all`` plus the listeners; the caller holds ``_cond``."""
        self._cond.notify_all()
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # a listener must never break a writer
                log.exception("event log listener failed")

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 when empty)."""
        with self._lock:
            return self._last_id

    def ensure_turn_at_least(self, turn: int) -> None:
        """Never hand out a turn number ``<= turn`` (the turn-stats table remembers turns whose
        events the host's retention sweep already deleted)."""
        with self._lock:
            self._max_turn = max(self._max_turn, turn)

    @property
    def live_seq(self) -> int:
        """The sequence number of the newest live-only event (0 when none was published)."""
        with self._lock:
            return self._live_seq

    def publish(self, kind: str, data: dict[str, Any], turn: int | None = None) -> Event:
        """Hand a live-only event (``id`` 0, not stored) to the connected subscribers."""
        with self._cond:
            self._live_seq += 1
            ev = Event(0, self._clock(), kind, turn, data)
            self._live.append((self._live_seq, self._last_id, ev))
            self._wake_all()
        return ev

    def live_since(self, after_seq: int) -> list[tuple[int, int, Event]]:
        """Live-only events newer than ``after_seq``: ``(seq, anchor id, event)``, oldest first.

        Only the newest ``LIVE_KEEP`` are kept; a subscriber that fell further behind
        misses some (the stored ``assistant_text`` still brings the whole text).
        """
        with self._lock:
            return [x for x in self._live if x[0] > after_seq]

    def next_turn(self) -> int:
        """Allocate the next turn number (1 + the largest seen, persisted through events)."""
        with self._lock:
            self._max_turn += 1
            return self._max_turn

    def append(self, kind: str, data: dict[str, Any], turn: int | None = None) -> Event:
        """Store one event and wake every waiter. ``data`` must be JSON-serialisable."""
        payload = json.dumps(data, default=str, separators=(",", ":"))
        with self._cond:
            ts = self._clock()
            eid = self._last_id + 1
            if self._closed:  # shutting down: nothing is stored any more
                return Event(eid, ts, kind, turn, json.loads(payload))
            row = (eid, ts, kind, turn, payload)
            try:
                self._db.execute(
                    "INSERT INTO events(id, ts, kind, turn, data) VALUES (?, ?, ?, ?, ?)", row
                )
            except sqlite3.Error as exc:  # disk full, file removed: keep going in memory
                log.error("event log write failed (%s); switching to memory", exc)
                self._db = connect(None)
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT INTO events(id, ts, kind, turn, data) VALUES (?, ?, ?, ?, ?)", row
                )
            self._last_id = eid
            if turn is not None and turn > self._max_turn:
                self._max_turn = turn
            self._wake_all()
        return Event(eid, ts, kind, turn, json.loads(payload))

    @staticmethod
    def _rows(rows: list[tuple[Any, ...]]) -> list[Event]:
        return [Event(int(r[0]), float(r[1]), str(r[2]), r[3], json.loads(r[4])) for r in rows]

    def since(self, after_id: int, limit: int = 500) -> list[Event]:
        """Events with ``id > after_id``, oldest first, at most ``limit`` (none once closed)."""
        with self._lock:
            if self._closed:
                return []
            rows = self._db.execute(
                "SELECT id, ts, kind, turn, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return self._rows(rows)

    def page(self, before: int | None = None, limit: int = 200) -> list[Event]:
        """The ``limit`` newest events with ``id < before`` (all when ``None``), oldest first."""
        with self._lock:
            if self._closed:
                return []
            rows = self._db.execute(
                "SELECT id, ts, kind, turn, data FROM events WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before if before is not None else 2**62, limit),
            ).fetchall()
        return self._rows(rows[::-1])

    def last_of(self, kind: str) -> Event | None:
        """The newest event of ``kind``, if any."""
        with self._lock:
            if self._closed:
                return None
            row = self._db.execute(
                "SELECT id, ts, kind, turn, data FROM events WHERE kind = ? "
                "ORDER BY id DESC LIMIT 1",
                (kind,),
            ).fetchone()
        return self._rows([row])[0] if row else None

    def wait(
        self,
        after_id: int,
        timeout: float,
        limit: int = 500,
        stop: Callable[[], bool] | None = None,
    ) -> list[Event]:
        """Block up to ``timeout`` seconds for events newer than ``after_id``; return them.

        Returns ``[]`` early when the log is closed or ``stop()`` turns true
        (checked on every :meth:`notify`).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._last_id <= after_id and not self._closed and not (stop and stop()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
        return self.since(after_id, limit)

    def wait_any(
        self,
        after_id: int,
        after_seq: int,
        timeout: float,
        limit: int = 500,
        stop: Callable[[], bool] | None = None,
    ) -> tuple[list[Event], int]:
        """Like :meth:`wait`, but also returns live-only events published after ``after_seq``.

        Returns ``(events, seq)``: the events in publication order (a live event
        published when the newest stored id was ``n`` comes after stored event
        ``n`` and before ``n + 1``; live events have ``id`` 0) and the live sequence
        number to pass next time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while (
                self._last_id <= after_id
                and self._live_seq <= after_seq
                and not self._closed
                and not (stop and stop())
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], after_seq
                self._cond.wait(remaining)
        stored = self.since(after_id, limit)
        live = self.live_since(after_seq)
        if len(stored) >= limit:  # more stored events follow: keep live ones for the next call
            live = [x for x in live if x[1] < stored[-1].id]
        seq = live[-1][0] if live else after_seq
        out: list[Event] = []
        i = 0
        for ev in stored:
            while i < len(live) and live[i][1] < ev.id:
                out.append(live[i][2])
                i += 1
            out.append(ev)
        out.extend(x[2] for x in live[i:])
        return out, seq

    def notify(self) -> None:
        """Wake every waiter so it re-checks its ``stop`` predicate."""
        with self._cond:
            self._wake_all()

    def close(self) -> None:
        """Wake all waiters and close the database."""
        with self._cond:
            self._closed = True
            self._wake_all()
            self._db.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed


class TurnState(enum.StrEnum):
    """What the harness is doing right now (the web UI's state badge)."""

    IDLE = "idle"
    THINKING = "thinking"
    COMPACTING = "compacting"


class Bus:
    """Live agent state plus the event log; every state change is also an event.

    Methods are thread-safe. ``snapshot()`` is what ``GET /api/state`` reports.
    """

    def __init__(
        self, events: EventLog, model: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.log = events
        self._clock = clock
        self._lock = threading.Lock()
        self._state = TurnState.IDLE
        self._since = clock()
        self._model = model
        self._usage: Usage | None = None
        self._last_turn_ms: int | None = None
        self._status = "online"
        self._status_detail = ""
        self._inbox: dict[str, int] | None = None
        self._partial: dict[str, Any] | None = None  # {"turn", "index", "text"} while text streams
        last_usage = events.last_of("token_usage_changed")
        if last_usage is not None:
            self._usage = Usage.from_json(last_usage.data)
        last_end = events.last_of("turn_end")
        if last_end is not None and isinstance(last_end.data.get("duration_ms"), int):
            self._last_turn_ms = int(last_end.data["duration_ms"])

    def emit(self, kind: str, data: dict[str, Any], turn: int | None = None) -> Event:
        """Append an event to the log (and so to every live subscriber).

        An ``assistant_text`` completes the block whose text was streaming (``partial``).
        """
        if kind == "assistant_text":
            self.end_partial()
        return self.log.append(kind, data, turn)

    def note(self, text: str, level: str = "info", turn: int | None = None) -> Event:
        """A human-readable harness note in the live tail (``level``: info / warning / error)."""
        return self.emit("note", {"level": level, "text": text}, turn)

    def text_delta(self, turn: int | None, index: int, text: str) -> Event:
        """Publish a piece of streaming model text (live only): ``{"index", "offset", "text"}``.

        ``offset`` is the length of the block's text before this piece, so a client can
        tell a gap or an overlap. The text so far is in :meth:`snapshot` ``partial``.
        """
        with self._lock:
            p = self._partial
            if p is None or p["turn"] != turn or p["index"] != index:
                p = {"turn": turn, "index": index, "text": ""}
            offset = len(p["text"])
            if offset < MAX_PARTIAL_CHARS:
                p["text"] += text
            self._partial = p
        data = {"index": index, "offset": offset, "text": text}
        return self.log.publish("text_delta", data, turn)

    def end_partial(self) -> None:
        """The streaming block is complete (its ``assistant_text`` arrived) or the run ended."""
        with self._lock:
            self._partial = None

    @property
    def state(self) -> TurnState:
        """The current turn state."""
        with self._lock:
            return self._state

    @property
    def model(self) -> str:
        """The model the next turn runs with."""
        with self._lock:
            return self._model

    def set_state(self, state: TurnState, turn: int | None = None) -> None:
        """Change the turn state; emits ``turn_state_changed {"state", "since"}`` on a change."""
        with self._lock:
            if state == self._state:
                return
            self._state = state
            self._since = self._clock()
            since = self._since
            if state == TurnState.IDLE:
                self._partial = None
        self.emit("turn_state_changed", {"state": str(state), "since": since}, turn)

    def set_model(self, model: str, source: str) -> None:
        """Record the effective model; emits ``model_changed {"model", "source"}`` on a change."""
        with self._lock:
            if model == self._model:
                return
            self._model = model
        self.emit("model_changed", {"model": model, "source": source})

    def set_usage(self, usage: Usage, turn: int | None = None) -> None:
        """Record the latest request's token usage; emits ``token_usage_changed`` when it differs.

        Data: the four API counts plus ``context_tokens`` (input + cache read + cache creation).
        """
        with self._lock:
            if usage == self._usage:
                return
            self._usage = usage
        self.emit(
            "token_usage_changed", {**usage.to_json(), "context_tokens": usage.context_tokens}, turn
        )

    def set_last_turn(self, duration_ms: int) -> None:
        """Remember the last turn's wall-clock duration (milliseconds)."""
        with self._lock:
            self._last_turn_ms = duration_ms

    def set_status(
        self, status: str, detail: str = "", inbox: dict[str, int] | None = None
    ) -> None:
        """Change the agent status (``online`` / ``needs_login`` / ``controller_unreachable`` /
        ``budget_held``) or the inbox counts; emits ``status_changed {"status", "detail",
        "inbox"}`` on a change."""
        with self._lock:
            new_inbox = inbox if inbox is not None else self._inbox
            if (
                status == self._status
                and detail == self._status_detail
                and new_inbox == self._inbox
            ):
                return
            self._status, self._status_detail, self._inbox = status, detail, new_inbox
        self.emit("status_changed", {"status": status, "detail": detail, "inbox": new_inbox})

    def snapshot(self) -> dict[str, Any]:
        """``{"turn_state", "turn_state_since", "model", "usage", "last_turn_ms", "status",
        "status_detail", "inbox_status", "last_event_id", "partial"}`` (usage may be ``null``;
        ``partial`` is ``{"turn", "index", "text"}`` while model text streams, else ``null``)."""
        with self._lock:
            usage = None
            if self._usage is not None:
                usage = {**self._usage.to_json(), "context_tokens": self._usage.context_tokens}
            return {
                "turn_state": str(self._state),
                "turn_state_since": self._since,
                "model": self._model,
                "usage": usage,
                "last_turn_ms": self._last_turn_ms,
                "status": self._status,
                "status_detail": self._status_detail,
                "inbox_status": self._inbox,
                "last_event_id": self.log.last_id,
                "partial": dict(self._partial) if self._partial else None,
            }
