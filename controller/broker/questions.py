"""Operator questions: the manager asks, the operator answers (dashboard, admin socket),
cancels, or the ttl runs out; the resolution reaches the asker as an ``OperatorAnswered``
event."""

from __future__ import annotations

from collections.abc import Sequence

from controller.broker.checks import check_body, check_name, choices
from controller.broker.core import BrokerCore
from controller.broker.events import summarize_event
from controller.broker.limits import CANCELLED, EVENT_SENDER, EXPIRED, MAX_REMIND_SECONDS
from controller.broker.model import NewMessage, OperatorQuestion
from controller.errors import Conflict, Invalid, NotFound
from schemas.names import MANAGER
from schemas.wire import EventType, MessageKind


class Questions(BrokerCore):
    """``ask_operator``, ``question(s)``, ``answer_question``, ``cancel_question``,
    ``expire_questions``, ``next_question_deadline``."""

    def ask_operator(
        self,
        question: str,
        options: Sequence[str] = (),
        multi: bool = False,
        ttl_seconds: float | None = None,
        *,
        asker: str = MANAGER,
    ) -> int:
        """Queue a question for the operator (dashboard / admin socket); returns its id at once.

        ``options`` offers choices (``multi``: several may be picked; needs
        options); ``ttl_seconds`` resolves it as ``[expired]`` after that long
        (see ``expire_questions``). The answer reaches ``asker`` as an
        ``OperatorAnswered`` event. Raises ``Invalid`` for bad arguments.
        """
        check_body(question, "question")
        check_name(asker, "asker")
        opts = list(options)
        if any(not isinstance(o, str) or not o for o in opts):
            raise Invalid("options must be non-empty strings", "options")
        if multi and not opts:
            raise Invalid("multi needs options to choose from", "multi")
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool)
            or not isinstance(ttl_seconds, int | float)
            or not 0 < ttl_seconds <= MAX_REMIND_SECONDS
        ):
            raise Invalid(f"ttl_seconds must be between 0 and {MAX_REMIND_SECONDS}", "ttl_seconds")
        with self._store.write() as tx:
            now = self._clock()
            return tx.insert_question(
                asker,
                question,
                opts,
                bool(multi),
                now,
                None if ttl_seconds is None else now + ttl_seconds,
            )

    def question(self, id: int) -> OperatorQuestion:
        """One operator question; ``NotFound`` if there is none with that id."""
        with self._store.read() as tx:
            q = tx.question(id)
        if q is None:
            raise NotFound(f"no operator question {id}", "id")
        return q

    def questions(self, pending_only: bool = False) -> list[OperatorQuestion]:
        """Operator questions, oldest first (only unresolved ones if ``pending_only``)."""
        with self._store.read() as tx:
            return tx.questions(pending_only)

    def _resolve(self, id: int, answer: str | Sequence[str], resolution: str) -> OperatorQuestion:
        if not isinstance(id, int) or isinstance(id, bool) or not 1 <= id < 2**63:
            raise NotFound(f"no operator question {id}", "id")
        with self._store.write() as tx:
            asked = tx.question(id)
            if asked is None:
                raise NotFound(f"no operator question {id}", "id")
            if asked.answered_at is not None:
                # the stored resolution, as the operator sees it
                raise Conflict(
                    f"operator question {id} is already resolved ({asked.state}: {asked.answer})",
                    "id",
                )
            if resolution == "answered" and asked.options:
                answer = choices(answer, asked)
            elif not isinstance(answer, str):
                raise Invalid("answer must be a string (this question has no options)", "answer")
            now = self._clock()
            q = tx.resolve_question(id, answer, now, resolution)
            event = {
                "type": str(EventType.OPERATOR_ANSWERED),
                "id": q.id,
                "question": q.question,
                "answer": answer,
            }
            msg = tx.insert(
                NewMessage(
                    EVENT_SENDER,
                    q.asker,
                    summarize_event(event),
                    MessageKind.EVENT,
                    sent_at=now,
                    event=event,
                    dedup_key=f"key:operator-answered:{q.id}",
                )
            )
            tx.changed([q.asker], msg.id)
        return q

    def answer_question(self, id: int, answer: str | Sequence[str]) -> OperatorQuestion:
        """Resolve question ``id`` with ``answer``; emits ``OperatorAnswered`` to the asker.

        A question with options takes exactly one of them (``multi``: one or
        more, as a list or joined by ``", "``; stored joined by ``", "``).
        Raises ``NotFound`` (no such question), ``Conflict`` (already answered,
        cancelled or expired), ``Invalid`` naming ``answer`` (not a string, or
        not among the options).
        """
        if isinstance(answer, str):
            pass
        elif isinstance(answer, list | tuple) and all(isinstance(a, str) for a in answer):
            answer = list(answer)
        else:
            raise Invalid("answer must be a string or a list of strings", "answer")
        return self._resolve(id, answer, "answered")

    def cancel_question(self, id: int) -> OperatorQuestion:
        """Resolve question ``id`` as ``[cancelled]`` (what the asker sees). NotFound / Conflict."""
        return self._resolve(id, CANCELLED, "cancelled")

    def expire_questions(self, now: float | None = None) -> list[OperatorQuestion]:
        """Resolve every pending question whose deadline is at or before ``now`` as ``[expired]``.

        The serve loop calls this (see ``next_question_deadline``). Returns the
        questions it expired; a question resolved concurrently is skipped.
        """
        at = self._clock() if now is None else now
        with self._store.read() as tx:
            ids = tx.due_questions(at)
        out: list[OperatorQuestion] = []
        for qid in ids:
            try:
                out.append(self._resolve(qid, EXPIRED, "expired"))
            except Conflict:
                continue
        return out

    def next_question_deadline(self) -> float | None:
        """The earliest deadline (unix seconds) of a pending operator question, or None."""
        with self._store.read() as tx:
            return tx.next_question_deadline()
