"""One asyncio loop thread serving every hyperhive HTTP listener: unix sockets and TCP.

HTTP/1.1 parsing and the ASGI cycle are uvicorn's (its httptools protocol:
llhttp in C, about 60 µs a request cheaper than its pure-Python h11 one); what
this module adds is the governance a surface exposed to web pages and
untrusted local processes needs, which uvicorn does not have:

* **a header-read deadline** (``Limits.header_timeout``): a connection must
  send a whole request head within that many seconds of opening (or of the
  first byte of the next keep-alive request). A slowloris client that
  drip-feeds a header a byte at a time is closed, where uvicorn's keep-alive
  timer is reset by every byte and never fires;
* **deadlines by sweep, not by timer**: the head deadline and the keep-alive
  idle timeout are stamps on the connection, checked by one sweep of every
  listener's connections (``sweep_period``: a quarter of the shortest head
  deadline, at most 1 s). uvicorn arms and cancels a timer per request, and so
  did the head deadline: two timer-heap pushes (``TimerHandle.__lt__`` is
  Python) and two cancels, ~5 µs of every request. A deadline fires up to one
  period late (a 10 s head deadline closes within 10-11 s);
* **a head size cap** (``MAX_HEAD_BYTES``): llhttp buffers a header of any
  length, so a head still open past the cap is answered 400 and closed;
* **connection caps** per listener and per client address, with shedding:
  when a cap is reached the oldest connection that is not inside a request
  (waiting for a head, or idle between keep-alive requests) is closed to
  make room, so idle sockets can never lock the operator out; failing that,
  the oldest one still sending its request body (a body is read before any
  app checks a credential, so unfinished uploads from many loopback
  addresses must not hold the listener full); only when every connection
  is busy in a request whose body has arrived is the new one refused (503);
* **one loop for all listeners**: a parked long poll or an open SSE stream
  is a suspended coroutine, not a thread, so 200 agent sockets plus the
  dashboard cost one thread. The loop is uvloop's when it can be imported
  (``hivehttp.loops``);
* the ``guard.Policy`` checks (Host, origin, media type, body size) in
  front of every app;
* **one write per response**: uvicorn writes a response's head and its body
  separately, which is two ``send`` syscalls, each waking the client (~50 µs
  apiece on a loaded host). Writes are gathered (``_Gathered``) and go out
  together when the response is complete (a stream's chunks: once the
  handler yields to the loop).
* **fast routes** (``hivehttp.fastroute``): an app's hottest JSON verbs, recognised
  from the parsed head (exact method and path), are served without the ASGI scope and
  messages, through the guard's own check functions, and answered in one write.

Listeners are opened and closed from any thread (``serve_unix``,
``serve_tcp``, ``Listener.stop``); the loop runs in a daemon thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from hivehttp.fastroute import FastCycle, FastHandler
from hivehttp.guard import BODY_READ, GONE, Gone, Policy, guarded
from hivehttp.loops import new_loop
from hivehttp.observe import current_observer, observed, route_of

log = logging.getLogger(__name__)

T = TypeVar("T")

SUN_PATH_MAX = 107
"""Longest unix socket path the kernel accepts (``sun_path`` less the NUL)."""

EXECUTOR_WORKERS = 32
"""Threads ``asyncio.to_thread`` may use on a core's loop (made on demand)."""

SWEEP_MAX = 1.0
"""Longest period (seconds) of the deadline sweep (``HttpCore``)."""

REFUSAL_LOG_EVERY = 10.0
"""Seconds between log lines about refused connections."""

REFUSED_LINGER = 1.0
"""Seconds a refused connection is drained before it is closed."""

TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS client gets to finish its handshake (the header deadline starts after it)."""

MAX_HEAD_BYTES = 16 * 1024
"""Largest request line + headers (400 and close past it). A head is counted by the reads
that arrive while it is open, so a connection buffers at most this plus one read."""


@dataclass(frozen=True)
class Limits:
    """Connection governance for one listener.

    ``max_connections`` open at once; ``per_client`` from one client address
    (TCP peer IP; a unix socket is one client); ``header_timeout`` seconds to
    send a request head; ``keepalive_timeout`` seconds an idle keep-alive
    connection stays open (above the clients' 60 s reuse window, see
    ``schemas.client``).
    """

    max_connections: int = 256
    per_client: int = 256
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0


UNIX_LIMITS = Limits(max_connections=64, per_client=64)
"""An agent's or the operator's unix socket: one client, a few parked long polls."""

TCP_LIMITS = Limits(max_connections=512, per_client=128)
"""A browser-facing TCP surface (the dashboard)."""


_REFUSED_BODY = (
    b'{"error": {"code": "unavailable", "message": "too many open connections; '
    b'close some and retry", "field": null}}'
)
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_REFUSED_BODY)
) + _REFUSED_BODY


class SocketInUse(RuntimeError):
    """Another live server answers on the unix socket path we were asked to serve."""


class _Gathered:
    """A transport that gathers the writes of one loop step into one ``write``.

    ``write`` keeps the bytes and schedules a flush with ``call_soon``; ``close``,
    ``write_eof`` and ``abort`` flush (or drop) first. Everything else is the real
    transport's. The flush runs before the loop next polls for I/O, so nothing waits
    longer than the callbacks already queued. Bytes for a transport already closing are
    dropped here: asyncio's loop would drop them too, uvloop's raises once the connection
    is gone.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(bytes(data))

    def flush(self) -> None:
        """Hand the gathered bytes to the real transport (no-op when there are none)."""
        if self._parts:
            data = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
            self._parts = []
            if not self._t.is_closing():
                self._t.write(data)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` after anything gathered, at once (no flush scheduled)."""
        if self._parts:
            self.flush()
        if not self._t.is_closing():
            self._t.write(data)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + sum(len(p) for p in self._parts)

    def write_eof(self) -> None:
        self.flush()
        if not self._t.is_closing():  # uvloop raises on a transport whose handle is gone
            self._t.write_eof()

    def close(self) -> None:
        self.flush()
        self._t.close()

    def abort(self) -> None:
        self._parts = []
        self._t.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class _Guarded(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline, the head size cap and the
    connection caps."""

    listener: Listener  # set by the factory before connection_made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        # monotonic deadlines, checked by the core's sweep (``check_deadlines``); None: none
        self._head_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._in_request = False
        self._head_open = False
        self._head_bytes = 0
        self._begins = 0
        self.peer = ""
        self.idle_since = time.monotonic()
        self._gone = Gone()
        self._running: Any = None  # the cycle whose answer is being made

    # -- asyncio.Protocol
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # a stream server's transport (the listeners are all create_server /
        # create_unix_server): a cast, not an isinstance check, since uvloop's TCP and unix
        # transports have asyncio.Transport's methods without being its subclasses
        transport = cast(asyncio.Transport, base)
        self.peer = self.listener.peer_of(transport)
        if not self.listener.admit(self):
            self._refused = True
            # answer, then read and drop what the client sends for a moment before
            # closing: closing a socket with unread input makes the kernel send a
            # reset, and the client would never see the 503
            transport.write(_REFUSED)
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)
            return
        super().connection_made(transport)
        # the cycles write through this; flow control (pause/resume) stays on the real one
        self.transport = _Gathered(transport, self.loop)  # type: ignore[assignment]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        for cycle in [self._running, self.cycle, *(c for c, _ in self.pipeline)]:
            if cycle is not None and isinstance(gone := cycle.scope.get(GONE), asyncio.Event):
                gone.set()  # hivehttp.disconnected(scope) of a parked request
            if isinstance(cycle, FastCycle):
                cycle.lost()
        self._disarm_head_timer()
        self.listener.release(self)
        super().connection_lost(exc)

    def write_now(self, data: bytes) -> None:
        """Write a whole response at once (a fast route's)."""
        transport = self.transport
        if isinstance(transport, _Gathered):
            transport.write_now(data)
        else:
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._idle_deadline = None
        if not self._in_request and self._head_deadline is None:
            self._arm_head_timer()  # the first byte of a keep-alive request starts its clock
        before = self.cycle
        # between messages (none yet, or the last one fully read) a read starts a new head
        between = not self._head_open and (before is None or not before.more_body)
        self._begins = 0
        super().data_received(data)
        self._note_cycle(before)
        if self._head_open and self.parser is not None:
            if self._begins == 0:
                self._head_bytes += len(data)  # the whole read went into the open head
            elif self._begins == 1 and between:
                self._head_bytes = len(data)  # the read began with this head
            # else the head began after other bytes of this read: counted from the next
            # read on, so at most one read more than the cap is buffered
            if self._head_bytes > MAX_HEAD_BYTES:
                self.send_400_response("request head too large")

    # -- httptools parser callbacks
    def on_message_begin(self) -> None:
        self._head_open = True
        self._head_bytes = 0
        self._begins += 1
        # uvicorn's on_message_begin, with the scope built once the head says which way the
        # request goes (a fast route needs none)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._gone = Gone()

    def on_headers_complete(self) -> None:
        self._head_open = False
        fast = self.listener.fast_routes
        if fast is not None and not self.expect_100_continue:
            handler = fast.get((self.parser.get_method(), self.url))
            if handler is not None and not self.parser.should_upgrade():
                self._fast(handler)
                return
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            GONE: self._gone,
        }
        self.scope = scope  # type: ignore[assignment]
        super().on_headers_complete()

    def _fast(self, handler: FastHandler) -> None:
        """Start (or queue behind the request in progress) a fast route's cycle."""
        parser = self.parser
        method = parser.get_method().decode("ascii")
        path = self.url.decode("ascii")
        listener = self.listener
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        cycle = FastCycle(
            method,
            path,
            self.headers,
            keep_alive,
            handler,
            listener.fast_route_names.get(path, path),
            self._gone,
            listener.fast_policy.max_body,
        )
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_fast(cycle)
        else:
            # pipelined behind the request in progress: answered after it, in order
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _start_fast(self, cycle: FastCycle) -> None:
        self._running = cycle
        listener = self.listener
        task = self.loop.create_task(
            cycle.run(self, listener.fast_policy, listener.observer, listener.name)
        )
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(cycle, FastCycle):
            self._start_fast(cycle)
            return
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            cycle.complete()
            return
        super().on_message_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.scope[BODY_READ] = True  # type: ignore[literal-required]

    def on_response_complete(self) -> None:
        # the whole response is written: out with it now, not after the callbacks queued
        # meanwhile (a woken long poll's answer must not wait for its sender's)
        if isinstance(self.transport, _Gathered):
            self.transport.flush()
        self.idle_since = now = time.monotonic()
        # uvicorn's on_response_complete, with its keep-alive timer replaced by a deadline
        # the sweep checks (``check_deadlines``)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = now + self.timeout_keep_alive
        # a pipelined request may have started at once: it is the current cycle then
        cycle = self.cycle
        self._in_request = cycle is not None and not cycle.response_complete

    # -- governance
    @property
    def sheddable(self) -> bool:
        """True when closing this connection loses no request in progress."""
        return not self._in_request

    @property
    def uploading(self) -> bool:
        """True while the request body is still arriving and no response has started.

        Closing such a connection loses only an unfinished upload; it is shed when every
        connection is in a request, so that bodies that never finish (sent before the
        app could look at any credential) cannot hold the listener full.
        """
        cycle = self.cycle
        return bool(
            self._in_request
            and cycle is not None
            and cycle.more_body
            and not cycle.response_started
        )

    def shed(self) -> None:
        """Close this (idle or head-waiting) connection to make room for a new one."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _note_cycle(self, before: object) -> None:
        if self.cycle is not None and self.cycle is not before:
            self._in_request = not self.cycle.response_complete
            self._disarm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_deadline = time.monotonic() + self.listener.limits.header_timeout

    def _disarm_head_timer(self) -> None:
        self._head_deadline = None

    def check_deadlines(self, now: float) -> None:
        """Close this connection if its request head is overdue (``Limits.header_timeout``)
        or it has idled past the keep-alive timeout; called by the core's sweep."""
        head, idle = self._head_deadline, self._idle_deadline
        if head is not None and now >= head:
            self._head_deadline = None
            if not self._in_request and not self.transport.is_closing():
                log.debug(
                    "%s: closing %s: no request head within the deadline",
                    self.listener,
                    self.peer,
                )
                self.transport.close()
        elif idle is not None and now >= idle:
            self._idle_deadline = None
            cycle = self.cycle
            idle_now = (cycle is None or cycle.response_complete) and not self.pipeline
            if idle_now and not self.transport.is_closing():
                self.transport.close()  # uvicorn's keep-alive timeout


class Listener:
    """One open listener: a unix socket (``path``) or a TCP address (``host``, ``port``).

    ``connections`` is the number open now. ``stop()`` closes it (from any
    thread but the loop's).
    """

    def __init__(
        self,
        core: HttpCore,
        name: str,
        app: Any,
        limits: Limits,
        path: Path | None,
    ) -> None:
        self.core = core
        self.name = name
        self.limits = limits
        self.path = path
        self.host: str | None = None
        self.port: int | None = None
        self.tls = False
        """True when this TCP listener speaks TLS (``serve_tcp(..., tls=context)``)."""
        self._inode: int | None = None
        self._server: asyncio.AbstractServer | None = None  # asyncio's Server or uvloop's
        self._conns: set[_Guarded] = set()
        self._per_client: dict[str, int] = {}
        self._refused = 0
        self._refusal_logged = -REFUSAL_LOG_EVERY
        self._stopped = False
        self._lock = threading.Lock()
        self.config = Config(
            app=observed(app, name),
            http=_Guarded,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(limits.keepalive_timeout),
        )
        self.config.load()
        self.state = ServerState()
        # the app's fast routes (hivehttp.fastroute), served with the guard's own checks;
        # not on a listener whose policy admits by scope (that check needs the ASGI scope)
        self.fast_routes: dict[tuple[bytes, bytes], FastHandler] | None = None
        self.fast_route_names: dict[str, str] = {}
        self.fast_policy = Policy()
        self.observer = current_observer()
        inner = getattr(app, "__wrapped__", None)
        routes = getattr(inner, "fast_routes", None)
        policy = getattr(app, "policy", None)
        if routes and isinstance(policy, Policy) and policy.admit is None:
            self.fast_routes = dict(routes)
            self.fast_policy = policy
            for _, raw in self.fast_routes:
                route = raw.decode("ascii")
                self.fast_route_names[route] = route_of(app, route)

    # -- called on the loop
    def protocol(self) -> _Guarded:
        proto = _Guarded(config=self.config, server_state=self.state, app_state={})
        proto.listener = self
        return proto

    def peer_of(self, transport: asyncio.Transport) -> str:
        """The client key the per-client cap counts: the TCP peer's address, or ``unix``."""
        if self.path is not None:
            return "unix"
        peer = transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "?"

    def admit(self, proto: _Guarded) -> bool:
        """Count ``proto`` in, shedding idle connections to stay under the caps."""
        if self._stopped:
            return False
        peer = proto.peer
        if self._per_client.get(peer, 0) >= self.limits.per_client and not self._shed(peer):
            self._note_refusal(peer, "per-client cap")
            return False
        if len(self._conns) >= self.limits.max_connections and not self._shed(None):
            self._note_refusal(peer, "connection cap")
            return False
        self._conns.add(proto)
        self._per_client[peer] = self._per_client.get(peer, 0) + 1
        return True

    def _note_refusal(self, peer: str, why: str) -> None:
        # a flood must not flood the log too: one line per REFUSAL_LOG_EVERY seconds
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_EVERY:
            log.warning(
                "%s: refused %d connection(s) in the last %.0f s (latest from %s: %s)",
                self,
                self._refused,
                min(now - self._refusal_logged, 1e9),
                peer,
                why,
            )
            self._refused = 0
            self._refusal_logged = now

    def _shed(self, peer: str | None) -> bool:
        mine = [
            c
            for c in self._conns
            if (peer is None or c.peer == peer) and not c.transport.is_closing()
        ]
        # idle ones first; else the oldest still sending its request body
        idle = [c for c in mine if c.sheddable] or [c for c in mine if c.uploading]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self._forget(victim)
        victim.shed()
        return True

    def _forget(self, proto: _Guarded) -> None:
        if proto in self._conns:
            self._conns.discard(proto)
            left = self._per_client.get(proto.peer, 1) - 1
            if left > 0:
                self._per_client[proto.peer] = left
            else:
                self._per_client.pop(proto.peer, None)

    def release(self, proto: _Guarded) -> None:
        """Count ``proto`` out (its connection is gone)."""
        self._forget(proto)

    def sweep(self, now: float) -> None:
        """Close the connections whose head deadline or keep-alive timeout has passed."""
        for proto in list(self._conns):
            proto.check_deadlines(now)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    @property
    def alive(self) -> bool:
        """True until ``stop``; a unix listener also needs its socket file in place."""
        if self._stopped or self._server is None:
            return False
        if self.path is not None:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                return False
            return stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode
        return True

    async def _open(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            self._server = await loop.create_unix_server(self.protocol, sock=sock)
            self._inode = os.stat(self.path).st_ino
        elif tls is not None:
            self._server = await loop.create_server(
                self.protocol, sock=sock, ssl=tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
            addr = sock.getsockname()
            self.host, self.port = str(addr[0]), int(addr[1])
        else:
            self._server = await loop.create_server(self.protocol, sock=sock)
            addr = sock.getsockname()
            self.host, self.port = str(addr[0]), int(addr[1])

    async def _close(self, timeout: float) -> None:
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for proto in list(self._conns):
            # closing the transport marks the request disconnected: long polls and
            # streams see it at once and return
            if proto.transport is not None:
                proto.transport.close()
        tasks = list(self.state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        self._conns.clear()
        self._per_client.clear()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, remove the socket file; idempotent.

        Requests still running get ``timeout`` seconds (they see their client
        gone at once) and are then cancelled.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.core.running:
            self.core.call(self._close(timeout), timeout=timeout + 5)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else f"{self.host}:{self.port}"
        return f"<Listener {self.name} {where}>"


class HttpCore:
    """The event loop every listener of this process runs on, in one daemon thread.

    ``call(coro)`` runs a coroutine on it from another thread and returns its
    result. ``stop()`` ends the loop (listeners first).
    """

    def __init__(self, name: str = "hivehttp") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (starts the core on first use)."""
        self.start()
        assert self._loop is not None
        return self._loop

    @property
    def running(self) -> bool:
        """True while the loop thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop thread; idempotent."""
        with self._lock:
            if self.running:
                return
            loop = new_loop()  # uvloop's, else asyncio's (hivehttp.loops)
            # handlers run git, reconcile and lifecycle verbs through to_thread; those can take
            # minutes, and the default pool (cores + 4) would let a few of them delay every
            # quick call. Workers are made on demand, so an idle core costs no threads.
            loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(
                    max_workers=EXECUTOR_WORKERS, thread_name_prefix=f"{self.name}-worker"
                )
            )
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.call_soon(self._sweep)
                loop.run_forever()

            self._loop = loop
            self._thread = threading.Thread(target=run, name=self.name, daemon=True)
            self._thread.start()
            ready.wait()

    def sweep_period(self) -> float:
        """Seconds between two deadline sweeps: a quarter of the shortest head deadline of
        the open listeners, at most ``SWEEP_MAX``."""
        limits = [x.limits.header_timeout for x in self._listeners]
        return min([SWEEP_MAX, *(t / 4 for t in limits)])

    def _sweep(self) -> None:
        """On the loop: check every open connection's deadlines, then again a period later."""
        now = time.monotonic()
        for listener in self._listeners:  # replaced, never changed in place: no lock
            listener.sweep(now)
        assert self._loop is not None
        self._loop.call_later(self.sweep_period(), self._sweep)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (re-raising its exception).

        Raises ``RuntimeError`` when called on the loop thread itself (it would
        deadlock) and ``TimeoutError`` after ``timeout`` seconds.
        """
        loop = self.loop
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("HttpCore.call() from the loop thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"{self.name}: no answer within {timeout} s") from exc

    def serve_unix(
        self,
        app: Any,
        path: Path,
        *,
        perms: int = 0o600,
        limits: Limits = UNIX_LIMITS,
        policy: Policy | None = None,
        name: str | None = None,
    ) -> Listener:
        """Serve ``app`` on unix socket ``path`` (see the module-level ``serve_unix``)."""
        path = Path(path).absolute()
        if len(os.fsencode(str(path))) > SUN_PATH_MAX:
            raise ValueError(f"unix socket path {path} is longer than {SUN_PATH_MAX} bytes")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind under a umask that already leaves only ``perms``: no window in which
            # the socket is open to others before the chmod
            old = os.umask(0o777 & ~perms)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, perms)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        listener = Listener(self, name or path.name, guarded(app, policy or Policy()), limits, path)
        return self._open(listener, sock)

    def adopt_unix(
        self,
        app: Any,
        sock: socket.socket,
        path: Path,
        *,
        limits: Limits = UNIX_LIMITS,
        policy: Policy | None = None,
        name: str | None = None,
    ) -> Listener:
        """Serve ``app`` on ``sock``: a unix socket already bound at ``path`` and listening.

        For a process that answered on the socket by other means while it started
        (``harness.earlyweb``): the connections waiting in its backlog are accepted
        here, none is refused in between. The caller made the file (mode, stale
        socket). ``sock`` is closed when this raises.
        """
        path = Path(path).absolute()
        try:
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        listener = Listener(self, name or path.name, guarded(app, policy or Policy()), limits, path)
        return self._open(listener, sock)

    def serve_tcp(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: Limits = TCP_LIMITS,
        policy: Policy | None = None,
        name: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Listener:
        """Serve ``app`` on TCP ``host:port`` (see the module-level ``serve_tcp``)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        listener = Listener(
            self, name or f"{host}:{port}", guarded(app, policy or Policy()), limits, None
        )
        listener.tls = tls is not None
        return self._open(listener, sock, tls)

    def _open(
        self, listener: Listener, sock: socket.socket, tls: ssl.SSLContext | None = None
    ) -> Listener:
        try:
            self.call(listener._open(sock, tls))
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._listeners = [x for x in self._listeners if x.alive] + [listener]
        return listener

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every listener, then the loop; idempotent."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.stop(timeout)
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


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


_default: HttpCore | None = None
_default_lock = threading.Lock()


def default_core() -> HttpCore:
    """The process-wide core, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HttpCore()
        _default.start()
        return _default


def serve_unix(
    app: Any,
    path: Path,
    *,
    perms: int = 0o600,
    limits: Limits = UNIX_LIMITS,
    policy: Policy | None = None,
    name: str | None = None,
) -> Listener:
    """Serve the ASGI ``app`` on unix socket ``path`` on the default core; returns at once.

    Creates the parent directory (mode 0700), removes a stale socket file
    (nobody answers), binds with mode ``perms``. Raises ``SocketInUse`` if a
    live server answers there, ``FileExistsError`` if the path is not a
    socket, ``ValueError`` if the path exceeds the 107-byte ``sun_path``.
    """
    return default_core().serve_unix(
        app, path, perms=perms, limits=limits, policy=policy, name=name
    )


def adopt_unix(
    app: Any,
    sock: socket.socket,
    path: Path,
    *,
    limits: Limits = UNIX_LIMITS,
    policy: Policy | None = None,
    name: str | None = None,
) -> Listener:
    """Serve the ASGI ``app`` on ``sock``, a unix socket already bound at ``path`` and
    listening, on the default core (see ``HttpCore.adopt_unix``); returns at once."""
    return default_core().adopt_unix(app, sock, path, limits=limits, policy=policy, name=name)


def serve_tcp(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: Limits = TCP_LIMITS,
    policy: Policy | None = None,
    name: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Listener:
    """Serve the ASGI ``app`` on TCP ``host:port`` on the default core; returns at once.

    ``port`` 0 binds an ephemeral port, reported as ``Listener.port``. ``tls``, a
    server-side ``ssl.SSLContext`` (``tls_server_context``), serves HTTPS: the handshake
    must finish within ``TLS_HANDSHAKE_TIMEOUT`` seconds, then the usual deadlines and
    caps apply. Raises ``OSError`` when the address is taken.
    """
    return default_core().serve_tcp(
        app, host, port, limits=limits, policy=policy, name=name, tls=tls
    )


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate chain and its private key: TLS 1.2
    or later, the ``ssl`` module's default ciphers. Raises ``OSError`` for an unreadable
    file and ``ssl.SSLError`` for a certificate and key that do not match or parse."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def run_blocking(fn: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]:
    """``await run_blocking(fn, *args)``: run a blocking call off the loop (default executor)."""
    return asyncio.to_thread(fn, *args)
