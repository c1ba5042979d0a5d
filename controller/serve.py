"""``hyperhive serve``: wire the controller together and run the reconcile loop.

Start-up order matters to systemd (``Type=notify``): lock the state dir, open
the meta repo and broker, open the admin / manager / agent sockets and the
dashboard, run the first pass, then READY=1. Every trigger (hook poke, CLI,
dashboard, resync tick) only asks for a pass; passes never overlap.
SIGTERM/SIGINT stop the loop and the sockets; agents keep running (they are
separate processes or containers) and are found again on the next start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from controller import __version__
from controller.config import Config, Runtime, TcpListen
from controller.drivers.base import Driver
from controller.hooks.script import watch_marker
from controller.paths import Layout, default_state_dir
from controller.refwatch import RefWatch

if TYPE_CHECKING:
    from controller.auth import AgentCredentials
    from controller.broker import Broker
    from controller.budget.service import Budgets
    from controller.ops import SwarmOps
    from hivehttp import Limits, Policy

log = logging.getLogger("hyperhive")

SWEEP_EVERY = 3600.0
BUILD_GRACE = 1800.0
QUESTION_TICK = 5.0
STOP_POLL = 0.5


class AlreadyRunning(RuntimeError):
    """Another controller holds the state dir's lock."""


@contextmanager
def state_lock(layout: Layout) -> Iterator[IO[str]]:
    """Hold an exclusive ``flock`` on ``<state>/controller.lock`` for the block.

    Raises ``AlreadyRunning`` (naming the holder's pid) if another process holds it.
    """
    layout.state.mkdir(parents=True, exist_ok=True)
    fh = open(layout.lock_file, "a+")  # noqa: SIM115 — held for the daemon's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise AlreadyRunning(
            f"another controller (pid {holder}) is running on {layout.state}; refusing to start"
        ) from exc
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield fh
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def resolve_layout(cfg: Config, state_dir: str | None, run_dir: str | None) -> Layout:
    """Command line beats config file beats environment/defaults."""
    state = Path(state_dir) if state_dir else cfg.state_dir or default_state_dir()
    run = Path(run_dir) if run_dir else cfg.run_dir
    return Layout.for_state(state, run)


AGENT_ARGV_ENV = "HYPERHIVE_AGENT_ARGV"
"""JSON list: the command the local runtime runs per agent instead of ``python -m harness
serve`` (tests and development use a stand-in agent)."""
VERSION_ENV = "HYPERHIVE_VERSION_OVERRIDE"
"""Pretend to be this hyperhive version (tests of upgrade drift; never set it in production)."""


def hyperhive_version() -> str:
    """``controller.__version__``, or ``$HYPERHIVE_VERSION_OVERRIDE`` when set."""
    return os.environ.get(VERSION_ENV) or __version__


def agent_argv() -> list[str] | None:
    """``$HYPERHIVE_AGENT_ARGV`` parsed (None when unset); ValueError when it is not a JSON
    list of strings."""
    raw = os.environ.get(AGENT_ARGV_ENV)
    if not raw:
        return None
    try:
        argv = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{AGENT_ARGV_ENV} is not JSON: {exc}") from exc
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{AGENT_ARGV_ENV} must be a non-empty JSON list of strings")
    return argv


def make_driver(cfg: Config, layout: Layout) -> Driver:
    """The runtime driver ``cfg.runtime`` asks for (``auto`` picks by what is installed)."""
    runtime = cfg.resolved_runtime()
    if runtime is Runtime.KUBERNETES:
        from controller.drivers.kubernetes.driver import KubernetesDriver

        return KubernetesDriver(layout, cfg)
    if runtime is Runtime.NIXOS_CONTAINER:
        from controller.drivers.nixos_container import NixosContainerDriver

        return NixosContainerDriver(layout, cfg)
    from controller.drivers.local import DEFAULT_ARGV, LocalDriver
    from controller.metrics.tracing import agent_environ

    return LocalDriver(
        layout,
        cfg,
        {**os.environ, **agent_environ(cfg, os.environ)},
        argv=agent_argv() or DEFAULT_ARGV,
        start_grace=cfg.local_start_grace,
        sandbox=cfg.local_sandbox,
    )


def _url_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _open_tcp_extras(
    cfg: Config,
    layout: Layout,
    stack: ExitStack,
    broker: Broker,
    swarm: SwarmOps,
    credentials: AgentCredentials,
    operator_key: str,
    budgets: Budgets | None = None,
) -> bool:
    """Open the optional TCP listeners the config asks for (the agent API, meta.git over
    HTTP), each stopped when ``stack`` closes, and log where each listens. False (after
    one log line saying why) when one cannot be opened."""
    import ssl

    from controller.httpserve import serve_listen

    wanted: list[tuple[str, TcpListen, Any, Policy, Limits, str]] = []
    if cfg.api is not None:
        from controller.api.tcp import API_LIMITS, api_policy, make_tcp_agent_app

        app = make_tcp_agent_app(broker, swarm, credentials, budgets)
        policy = api_policy(frozenset(cfg.api.hosts))
        wanted.append(("agent API", cfg.api, app, policy, API_LIMITS, "agent-api"))
    if cfg.git is not None:
        from controller.githttp import GIT_LIMITS, git_policy, make_git_app

        gapp = make_git_app(layout, operator_key, credentials)
        gpolicy = git_policy(frozenset(cfg.git.hosts), admit=gapp.admit)
        wanted.append(("meta.git over HTTP", cfg.git, gapp, gpolicy, GIT_LIMITS, "git-http"))
    for what, spec, asgi, pol, limits, name in wanted:
        try:
            listener = serve_listen(spec, asgi, policy=pol, limits=limits, name=name)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "cannot serve the %s on %s:%d: %s (check the listen address and the TLS "
                "files in the config)",
                what,
                spec.host,
                spec.port,
                getattr(exc, "strerror", None) or exc,
            )
            return False
        stack.callback(listener.stop)
        log.info("%s on %s://%s:%d/", what, spec.scheme, _url_host(spec.host), listener.port)
    return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _start_metrics(swarm: Any, layout: Layout) -> list[object]:
    """Observe every listener's requests and register the scrape-time collectors."""
    from controller.metrics import install
    from controller.metrics.http import observe_http

    observe_http()
    return install(swarm, layout)


def _stop_metrics(collectors: list[object]) -> None:
    from controller.metrics import uninstall
    from hivehttp import set_request_observer

    set_request_observer(None)
    uninstall(collectors)


def one_shot_pass(
    cfg: Config, state_dir: str | None, run_dir: str | None, dry_run: bool
) -> dict[str, Any]:
    """Run one pass in-process (no controller running); returns ``PassResult.to_json()``.

    Raises ``AlreadyRunning``, ``controller.dbcheck.BrokerDbRefused`` (the broker
    database is missing or damaged although agents have run) and what the pass raises.
    ``dry_run`` only reads (``dry_run_pass``).
    """
    if dry_run:
        return dry_run_pass(cfg, state_dir, run_dir)
    from controller.broker import Broker
    from controller.dbcheck import broker_location, check_broker_db
    from controller.metarepo import MetaRepo
    from controller.statedir import prepare_state_dirs
    from controller.swarm import Swarm

    layout = resolve_layout(cfg, state_dir, run_dir)
    prepare_state_dirs(layout)
    with state_lock(layout):
        # never create an empty broker over one that was lost: the same check as serve
        where = broker_location(cfg.broker, layout)
        check_broker_db(layout, location=where)
        meta = MetaRepo.open_or_init(layout, cfg, version=hyperhive_version())
        broker = Broker(where)
        try:
            swarm = Swarm(layout, cfg, meta, broker, make_driver(cfg, layout))
            return swarm.reconcile(dry_run=dry_run).to_json()
        finally:
            broker.close()


class _NoEvents:
    """The event sink of a dry run: it plans, so it never sends (the broker stays closed)."""

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> None:
        """Nothing is delivered."""

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        """Nothing is closed."""
        return 0

    def dead_letter_counts(self) -> dict[str, int]:
        """Nothing is known."""
        return {}


def dry_run_pass(cfg: Config, state_dir: str | None, run_dir: str | None) -> dict[str, Any]:
    """Plan one pass and write nothing: no state lock taken (a running controller is not
    disturbed, and a read needs no lock), no state or run dir prepared, no broker opened,
    the meta repo opened read-only; returns ``PassResult.to_json()`` (``dry_run`` true).

    Raises ``controller.errors.NotFound`` when there is no meta repo (nothing to plan: a
    dry run never bootstraps one) and what planning raises.
    """
    from controller.metarepo import MetaRepo
    from controller.swarm import Swarm

    layout = resolve_layout(cfg, state_dir, run_dir)
    meta = MetaRepo.open(layout, cfg, version=hyperhive_version())
    swarm = Swarm(layout, cfg, meta, _NoEvents(), make_driver(cfg, layout))
    return swarm.reconcile(dry_run=True).to_json()


def run_daemon(
    cfg: Config,
    state_dir: str | None,
    run_dir: str | None,
    dashboard: str | None = None,
    *,
    reset_broker: bool = False,
) -> int:
    """Run the controller until SIGTERM/SIGINT; returns the process exit code.

    Exit 2, with one log line saying why and what to do, when another
    controller holds the state dir, the broker database is refused
    (``controller.dbcheck``), or a listener cannot be opened.
    """
    from controller.api.admin import make_admin_app
    from controller.auth import AgentCredentials, LoginTokens, ensure_operator_key
    from controller.broker import Broker, BrokerStorageError
    from controller.budget.wiring import open_budgets
    from controller.dashboard.app import make_dashboard_app
    from controller.dbcheck import BrokerDbRefused, broker_location, check_broker_db
    from controller.forge.setup import ForgeSetupError, make_forge
    from controller.frontend.files import FrontendFiles
    from controller.httpserve import SocketRegistry, serve_tcp, serve_unix
    from controller.metarepo import MetaRepo
    from controller.metrics.passes import PASS_REASON
    from controller.metrics.tracing import TRACING
    from controller.retention import sweep_event_logs
    from controller.statedir import prepare_state_dirs
    from controller.swarm import Swarm
    from controller.systemd_notify import SystemdNotify, Watchdog, status_line
    from hivehttp import browser_policy

    _setup_logging(cfg.log_level)
    if dashboard:
        host, _, port = dashboard.rpartition(":")
        cfg = replace(cfg, dashboard_host=host or cfg.dashboard_host, dashboard_port=int(port))
    layout = resolve_layout(cfg, state_dir, run_dir)
    # unset NOTIFY_SOCKET so agents started by the local driver do not inherit it
    notify = SystemdNotify(unset_environment=True)
    # a pass may build containers for many minutes; the loop beats between passes,
    # so a stale beat means a wedged loop, not a slow build
    watchdog = Watchdog(notify, stale_after=BUILD_GRACE)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping (agents keep running)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        # umask 077 from here on: the broker, logs and meta repo are the operator's alone
        for tightened in prepare_state_dirs(layout):
            log.info("%s", tightened)
        lock_cm = state_lock(layout)
        lock_cm.__enter__()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot prepare the state dir %s: %s", layout.state, exc)
        return 2
    with ExitStack() as stack:
        stack.callback(lock_cm.__exit__, None, None, None)
        for d in (layout.run, layout.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            broker_at = broker_location(cfg.broker, layout)
            checked = check_broker_db(layout, reset=reset_broker, location=broker_at)
        except BrokerDbRefused as exc:
            log.error("%s", exc)
            return 2
        log.info("broker database: %s", checked.detail)
        meta = MetaRepo.open_or_init(layout, cfg, version=hyperhive_version())
        try:
            broker = Broker(broker_at)
        except BrokerStorageError as exc:
            log.error("%s", exc)
            return 2
        stack.callback(broker.close)
        try:
            driver = make_driver(cfg, layout)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        registry: SocketRegistry | None = None
        try:
            forge = make_forge(cfg, layout, broker.send, meta.desired)
        except ForgeSetupError as exc:
            log.error("%s", exc)
            return 2

        def on_deploy(agent: str) -> None:
            if registry is not None:
                registry.ensure(agent)
            if forge is not None:  # before the harness starts: tea logs in at boot
                forge.on_deploy(agent)

        def on_destroy(agent: str) -> None:
            if registry is not None:
                registry.remove(agent)

        operator_key = ensure_operator_key(layout)
        # the swarm issues every credential through this instance, so the TCP API's
        # lookups of unknown tokens need not re-read every agent's file each time
        credentials = AgentCredentials(layout, rescan_every=1.0)
        swarm = Swarm(
            layout,
            cfg,
            meta,
            broker,
            driver,
            on_deploy=on_deploy,
            on_destroy=on_destroy,
            credentials=credentials,
        )
        if TRACING.start(cfg, os.environ):
            stack.callback(TRACING.shutdown)
        # metrics: count every listener's requests (hook set before any listener opens)
        metrics_collectors = _start_metrics(swarm, layout)
        stack.callback(_stop_metrics, metrics_collectors)
        budgets = open_budgets(layout, cfg, meta.desired, broker, known=swarm.agent_names)
        stack.callback(budgets.ledger.close)
        swarm.attach_budgets(budgets.held, lambda: budgets.generation)
        registry = SocketRegistry(broker, swarm, layout, credentials, budgets=budgets)
        stack.callback(registry.close_all)
        login_tokens = LoginTokens()
        dashboard_url: list[str] = []
        admin = serve_unix(
            make_admin_app(
                broker,
                swarm,
                operator_key,
                login_tokens=login_tokens,
                dashboard_url=lambda: dashboard_url[0] if dashboard_url else None,
                budgets=budgets,
            ),
            layout.host_sock,
            name="host.sock",
        )
        stack.callback(admin.stop)
        registry.sync(swarm.agent_names())
        # ends open message flows on shutdown
        streams_stop = threading.Event()
        try:
            dash = serve_tcp(
                make_dashboard_app(
                    swarm,
                    broker,
                    operator_key=operator_key,
                    login_tokens=login_tokens,
                    # a runtime whose agents have no socket here says where their UI is
                    web_sock=getattr(driver, "web_upstream", None) or layout.agent_web_sock,
                    stop=streams_stop,
                    frontend=FrontendFiles(layout.meta_git, meta.desired),
                    budgets=budgets,
                ),
                cfg.dashboard_host,
                cfg.dashboard_port,
                policy=browser_policy(frozenset(cfg.dashboard_hosts)),
                name="dashboard",
            )
        except OSError as exc:
            log.error(
                "cannot serve the dashboard on %s:%d: %s (another program uses the port? "
                "choose another with --dashboard HOST:PORT)",
                cfg.dashboard_host,
                cfg.dashboard_port,
                exc.strerror or exc,
            )
            return 2
        stack.callback(dash.stop)
        stack.callback(streams_stop.set)
        if cfg.metrics_port is not None:
            from controller.metrics.endpoint import (
                TokenFileError,
                ensure_metrics_token,
                serve_metrics,
            )
            from controller.metrics.events import REGISTRY

            try:
                # no token file configured: one of our own, never an open /metrics (agents
                # share loopback on the local runtime)
                token_file = cfg.metrics_token_file or ensure_metrics_token(layout.metrics_token)
                scrape = serve_metrics(REGISTRY, cfg.metrics_host, cfg.metrics_port, token_file)
            except (OSError, TokenFileError) as exc:
                log.error(
                    "cannot serve /metrics on %s:%d: %s",
                    cfg.metrics_host,
                    cfg.metrics_port,
                    getattr(exc, "strerror", None) or exc,
                )
                return 2
            stack.callback(scrape.stop)
            log.info(
                "metrics: http://%s:%d/metrics%s",
                _url_host(cfg.metrics_host),
                scrape.port,
                f" (bearer token of {token_file})",
            )
        dashboard_url.append(f"http://{_url_host(cfg.dashboard_host)}:{dash.port}")
        log.info(
            "hyperhive %s: state %s, runtime %s, admin %s, dashboard %s/",
            meta.version,
            layout.state,
            driver.name,
            layout.host_sock,
            dashboard_url[0],
        )
        if not _open_tcp_extras(
            cfg, layout, stack, broker, swarm, credentials, operator_key, budgets
        ):
            return 2
        login = login_tokens.issue()
        log.info(
            "open %s/login?token=%s to log in to the dashboard (one use, within %d minutes; "
            "`hyperhive dashboard` prints a new one)",
            dashboard_url[0],
            login.token,
            int(login_tokens.ttl // 60),
        )

        def run_pass(reason: str) -> None:
            t0 = time.monotonic()
            asked = PASS_REASON.set(reason)  # the pass's metrics and span say what asked
            try:
                result = swarm.reconcile()
            except Exception:
                log.exception("reconcile pass (%s) crashed; retrying on the next trigger", reason)
                return
            finally:
                PASS_REASON.reset(asked)
            registry.sync(swarm.agent_names())
            if result.plan or result.errors:
                log.info(
                    "pass (%s): %d action(s), %d error(s) in %.0f ms",
                    reason,
                    len(result.plan),
                    len(result.errors),
                    (time.monotonic() - t0) * 1000,
                )
            for err in result.errors:
                log.warning("pass (%s): %s", reason, err)
            st = swarm.status()
            agents = st.get("agents", [])
            ready = sum(
                1
                for a in agents
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in a.get("conditions", [])
                )
            )
            notify.status(status_line(ready, len(agents), int(st.get("pending", 0))))

        watchdog.start()
        stack.callback(watchdog.stop)
        # an operator's approved/denied tag starts a pass the moment git writes it, before
        # the post-receive hook's interpreter has started to poke us (controller.refwatch)
        refwatch = RefWatch(layout.meta_git, swarm.request_pass, marker=watch_marker(layout))
        if refwatch.start():
            stack.callback(refwatch.stop)
        if forge is not None:
            forge_stop = threading.Event()
            forge.start(forge_stop)
            stack.callback(forge.poke)
            stack.callback(forge_stop.set)
        notify.extend_timeout(BUILD_GRACE)
        run_pass("startup")
        notify.ready()
        last_sweep = 0.0
        tick = min(cfg.resync_seconds, QUESTION_TICK, cfg.crash_watch_seconds)
        next_resync = time.monotonic() + cfg.resync_seconds
        next_watch = time.monotonic() + cfg.crash_watch_seconds
        next_chores = time.monotonic() + tick
        while not stop.is_set():
            watchdog.beat()
            # wait in short slices so SIGTERM stops us at once; the signal handler itself
            # only sets an Event (taking the swarm's locks there could deadlock)
            reason = swarm.wait_for_pass_request(timeout=STOP_POLL)
            if stop.is_set():
                break
            now = time.monotonic()
            if reason is None and now < next_chores:
                continue
            next_chores = now + tick
            if reason is None and now >= next_resync:
                reason = "resync"
            if reason is not None:
                run_pass(reason)
                next_resync = time.monotonic() + cfg.resync_seconds
            elif now >= next_watch:
                # crash watch between passes: observe only; asks for a pass if needed
                next_watch = now + cfg.crash_watch_seconds
                try:
                    swarm.watch()
                except Exception:
                    log.exception("crash watch failed; trying again on the next tick")
            broker.expire_questions(time.time())
            # announce poison messages even when their recipient is not receiving
            broker.reap_dead_letters()
            if now - last_sweep >= SWEEP_EVERY:
                last_sweep = now
                try:
                    broker.sweep(time.time())
                except Exception:
                    log.exception("broker retention sweep failed")
                # agents' event logs: retention is the host's job, not the harness's
                sweep_event_logs(layout, time.time())
        notify.stopping()
    log.info("stopped")
    return 0
