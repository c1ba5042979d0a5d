"""The store interface: what the broker's semantics need from a database.

A ``Store`` hands out ``Tx`` objects: ``write()`` is one transaction (committed when the
block ends, rolled back on any exception), ``read()`` a consistent-enough view for queries
that change nothing. The semantics (``controller.broker.core`` and its parts) decide *what*
happens: argument checks, idempotency conflicts, who may answer a thread, when a lease is a
dead letter and who hears of it, what an event says. A store only decides *how* rows are
found and changed, as the primitives below describe; every time is unix seconds passed in by
the semantics (one clock for both stores, settable in tests).

Errors: a store raises ``BrokerClosed`` after ``close()`` and turns a failure of the
database itself (full, read-only, damaged, unreachable) into ``BrokerStorageError`` /
``BrokerDiskFull`` after rolling back, so nothing of a failed request is stored. Any other
exception raised inside ``write()`` rolls back and propagates unchanged.

Wake-ups: ``Tx.changed`` records which inboxes a transaction touched; after the commit the
store calls the ``on_change`` callback it was opened with (and a store shared by several
processes also tells the other processes, which call their own ``on_change``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from controller.broker.model import BrokerGauges, NewMessage, OperatorQuestion, ThreadRow
from controller.broker.statuscache import StatusReading
from schemas.wire import Message, Status

OnChange = Callable[[Sequence[str] | None, int | None], None]
"""``on_change(recipients, last_id)`` after a commit: ``recipients`` None means "anyone"."""


class Tx(Protocol):
    """One transaction (``Store.write``) or read view (``Store.read``) on the broker's tables.

    ``max_deliveries`` arguments are the dead-letter threshold: a leased message whose lease
    ran out after that many deliveries is *exhausted* (a dead letter not yet marked as one).
    """

    # ---------------------------------------------------------------- messages

    def insert(self, m: NewMessage) -> Message:
        """Insert ``m``; the stored message (new id, greater than every id before)."""
        ...

    def by_idempotency_key(self, owner: str, key: str) -> tuple[Message, str] | None:
        """The message stored under ``(owner, key)`` and its request digest, or None."""
        ...

    def has_undelivered(self, recipient: str, dedup_key: str) -> bool:
        """True when a message to ``recipient`` with ``dedup_key`` is neither delivered nor
        acked (a typed event to coalesce with)."""
        ...

    def claim(
        self, recipient: str, now: float, lease_until: float | None, max_deliveries: int
    ) -> Message | None:
        """Deliver ``recipient``'s oldest deliverable message: due, not dead, not acked, not
        under a live lease, not exhausted. ``lease_until`` None marks it delivered and acked;
        else leased until then. Counts the delivery in ``attempts``. Never hands the same
        delivery to two concurrent claims (other processes included). None when there is
        nothing to deliver."""
        ...

    def next_due(self, recipient: str, now: float, max_deliveries: int) -> float | None:
        """When ``recipient``'s next pending message may be deliverable (a reminder falls
        due, a lease runs out), or None; at or before ``now`` when one is deliverable now
        but was not claimed (another process held it)."""
        ...

    def exhausted_recipients(self, now: float, max_deliveries: int) -> list[str]:
        """Recipients with exhausted leases."""
        ...

    def mark_dead(self, recipient: str, now: float, max_deliveries: int) -> list[Message]:
        """Mark ``recipient``'s exhausted leases dead (``dead_at = now``, lease cleared); the
        newly dead messages in id order."""
        ...

    def dead_letters(self, recipient: str | None, limit: int) -> list[Message]:
        """Dead letters (of ``recipient``, or everyone's), oldest first, at most ``limit``."""
        ...

    def requeue(self, ids: Sequence[int]) -> list[str]:
        """Make the dead letters among ``ids`` deliverable again (attempts 0, never delivered,
        no lease); the recipient of each one requeued."""
        ...

    def ack(self, recipient: str, ids: Sequence[int], now: float) -> int:
        """Ack ``recipient``'s delivered, unacked messages among ``ids`` (a dead one is no
        longer dead); how many."""
        ...

    def release(self, recipient: str, ids: Sequence[int] | None, now: float) -> int:
        """End ``recipient``'s live leases (among ``ids``; all when None) at ``now``; how many."""
        ...

    def status(self, recipient: str, now: float, max_deliveries: int) -> Status:
        """``recipient``'s counts: unread (deliverable now), open threads, reminders not due,
        dead letters (exhausted leases included)."""
        ...

    def status_reading(self, recipient: str, now: float, max_deliveries: int) -> StatusReading:
        """``status`` at ``now`` with its pending count (neither acked nor dead) and the
        first time after ``now`` when a reminder falls due or a lease ends (``inf``: none)."""
        ...

    def dead_letter_counts(self, now: float, max_deliveries: int) -> dict[str, int]:
        """``{recipient: dead letters}`` (exhausted leases included) for those with any."""
        ...

    def recent(self, name: str, now: float, limit: int) -> list[Message]:
        """The newest ``limit`` messages to or from ``name`` that are due, newest first."""
        ...

    def messages(self, since_id: int, limit: int) -> list[Message]:
        """Messages with ``id > since_id``, oldest first, at most ``limit``."""
        ...

    def last_id(self) -> int:
        """The newest message id (0 when there is none)."""
        ...

    # ---------------------------------------------------------------- threads

    def open_thread(self, asker: str, asked: str, now: float) -> int:
        """A new open thread; its id."""
        ...

    def set_thread_question(self, thread: int, message_id: int) -> None:
        """Record the message that asked ``thread``."""
        ...

    def thread(self, thread: int) -> ThreadRow | None:
        """Thread ``thread``, or None."""
        ...

    def open_threads(self, agent: str) -> list[ThreadRow]:
        """Open threads ``agent`` asked or was asked, in id order."""
        ...

    def close_thread(
        self, thread: int, now: float, answer_id: int | None, reason: str | None
    ) -> None:
        """Mark ``thread`` answered at ``now`` (by ``answer_id``), or closed for ``reason``."""
        ...

    # ---------------------------------------------------------------- operator questions

    def insert_question(
        self,
        asker: str,
        question: str,
        options: Sequence[str],
        multi: bool,
        now: float,
        deadline_at: float | None,
    ) -> int:
        """A new pending operator question; its id."""
        ...

    def question(self, id: int) -> OperatorQuestion | None:
        """Operator question ``id``, or None."""
        ...

    def questions(self, pending_only: bool) -> list[OperatorQuestion]:
        """Operator questions in id order (only unresolved ones if ``pending_only``)."""
        ...

    def resolve_question(
        self, id: int, answer: str, now: float, resolution: str
    ) -> OperatorQuestion:
        """Store the resolution of (existing, pending) question ``id``; the question now."""
        ...

    def due_questions(self, now: float) -> list[int]:
        """Pending questions whose deadline is at or before ``now``, in id order."""
        ...

    def next_question_deadline(self) -> float | None:
        """The earliest deadline of a pending question, or None."""
        ...

    # ---------------------------------------------------------------- retention, wake-ups

    def sweep(self, cutoff: float) -> int:
        """Delete acked messages and dead letters, answered threads and resolved questions
        older than ``cutoff``; how many messages."""
        ...

    def gauges(self, now: float, sent_after: int | None) -> BrokerGauges:
        """The figures of the metrics scrape (``BrokerGauges``; read-only): per agent, the
        inbox depth and its oldest message's time, live leases, reminders not due, open
        threads; pending operator questions; messages sent after id ``sent_after`` by
        sender. Aggregates over the partial indexes: O(pending), not O(messages kept)."""
        ...

    def changed(self, recipients: Sequence[str] | None, last_id: int | None = None) -> None:
        """This transaction changed ``recipients``' inboxes (None: anyone's) and, if given,
        added messages up to ``last_id``: wake them once it commits."""
        ...

    def adjust(self, inbox: str, pending: int, unread: int) -> None:
        """The whole change this transaction makes to ``inbox``'s status: its pending count
        (neither acked nor dead) and ``unread`` move by these amounts, nothing else. Implies
        ``only([])``; a caller that cannot tell the whole change declares nothing."""
        ...

    def only(self, inboxes: Sequence[str]) -> None:
        """This transaction changes no inbox's ``status`` but ``inboxes`` and those it passes
        to ``changed``. Undeclared, a write may have changed anyone's (a store that caches
        status, ``controller.broker.statuscache``, then forgets every inbox)."""
        ...


class Store(Protocol):
    """A database holding the broker's tables (see the module docstring)."""

    @property
    def location(self) -> str:
        """Where the data is, for messages (a path, or a URL without its password)."""
        ...

    def read(self) -> AbstractContextManager[Tx]:
        """A view for queries that change nothing."""
        ...

    def write(self) -> AbstractContextManager[Tx]:
        """One transaction: committed when the block ends, else rolled back."""
        ...

    def compact(self) -> None:
        """Give space back after a sweep (sqlite: truncate the WAL)."""
        ...

    def close(self) -> None:
        """Close the database; later calls raise ``BrokerClosed``."""
        ...
