"""``GET /metrics`` on its own TCP listener: who may scrape, and the exposition.

Where: ``metrics.host`` (default 127.0.0.1) and ``metrics.port`` of the controller config,
nowhere else; off unless the port is set. Who: every request must carry
``Authorization: Bearer <token>`` (401 otherwise, compared in constant time), the token of
``metrics.token_file`` or, without one, of ``<state>/metrics.token``, which the controller
makes on first start (0600, like ``operator.key``: ``ensure_metrics_token``). Loopback is no
boundary: agents on the local runtime share the host's network, and /metrics names every
agent, its spend and its tools. Without ``metrics.token_file`` the listener must also be on
a loopback address (the config refuses anything else); on a loopback address it checks
``Host`` against the loopback names too (403 ``bad_host``: no DNS rebinding from a web
page). The body is ``prometheus_client``'s text exposition (format 0.0.4) of
``controller.metrics.REGISTRY`` and of the state collectors (``events.scrape``), built off
the event loop, gzip-compressed when the scraper says ``Accept-Encoding: gzip`` (Prometheus
always does): 426-446 KiB at 200 agents go out as a few tens of KiB. The body holds no
secret beside figures and agent names, so compression gives a BREACH-style attack nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import stat
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.auth.secretfile import CredentialError, create_secret, new_secret, read_secret
from controller.metrics.events import scrape
from hivehttp import LOOPBACK_HOSTS, Listener, Policy, serve_tcp
from hivehttp.encoding import MIN_BYTES, GzipCache, accepts_gzip

log = logging.getLogger(__name__)

POLICY_BODY = 16 * 1024
"""A scrape has no body; anything larger is refused before it is read."""


GZIP_LEVEL = 1
"""zlib level of the scrape's gzip: the text changes between most scrapes (counters move), so
it is compressed each time; level 1 is a few ms at 200 agents, level 6 several times that for
a body a few KiB smaller."""


class TokenFileError(ValueError):
    """The token file is unreadable or empty."""


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped).

    Raises ``TokenFileError`` when it cannot be read or is empty.
    """
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"metrics.token_file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise TokenFileError(f"metrics.token_file {path}: empty")
    return token


def ensure_metrics_token(path: Path) -> Path:
    """``path`` (``<state>/metrics.token``), made with a fresh secret (0600) if absent.

    A file readable by group or others is narrowed to 0600 (with a warning); its content is
    checked like ``operator.key``. Returns ``path``. Raises ``TokenFileError`` for a malformed
    or unreadable file and ``OSError`` when the state dir is not writable.
    """
    if create_secret(path, new_secret()):
        log.info("made the metrics scrape token %s", path)
    try:
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
        if mode & 0o077:
            log.warning("%s was mode %03o; narrowing it to 0600", path, mode)
            os.chmod(path, 0o600, follow_symlinks=False)
        read_secret(path, "the metrics scrape token")
    except FileNotFoundError as exc:
        raise TokenFileError(f"{path}: vanished while it was being made; retry") from exc
    except CredentialError as exc:
        raise TokenFileError(exc.message) from exc
    return path


class _Metrics:
    def __init__(self, registry: CollectorRegistry, token: str) -> None:
        self.registry = registry
        self.token = token.encode()
        # keyed by the body: scrapes of an unchanged swarm (the same text) compress once
        self.gz = GzipCache(level=GZIP_LEVEL)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        auth = (req.get_header("Authorization") or "").encode()
        if not hmac.compare_digest(auth, b"Bearer " + self.token):
            resp.status = falcon.HTTP_401
            resp.set_header("WWW-Authenticate", 'Bearer realm="hyperhive metrics"')
            resp.media = {
                "error": {
                    "code": "unauthorized",
                    "message": "send the token of metrics.token_file (default "
                    "<state>/metrics.token) as a bearer",
                    "field": "Authorization",
                }
            }
            return
        # the text format whatever the Accept header says: the parts of a scrape are
        # rendered and cached apart, and OpenMetrics texts cannot be joined
        gz = accepts_gzip(req.get_header("Accept-Encoding"))
        resp.data, coding = await asyncio.to_thread(self._body, gz)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.vary = ["Accept-Encoding"]
        if coding:
            resp.set_header("Content-Encoding", coding)

    def _body(self, gz: bool) -> tuple[bytes, str]:
        body = scrape(self.registry)
        if gz and len(body) >= MIN_BYTES:
            return self.gz.encode(body, body), "gzip"
        return body, ""


def make_metrics_app(registry: CollectorRegistry, token: str) -> Any:
    """The falcon.asgi app: ``GET /metrics`` (and nothing else: 404 JSON)."""
    app = falcon.asgi.App()
    app.add_route("/metrics", _Metrics(registry, token))
    return app


def serve_metrics(registry: CollectorRegistry, host: str, port: int, token_file: Path) -> Listener:
    """Open the metrics listener (see the module docstring); every scrape sends the token
    in ``token_file`` as a bearer.

    Raises ``TokenFileError`` for a bad token file and ``OSError`` when the address is taken.
    """
    token = read_token(token_file)
    policy = Policy(
        max_body=POLICY_BODY,
        allowed_hosts=LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None,
    )
    return serve_tcp(make_metrics_app(registry, token), host, port, policy=policy, name="metrics")
