"""The agent and manager APIs on TCP: who is calling is whose credential it is.

On a unix socket an agent is known by the socket it connects to and its
credential. A TCP listener has one address for every agent, so here the
credential alone names the caller: ``make_tcp_agent_app(broker, ops,
credentials)`` answers every request with ``Authorization: Bearer <token>``
by ``AgentCredentials.identify(token)`` (a SHA-256 lookup among the current
credentials, confirmed by a constant-time compare), then serves it with that
agent's own app (``controller.api.agent.make_agent_app``: the same verbs,
checks and answers as its socket; the manager's verbs only for the manager's
credential). Nothing in the body or the connection can change the identity:
the app is chosen before the body is looked at.

Refusals:

- no credential, or one that names no agent (the operator key included):
  401 ``unauthorized`` from the request's head alone, before its body is read
  (``TcpAgentApi.admit``, the listener policy's ``admit``); one log line per
  10 s at most with the count and the last peer (``controller.auth.refusals``),
  so a flood does not flood the log;
- the operator's admin API (``host.sock``: proposals, approvals, reconcile,
  destroy, the login tokens) is not served here at all: its paths are 404s
  after the credential check, like any unknown path.

The listener's ``hivehttp`` policy (``api_policy``) adds the ``Host`` allow-list,
JSON-only and same-origin mutations and the 1 MiB body limit; its ``Limits``
(``API_LIMITS``, or the config's) cap connections per client address.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from controller.api.agent import Flavor, make_agent_app
from controller.api.common import error_body
from controller.auth.agents import AgentCredentials
from controller.auth.bearer import bearer_token
from controller.auth.refusals import RefusalLog
from controller.broker import Broker
from controller.budget.service import Budgets
from controller.ops import SwarmOps
from hivehttp import LOOPBACK_HOSTS, Limits, Policy, Refusal
from hivehttp.guard import Admit, Receive, Scope, Send
from schemas.names import MANAGER

log = logging.getLogger(__name__)

API_LIMITS = Limits(max_connections=1024, per_client=64)
"""Default connection caps of the agent API listener: an agent's harness holds a few
connections (its long poll, the MCP tools, its web UI's calls), so 64 per client
address is plenty for one agent per address; behind a proxy or an Ingress every
agent shares the proxy's address, and ``api: {per_client}`` must be raised."""

UNAUTHORIZED_MESSAGE = (
    "the agent API needs the calling agent's own credential: send "
    "'Authorization: Bearer <token>' with the token in $HYPERHIVE_CREDENTIAL_FILE"
)


IDENTITY = "hyperhive.identity"
"""Scope key: the agent ``TcpAgentApi.admit`` found the request's credential to name."""

_CHALLENGE = ((b"www-authenticate", b'Bearer realm="hyperhive"'),)


def api_policy(extra_hosts: frozenset[str] = frozenset(), admit: Admit | None = None) -> Policy:
    """The ``hivehttp`` policy of the agent API listener: ``admit`` (``TcpAgentApi.admit``:
    the credential, checked before the body is read), the ``Host`` allow-list (loopback
    names plus ``extra_hosts``), JSON-only mutations, same-origin mutations, 1 MiB bodies.

    The harness sends JSON with no ``Origin``; a web page that reaches the port cannot
    send a JSON body cross-site without a preflight, and has no credential anyway.
    """
    return Policy(
        allowed_hosts=LOOPBACK_HOSTS | {h.lower() for h in extra_hosts},
        json_mutations=True,
        same_origin=True,
        admit=admit,
    )


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bearer_token(bytes(value).decode("latin-1"))
    return None


async def _unauthorized(send: Send) -> None:
    body = json.dumps(error_body("unauthorized", UNAUTHORIZED_MESSAGE)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *_CHALLENGE,
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class TcpAgentApi:
    """ASGI app: the agent API for whichever agent the bearer credential names.

    One app per identity is made on first use (``make_agent_app``) and kept;
    the credential is checked again by that app, so a credential rotated
    between the lookup and the request is still refused.
    """

    def __init__(
        self,
        broker: Broker,
        ops: SwarmOps,
        credentials: AgentCredentials,
        budgets: Budgets | None = None,
    ) -> None:
        self.broker = broker
        self.ops = ops
        self.credentials = credentials
        self.budgets = budgets
        self._apps: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.refusals = RefusalLog("agent API")

    @property
    def app(self) -> Any:
        """The manager's app, which has every route: ``hivehttp.observe`` reads route
        templates for the request metrics from it (it never serves a request from here)."""
        return self.app_for(MANAGER)

    def app_for(self, identity: str) -> Any:
        """The agent app answering as ``identity`` (made once)."""
        with self._lock:
            app = self._apps.get(identity)
            if app is None:
                flavor: Flavor = "manager" if identity == MANAGER else "agent"
                app = make_agent_app(
                    self.broker, identity, self.ops, flavor, self.credentials, self.budgets
                )
                self._apps[identity] = app
            return app

    def identify(self, scope: Scope) -> str | None:
        """The agent the request's bearer credential names, or None (the refusal counted)."""
        token = _token(scope)
        identity = self.credentials.identify(token)
        if identity is None:
            self.refusals.note(
                _peer(scope), "no credential" if token is None else "not an agent's credential"
            )
        return identity

    def admit(self, scope: Scope) -> Refusal | None:
        """The listener policy's check of a request's head: 401 unless its credential names
        an agent, who is noted in the scope for ``__call__``."""
        identity = self.identify(scope)
        if identity is None:
            return Refusal(401, "unauthorized", UNAUTHORIZED_MESSAGE, _CHALLENGE)
        scope[IDENTITY] = identity
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        identity = scope.get(IDENTITY)
        if not isinstance(identity, str):  # served without ``admit`` in front
            identity = self.identify(scope)
            if identity is None:
                await _unauthorized(send)
                return
        await self.app_for(identity)(scope, receive, send)


def make_tcp_agent_app(
    broker: Broker,
    ops: SwarmOps,
    credentials: AgentCredentials,
    budgets: Budgets | None = None,
) -> TcpAgentApi:
    """The agent API app for the TCP listener (see the module doc); ``budgets`` holds an
    over-budget agent's ``recv`` as on its socket."""
    return TcpAgentApi(broker, ops, credentials, budgets)
