"""Each inbox's status, kept between the writes that change it.

Every answer of an agent socket carries its caller's ``status``: one query of six counts.
Most answers follow a write that did not touch the caller's inbox (a ``send`` changes the
recipient's counts, not the sender's), so the counts read for the last answer still hold.
``StatusCache`` keeps one reading per inbox and forgets it when

* a write transaction that may have changed it commits: the store calls ``forget`` with the
  inboxes the transaction declared (``Tx.only``), or with None (every inbox) when it
  declared nothing, *inside* its lock right after the commit, so before any parked receiver
  is woken (a receiver that looks here after its wake-up never sees the old reading); an
  inbox whose whole change the transaction declared (``Tx.adjust``: a send adds one unread
  message, a plain claim takes one) has its reading moved instead;
* time makes it wrong: a reminder falls due or a lease runs out (``valid_until``, on the
  broker's clock, which tests may move; a clock moved back also forgets it).

A reading taken while a write committed is never kept: ``generation`` is read before the
query and ``put`` drops the reading when it moved meanwhile.

Only for a store no other process writes (sqlite): a shared store (PostgreSQL) learns of
other processes' commits late or not at all, so the broker keeps no cache there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from schemas.wire import Status


@dataclass(frozen=True)
class StatusReading:
    """An inbox's ``status`` read at ``read_at`` (broker clock, unix seconds), good while the
    clock is in ``[read_at, valid_until)`` and no write touched the inbox; ``pending`` is
    how many of its messages are neither acked nor dead (0: a claim would find nothing, no
    lease could run out and no reminder fall due)."""

    status: Status
    pending: int
    read_at: float
    valid_until: float


class StatusCache:
    """Readings per inbox behind one lock (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, tuple[int, StatusReading]] = {}
        self._gens: dict[str, int] = {}
        self._epoch = 0  # moved by forget(None): every inbox's generation moves at once
        self._counter = 0

    def generation(self, inbox: str) -> int:
        """A token that changes whenever ``inbox``'s reading is forgotten."""
        with self._lock:
            return self._gen(inbox)

    def _gen(self, inbox: str) -> int:
        # the epoch is a counter too: every forget takes a new, larger value
        return max(self._gens.get(inbox, 0), self._epoch)

    def get(self, inbox: str, now: float) -> StatusReading | None:
        """The reading of ``inbox`` still good at ``now``, or None."""
        with self._lock:
            kept = self._readings.get(inbox)
            if kept is None:
                return None
            gen, reading = kept
            if gen != self._gen(inbox) or not reading.read_at <= now < reading.valid_until:
                return None
            return reading

    def put(self, inbox: str, generation: int, reading: StatusReading) -> None:
        """Keep ``reading`` unless ``inbox`` was forgotten since ``generation`` was read."""
        with self._lock:
            if generation == self._gen(inbox):
                self._readings[inbox] = (generation, reading)

    def forget(
        self, inboxes: Iterable[str] | None, moved: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        """A commit may have changed ``inboxes`` (None: any inbox), and changed each inbox
        of ``moved`` by exactly ``(pending, unread)``: a reading kept of those is moved."""
        with self._lock:
            self._counter += 1
            if inboxes is None:
                self._epoch = self._counter
                self._readings.clear()
                return
            for inbox in inboxes:
                self._gens[inbox] = self._counter
                self._readings.pop(inbox, None)
            for inbox, (pending, unread) in (moved or {}).items():
                kept = self._readings.pop(inbox, None)
                current = self._gen(inbox)
                # a new generation either way: a reading taken before this commit and put
                # after it must not be kept
                self._gens[inbox] = self._counter
                if kept is None or kept[0] != current:
                    continue
                r = kept[1]
                s = r.status
                # built field by field: dataclasses.replace introspects the fields on each
                # call, and this runs twice per delivered message
                status = Status(
                    s.unread + unread, s.open_threads, s.pending_reminders, s.dead_letters
                )
                self._readings[inbox] = (
                    self._counter,
                    StatusReading(status, r.pending + pending, r.read_at, r.valid_until),
                )
