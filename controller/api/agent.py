"""The agent and manager socket API (``<run>/agents/<a>/mcp.sock``, ``<run>/manager/mcp.sock``).

Identity is the socket the request arrived on *and* the agent's credential:
each socket gets its own app built with ``make_agent_app(broker, identity,
ops, flavor, credentials)``, and every request must carry ``Authorization:
Bearer <identity's credential>`` (``controller.auth.AgentCredentials``), else
401 before anything else is looked at. Bodies are
``wire.schema.json`` ``$defs``; every broker verb's response carries the
caller's inbox ``status``. Endpoints (docs/architecture.md):

=========================  ====================  =========================================
``POST /send``             SendRequest           ``{"id", "duplicate", "status"}``
``POST /recv``             RecvRequest           ``{"message": Message|null, "status"}``
``POST /ack``              AckRequest            ``{"acked", "status"}``
``POST /spend``            SpendReport           ``{"recorded"}``
``POST /ask``              AskRequest            ``{"id", "thread", "duplicate", "status"}``
``POST /answer``           AnswerRequest         ``{"id", "thread", "status"}``
``POST /remind``           RemindRequest         ``{"id", "due_at", "duplicate", "status"}``
``POST /recent``           RecentRequest         ``{"messages": [...], "status"}``
``GET  /status``                                 Status
``POST /wake``             WakeRequest           ``{"id", "duplicate", "status"}``
``POST /report``           AgentReport           ``{"ok", "status"}``
=========================  ====================  =========================================

Manager socket only (404 with a hint on an agent socket): ``POST /request_spawn``
(SpawnRequest), ``/request_apply_commit`` (ApplyCommitRequest) → ``{"id", "ref",
"title", "status"}``; ``POST /start`` ``/kill`` ``/restart`` ``/update``
(NameRequest) → ``{"result", "status"}``; ``POST /ask_operator``
(AskOperatorRequest) → ``{"id", "status"}``; ``GET /list`` → ``{"agents": [...],
"status"}``.

Idempotency: ``send``, ``ask``, ``remind`` and ``wake`` take an optional
``idempotency_key`` (1..128 characters, unique per socket identity). A repeat
of the same request with the same key answers the original message's id (and
thread / due time) with ``"duplicate": true`` and queues nothing; the same key
with a different request is a 409 naming ``idempotency_key``. So a client may
retry a send whose answer it never got (controller restart) without sending
twice.

Policy: ``send`` and ``ask`` need a recipient that exists (an agent in
desired state, ``manager`` or ``operator``; else 404 listing who exists) and,
when the caller's ``allowedRecipients`` is non-empty, one on that list or
``manager`` (else 403 telling the model to go through the manager). Reading
desired state may wait on the reconcile thread, so it runs in a worker thread;
its answer is kept for ``RECIPIENTS_TTL`` seconds and a recipient it allowed is
allowed again inline meanwhile (a worker-thread hop is ~60 µs, a third of a
send). A refusal is never answered from the cache: a new agent is reachable at
once, a removed agent or a narrowed allow list bites within ``RECIPIENTS_TTL``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import falcon

from controller.api.common import (
    BearerAuth,
    HasScope,
    Request,
    Response,
    body,
    client_gone,
    make_app,
)
from controller.api.fastpath import BearerCheck, FastRoute, FastVerbs
from controller.auth.agents import AgentCredentials
from controller.broker import Broker
from controller.budget.service import Budgets
from controller.errors import Forbidden, NotFound
from controller.ops import Lifecycle, SwarmOps
from schemas.names import MANAGER, OPERATOR
from schemas.wire import MANAGER_ONLY_VERBS, Message, MessageKind, rfc3339

Flavor = Literal["agent", "manager"]

RECIPIENTS_TTL = 1.0
"""Seconds a recipient check's reading of desired state is reused (see the module doc)."""

T = TypeVar("T")

Handler = Callable[[dict[str, Any], HasScope], Awaitable[dict[str, Any]]]

MANAGER_VERBS = MANAGER_ONLY_VERBS
"""Paths (without the slash) that only the manager socket serves."""


def _dup(m: Message) -> bool:
    return bool(m.extra.get("duplicate", False))


@dataclass(frozen=True)
class _Recipients:
    """One reading of who exists (``names``) and whom the caller may message (``allowed``,
    empty = anyone), good until ``until`` (monotonic seconds)."""

    names: frozenset[str]
    allowed: tuple[str, ...]
    until: float

    def allows(self, to: str) -> bool:
        """True when this reading lets the caller message ``to``."""
        return to in self.names and (not self.allowed or to in self.allowed or to == MANAGER)


async def _let_woken_run() -> None:
    """Yield once, so that a receiver the last commit woke on this loop answers before
    the sender's own response is built (the wake is the latency that matters)."""
    await asyncio.sleep(0)


class _Post:
    """``POST`` endpoint: validate the body against ``schema`` and answer ``await fn(doc, req)``."""

    def __init__(self, schema: str, fn: Handler, status: str = falcon.HTTP_200) -> None:
        self._schema = schema
        self._fn = fn
        self._status = status

    async def on_post(self, req: Request, resp: Response) -> None:
        resp.media = await self._fn(await body(req, self._schema), req)
        resp.status = self._status


class _Get:
    """``GET`` endpoint answering ``await fn({}, req)``."""

    def __init__(self, fn: Handler) -> None:
        self._fn = fn

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = await self._fn({}, req)


class _ManagerOnly:
    """A manager verb asked of an agent socket: 404 that says why."""

    def __init__(self, verb: str, identity: str) -> None:
        self._message = (
            f"{verb} is a manager verb and this is {identity}'s socket; "
            f"ask the manager to do it (send to '{MANAGER}')"
        )

    async def on_get(self, req: Request, resp: Response) -> None:
        raise NotFound(self._message)

    async def on_post(self, req: Request, resp: Response) -> None:
        raise NotFound(self._message)


class AgentApi:
    """The handlers behind one agent or manager socket (``identity`` = who is calling).

    Broker calls are short sqlite statements and run on the event loop;
    ``SwarmOps`` calls (git, the driver, the pass lock) run in a worker
    thread (``asyncio.to_thread``).
    """

    def __init__(
        self,
        broker: Broker,
        identity: str,
        ops: SwarmOps,
        flavor: Flavor,
        budgets: Budgets | None = None,
    ) -> None:
        self.broker = broker
        self.identity = identity
        self.ops = ops
        self.flavor = flavor
        self.budgets = budgets
        self._recipients: _Recipients | None = None

    # -------------------------------------------------------------- policy

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a broker call: inline on sqlite (a few short statements),
        in a worker thread on PostgreSQL, whose round trips would hold the loop and every
        other socket's request (``Broker.blocking``)."""
        if self.broker.blocking:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def _status(self) -> dict[str, int]:
        status = await self._io(self.broker.status, self.identity)
        return status.to_json()

    async def allow_recipient(self, to: str, field: str = "to") -> None:
        """``check_recipient`` for the event loop: inline when a fresh reading (under
        ``RECIPIENTS_TTL`` seconds old) allows ``to``, else in a worker thread (which
        also refreshes the reading). Raises what ``check_recipient`` raises."""
        cached = self._recipients
        if cached is not None and time.monotonic() < cached.until and cached.allows(to):
            return
        await asyncio.to_thread(self.check_recipient, to, field)

    def check_recipient(self, to: str, field: str = "to") -> None:
        """``NotFound`` unless ``to`` exists; ``Forbidden`` if the caller's allow list bars it.

        Blocking (reads desired state): call it through ``asyncio.to_thread``, or
        ``allow_recipient`` on the loop. Keeps what it read for ``allow_recipient``.
        """
        started = time.monotonic()
        known = frozenset(self.ops.agent_names()) | {MANAGER, OPERATOR}
        allowed = tuple(self.ops.allowed_recipients(self.identity))
        self._recipients = _Recipients(known, allowed, started + RECIPIENTS_TTL)
        if to not in known:
            names = sorted(known)
            shown = ", ".join(names[:60]) + (
                f" and {len(names) - 60} more" if len(names) > 60 else ""
            )
            raise NotFound(f"no agent named {to!r}; you can address: {shown}", field)
        if allowed and to not in allowed and to != MANAGER:
            raise Forbidden(
                f"{self.identity} may only message {', '.join(allowed)} (allowedRecipients); "
                f"send it to '{MANAGER}' instead and ask the manager to relay it",
                field,
            )

    # -------------------------------------------------------------- broker verbs

    async def send(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /send``."""
        await self.allow_recipient(doc["to"])
        m = await self._io(
            self.broker.send,
            self.identity,
            doc["to"],
            doc["body"],
            idempotency_key=doc.get("idempotency_key"),
            traceparent=doc.get("traceparent"),  # stored with the message (observability.md)
        )
        await _let_woken_run()
        return {"id": m.id, "duplicate": _dup(m), "status": await self._status()}

    async def recv(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /recv``: parks on the event loop up to ``wait_seconds`` (no thread held);
        gives up without taking a message when the client goes away. While the caller is
        over budget (docs/budgets.md) it is held instead, taking nothing, and answers
        ``{"message": null, "held": why}`` when the wait runs out."""
        wait = doc.get("wait_seconds", 0)
        gone = client_gone(req)
        if self.budgets is not None:
            held, wait = await self.budgets.hold(self.identity, wait, gone)
            if held is not None:
                return {"message": None, "status": await self._status(), "held": held}
        m = await self.broker.recv_async(
            self.identity, wait, doc.get("lease_seconds"), abandoned=gone
        )
        if m is not None and self.budgets is not None:
            # the bound on how many turns its spend reports may count (docs/budgets.md)
            await asyncio.to_thread(self.budgets.note_delivery, self.identity)
        msg = None if m is None else m.to_json()  # with its traceparent, if it has one
        return {"message": msg, "status": await self._status()}

    async def spend(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /spend``: the caller's harness reports a finished turn (docs/budgets.md)."""
        if self.budgets is None:
            return {"recorded": False}
        recorded = await asyncio.to_thread(
            self.budgets.record_turn,
            self.identity,
            doc["turn_id"],
            float(doc["started_at"]),
            float(doc["cost_usd"]),
            doc["tokens"],
        )
        return {"recorded": recorded}

    async def ack(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /ack``."""
        n = await self._io(self.broker.ack, self.identity, doc["ids"])
        return {"acked": n, "status": await self._status()}

    async def release(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /release``: give back leased messages (all, or ``ids``) for redelivery now."""
        n = await self._io(self.broker.release, self.identity, doc.get("ids"))
        return {"released": n, "status": await self._status()}

    async def ask(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /ask``."""
        await self.allow_recipient(doc["to"])
        m = await self._io(
            self.broker.ask,
            self.identity,
            doc["to"],
            doc["question"],
            idempotency_key=doc.get("idempotency_key"),
            traceparent=doc.get("traceparent"),
        )
        return {
            "id": m.id,
            "thread": m.thread,
            "duplicate": _dup(m),
            "status": await self._status(),
        }

    async def answer(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /answer``."""
        m = await self._io(
            self.broker.answer,
            self.identity,
            doc["thread"],
            doc["body"],
            traceparent=doc.get("traceparent"),
        )
        return {"id": m.id, "thread": m.thread, "status": await self._status()}

    async def remind(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /remind``."""
        m = await self._io(
            self.broker.remind,
            self.identity,
            doc["after_seconds"],
            doc["body"],
            idempotency_key=doc.get("idempotency_key"),
        )
        return {
            "id": m.id,
            "due_at": rfc3339(float(m.extra["due_at"])),
            "duplicate": _dup(m),
            "status": await self._status(),
        }

    async def recent(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /recent``."""
        rows = await self._io(self.broker.recent, self.identity, doc.get("limit", 20))
        return {"messages": [m.to_json() for m in rows], "status": await self._status()}

    async def status(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``GET /status``."""
        return await self._status()

    async def report(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /report``: the harness's own report of what it has, kept under the socket's
        identity (an agent speaks only for itself); cheap, so answered inline."""
        self.ops.agent_report(self.identity, doc)
        return {"ok": True, "status": await self._status()}

    async def wake(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /wake``: a message from label ``from`` into the caller's own inbox."""
        m = await self._io(
            self.broker.send,
            doc["from"],
            self.identity,
            doc["body"],
            kind=MessageKind.WAKE,
            idempotency_key=doc.get("idempotency_key"),
            idempotency_owner=self.identity,
        )
        await _let_woken_run()
        return {"id": m.id, "duplicate": _dup(m), "status": await self._status()}

    # -------------------------------------------------------------- manager verbs

    async def request_spawn(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /request_spawn``."""
        p = await asyncio.to_thread(self.ops.request_spawn, doc["name"])
        return {
            "id": p.id,
            "ref": f"proposal/{p.id}",
            "title": p.title,
            "status": await self._status(),
        }

    async def request_apply_commit(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /request_apply_commit``."""
        p = await asyncio.to_thread(
            self.ops.request_apply_commit, doc["commit"], doc.get("note", "")
        )
        return {
            "id": p.id,
            "ref": f"proposal/{p.id}",
            "title": p.title,
            "status": await self._status(),
        }

    def lifecycle(self, verb: Lifecycle) -> Handler:
        """``POST /start`` ``/kill`` ``/restart`` ``/update``."""

        async def handler(doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
            result = await asyncio.to_thread(self.ops.lifecycle, verb, doc["name"])
            return {"result": result, "status": await self._status()}

        return handler

    async def ask_operator(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``POST /ask_operator``: the question id at once; the answer arrives as an event."""
        qid = await self._io(
            self.broker.ask_operator,
            doc["question"],
            doc.get("options", []),
            doc.get("multi", False),
            doc.get("ttl_seconds"),
            asker=self.identity,
        )
        return {"id": qid, "status": await self._status()}

    async def list_agents(self, doc: dict[str, Any], req: HasScope) -> dict[str, Any]:
        """``GET /list``."""
        agents = await asyncio.to_thread(self.ops.list_agents)
        return {"agents": agents, "status": await self._status()}


def make_agent_app(
    broker: Broker,
    identity: str,
    ops: SwarmOps,
    flavor: Flavor,
    credentials: AgentCredentials,
    budgets: Budgets | None = None,
) -> FastVerbs:
    """The ASGI app for one agent socket (``flavor="agent"``) or the manager socket.

    ``identity`` is the caller every request is attributed to (``alice``,
    ``manager``); every request must carry ``Authorization: Bearer`` with
    ``identity``'s current credential in ``credentials`` (401 otherwise,
    also for another agent's credential). Manager verbs answer 404 on an
    agent socket. ``budgets`` (optional) holds ``recv`` while the agent is over budget.
    Raises ``ValueError`` for an unknown ``flavor``.

    The verbs are served by ``controller.api.fastpath.FastVerbs`` (same checks,
    same answers, without falcon's per-request objects); the falcon app behind it
    answers everything else (unknown paths and methods, manager verbs asked of an
    agent socket) and holds the same routes.
    """
    if flavor not in ("agent", "manager"):
        raise ValueError(f"flavor must be 'agent' or 'manager', not {flavor!r}")
    check = BearerCheck(
        lambda token: credentials.verify(identity, token),
        f"this is {identity}'s socket and it needs {identity}'s credential: send "
        "'Authorization: Bearer <token>' with the token in $HYPERHIVE_CREDENTIAL_FILE",
        credentials.header_check(identity),
    )
    api = AgentApi(broker, identity, ops, flavor, budgets)
    app = make_app(BearerAuth(check.check, check.message))
    fast: dict[tuple[str, str], FastRoute] = {}

    def post(path: str, schema: str, fn: Handler) -> None:
        app.add_route(path, _Post(schema, fn))
        fast[("POST", path)] = FastRoute(schema, fn)

    def get(path: str, fn: Handler) -> None:
        app.add_route(path, _Get(fn))
        fast[("GET", path)] = FastRoute(None, fn)

    post("/send", "SendRequest", api.send)
    post("/recv", "RecvRequest", api.recv)
    post("/ack", "AckRequest", api.ack)
    post("/spend", "SpendReport", api.spend)
    post("/release", "ReleaseRequest", api.release)
    post("/ask", "AskRequest", api.ask)
    post("/answer", "AnswerRequest", api.answer)
    post("/remind", "RemindRequest", api.remind)
    post("/recent", "RecentRequest", api.recent)
    get("/status", api.status)
    post("/wake", "WakeRequest", api.wake)
    post("/report", "AgentReport", api.report)
    if flavor == "manager":
        post("/request_spawn", "SpawnRequest", api.request_spawn)
        post("/request_apply_commit", "ApplyCommitRequest", api.request_apply_commit)
        for verb in Lifecycle:
            post(f"/{verb.value}", "NameRequest", api.lifecycle(verb))
        post("/ask_operator", "AskOperatorRequest", api.ask_operator)
        get("/list", api.list_agents)
    else:
        for verb_name in MANAGER_VERBS:
            app.add_route(f"/{verb_name}", _ManagerOnly(verb_name, identity))
    return FastVerbs(app, check, fast)
