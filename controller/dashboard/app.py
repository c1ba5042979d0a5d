"""The operator dashboard: an ASGI app (``falcon.asgi``) served by ``hivehttp`` on TCP.

``make_dashboard_app(...)`` wires the modules of this package:

- ``login``: ``GET /login?token=`` and the gate; every other route needs the session cookie;
- ``pages``: the page and its assets, and the agent UI's page and assets;
- ``api``: the JSON API (snapshot, proposals, messages, questions, agents);
- ``streams``: the live message flow (SSE) and the caps on open streams;
- ``proxy`` / ``upstream``: each agent's UI API and events, forwarded to its unix socket.

Endpoints (every error is ``{"error": {"code", "message", "field"}}`` with a 4xx):

==========================================  =================================================
``GET  /login?token=T``                     redeem a one-time token → session cookie, 303 ``/``
``GET  /``                                  the page (static ``assets/index.html``)
``GET  /static/{file}``                     ``app.css``, ``app.js``, ``favicon.svg``
``GET  /api/state``                         snapshot the page renders (ETag, 304)
``GET  /api/proposals/{id}``                one proposal with its full diff
``POST /api/proposals/{id}/approve``        ``{"note"?}`` → Proposal
``POST /api/proposals/{id}/deny``           ``{"note"}`` (required) → Proposal
``POST /api/spawn``                         ``{"name"}`` → Proposal (a spawn to approve)
``POST /api/send``                          ``{"to", "body"}`` sent as ``operator``
``GET  /api/agents/{name}``                 describe: conditions, deploys, events
``GET  /api/agents/{name}/journal``         ``?unit=harness|machine&lines=1..5000`` → text
``GET  /api/agents/{name}/config``          manifest YAML, agent.nix, rendered settings
``POST /api/agents/{name}/{verb}``          verb = start / kill / restart / update
``POST /api/agents/{name}/destroy``         ``{"purge"?}``; state kept as a tombstone unless purge
``POST /api/tombstones/{id}/purge``         ``{}``: delete a destroyed agent's kept state
``POST /api/reconcile``                     ``{"dry_run"?}`` → PassResult
``POST /api/questions/{id}/answer``         ``{"answer"}`` (a list is joined with ", ")
``POST /api/questions/{id}/cancel``         ``{}``
``POST /api/logout``                        drop this browser's session cookie
``GET  /api/budget``                        spend against budget per agent and swarm-wide
``POST /api/budget/allow``                  ``{"agent" | "swarm", "usd", "tokens"?, "note"?}``
``GET  /messages/stream``                   SSE message flow (``Last-Event-ID`` / ``?since=`` /
                                            ``?backlog=N``), heartbeat comment every 15 s
``GET  /agents/{name}/``                    the agent UI page (the controller's harness assets)
``GET  /agents/{name}/static/{file}``       its ``app.js`` / ``app.css``
``GET|POST /agents/{name}/api/…``           forwarded to the agent's ``web.sock``
``GET  /agents/{name}/<target>/…``          custom files (``spec.frontend``): 303 to
                                            ``files/<cap>/…``, sandboxed, from the meta repo
``GET  /agents/{name}/events/stream``       forwarded, streamed through as it comes
==========================================  =================================================

POST bodies are JSON only. The listener's ``hivehttp`` policy refuses other
hosts (DNS rebinding), cross-site posts and non-JSON mutations before this app
runs; the session cookie (SameSite=Strict) is what makes the operator the
only one who commands the swarm from a browser.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import falcon
import falcon.asgi

from controller.auth.sessions import LoginTokens, SessionSigner
from controller.budget.http import add_budget_routes
from controller.budget.service import Budgets
from controller.dashboard import upstream
from controller.dashboard.api import ApiBroker, SwarmApi
from controller.dashboard.custom import CustomUi
from controller.dashboard.httputil import (
    handle_hyperhive,
    handle_unexpected,
    handle_validation,
    read_body,
    serialize_http_error,
)
from controller.dashboard.login import LOGIN_PATH, Login, LoginGate, Logout
from controller.dashboard.pages import dashboard_asset
from controller.dashboard.proxy import AgentUi
from controller.dashboard.streams import (
    PER_SESSION_STREAMS,
    TOTAL_STREAMS,
    FlowOptions,
    MessageStream,
    StreamBroker,
    StreamSlots,
)
from controller.errors import HyperhiveError, NotFound
from controller.frontend.files import Capabilities, FrontendFiles
from controller.ops import SwarmOps
from schemas.validate import ValidationFailed

HEARTBEAT_SECONDS = 15.0
"""SSE heartbeat comment interval of the message flow."""


class DashboardBroker(ApiBroker, StreamBroker, Protocol):
    """The broker methods the dashboard calls (``controller.broker.Broker`` has them all):
    the API's (``api.ApiBroker``, with the snapshot's) and the message flow's
    (``streams.StreamBroker``).

    ``questions`` returns operator questions as objects with ``to_json()``,
    dataclasses or mappings; the dashboard reads ``id``, ``question``,
    ``options``, ``multi``, ``asked_at``/``created_at``, ``deadline_at``,
    ``answer`` from them and passes other fields through. Optional extra used
    when present: a ``closed`` flag (ends open streams).
    """


class _Page:
    """``GET /`` and ``GET /static/{file}``: the dashboard page and its assets."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The page shell."""
        dashboard_asset(resp, "index.html")

    async def on_get_static(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, file: str
    ) -> None:
        """One asset from ``controller/dashboard/assets`` (names only, no paths)."""
        if file == "index.html":
            raise NotFound(f"no static file {file!r}", "file")
        dashboard_asset(resp, file)


def make_dashboard_app(
    ops: SwarmOps,
    broker: DashboardBroker,
    *,
    operator_key: str,
    login_tokens: LoginTokens,
    web_sock: Callable[[str], upstream.Upstream],
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    stop: threading.Event | None = None,
    streams_per_session: int = PER_SESSION_STREAMS,
    streams_total: int = TOTAL_STREAMS,
    frontend: FrontendFiles | None = None,
    budgets: Budgets | None = None,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """Build the dashboard ASGI app (serve it with ``hivehttp.serve_tcp``).

    ``operator_key`` signs session cookies (``controller.auth.SessionSigner``);
    ``login_tokens`` is the store ``hyperhive serve`` and ``hyperhive
    dashboard`` mint one-time login tokens in (share it with host.sock's app).
    ``web_sock(name)`` is the path of agent ``name``'s UI socket
    (``Layout.agent_web_sock``), or its TCP address (``upstream.TcpUpstream``: the
    kubernetes runtime's pods). ``heartbeat_seconds`` is the message flow's
    heartbeat; setting ``stop`` ends open message flows within one heartbeat.
    Open SSE streams (message flow and proxied agent events together) are
    capped at ``streams_per_session`` per login and ``streams_total`` overall;
    one more gets 503. ``frontend`` (the meta repo's custom UI files, ``spec.frontend``)
    turns on the sandboxed custom front-ends (``custom``). ``budgets`` serves
    ``/api/budget`` (the spend bars and the extension button). Raises ``ValueError``
    for an empty ``operator_key``.
    """
    signer = SessionSigner(operator_key)
    slots = StreamSlots(streams_per_session, streams_total)
    api = SwarmApi(ops, broker)
    flow = FlowOptions(heartbeat=heartbeat_seconds, stop=stop or threading.Event())
    page = _Page()
    custom = None if frontend is None else CustomUi(frontend, Capabilities(operator_key))
    agents = AgentUi(ops, web_sock, slots, custom=custom)
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response] = falcon.asgi.App(
        cors_enable=False
    )
    app.add_middleware(LoginGate(signer))  # first: nothing runs for a request without a session
    app.add_middleware(api)  # process_response: drop the history cache after a POST
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(HyperhiveError, handle_hyperhive)
    app.add_error_handler(ValidationFailed, handle_validation)
    app.set_error_serializer(serialize_http_error)
    app.add_route(LOGIN_PATH, Login(login_tokens, signer))
    app.add_route("/api/logout", Logout())
    app.add_route("/", page)
    app.add_route("/static/{file}", page, suffix="static")
    app.add_route("/api/state", api, suffix="state")
    app.add_route("/api/proposals/{pid}", api, suffix="proposal")
    app.add_route("/api/proposals/{pid}/approve", api, suffix="approve")
    app.add_route("/api/proposals/{pid}/deny", api, suffix="deny")
    app.add_route("/api/spawn", api, suffix="spawn")
    app.add_route("/api/send", api, suffix="send")
    app.add_route("/api/agents/{name}", api, suffix="describe")
    app.add_route("/api/agents/{name}/journal", api, suffix="journal")
    app.add_route("/api/agents/{name}/config", api, suffix="config")
    app.add_route("/api/agents/{name}/destroy", api, suffix="destroy")
    app.add_route("/api/agents/{name}/{verb}", api, suffix="lifecycle")
    app.add_route("/api/tombstones/{name}/purge", api, suffix="purge")
    app.add_route("/api/reconcile", api, suffix="reconcile")
    app.add_route("/api/questions/{qid}/answer", api, suffix="answer")
    app.add_route("/api/questions/{qid}/cancel", api, suffix="cancel")
    app.add_route("/messages/stream", MessageStream(broker, slots, flow))
    add_budget_routes(app, budgets, read_body, "/api/budget", "operator (dashboard)")
    agents.add_routes(app)
    return app
