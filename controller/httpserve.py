"""Serve WSGI apps with waitress on unix sockets and TCP, each in daemon threads.

Sizing (measured, see docs and ``bench/broker.py``)
--------------------------------------------------
Each server is one waitress instance: its own socket map, its own
``wasyncore`` loop thread and its own pool of ``threads`` workers. A parked
``recv`` (up to 180 s) or an SSE stream holds one worker for its duration,
so the pool is per socket: one agent parking every worker can only starve
its own socket, never another agent's.

* Agent and manager sockets: ``AGENT_THREADS`` = 4 workers (a harness wake
  recv + an MCP recv may park at once and two more calls still run), 1 loop
  thread, ``connection_limit`` 32. 201 sockets (200 agents + manager) →
  1,005 threads, ~810 descriptors, +38 MiB RSS, 0.6 % of one core while
  idle, opened in 1.3 s and closed in 0.1 s (measured with the real apps).
  One shared loop for all sockets was tried (bare waitress, 200 sockets):
  200 fewer threads, but every loop pass walks every socket in Python and
  requests got 4x slower (p50 0.28 → 1.24 ms), so each server keeps its loop.
* ``host.sock`` and TCP (dashboard): ``ADMIN_THREADS`` = 16, limit 100.
* ``channel_timeout`` 300 s (> the 180 s long-poll cap; it only closes idle
  keep-alive connections, never one with a request in progress).
* ``asyncore_use_poll``: ``select()`` cannot watch a descriptor numbered
  1024 or above, which a controller with 200 sockets (4 descriptors each)
  passes; ``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` for the same
  reason.
* ``channel_request_lookahead`` 1: waitress keeps reading while a request
  runs, so it notices a client that hung up and exposes
  ``waitress.client_disconnected``; a parked ``recv`` polls it and gives up
  instead of taking a message nobody will read. (A client that half-closes
  its socket after the request is treated as gone.)
* Bodies over 8 MiB are refused by waitress itself (plain-text 413); the apps
  refuse anything over 1 MiB with a JSON 413.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.trigger import trigger as Trigger

from controller.api.agent import make_agent_app
from controller.broker import Broker
from controller.ops import SwarmOps
from controller.paths import Layout
from schemas.names import AGENT_NAME_RE, MANAGER, is_agent_name

log = logging.getLogger(__name__)

AGENT_THREADS = 4
"""Worker threads per agent / manager socket."""

AGENT_CONNECTION_LIMIT = 32
"""Open connections per agent socket before waitress stops accepting."""

ADMIN_THREADS = 16
"""Worker threads for host.sock and TCP servers."""

ADMIN_CONNECTION_LIMIT = 100
"""Open connections for host.sock and TCP servers."""

CHANNEL_TIMEOUT = 300
"""Seconds an idle keep-alive connection stays open (above the 180 s long poll)."""

MAX_REQUEST_BODY = 8 * 1024 * 1024
"""waitress refuses larger bodies before the app sees them."""

_SUN_PATH_MAX = 107


class SocketInUse(RuntimeError):
    """Another live server answers on the unix socket path we were asked to serve."""


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``want`` (capped by the hard limit); returns it."""
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


def _adjustments(threads: int, connection_limit: int) -> dict[str, Any]:
    return {
        "threads": threads,
        # waitress counts its own listening socket and wake-up pipe against the limit
        "connection_limit": connection_limit + 2,
        "channel_timeout": CHANNEL_TIMEOUT,
        "cleanup_interval": 30,
        "asyncore_use_poll": True,
        "channel_request_lookahead": 1,
        "max_request_body_size": MAX_REQUEST_BODY,
        "ident": "hyperhive",
        "expose_tracebacks": False,
    }


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # refused / gone: stale
        return
    finally:
        probe.close()
    raise SocketInUse(f"{path}: another server is answering on this socket")


class Served:
    """One running waitress server (loop thread + worker pool).

    ``path`` is the unix socket (None for TCP); ``host`` / ``port`` the TCP
    address actually bound (``port`` is the real one when 0 was asked for).
    """

    def __init__(self, server: Any, smap: dict[int, Any], name: str, path: Path | None) -> None:
        self._server = server
        self._map = smap
        self.name = name
        self.path = path
        self._inode: int | None = None
        self.host: str | None = None
        self.port: int | None = None
        if path is not None:
            self._inode = os.stat(path).st_ino
        else:
            listen = getattr(server, "effective_listen", None)
            if listen:
                self.host, port = listen[0][0], listen[0][1]
            else:
                self.host, port = server.effective_host, server.effective_port
            self.port = int(port)
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"http-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:
            log.exception("server %s: loop died", self.name)

    @property
    def alive(self) -> bool:
        """True while the loop thread runs and ``stop`` was not called."""
        return not self._stopped and self._thread.is_alive()

    @property
    def threads(self) -> int:
        """Worker threads of this server."""
        return int(self._server.adj.threads)

    def _close_all(self) -> None:
        for obj in list(self._map.values()):
            try:
                if isinstance(obj, HTTPChannel):
                    obj.handle_close()  # also wakes a worker blocked on the output buffer
                else:
                    obj.close()
            except OSError:
                pass
        self._map.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, let workers finish; remove the socket file.

        Idempotent. Workers in a long poll or SSE stream see their client gone
        and return within about a second; ``timeout`` bounds the wait for the
        loop and the workers (seconds). Threads are daemons, so a worker stuck
        in application code cannot keep the process alive.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread.is_alive():
            triggers = [o for o in self._map.values() if isinstance(o, Trigger)]
            try:
                if not triggers:
                    raise OSError("no trigger")
                triggers[0].pull_trigger(self._close_all)
            except OSError:
                self._close_all()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("server %s: loop did not stop within %.1fs", self.name, timeout)
                self._close_all()
        else:
            self._close_all()
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=min(timeout, 3.0))
        if self.path is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else f"{self.host}:{self.port}"
        return f"<Served {self.name} {where} {'alive' if self.alive else 'stopped'}>"


def serve_unix(
    app: Any,
    path: Path,
    *,
    threads: int = AGENT_THREADS,
    connection_limit: int = AGENT_CONNECTION_LIMIT,
    perms: int = 0o600,
    name: str | None = None,
) -> Served:
    """Serve the WSGI ``app`` on unix socket ``path`` in a daemon thread; returns at once.

    Creates the parent directory (mode 0750), removes a stale socket file
    (nobody answers), chmods the socket to ``perms``. Raises ``SocketInUse``
    if a live server answers there, ``FileExistsError`` if the path is not a
    socket, ``ValueError`` if the path exceeds the 107-byte ``sun_path``.
    """
    path = Path(path).absolute()
    if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
        raise ValueError(f"unix socket path {path} is longer than {_SUN_PATH_MAX} bytes")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    _clear_stale_socket(path)
    smap: dict[int, Any] = {}
    server = create_server(
        app,
        map=smap,
        unix_socket=str(path),
        unix_socket_perms=format(perms, "o"),
        **_adjustments(threads, connection_limit),
    )
    return Served(server, smap, name or path.name, path)


def serve_tcp(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = ADMIN_THREADS,
    connection_limit: int = ADMIN_CONNECTION_LIMIT,
    name: str | None = None,
) -> Served:
    """Serve the WSGI ``app`` on TCP ``host:port`` in a daemon thread; returns at once.

    ``port`` 0 binds an ephemeral port, reported as ``Served.port``. Raises
    ``OSError`` when the address is taken.
    """
    smap: dict[int, Any] = {}
    server = create_server(
        app, map=smap, host=host, port=port, **_adjustments(threads, connection_limit)
    )
    return Served(server, smap, name or f"{host}:{port}", None)


class SocketRegistry:
    """The per-agent API sockets: one ``make_agent_app`` server per agent, opened on demand.

    ``ensure("alice")`` serves ``layout.agent_sock("alice")`` (``manager`` →
    the manager socket, manager flavor); ``sync(names)`` makes the open set
    exactly ``names``. Thread-safe. Raises ``ValueError`` for a name that is
    neither ``manager`` nor a valid agent name (no path tricks).
    """

    def __init__(
        self,
        broker: Broker,
        ops: SwarmOps,
        layout: Layout,
        *,
        threads: int = AGENT_THREADS,
        connection_limit: int = AGENT_CONNECTION_LIMIT,
        perms: int = 0o600,
    ) -> None:
        self.broker = broker
        self.ops = ops
        self.layout = layout
        self.threads = threads
        self.connection_limit = connection_limit
        self.perms = perms
        self._servers: dict[str, Served] = {}
        self._lock = threading.Lock()
        raise_fd_limit()

    def _healthy(self, served: Served) -> bool:
        if not served.alive or served.path is None:
            return False
        try:
            return stat.S_ISSOCK(os.lstat(served.path).st_mode)
        except FileNotFoundError:
            return False

    def ensure(self, agent: str) -> Served:
        """Serve ``agent``'s socket if it is not served (or its server died / file vanished)."""
        # fullmatch: AGENT_NAME_RE.match with "$" would let "alice\n" through
        if not is_agent_name(agent) or (not AGENT_NAME_RE.fullmatch(agent) and agent != MANAGER):
            raise ValueError(f"not an agent name: {agent!r}")
        with self._lock:
            served = self._servers.get(agent)
            if served is not None and self._healthy(served):
                return served
            if served is not None:
                log.warning("socket for %s is gone or dead; serving it again", agent)
                served.stop(timeout=1.0)
            app = make_agent_app(
                self.broker, agent, self.ops, "manager" if agent == MANAGER else "agent"
            )
            served = serve_unix(
                app,
                self.layout.agent_sock(agent),
                threads=self.threads,
                connection_limit=self.connection_limit,
                perms=self.perms,
                name=agent,
            )
            self._servers[agent] = served
            return served

    def get(self, agent: str) -> Served | None:
        """The server for ``agent``, if one is open."""
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
        """Stop every agent socket (in parallel, so shutdown takes ~1 s, not N)."""
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        stoppers = [threading.Thread(target=s.stop, args=(timeout,), daemon=True) for s in servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout + 1.0)
