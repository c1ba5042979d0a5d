"""The ``/api/state`` snapshot: agents, proposals, history, kept state, questions, inbox.

``Snapshot.build()`` is blocking (it calls ``SwarmOps``, which may wait on the
reconcile thread's lock): the responder runs it with ``asyncio.to_thread``.
A section that fails is reported under ``errors`` instead of failing the page.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from controller.dashboard.views import (
    agent_view,
    message_view,
    proposal_view,
    question_view,
    rows,
    tombstone_view,
)
from controller.ops import ProposalState, SwarmOps
from hivehttp.encoding import MIN_BYTES as GZIP_MIN_BYTES
from hivehttp.encoding import GzipCache
from schemas.names import MANAGER, OPERATOR
from schemas.wire import Message

log = logging.getLogger("controller.dashboard")

INBOX_LIMIT = 40
"""Messages to the operator shown in the inbox (newest last)."""

HISTORY_LIMIT = 8
"""Decided proposals / deploys shown under "recent decisions"."""

HISTORY_TTL = 15.0
"""Seconds the history list is reused between snapshots."""


_BODY_HEAD = b'{"agents":'


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


class SnapshotBroker(Protocol):
    """The broker methods the snapshot reads."""

    def recent(self, recipient: str, limit: int) -> list[Message]:
        """Messages to or from ``recipient``, newest last (non-mutating)."""
        ...

    def questions(self, pending_only: bool) -> Sequence[Any]:
        """Operator questions (only unanswered ones if ``pending_only``)."""
        ...


class Snapshot:
    """Builds the snapshot; keeps the history list for ``HISTORY_TTL`` seconds."""

    def __init__(self, ops: SwarmOps, broker: SnapshotBroker) -> None:
        self.ops = ops
        self.broker = broker
        self._lock = threading.Lock()
        self._history_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._logged: dict[str, str] = {}
        self._agents_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        # (the cards list, its encoding, a sequence number naming that encoding)
        self._agents_enc: tuple[list[dict[str, Any]], bytes, str] | None = None
        self._enc_seq = itertools.count(1)
        # names this process's encodings: an ETag from before a restart never matches
        self._salt = os.urandom(8).hex()
        self._gz = GzipCache()
        self._last_body: tuple[str, bytes] | None = None  # (etag, body): see ``_body``

    def forget_history(self) -> None:
        """Drop the cached history (after any POST: it may have decided something)."""
        with self._lock:
            self._history_cache = None

    def build(self) -> dict[str, Any]:
        """The snapshot ``/api/state`` serves (blocking; see the module doc)."""
        errors: dict[str, str] = {}

        def section(name: str, fn: Callable[[], Any], default: Any) -> Any:
            try:
                return fn()
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
                if self._logged.get(name) != errors[name]:  # once per distinct failure
                    log.exception("dashboard: %s failed", name)
                return default

        status: dict[str, Any] = section("status", self.ops.status, {})
        agents = section("agents", lambda: self._agents(status), [])
        swarm = {k: v for k, v in status.items() if k != "agents"}
        proposals = section(
            "proposals",
            lambda: [proposal_view(p) for p in self.ops.proposals(pending_only=True)],
            [],
        )
        history = section("history", self._history, [])
        tombstones = section(
            "tombstones",
            lambda: sorted(
                (tombstone_view(t) for t in self.ops.tombstones()),
                key=lambda t: t["destroyed_at"] or "",
                reverse=True,
            ),
            [],
        )
        questions = section(
            "questions",
            lambda: [question_view(q) for q in self.broker.questions(pending_only=True)],
            [],
        )
        inbox = section("inbox", self._inbox, [])
        recipients = section("recipients", lambda: sorted(self.ops.agent_names() - {OPERATOR}), [])
        self._logged = dict(errors)
        return {
            "swarm": swarm,
            "agents": agents,
            "proposals": proposals,
            "history": history,
            "tombstones": tombstones,
            "questions": questions,
            "inbox": inbox,
            "recipients": recipients,
            "errors": errors,
        }

    def render(self) -> tuple[bytes, str]:
        """``(body, etag)`` of ``/api/state``: compact JSON of ``build()`` and its ETag."""
        cards, small, etag = self._parts()
        return self._body(etag, cards, small), etag

    def _parts(self) -> tuple[bytes, bytes, str]:
        """``(the cards' encoding, the other sections' encoding, the ETag)`` of ``build()``.

        The agent cards (the part that grows with the swarm) are encoded again only when
        they were rebuilt (``_agents``); the ETag is the hash of the other, small sections
        plus the cards' version, so it is known without joining (or hashing) the whole
        body: a 304 never builds it.
        """
        doc = self.build()
        agents = doc["agents"]
        with self._lock:
            enc = self._agents_enc
        if enc is None or enc[0] is not agents:
            encoded = _dumps(agents)
            same = enc is not None and enc[1] == encoded
            enc = (agents, encoded, enc[2] if enc is not None and same else self._next_tag())
            with self._lock:
                self._agents_enc = enc
        small = {k: v for k, v in doc.items() if k != "agents"}
        small_body = _dumps(small)
        digest = hashlib.sha256(small_body)
        digest.update(f"|{enc[2]}".encode())
        return enc[1], small_body, digest.hexdigest()[:32]

    def _body(self, etag: str, cards: bytes, small: bytes) -> bytes:
        """The body named ``etag``: the cards first, ``{"agents": [...], <small sections>}``;
        the last one is kept, so an unchanged swarm's 200 joins nothing (and its gzip form,
        kept per ETag, is found by identity)."""
        with self._lock:
            last = self._last_body
        if last is not None and last[0] == etag:
            return last[1]
        body = _BODY_HEAD + cards + b"," + small[1:]
        with self._lock:
            self._last_body = (etag, body)
        return body

    def answer(
        self, gzip_ok: bool, if_none_match: Collection[str]
    ) -> tuple[bytes | None, str, str]:
        """``(body, etag, content_coding)`` of a ``GET /api/state``; ``body`` is None when
        ``etag`` is in ``if_none_match`` (answer 304; the body is not even joined then).

        With ``gzip_ok`` (the client accepts gzip) the body is ``render()``'s gzipped and its
        ETag ``<etag>-gz`` (another representation, another tag); the gzip form is kept per
        ETag, so an unchanged swarm is compressed once. The rows repeat the same keys and
        condition texts: 310 KiB at 200 agents go out as ~9 KiB.
        """
        cards, small, etag = self._parts()
        size = len(_BODY_HEAD) + len(cards) + len(small)  # "," replaces small's "{"
        gz = gzip_ok and size >= GZIP_MIN_BYTES
        tag = etag + "-gz" if gz else etag
        if tag in if_none_match:
            return None, tag, ""
        body = self._body(etag, cards, small)
        if gz:
            return self._gz.encode(tag, body), tag, "gzip"
        return body, tag, ""

    def _next_tag(self) -> str:
        return f"{self._salt}.{next(self._enc_seq)}"

    def _agents(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """The agent cards, rebuilt only when the swarm's ``version()`` or a dead-letter
        count moved (rendering 200 cards is most of a snapshot otherwise)."""
        listed = rows(status.get("agents", []))
        key = (
            str(self.ops.version()),
            tuple((r.get("name"), r.get("dead_letters")) for r in listed),
        )
        with self._lock:
            cached = self._agents_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        agents = sorted(
            (agent_view(r) for r in listed),
            key=lambda a: (a["name"] != MANAGER, a["name"]),
        )
        with self._lock:
            self._agents_cache = (key, agents)
        return agents

    def _history(self) -> list[dict[str, Any]]:
        """Recent decided proposals; cached for ``HISTORY_TTL`` s (listing every proposal
        may be costly), dropped at once by the dashboard's own decisions."""
        with self._lock:
            cached = self._history_cache
        if cached is not None and time.monotonic() - cached[0] < HISTORY_TTL:
            return cached[1]
        history = [
            proposal_view(p, diff_limit=0)
            for p in self.ops.proposals()
            if p.state is not ProposalState.PENDING
        ][:HISTORY_LIMIT]
        with self._lock:
            self._history_cache = (time.monotonic(), history)
        return history

    def _inbox(self) -> list[dict[str, Any]]:
        msgs = [m for m in self.broker.recent(OPERATOR, INBOX_LIMIT * 3) if m.recipient == OPERATOR]
        return [message_view(m) for m in msgs[-INBOX_LIMIT:]]
