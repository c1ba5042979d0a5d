"""The controller's listeners on the shared HTTP core: host.sock, agent sockets, the dashboard.

Every listener runs on ``hivehttp``'s one event loop (see ``hivehttp.server``
for the connection governance): a parked ``recv`` or an open stream is a
suspended coroutine, so 200 agent sockets plus the dashboard cost one
thread, not five per socket as under waitress.

``SocketRegistry`` keeps one agent API socket per agent, opened at deploy and
closed at destroy; each app checks that agent's own credential
(``controller.auth.AgentCredentials``) on every request.
"""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from controller.api.agent import make_agent_app
from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.budget.service import Budgets
from controller.config import TcpListen
from controller.ops import SwarmOps
from controller.paths import Layout
from hivehttp import (
    TCP_LIMITS,
    UNIX_LIMITS,
    Limits,
    Listener,
    Policy,
    SocketInUse,
    serve_tcp,
    serve_unix,
    tls_server_context,
)
from schemas.names import AGENT_NAME_RE, MANAGER, is_agent_name

log = logging.getLogger(__name__)

Served = Listener
"""A running listener (the name the rest of the controller has always used)."""

__all__ = [
    "TCP_LIMITS",
    "UNIX_LIMITS",
    "Served",
    "SocketInUse",
    "SocketRegistry",
    "raise_fd_limit",
    "serve_listen",
    "serve_tcp",
    "serve_unix",
]


def serve_listen(
    spec: TcpListen, app: Any, *, policy: Policy, limits: Limits, name: str
) -> Listener:
    """Serve ``app`` on the configured TCP listener ``spec``: its address, its TLS
    certificate and key when it has them, ``limits`` with the caps it overrides.

    Raises ``OSError`` (address taken, a certificate file unreadable) and
    ``ssl.SSLError`` (a certificate and key that do not parse or match).
    """
    tls = None
    if spec.tls_cert is not None and spec.tls_key is not None:
        tls = tls_server_context(spec.tls_cert, spec.tls_key)
    if spec.max_connections is not None:
        limits = replace(limits, max_connections=spec.max_connections)
    if spec.per_client is not None:
        limits = replace(limits, per_client=spec.per_client)
    return serve_tcp(app, spec.host, spec.port, limits=limits, policy=policy, name=name, tls=tls)


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``want`` (capped by the hard limit); returns it.

    200 agents with a few keep-alive connections each pass the common soft
    limit of 1024 descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("raised RLIMIT_NOFILE from %d to %d", soft, target)
            return target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return soft


class SocketRegistry:
    """The per-agent API sockets: one ``make_agent_app`` listener per agent, opened on demand.

    ``ensure("alice")`` serves ``layout.agent_sock("alice")`` (``manager`` →
    the manager socket, manager flavor); ``sync(names)`` makes the open set
    exactly ``names``. ``budgets`` is handed to every agent app (the ``recv`` hold).
    Thread-safe (but not from the HTTP loop's own thread).
    Raises ``ValueError`` for a name that is neither ``manager`` nor a valid
    agent name (no path tricks).
    """

    def __init__(
        self,
        broker: Broker,
        ops: SwarmOps,
        layout: Layout,
        credentials: AgentCredentials,
        *,
        limits: Limits = UNIX_LIMITS,
        perms: int = 0o600,
        budgets: Budgets | None = None,
    ) -> None:
        self.broker = broker
        self.budgets = budgets
        self.ops = ops
        self.layout = layout
        self.credentials = credentials
        self.limits = limits
        self.perms = perms
        self._servers: dict[str, Listener] = {}
        self._lock = threading.Lock()
        raise_fd_limit()

    def ensure(self, agent: str) -> Listener:
        """Serve ``agent``'s socket if it is not served (or it stopped / its file vanished)."""
        # fullmatch: AGENT_NAME_RE.match with "$" would let "alice\n" through
        if not is_agent_name(agent) or (not AGENT_NAME_RE.fullmatch(agent) and agent != MANAGER):
            raise ValueError(f"not an agent name: {agent!r}")
        with self._lock:
            served = self._servers.get(agent)
            if served is not None and served.alive:
                return served
            if served is not None:
                log.warning("socket for %s is gone; serving it again", agent)
                served.stop(timeout=1.0)
            app = make_agent_app(
                self.broker,
                agent,
                self.ops,
                "manager" if agent == MANAGER else "agent",
                credentials=self.credentials,
                budgets=self.budgets,
            )
            served = serve_unix(
                app,
                self.layout.agent_sock(agent),
                perms=self.perms,
                limits=self.limits,
                name=agent,
            )
            self._servers[agent] = served
            return served

    def get(self, agent: str) -> Listener | None:
        """The listener for ``agent``, if one is open."""
        with self._lock:
            return self._servers.get(agent)

    def remove(self, agent: str, timeout: float = 5.0) -> bool:
        """Stop serving ``agent``'s socket and delete the file; False if it was not served."""
        with self._lock:
            served = self._servers.pop(agent, None)
        if served is None:
            return False
        served.stop(timeout)
        return True

    def sync(self, names: Iterable[str]) -> None:
        """Serve exactly ``names`` (ensure each, remove the rest)."""
        wanted = set(names)
        for agent in sorted(wanted):
            self.ensure(agent)
        with self._lock:
            extra = [a for a in self._servers if a not in wanted]
        for agent in extra:
            self.remove(agent)

    def names(self) -> list[str]:
        """Agents whose socket is open, sorted."""
        with self._lock:
            return sorted(self._servers)

    def close_all(self, timeout: float = 5.0) -> None:
        """Stop every agent socket; parked requests see their client gone and return."""
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for served in servers:
            served.stop(timeout)
