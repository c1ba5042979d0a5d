"""waitress on TCP for the agent web UI, in a background thread, with bind retry.

waitress sets ``SO_REUSEADDR`` on its listening socket, which handles a
previous instance's TIME_WAIT sockets; a port still held by a live process
(the old harness not gone yet during a restart) is retried every
``retry_interval`` seconds until it frees up or :meth:`WebServer.stop` is
called — logged once, not per attempt.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

import waitress
from waitress.server import BaseWSGIServer, MultiSocketServer

log = logging.getLogger(__name__)


class WebServer:
    """Serve a WSGI ``app`` on ``host:port`` (``port=0`` picks a free port; see :attr:`port`)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        threads: int = 16,
        connection_limit: int = 100,
        retry_interval: float = 1.0,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.threads = threads
        self.connection_limit = connection_limit
        self.retry_interval = retry_interval
        self._server: BaseWSGIServer | MultiSocketServer | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def _bind(self) -> BaseWSGIServer | MultiSocketServer | None:
        announced = False
        while not self._stop.is_set():
            try:
                return waitress.create_server(
                    self.app,
                    host=self.host,
                    port=self.requested_port,
                    threads=self.threads,
                    connection_limit=self.connection_limit,
                    channel_timeout=60,
                    ident="hyperhive-agent",
                    clear_untrusted_proxy_headers=True,
                )
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    raise
                if not announced:
                    log.warning(
                        "web UI: cannot bind %s:%s (%s); retrying every %.0f s",
                        self.host, self.requested_port, exc.strerror, self.retry_interval,
                    )  # fmt: skip
                    announced = True
                self._stop.wait(self.retry_interval)
        return None

    def _run(self) -> None:
        try:
            server = self._bind()
        except Exception:
            log.exception("web UI: cannot start")
            self._bound.set()
            return
        if server is None:
            self._bound.set()
            return
        self._server = server
        self.port = int(getattr(server, "effective_port", self.requested_port))
        log.info("web UI on http://%s:%s/", self.host, self.port)
        self._bound.set()
        try:
            server.run()
        except Exception:
            if not self._stop.is_set():
                log.exception("web UI server crashed")

    def start(self) -> None:
        """Start serving in a daemon thread (binding, with retry, happens in that thread)."""
        self._thread = threading.Thread(target=self._run, name="web-ui", daemon=True)
        self._thread.start()

    def wait_bound(self, timeout: float | None = None) -> bool:
        """Block until bound (or given up); True when serving."""
        self._bound.wait(timeout)
        return self._server is not None

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and all connections; wait for the serving thread."""
        self._stop.set()
        server = self._server
        if server is not None:
            try:
                server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
            except Exception:
                log.debug("task dispatcher shutdown failed", exc_info=True)
            try:
                server.close()
            except Exception:
                log.debug("close failed", exc_info=True)
            from waitress import wasyncore

            wasyncore.close_all(server.map if hasattr(server, "map") else server._map)
        if self._thread is not None:
            self._thread.join(timeout)
