"""Threads and reminders.

``ask(sender, to, q)`` opens a thread; ``answer`` by the asked party closes it.
``Status.open_threads`` counts threads that concern the caller and are not answered yet:
questions it asked that await an answer *and* questions asked of it that it has not
answered. ``close_threads(agent)`` (called when an agent is destroyed) closes every open
thread of that agent; an asker still waiting on it gets a ``[closed]`` answer from
``hyperhive``. Reminders are messages with a future ``due_at``: invisible to ``recv`` (and
counted as ``pending_reminders``, not ``unread``) until due.
"""

from __future__ import annotations

from controller.broker.checks import (
    check_body,
    check_id,
    check_key,
    check_name,
    check_traceparent,
    request_digest,
)
from controller.broker.core import BrokerCore, log
from controller.broker.limits import EVENT_SENDER, MAX_REMIND_SECONDS
from controller.broker.model import Idem, NewMessage
from controller.errors import Conflict, Forbidden, Invalid, NotFound
from schemas.wire import Message, MessageKind


class Threads(BrokerCore):
    """``ask``, ``answer``, ``remind`` and ``close_threads``."""

    def ask(
        self,
        sender: str,
        to: str,
        question: str,
        *,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> Message:
        """Send ``question`` to ``to`` as a new thread; the returned message's ``thread`` is its id.

        The thread stays open (counted in both parties' ``open_threads``)
        until ``to`` answers it. ``idempotency_key`` as for ``send`` (a repeat
        returns the original question and thread). ``traceparent`` as for ``send``.
        """
        check_name(sender, "from")
        check_name(to, "to")
        check_body(question, "question")
        check_traceparent(traceparent)
        key = check_key(idempotency_key)
        idem = None if key is None else Idem(sender, key, request_digest("ask", to, question))
        with self._store.write() as tx:
            dup = self._replay(tx, idem)
            if dup is not None:
                return dup
            now = self._clock()
            tid = tx.open_thread(sender, to, now)
            msg = tx.insert(
                NewMessage(
                    sender,
                    to,
                    question,
                    MessageKind.QUESTION,
                    sent_at=now,
                    thread=tid,
                    idem=idem,
                    traceparent=traceparent,
                )
            )
            tx.set_thread_question(tid, msg.id)
            tx.changed([to], msg.id)
        return msg

    def answer(
        self, sender: str, thread: int, body: str, *, traceparent: str | None = None
    ) -> Message:
        """Answer thread ``thread`` (sent to the asker, kind ``answer``) and close it.

        Raises ``NotFound`` for an unknown thread, ``Forbidden`` when ``sender``
        is not the one the question was asked of, ``Conflict`` when it is
        already answered or was closed (``close_threads``). ``traceparent`` as for ``send``.
        """
        check_name(sender, "from")
        check_id(thread, "thread")
        check_body(body)
        check_traceparent(traceparent)
        with self._store.write() as tx:
            row = tx.thread(thread)
            if row is None:
                raise NotFound(
                    f"no thread {thread}; answer a thread id from a question you received", "thread"
                )
            if row.asked != sender:
                raise Forbidden(
                    f"thread {thread} was asked of {row.asked}, not {sender}; "
                    f"only {row.asked} can answer it",
                    "thread",
                )
            if row.closed_reason is not None:
                raise Conflict(
                    f"thread {thread} was closed ({row.closed_reason}); nobody waits for "
                    "an answer any more",
                    "thread",
                )
            if row.answered_at is not None:
                raise Conflict(
                    f"thread {thread} is already answered; use send for a follow-up", "thread"
                )
            now = self._clock()
            msg = tx.insert(
                NewMessage(
                    sender,
                    row.asker,
                    body,
                    MessageKind.ANSWER,
                    sent_at=now,
                    thread=thread,
                    traceparent=traceparent,
                )
            )
            tx.close_thread(thread, now, msg.id, None)
            tx.changed([row.asker, sender], msg.id)
        return msg

    def remind(
        self,
        recipient: str,
        after_seconds: float,
        body: str,
        *,
        idempotency_key: str | None = None,
    ) -> Message:
        """Deliver ``body`` to ``recipient`` (from itself, kind ``reminder``) after a delay.

        ``recv`` does not return it before it is due; a parked ``recv`` wakes
        when it falls due. ``message.extra["due_at"]`` is the due time (unix
        seconds). Raises ``Invalid`` unless 0 < after_seconds <= 30 days.
        ``idempotency_key`` as for ``send`` (a repeat returns the original
        reminder with its original due time).
        """
        check_name(recipient, "recipient")
        check_body(body)
        key = check_key(idempotency_key)
        if (
            isinstance(after_seconds, bool)
            or not isinstance(after_seconds, int | float)
            or not 0 < after_seconds <= MAX_REMIND_SECONDS
        ):
            raise Invalid(
                f"after_seconds must be between 0 and {MAX_REMIND_SECONDS}", "after_seconds"
            )
        idem = None
        if key is not None:
            idem = Idem(recipient, key, request_digest("remind", after_seconds, body))
        with self._store.write() as tx:
            dup = self._replay(tx, idem)
            if dup is not None:
                return dup
            now = self._clock()
            msg = tx.insert(
                NewMessage(
                    recipient,
                    recipient,
                    body,
                    MessageKind.REMINDER,
                    sent_at=now,
                    due_at=now + after_seconds,
                    idem=idem,
                )
            )
            tx.changed([recipient], msg.id)
        return msg

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        """Close every open thread ``agent`` asked or was asked (call it when ``agent`` is
        destroyed); returns how many were closed.

        An asker still waiting on ``agent`` gets an ``answer`` message on the
        thread from ``hyperhive`` saying it was closed, so the thread leaves
        its ``open_threads`` and it knows not to wait; answering a closed
        thread is a ``Conflict``. ``reason`` defaults to "<agent> no longer
        exists". Idempotent (a second call closes nothing).
        """
        check_name(agent, "agent")
        why = reason or f"{agent} no longer exists"
        woken: set[str] = set()
        last = 0
        with self._store.write() as tx:
            now = self._clock()
            rows = tx.open_threads(agent)
            for row in rows:
                answer_id = None
                if row.asked == agent and row.asker != agent:
                    msg = tx.insert(
                        NewMessage(
                            EVENT_SENDER,
                            row.asker,
                            f"[closed] thread {row.id} will not be answered: {why}",
                            MessageKind.ANSWER,
                            sent_at=now,
                            thread=row.id,
                        )
                    )
                    answer_id, last = msg.id, msg.id
                    woken.add(row.asker)
                tx.close_thread(row.id, now, answer_id, why)
            woken.update(r.asked for r in rows)
            if rows:
                tx.changed(sorted(woken), last or None)
        if rows:
            log.info("closed %d open thread(s) of %s: %s", len(rows), agent, why)
        return len(rows)
