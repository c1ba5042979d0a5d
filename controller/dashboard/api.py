"""The dashboard's JSON API: the snapshot, proposals, messages, questions, agents.

Every swarm verb goes through ``SwarmOps`` (the same verbs as host.sock and the
CLI, so no surface drifts), run in a worker thread: a verb may run git or
journalctl for seconds, and the event loop serves every other request
meanwhile. The verbs that wait for a running reconcile pass (reconcile,
lifecycle, destroy, purge: a pass may build for minutes) get a small pool of
their own (``VERB_THREADS``), so a few clicks during a long build queue up
there instead of taking every thread of the process's default pool, which
``/api/state`` and the agent sockets also use. Quick sqlite broker calls run
inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import falcon
import falcon.asgi

from controller.dashboard.httputil import checked, int_param, parse_id, read_body, truthy
from controller.dashboard.state import Snapshot, SnapshotBroker
from controller.dashboard.views import (
    config_view,
    describe_view,
    message_view,
    to_dict,
)
from controller.drivers.journal import HARNESS_UNIT
from controller.errors import Invalid, NotFound
from controller.ops import Lifecycle, SwarmOps
from hivehttp.encoding import accepts_gzip
from schemas.names import AGENT_NAME_PATTERN, MANAGER, OPERATOR, is_agent_name
from schemas.wire import Message, rfc3339

T = TypeVar("T")

VERB_THREADS = 4
"""Threads for the verbs that wait for a running pass (see the module doc)."""

JOURNAL_LINES = 200
"""Journal lines returned when ``?lines=`` is not given."""

JOURNAL_MAX_LINES = 5000
"""Most journal lines one request may ask for."""

JOURNAL_UNITS: dict[str, str | None] = {
    "harness": HARNESS_UNIT,
    HARNESS_UNIT: HARNESS_UNIT,
    "machine": None,
}
"""``?unit=`` values: the harness service (the default) or the whole machine journal."""

_TOMBSTONE_ID_RE = re.compile(rf"\A(?:{AGENT_NAME_PATTERN})-[0-9]{{1,12}}\Z")
"""A tombstone id: ``<agent>-<unix seconds>`` (the directory under ``<state>/tombstones/``)."""


class ApiBroker(SnapshotBroker, Protocol):
    """The broker methods the API calls besides the snapshot's."""

    def send(self, sender: str, recipient: str, body: str) -> Message:
        """Queue a plain message."""
        ...

    def answer_question(self, id: int, answer: str) -> object:
        """Resolve a question; NotFound / Conflict (already resolved)."""
        ...

    def cancel_question(self, id: int) -> object:
        """Resolve a question as ``[cancelled]``; NotFound / Conflict."""
        ...


def check_agent_name(name: str) -> None:
    """404 naming ``name`` for a path parameter that cannot be an agent."""
    if not is_agent_name(name):
        raise NotFound(f"no agent named {name!r}", "name")


async def _decision_note(req: falcon.asgi.Request) -> str:
    """The ``note`` of an approve or deny body (``wire#DecisionRequest``), stripped; ``""``
    when absent. Raises ``Invalid`` / ``ValidationFailed`` (400) for a bad body."""
    doc = checked(await read_body(req), "wire#DecisionRequest")
    return str(doc.get("note", "")).strip()


async def _no_fields(req: falcon.asgi.Request, verb: str) -> None:
    """Read the body of ``verb``, which takes none: ``Invalid`` naming the first field
    (in sorted order) when the JSON object has any."""
    extra = sorted(await read_body(req))
    if extra:
        raise Invalid(f"unknown field {extra[0]!r}; {verb} takes no fields", extra[0])


@contextlib.contextmanager
def _agent_not_found(name: str) -> Iterator[None]:
    """Re-raise ``NotFound`` from an agent-scoped op as naming ``name`` (the path parameter)."""
    try:
        yield
    except NotFound as e:
        if e.field in (None, "name", "agent", "container"):
            raise NotFound(e.message, "name") from e
        raise


def _jsonable(value: object) -> Any:
    """Best-effort JSON view of a broker return value (None, scalars, to_json, mappings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return to_dict(value)
    except TypeError:
        return str(value)


class SwarmApi:
    """The ``/api/*`` responders (routes use suffixes); one instance per app."""

    def __init__(self, ops: SwarmOps, broker: ApiBroker) -> None:
        self.ops = ops
        self.broker = broker
        self.snapshot = Snapshot(ops, broker)
        self._verbs = ThreadPoolExecutor(VERB_THREADS, thread_name_prefix="dashboard-verb")

    async def _verb(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the verb pool (for verbs that may wait for a running pass)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._verbs, functools.partial(fn, *args))

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Middleware hook: any POST may have decided or deployed something."""
        if req.method == "POST":
            self.snapshot.forget_history()

    # ----------------------------------------------------------------- state

    async def on_get_state(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``GET /api/state``: agents, proposals, kept state, questions, inbox, recipients."""
        # the agent cards are rebuilt only when the swarm's version moves, and the ETag
        # comes from the parts, so a 304 never encodes or hashes the whole body
        # (gzipped for a client that accepts it, kept per ETag: ×35-45 fewer bytes)
        tags = {str(t) for t in req.if_none_match or ()}
        gz = accepts_gzip(req.get_header("Accept-Encoding"))
        body, etag, coding = await asyncio.to_thread(self.snapshot.answer, gz, tags)
        resp.etag = etag
        resp.cache_control = ["no-cache"]
        resp.vary = ["Accept-Encoding"]
        if body is None:
            resp.status = falcon.HTTP_304
            return
        resp.data = body
        resp.content_type = falcon.MEDIA_JSON
        if coding:
            resp.set_header("Content-Encoding", coding)

    async def on_get_proposal(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pid: str
    ) -> None:
        """``GET /api/proposals/{id}``: one proposal, full diff."""
        proposal = await asyncio.to_thread(self.ops.proposal, parse_id(pid, "id"))
        resp.media = proposal.to_json()

    # ----------------------------------------------------------------- actions

    async def on_post_approve(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pid: str
    ) -> None:
        """``POST /api/proposals/{id}/approve`` with an optional ``note``."""
        pid_ = parse_id(pid, "id")
        note = await _decision_note(req)
        resp.media = (await asyncio.to_thread(self.ops.approve, pid_, note)).to_json()

    async def on_post_deny(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pid: str
    ) -> None:
        """``POST /api/proposals/{id}/deny``; ``note`` (the reason) is required."""
        pid_ = parse_id(pid, "id")
        note = await _decision_note(req)
        if not note:
            raise Invalid("a reason is required to deny: the manager reads it", "note")
        resp.media = (await asyncio.to_thread(self.ops.deny, pid_, note)).to_json()

    async def on_post_spawn(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``POST /api/spawn``: propose a new agent (approve it like any proposal)."""
        doc = checked(await read_body(req), "wire#SpawnRequest")
        proposal = await asyncio.to_thread(self.ops.request_spawn, str(doc["name"]).strip())
        resp.status = falcon.HTTP_201
        resp.media = proposal.to_json()

    async def on_post_send(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``POST /api/send``: a message from ``operator`` to an agent or the manager."""
        doc = checked(await read_body(req), "wire#OperatorSendRequest")
        to = str(doc["to"])
        if to == OPERATOR:
            raise Invalid("the operator cannot message itself", "to")
        known = await asyncio.to_thread(self.ops.agent_names)
        if to not in known:
            names = ", ".join(sorted(known - {OPERATOR})) or "none"
            raise NotFound(f"no agent named {to!r} (known: {names})", "to")
        m = self.broker.send(OPERATOR, to, str(doc["body"]))
        resp.status = falcon.HTTP_201
        resp.media = {"id": m.id, "message": message_view(m)}

    async def on_post_lifecycle(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str, verb: str
    ) -> None:
        """``POST /api/agents/{name}/{start|kill|restart|update}`` → ``{"result": str}``."""
        try:
            lifecycle = Lifecycle(verb)
        except ValueError as e:
            verbs = ", ".join(v.value for v in Lifecycle)
            raise NotFound(f"unknown verb {verb!r}; use one of {verbs}", "verb") from e
        check_agent_name(name)
        await _no_fields(req, verb)
        result = await self._verb(self.ops.lifecycle, lifecycle, name)
        resp.media = {"agent": name, "verb": verb, "result": result}

    async def on_post_reconcile(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``POST /api/reconcile``: run one pass now (or ``dry_run``: only plan it)."""
        doc = await read_body(req)
        if "dry_run" in doc:
            doc["dry_run"] = truthy(doc["dry_run"], "dry_run")
        checked(doc, "wire#ReconcileRequest")
        result = await self._verb(self.ops.reconcile, bool(doc.get("dry_run", False)))
        resp.media = result.to_json()

    async def on_post_answer(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, qid: str
    ) -> None:
        """``POST /api/questions/{id}/answer`` with ``answer`` (a list of choices is joined)."""
        qid_ = parse_id(qid, "id")
        doc = await read_body(req)
        answer = doc.get("answer")
        if isinstance(answer, list) and all(isinstance(a, str) for a in answer):
            doc["answer"] = ", ".join(a.strip() for a in answer if a.strip())
        checked(doc, "wire#AnswerQuestionRequest")
        if not str(doc["answer"]).strip():
            raise Invalid("an answer is required (or cancel the question)", "answer")
        result = self.broker.answer_question(qid_, str(doc["answer"]).strip())
        resp.media = {"id": qid_, "answered": True, "result": _jsonable(result)}

    async def on_post_cancel(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, qid: str
    ) -> None:
        """``POST /api/questions/{id}/cancel``: the manager gets ``[cancelled]``."""
        qid_ = parse_id(qid, "id")
        await _no_fields(req, "cancel")
        result = self.broker.cancel_question(qid_)
        resp.media = {"id": qid_, "cancelled": True, "result": _jsonable(result)}

    # ----------------------------------------------------------------- one agent

    async def on_get_describe(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``GET /api/agents/{name}``: conditions in full, last deploys, recent events."""
        check_agent_name(name)
        with _agent_not_found(name):
            doc = await asyncio.to_thread(self.ops.describe, name)
        resp.media = describe_view(doc)

    async def on_get_journal(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``GET /api/agents/{name}/journal?unit=harness|machine&lines=N`` → ``{"text", ..}``."""
        check_agent_name(name)
        raw_unit = req.get_param("unit") or "harness"
        if raw_unit not in JOURNAL_UNITS:
            raise Invalid(
                f"unit {raw_unit[:40]!r} is not allowed: use 'harness' ({HARNESS_UNIT}) "
                "or 'machine' (the whole machine journal)",
                "unit",
            )
        unit = JOURNAL_UNITS[raw_unit]
        lines = int_param(req, "lines", 1, JOURNAL_MAX_LINES) or JOURNAL_LINES
        with _agent_not_found(name):
            text = await asyncio.to_thread(self.ops.journal, name, unit, lines)
        resp.cache_control = ["no-store"]
        resp.media = {
            "agent": name,
            "unit": unit,
            "lines": lines,
            "text": text,
            "fetched_at": rfc3339(time.time()),
        }

    async def on_get_config(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``GET /api/agents/{name}/config``: what the agent is deployed from."""
        check_agent_name(name)
        with _agent_not_found(name):
            doc = await asyncio.to_thread(self.ops.agent_config, name)
        resp.media = config_view(name, doc)

    async def on_post_destroy(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``POST /api/agents/{name}/destroy`` with ``{"purge"?}``: its state is kept unless
        ``purge``. The manager cannot be destroyed."""
        check_agent_name(name)
        doc = await read_body(req)
        for key in doc:
            if key != "purge":
                raise Invalid(f"unknown field {key!r}; destroy takes only 'purge'", key)
        purge = truthy(doc.get("purge", False), "purge")
        if name == MANAGER:
            raise Invalid("the manager cannot be destroyed (it is required infrastructure)", "name")
        with _agent_not_found(name):
            result = await self._verb(self.ops.destroy, name, purge)
        resp.media = {"agent": name, "purged": purge, "result": result}

    async def on_post_purge(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """``POST /api/tombstones/{id}/purge``: delete a destroyed agent's kept state.

        ``id`` is a tombstone id (``<agent>-<unix seconds>``) or an agent name.
        """
        if name == MANAGER or not (is_agent_name(name) or _TOMBSTONE_ID_RE.fullmatch(name)):
            raise NotFound(f"no kept state for {name!r}", "name")
        await _no_fields(req, "purge")
        with _agent_not_found(name):
            result = await self._verb(self.ops.purge, name)
        resp.media = {"agent": name, "purged": True, "result": result}
