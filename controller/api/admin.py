"""The operator's admin API on ``<run>/host.sock`` (the CLI and the meta.git hook use it).

Every request must carry ``Authorization: Bearer <operator key>`` (the key in
``<state>/operator.key``, ``controller.auth.operator``), else 401 before
anything else is looked at; it then acts as the operator (sender name
``operator``). Endpoints:

=====================================  ========================  ==============================
``GET  /status``                                                 ``SwarmOps.status()``
``GET  /proposals?pending=1``                                    ``{"proposals": [Proposal]}``
``GET  /proposals/{id}``                                         Proposal
``POST /proposals/{id}/approve``       DecisionRequest           Proposal
``POST /proposals/{id}/deny``          DecisionRequest           Proposal
``POST /send``                         OperatorSendRequest       ``{"id", "status"}``
``POST /answer``                       AnswerRequest             ``{"id", "thread", "status"}``
``GET  /messages?since=ID&limit=N``                              ``{"messages": [Message]}``
``GET  /messages/stream``                                        SSE (``event: message``)
``POST /reconcile``                    ReconcileRequest          PassResult
``POST /poke``                         ``{}``                    202 ``{"accepted": true}``
``GET  /questions?pending=1``                                    ``{"questions": [Question]}``
``GET  /questions/{id}``                                         Question
``POST /questions/{id}/answer``        AnswerQuestionRequest     Question
``POST /questions/{id}/cancel``        ``{}``                    Question
``GET  /agents/{name}``                                          admin#DescribeResponse
``POST /agents/{name}/destroy``        admin#DestroyRequest      admin#ResultResponse
``GET  /agents/{name}/journal``        ``?unit=&lines=``         admin#JournalResponse
``GET  /agents/{name}/config``                                   admin#AgentConfigResponse
``POST /agents/{name}/{verb}``         ``{}``                    ``{"name", "verb", "result"}``
``GET  /tombstones``                                             admin#TombstonesResponse
``POST /tombstones/{name}/purge``      ``{}``                    admin#ResultResponse
``POST /login``                        ``{}``                    ``{"token", "expires_at", "url"}``
``GET  /budget?name=``                                           spend against budget (budgets.md)
``POST /budget/allow``                 admin#BudgetAllowRequest  ``{"result", "standing"}``
=====================================  ========================  ==============================

``{verb}`` is ``start``, ``kill``, ``restart`` or ``update`` (``hyperhive start / stop /
restart``); ``result`` says what was done.

``/login`` makes a one-time dashboard login token (``controller.auth.LoginTokens``:
single use, 10 minutes); ``url`` is the dashboard's ``/login?token=…`` URL when the
controller knows where the dashboard listens, else null. ``hyperhive dashboard``
prints it.

Bodies of the ``/agents`` and ``/tombstones`` verbs are validated against
``schemas/json/admin.schema.json``. ``{name}`` is an agent name (a bad one is a
400 naming ``name``); ``/tombstones/{name}/purge`` also takes one tombstone's id
(``alice-1700000000``). ``destroy`` commits the removal on main and runs a pass
before it answers (so it may take as long as a pass). ``journal``'s ``lines`` is
1..5000 (default 200); ``unit`` may only name the harness unit.

``/answer`` lets the operator answer a thread an agent opened with
``ask(to="operator")``. The stream sends each new message as ``event:
message`` with ``id: <message id>`` and ``data: <Message JSON>``; it resumes
after ``Last-Event-ID`` (or ``?since=ID``), else starts with the next new
message; a heartbeat comment follows 15 s of silence.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import falcon

from controller.api.common import (
    HEARTBEAT_SECONDS,
    ID_MAX,
    App,
    BearerAuth,
    Request,
    Response,
    SseEvent,
    StreamSlots,
    body,
    last_event_id,
    make_app,
    query_bool,
    query_int,
    read_json,
    stream_sse,
)
from controller.auth.sessions import LoginTokens
from controller.broker import Broker
from controller.budget.http import add_budget_routes
from controller.budget.service import Budgets
from controller.errors import Invalid, NotFound
from controller.ops import Lifecycle, SwarmOps
from hivehttp.encoding import MIN_BYTES as GZIP_MIN_BYTES
from hivehttp.encoding import GzipCache, accepts_gzip
from schemas.names import AGENT_NAME_RE, AGENT_NAME_RULE, MANAGER, OPERATOR
from schemas.validate import validate
from schemas.wire import rfc3339

TOMBSTONE_ID_MAX = 24

_ID = f"{{id:int(min=1, max={ID_MAX})}}"

_off = asyncio.to_thread


def _empty(doc: dict[str, Any], verb: str) -> None:
    """``Invalid`` naming the first field when a verb that takes ``{}`` got fields."""
    if doc:
        key = sorted(doc)[0]
        raise Invalid(f"{key}: is not an allowed field ({verb} takes an empty object)", key)


class _Status:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops
        self.gz = GzipCache()

    async def on_get(self, req: Request, resp: Response) -> None:
        # the swarm keeps the encoded document while nothing in it moved, and the same
        # bytes object keys its gzip form: an unchanged swarm is never compressed twice
        gz = accepts_gzip(req.get_header("Accept-Encoding"))
        resp.data, coding = await _off(self._body, gz)
        resp.content_type = falcon.MEDIA_JSON
        resp.vary = ["Accept-Encoding"]
        if coding:
            resp.set_header("Content-Encoding", coding)

    def _body(self, gz: bool) -> tuple[bytes, str]:
        body = self.ops.status_json()
        if gz and len(body) >= GZIP_MIN_BYTES:
            return self.gz.encode(body, body), "gzip"
        return body, ""


class _Proposals:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops

    async def on_get(self, req: Request, resp: Response) -> None:
        pending = query_bool(req, "pending")
        rows = await _off(self.ops.proposals, pending)
        resp.media = {"proposals": [p.to_json() for p in rows]}

    async def on_get_one(self, req: Request, resp: Response, id: int) -> None:
        resp.media = (await _off(self.ops.proposal, id)).to_json()

    async def on_post_approve(self, req: Request, resp: Response, id: int) -> None:
        doc = await body(req, "DecisionRequest")
        resp.media = (await _off(self.ops.approve, id, doc.get("note", ""))).to_json()

    async def on_post_deny(self, req: Request, resp: Response, id: int) -> None:
        doc = await body(req, "DecisionRequest")
        resp.media = (await _off(self.ops.deny, id, doc.get("note", ""))).to_json()


class _Send:
    def __init__(self, broker: Broker, ops: SwarmOps) -> None:
        self.broker = broker
        self.ops = ops

    async def on_post(self, req: Request, resp: Response) -> None:
        doc = await body(req, "OperatorSendRequest")
        known = set(await _off(self.ops.agent_names)) | {MANAGER, OPERATOR}
        if doc["to"] not in known:
            raise NotFound(
                f"no agent named {doc['to']!r}; agents: {', '.join(sorted(known))}", "to"
            )
        m = self.broker.send(OPERATOR, doc["to"], doc["body"])
        resp.media = {"id": m.id, "status": self.broker.status(OPERATOR).to_json()}


class _Answer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def on_post(self, req: Request, resp: Response) -> None:
        doc = await body(req, "AnswerRequest")
        m = self.broker.answer(OPERATOR, doc["thread"], doc["body"])
        resp.media = {
            "id": m.id,
            "thread": m.thread,
            "status": self.broker.status(OPERATOR).to_json(),
        }


class _Messages:
    def __init__(self, broker: Broker, heartbeat: float, slots: StreamSlots) -> None:
        self.broker = broker
        self.heartbeat = heartbeat
        self.slots = slots

    async def on_get(self, req: Request, resp: Response) -> None:
        since = query_int(req, "since", 0, 0, ID_MAX)
        limit = query_int(req, "limit", 200, 1, 1000)
        resp.media = {"messages": [m.to_json() for m in self.broker.messages(since, limit)]}

    async def on_get_stream(self, req: Request, resp: Response) -> None:
        since = last_event_id(req, self.broker.last_id())

        async def fetch(cursor: int, timeout: float) -> list[SseEvent]:
            return [
                SseEvent(m.id, "message", json.dumps(m.to_json(), ensure_ascii=False))
                for m in await self.broker.wait_for_new_async(cursor, timeout)
            ]

        stream_sse(
            req,
            resp,
            fetch,
            since,
            heartbeat=self.heartbeat,
            stopped=lambda: self.broker.closed,
            slots=self.slots,
        )


class _Reconcile:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops

    async def on_post(self, req: Request, resp: Response) -> None:
        doc = await body(req, "ReconcileRequest")
        result = await _off(self.ops.reconcile, doc.get("dry_run", False))
        resp.media = result.to_json()


class _Poke:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops

    async def on_post(self, req: Request, resp: Response) -> None:
        _empty(await read_json(req), "poke")
        self.ops.request_pass("hook")  # never blocks (an event and a short lock)
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": True}


class _Questions:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def on_get(self, req: Request, resp: Response) -> None:
        pending = query_bool(req, "pending")
        resp.media = {
            "questions": [q.to_json() for q in self.broker.questions(pending_only=pending)]
        }

    async def on_get_one(self, req: Request, resp: Response, id: int) -> None:
        resp.media = self.broker.question(id).to_json()

    async def on_post_answer(self, req: Request, resp: Response, id: int) -> None:
        doc = await body(req, "AnswerQuestionRequest")
        resp.media = self.broker.answer_question(id, doc["answer"]).to_json()

    async def on_post_cancel(self, req: Request, resp: Response, id: int) -> None:
        _empty(await read_json(req), "cancel")
        resp.media = self.broker.cancel_question(id).to_json()


def _name(name: str, tombstone_id: bool = False) -> str:
    """A path ``{name}``: an agent name (or, with ``tombstone_id``, ``<agent>-<digits>``)."""
    if AGENT_NAME_RE.fullmatch(name):
        return name
    if tombstone_id and len(name) <= TOMBSTONE_ID_MAX:
        agent, sep, digits = name.rpartition("-")
        if sep and digits.isdigit() and digits.isascii() and AGENT_NAME_RE.fullmatch(agent):
            return name
    raise Invalid(
        f"{name[:40]!r} is not an agent name ({AGENT_NAME_RULE})",
        "name",
    )


class _Agents:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops

    async def on_get(self, req: Request, resp: Response, name: str) -> None:
        resp.media = await _off(self.ops.describe, _name(name))

    async def on_post_destroy(self, req: Request, resp: Response, name: str) -> None:
        doc = await read_json(req)
        validate(doc, "admin#DestroyRequest")
        agent = _name(name)
        result = await _off(self.ops.destroy, agent, bool(doc.get("purge", False)))
        resp.media = {"name": agent, "result": result}

    async def on_get_journal(self, req: Request, resp: Response, name: str) -> None:
        agent = _name(name)
        unit = req.get_param("unit") or None
        if unit is not None and len(unit) > 256:
            raise Invalid("unit is too long", "unit")
        lines = query_int(req, "lines", 200, 1, 5000)
        text = await _off(self.ops.journal, agent, unit, lines)
        resp.media = {"name": agent, "unit": unit, "lines": lines, "text": text}

    async def on_get_config(self, req: Request, resp: Response, name: str) -> None:
        resp.media = await _off(self.ops.agent_config, _name(name))

    async def on_post_lifecycle(self, req: Request, resp: Response, name: str, verb: str) -> None:
        try:
            lifecycle = Lifecycle(verb)
        except ValueError as exc:
            verbs = ", ".join(v.value for v in Lifecycle)
            raise NotFound(f"no agent verb {verb!r} (verbs: {verbs})", "verb") from exc
        validate(await read_json(req), "admin#Empty")
        agent = _name(name)
        result = await _off(self.ops.lifecycle, lifecycle, agent)
        resp.media = {"name": agent, "verb": lifecycle.value, "result": result}


class _Tombstones:
    def __init__(self, ops: SwarmOps) -> None:
        self.ops = ops

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"tombstones": await _off(self.ops.tombstones)}

    async def on_post_purge(self, req: Request, resp: Response, name: str) -> None:
        validate(await read_json(req), "admin#Empty")
        target = _name(name, tombstone_id=True)
        resp.media = {"name": target, "result": await _off(self.ops.purge, target)}


class _Login:
    def __init__(self, tokens: LoginTokens | None, dashboard_url: Callable[[], str | None]) -> None:
        self.tokens = tokens
        self.dashboard_url = dashboard_url

    async def on_post(self, req: Request, resp: Response) -> None:
        _empty(await read_json(req), "login")
        if self.tokens is None:
            raise NotFound("this controller serves no dashboard, so there is nothing to log in to")
        t = self.tokens.issue()
        base = self.dashboard_url()
        url = None
        if base:
            url = f"{base.rstrip('/')}/login?" + urllib.parse.urlencode({"token": t.token})
        resp.media = {"token": t.token, "expires_at": rfc3339(t.expires_at), "url": url}


def operator_auth(operator_key: str) -> BearerAuth:
    """The ``host.sock`` check: ``Authorization: Bearer <operator_key>`` (constant time)."""
    if not operator_key:
        raise ValueError("operator_key must not be empty")
    want = operator_key.encode("ascii")
    return BearerAuth(
        lambda token: token is not None and hmac.compare_digest(token.encode("ascii"), want),
        "host.sock needs the operator key: send 'Authorization: Bearer <key>' with the key "
        "in <state>/operator.key (the hyperhive CLI does this)",
    )


def make_admin_app(
    broker: Broker,
    ops: SwarmOps,
    operator_key: str,
    *,
    login_tokens: LoginTokens | None = None,
    dashboard_url: Callable[[], str | None] = lambda: None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    max_streams: int = 8,
    budgets: Budgets | None = None,
) -> App:
    """The ASGI app for ``host.sock``: the operator's verbs (see the module docstring).

    Every request needs ``Authorization: Bearer <operator_key>`` (401 otherwise).
    ``login_tokens`` backs ``POST /login`` (404 without it; the dashboard redeems
    the same instance); ``dashboard_url()`` is the dashboard's base URL
    (``http://127.0.0.1:7000``) or None. ``max_streams`` caps concurrent
    ``/messages/stream`` clients (503 beyond). ``budgets`` serves ``/budget``
    (``controller.budget.http``). Raises ``ValueError`` for an empty ``operator_key``.
    """
    app = make_app(operator_auth(operator_key))
    app.add_route("/status", _Status(ops))
    proposals = _Proposals(ops)
    app.add_route("/proposals", proposals)
    app.add_route(f"/proposals/{_ID}", proposals, suffix="one")
    app.add_route(f"/proposals/{_ID}/approve", proposals, suffix="approve")
    app.add_route(f"/proposals/{_ID}/deny", proposals, suffix="deny")
    app.add_route("/send", _Send(broker, ops))
    app.add_route("/answer", _Answer(broker))
    messages = _Messages(broker, heartbeat_seconds, StreamSlots(max_streams))
    app.add_route("/messages", messages)
    app.add_route("/messages/stream", messages, suffix="stream")
    app.add_route("/reconcile", _Reconcile(ops))
    app.add_route("/poke", _Poke(ops))
    questions = _Questions(broker)
    app.add_route("/questions", questions)
    app.add_route(f"/questions/{_ID}", questions, suffix="one")
    app.add_route(f"/questions/{_ID}/answer", questions, suffix="answer")
    app.add_route(f"/questions/{_ID}/cancel", questions, suffix="cancel")
    agents = _Agents(ops)
    app.add_route("/agents/{name}", agents)
    app.add_route("/agents/{name}/destroy", agents, suffix="destroy")
    app.add_route("/agents/{name}/journal", agents, suffix="journal")
    app.add_route("/agents/{name}/config", agents, suffix="config")
    app.add_route("/agents/{name}/{verb}", agents, suffix="lifecycle")
    tombs = _Tombstones(ops)
    app.add_route("/tombstones", tombs)
    app.add_route("/tombstones/{name}/purge", tombs, suffix="purge")
    app.add_route("/login", _Login(login_tokens, dashboard_url))
    if budgets is not None:
        add_budget_routes(app, budgets, read_json, "/budget", "operator")
    return app
