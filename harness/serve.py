"""``hyperhive-agent serve``: wire the turn loop and the web UI together and run them.

The turn loop runs in a worker thread, the web UI in waitress threads, and
the main thread waits for SIGTERM / SIGINT. On a signal: cancel the running
claude process tree, let the loop record the turn ``cancelled`` (up to
``SHUTDOWN_GRACE`` seconds), stop the web UI, exit 0.

Files under the state dir (``HYPERHIVE_STATE_DIR``, claude's fixed cwd):
``hyperhive-events.sqlite``, ``hyperhive-turn-stats.sqlite``,
``hyperhive-model`` (operator model override), ``hyperhive-mcp.json``
(the ``--mcp-config`` file).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import sdnotify

from harness.config import HarnessEnv, Settings, SettingsError, env_from, load_settings, web_port
from harness.events import Bus, EventLog
from harness.httpserve import WebServer
from harness.loop import TurnLoop
from harness.model import ModelStore
from harness.turnstats import TurnStats
from harness.web import WebApp
from schemas.client import UnixClient

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
    server: WebServer
    loop_thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the web UI and the turn loop threads."""
        self.server.start()
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
        # the loop thread may sit in a 180 s recv long poll: wait only for a running turn to be
        # recorded (a message received from now on stays leased and is redelivered)
        if not self.loop.wait_idle(grace):
            log.warning("the running turn was not recorded within %.0f s", grace)
        self.loop.runner.reap(5.0)
        if self.loop_thread is not None:
            self.loop_thread.join(0.2)
        self.web.stop()
        self.server.stop()
        self.stats.close()
        self.bus.log.close()


def build(env: HarnessEnv, environ: Mapping[str, str], *, port: int | None = None) -> Harness:
    """Read settings and open the state files; nothing runs yet. Raises ``SettingsError``."""
    settings = load_settings(env.settings_path, agent=env.agent, flavor=env.flavor)
    if settings.agent != env.agent:
        log.warning(
            "settings.json names agent %r but HYPERHIVE_AGENT is %r; using the env",
            settings.agent,
            env.agent,
        )
    env.state_dir.mkdir(parents=True, exist_ok=True)
    models = ModelStore(env.state_dir / MODEL_FILE, settings.model)
    bus = Bus(EventLog(env.state_dir / EVENTS_DB), models.current())
    stats = TurnStats(env.state_dir / STATS_DB)
    client = UnixClient(env.socket)
    loop = TurnLoop(env, settings, bus, stats, models, environ=environ, client=client)
    web = WebApp(env, settings, bus, stats, models, loop, dict(environ), client=client)
    server = WebServer(web.app, env.web_host, web_port(env, settings) if port is None else port)
    return Harness(env, settings, bus, stats, models, loop, web, server)


def setup_logging(environ: Mapping[str, str]) -> None:
    """Log to stderr (the local driver / journald collect it); level: ``HYPERHIVE_LOG_LEVEL``."""
    logging.basicConfig(
        level=environ.get("HYPERHIVE_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run until SIGTERM / SIGINT; exit 0 on a signal, 2 on a configuration error."""
    environ = dict(os.environ if environ is None else environ)
    setup_logging(environ)
    try:
        env = env_from(environ)
        h = build(env, environ)
    except SettingsError as exc:
        log.error("configuration error: %s", exc)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "hyperhive-agent serve: agent %s (%s), socket %s, state %s, claude %s",
        env.agent, env.flavor, env.socket, env.state_dir, env.claude_bin,
    )  # fmt: skip
    notifier = sdnotify.SystemdNotifier()  # a no-op without $NOTIFY_SOCKET
    h.start()

    def ready() -> None:  # Type=notify: READY=1 once the web UI listens
        if h.server.wait_bound():
            notifier.notify(f"READY=1\nSTATUS=agent {env.agent}: web UI on port {h.server.port}")

    threading.Thread(target=ready, name="sd-ready", daemon=True).start()
    while not stop.wait(1.0):
        if h.loop_thread is not None and not h.loop_thread.is_alive():
            log.error("turn loop exited unexpectedly")
            h.shutdown()
            return 1
    notifier.notify("STOPPING=1")
    h.shutdown()
    return 0
