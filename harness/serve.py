"""``hyperhive-agent serve``: wire the turn loop and the web UI together and run them.

The turn loop runs in a worker thread, the web UI on the process' hivehttp
event loop (its unix socket ``HYPERHIVE_WEB_SOCKET``, plus TCP when
``HYPERHIVE_WEB_TCP=1``), and the main thread waits for SIGTERM / SIGINT.
On a signal: cancel the running claude process tree, let the loop record the
turn ``cancelled`` (up to ``SHUTDOWN_GRACE`` seconds), stop the web UI, exit 0.

The agent's credential (``HYPERHIVE_CREDENTIAL_FILE``) is read at start: a
missing or unreadable file is a configuration error naming it (exit 2). Every
broker request carries it as a bearer, and the TCP listener requires it.

Start-up order: the settings and the credential are read, the web UI's listeners are
bound (:func:`open_front`, answering ``"status": "starting"`` through
:class:`harness.webstart.LateApp`), and only then are the turn loop's modules imported
and the state files opened (:func:`build`, most of the start-up CPU); :meth:`Harness.start`
hands the listeners the real app. So the dashboard's proxy gets an answer right after exec.

systemd (``Type=notify``): ``READY=1`` once the web UI listens, ``STATUS=`` with
the turn state, ``STOPPING=1`` on a signal, and — when the unit sets
``WatchdogSec=`` (``$WATCHDOG_USEC``) — ``WATCHDOG=1`` every half period for as
long as the turn loop thread is alive and within the bound of what it is doing
(``TurnLoop.health``): a loop stuck past its recv, turn or login bound stops
feeding the watchdog and systemd restarts the harness.

Files under the state dir (``HYPERHIVE_STATE_DIR``, claude's fixed cwd):
``hyperhive-events.sqlite``, ``hyperhive-turn-stats.sqlite``,
``hyperhive-model`` (operator model override), ``hyperhive-mcp.json``
(the ``--mcp-config`` file, 0600: it holds the running turn's MCP credential).

What the agent has (claude, credentials, turn and API health) is reported to the
controller by :mod:`harness.report` (``POST /report``), which derives the agent's
conditions from it.

The hyperhive MCP tools are served by this process (:mod:`harness.mcp_http`, an
ephemeral loopback port, a fresh credential per claude run), so claude starts no MCP
server process; if that port cannot be bound, claude starts ``hyperhive-agent mcp``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from harness import earlyweb
from harness.config import (
    HarnessEnv,
    Settings,
    SettingsError,
    env_from,
    load_settings,
    web_socket,
    web_tcp_port,
)
from harness.credential import CredentialError, read_credential
from harness.earlyweb import EarlyWeb
from harness.httpserve import TcpEndpoint, UnixEndpoint, WebServer, tcp_app, tcp_policy
from harness.webstart import LateApp
from hivehttp.guard import ASGIApp

if TYPE_CHECKING:  # imported in build(), after the web UI listens (see main)
    import sdnotify

    from harness.events import Bus
    from harness.loop import TurnLoop
    from harness.mcp_http import McpEndpoint
    from harness.model import ModelStore
    from harness.report import Reporter
    from harness.turnstats import TurnStats
    from harness.web import WebApp

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 15.0
EVENTS_DB = "hyperhive-events.sqlite"
STATS_DB = "hyperhive-turn-stats.sqlite"
MODEL_FILE = "hyperhive-model"


@dataclass
class Harness:
    """Everything ``serve`` runs, built by :func:`build` (tests drive it directly)."""

    env: HarnessEnv
    settings: Settings
    bus: Bus
    stats: TurnStats
    models: ModelStore
    loop: TurnLoop
    web: WebApp
    servers: list[WebServer]
    mcp: McpEndpoint | None = None
    loop_thread: threading.Thread | None = None
    reporter: Reporter | None = None
    front: LateApp | None = None
    """The web UI listeners' app, bound before ``build`` (see :func:`open_front`)."""

    def alive(self) -> tuple[bool, str]:
        """Should the systemd watchdog be fed? ``(ok, why)``."""
        if self.loop_thread is None or not self.loop_thread.is_alive():
            return False, "the turn loop thread is not running"
        return self.loop.health()

    def start(self) -> None:
        """Start the web UI listeners (those not started yet) and the turn loop thread."""
        if self.front is not None:
            self.front.ready(self.web.asgi)
        for server in self.servers:
            if not server.started:
                server.start()
        if self.mcp is not None:
            try:
                self.loop.mcp = self.mcp.start()
            except OSError as exc:  # no loopback port: claude starts the stdio server instead
                log.warning("cannot serve the MCP tools on loopback (%s); using stdio", exc)
        if self.reporter is not None:
            self.reporter.start()
        self.loop_thread = threading.Thread(target=self._run_loop, name="turn-loop", daemon=True)
        self.loop_thread.start()

    def _run_loop(self) -> None:
        try:
            self.loop.run_forever()
        except Exception:
            log.exception("turn loop crashed")

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Cancel the running turn, wait for it to be recorded, stop the web UI, close databases."""
        log.info("shutting down")
        self.loop.stop()
        if self.loop.cancel_login():  # claude auth login runs in its own session
            log.info("cancelled the login in progress")
        # the loop thread may sit in a 180 s recv long poll: wait only for a running turn to be
        # recorded (a message received from now on stays leased and is redelivered)
        if not self.loop.wait_idle(grace):
            log.warning("the running turn was not recorded within %.0f s", grace)
        self.loop.runner.reap(5.0)
        if self.loop_thread is not None:
            self.loop_thread.join(0.2)
        self.web.stop()
        if self.reporter is not None:
            self.reporter.stop()
        if self.mcp is not None:
            self.mcp.stop()
        for server in self.servers:
            server.stop()
        self.stats.close()
        self.bus.log.close()
        self.loop.telemetry.shutdown()  # export the spans still queued


@dataclass
class Front:
    """The web UI's listeners, bound before the turn loop is built (:func:`open_front`)."""

    settings: Settings
    app: LateApp
    servers: list[WebServer]


def read_settings(
    env: HarnessEnv, token: str | None, port: int | None = None
) -> tuple[Settings, int | None]:
    """``settings.json`` and the web UI's TCP port (``None``: no TCP listener).

    ``port`` overrides the TCP port (implies TCP). Raises ``SettingsError``."""
    settings = load_settings(env.settings_path, agent=env.agent, flavor=env.flavor)
    if settings.agent != env.agent:
        log.warning(
            "settings.json names agent %r but HYPERHIVE_AGENT is %r; using the env",
            settings.agent,
            env.agent,
        )
    tcp_port = web_tcp_port(env, settings) if port is None else port
    if tcp_port is not None and not token:
        raise SettingsError("HYPERHIVE_WEB_TCP=1: the TCP listener needs the agent credential")
    return settings, tcp_port


def _listeners(
    env: HarnessEnv,
    app: ASGIApp,
    tcp_port: int | None,
    token: str | None,
    early: EarlyWeb | None = None,
) -> list[WebServer]:
    path = Path(web_socket(env)).absolute()
    if early is not None and early.path != str(path):  # not ours to take over
        early.close()
        early = None
    servers = [WebServer(app, UnixEndpoint(path), name="web-ui", early=early)]
    if tcp_port is not None and token:
        ep = TcpEndpoint(env.web_host, tcp_port)
        servers.append(WebServer(tcp_app(app, token), ep,
                                 policy=tcp_policy(ep, env.web_allowed_hosts),
                                 name="web-ui-tcp"))  # fmt: skip
    return servers


def open_front(
    env: HarnessEnv, *, token: str | None, port: int | None = None, early: EarlyWeb | None = None
) -> Front:
    """Start binding the web UI's listeners now, answering "starting"
    (:mod:`harness.webstart`) until :meth:`Harness.start` hands them the real app.

    ``early``: the unix socket as :mod:`harness.earlyweb` opened it at exec; it is taken
    over rather than bound. Raises ``SettingsError`` (before anything else is bound)."""
    settings, tcp_port = read_settings(env, token, port)
    late = LateApp(env.agent, env.flavor)
    servers = _listeners(env, late, tcp_port, token, early)
    for server in servers:
        server.start()
    return Front(settings, late, servers)


def build(
    env: HarnessEnv,
    environ: Mapping[str, str],
    *,
    token: str | None,
    port: int | None = None,
    front: Front | None = None,
) -> Harness:
    """Read settings and open the state files; nothing runs yet (but ``front``).

    ``token`` is the agent's credential (sent on every broker request, required on the
    TCP listener; ``None`` only in tests that play a controller without one). ``port``
    overrides the TCP port (implies TCP). ``front``: the web UI's listeners, already
    binding (:func:`open_front`, which read the settings); without it they are made here.
    Raises ``SettingsError``.
    """
    # the turn loop's modules (claude, the event log, sqlite, the broker client): imported
    # here, after main() bound the web UI, since they are most of the start-up CPU
    from harness.credential import broker_client
    from harness.events import Bus, EventLog
    from harness.loop import TurnLoop
    from harness.mcp_http import McpEndpoint
    from harness.model import ModelStore
    from harness.report import Reporter
    from harness.turnstats import TurnStats
    from harness.web import WebApp

    if front is None:
        settings, tcp_port = read_settings(env, token, port)
    else:
        settings, tcp_port = front.settings, None
    env.state_dir.mkdir(parents=True, exist_ok=True)
    models = ModelStore(env.state_dir / MODEL_FILE, settings.model)
    bus = Bus(EventLog(env.state_dir / EVENTS_DB), models.current())
    stats = TurnStats(env.state_dir / STATS_DB)
    # the host's retention sweep may have deleted old events: turn numbers keep counting on
    bus.log.ensure_turn_at_least(stats.max_turn())
    client = broker_client(env.broker, token)
    loop = TurnLoop(env, settings, bus, stats, models, environ=environ, client=client)
    web = WebApp(env, settings, bus, stats, models, loop, dict(environ), client=client)
    servers = _listeners(env, web.asgi, tcp_port, token) if front is None else front.servers
    mcp = McpEndpoint(env.flavor, client)
    reporter = Reporter(client, env.claude_bin, loop.claude_env, loop.credential_report, environ)
    loop.reporter = reporter
    if loop.telemetry.on:  # the turn's trace travels with the messages its tools send
        mcp.handler.tools.trace = loop.telemetry.current_traceparent
    late = front.app if front is not None else None
    return Harness(
        env, settings, bus, stats, models, loop, web, servers, mcp, reporter=reporter, front=late
    )


def setup_logging(environ: Mapping[str, str]) -> None:
    """Log to stderr (the local driver / journald collect it); level: ``HYPERHIVE_LOG_LEVEL``."""
    logging.basicConfig(
        level=environ.get("HYPERHIVE_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or ``None`` when the
    watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    try:
        if not usec or int(usec) <= 0 or (owner and int(owner) != pid):
            return None
    except ValueError:
        return None
    return max(0.05, int(usec) / 2e6)


def _notify_loop(
    h: Harness, notifier: sdnotify.SystemdNotifier, stop: threading.Event, watchdog: float | None
) -> None:
    """``WATCHDOG=1`` while the loop is healthy, ``STATUS=`` when the turn state changes."""
    status = ""
    starved = False
    while not stop.wait(min(watchdog or 5.0, 5.0)):
        if watchdog is not None:
            ok, why = h.alive()
            if ok:
                notifier.notify("WATCHDOG=1")
                if starved:
                    log.info("watchdog: the turn loop is making progress again")
                starved = False
            elif not starved:
                log.error("watchdog: not feeding systemd: %s", why)
                starved = True
        snap = h.bus.snapshot()
        line = f"agent {h.env.agent}: {snap['turn_state']}, {snap['status'].replace('_', ' ')}"
        if line != status:
            notifier.notify(f"STATUS={line}")
            status = line


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run until SIGTERM / SIGINT; exit 0 on a signal, 2 on a configuration error."""
    environ = dict(os.environ if environ is None else environ)
    setup_logging(environ)
    # the web UI's socket, answered "starting" since exec by harness.earlyweb (python -m
    # harness serve opens it before importing anything else); here when it did not
    earlyweb.start(environ)
    early = earlyweb.take()
    try:
        env = env_from(environ)
        assert env.credential_file is not None  # env_from always names one
        token = read_credential(env.credential_file)
        # the web UI answers "starting" while the rest is imported and opened
        front = open_front(env, token=token, early=early)
        h = build(env, environ, token=token, front=front)
    except (SettingsError, CredentialError) as exc:
        if early is not None:
            early.close()
        log.error("configuration error: %s", exc)
        return 2
    import sdnotify  # after the bind, as in build()

    from harness.forge import forge_access, tea_login
    from harness.metaclone import set_up as set_up_meta_clone

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "hyperhive-agent serve: agent %s (%s), API %s, web %s, state %s, claude %s",
        env.agent, env.flavor, env.broker.target, web_socket(env), env.state_dir, env.claude_bin,
    )  # fmt: skip
    notifier = sdnotify.SystemdNotifier()  # a no-op without $NOTIFY_SOCKET
    h.start()
    # the hive forge: tea logged in as this agent when the controller left it a token
    threading.Thread(
        target=tea_login, args=(forge_access(env.state_dir, env.agent), environ),
        name="tea-login", daemon=True,
    ).start()  # fmt: skip
    # a manager in a pod: its meta clone's origin is meta.git over HTTP (harness.metaclone)
    threading.Thread(
        target=set_up_meta_clone, args=(env.flavor, env.credential_file, environ),
        name="meta-clone", daemon=True,
    ).start()  # fmt: skip

    def ready() -> None:  # Type=notify: READY=1 once every web UI listener listens
        if all(server.wait_bound() for server in h.servers):
            where = " and ".join(server.describe() for server in h.servers)
            notifier.notify(f"READY=1\nSTATUS=agent {env.agent}: web UI on {where}")

    threading.Thread(target=ready, name="sd-ready", daemon=True).start()
    watchdog = watchdog_interval(environ, os.getpid())
    if watchdog is not None:
        log.info("systemd watchdog on: pinging every %.1f s while the loop is healthy", watchdog)
    threading.Thread(
        target=_notify_loop, args=(h, notifier, stop, watchdog), name="sd-notify", daemon=True
    ).start()
    while not stop.wait(1.0):
        if h.loop_thread is not None and not h.loop_thread.is_alive():
            log.error("turn loop exited unexpectedly")
            h.shutdown()
            return 1
    notifier.notify("STOPPING=1")
    h.shutdown()
    return 0
