"""The turn loop: long-poll the inbox, run one claude turn per message, record it.

::

    POST /recv {"wait_seconds": 180, "lease_seconds": 1800}   (parks up to 180 s)
      → wake prompt (harness.prompts)
      → claude -p [--continue] (harness.turn), every stdout line into the event log
      → prompt_too_long? compact (/compact with --continue) and retry once
      → POST /ack {"ids": [id]}   (not when the harness is stopping: the lease redelivers;
                                  not when the turn never reached the model: POST /release
                                  gives it back, then a back-off of up to 30 s)
      → GET /status → one turn-stats row → POST /spend (its cost, for the budget check)
      → failed? best-effort message to the manager (unless we are the manager)

The controller may restart under us: an unreachable socket is retried forever
with backoff (1 s doubling to 30 s), logged once per outage. Operator controls
(cancel, compact, new session, model, login) come from the web UI thread and are
thread-safe. ``stop()`` (SIGTERM) cancels the running turn, records it
``cancelled`` and makes :meth:`TurnLoop.run_forever` return.

Before the first recv: ``POST /release {}`` (messages a previous harness left
leased come back at once instead of after their 30-minute lease; ignored while
the controller has no such verb) and the configured marketplaces and plugins
(``harness.plugins``). A turn longer than the time limit (settings
``turn_timeout_seconds``, default 30 min) is cancelled and recorded ``failed``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import claude, login, prompts
from harness.config import HarnessEnv, Settings, turn_timeout
from harness.credential import broker_client, read_credential
from harness.events import Bus, TurnState
from harness.login import LoginBusy, LoginSession, LoginSnapshot, LoginState
from harness.model import ModelStore
from harness.plugins import COMMAND_TIMEOUT, Outcome, failure_report, install_all
from harness.report import Credentials, Reporter
from harness.stream import (
    LIVE_ONLY_KINDS,
    MessageStart,
    StreamEvent,
    SystemEvent,
    TextDelta,
    Usage,
    event_json,
)
from harness.telemetry import Telemetry, claude_environ
from harness.turn import ClaudeRunner, RunKind, RunResult
from harness.turnstats import TurnRow, TurnStats

if TYPE_CHECKING:
    from harness.mcp_http import McpEndpoint
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import MANAGER
from schemas.wire import Message, Status

log = logging.getLogger(__name__)

RECV_WAIT = 180
LEASE_SECONDS = 1800
BACKOFF_MAX = 30.0
LOGIN_POLL = 5.0
COMPACT_PROMPT = "/compact"
MAX_REPORT_CHARS = 8000
MAX_UNREPORTED = 100  # spend reports kept for a controller that did not answer
STDERR_REPORT = 20  # stderr lines sent to the manager with a failure
#: After a turn that never reached the model (its message went back to the inbox): seconds
#: before the next recv, cut short by new credentials or (claude missing) the binary appearing.
UNREACHED_BACKOFF = 30.0
BINARY_POLL = 1.0
#: How long the loop thread may stay in one phase before the systemd watchdog stops being
#: fed (seconds; ``turn`` and ``plugins`` are computed from the time limits).
PHASE_SLACK = 120.0


def fmt_seconds(seconds: float) -> str:
    """``30 min`` / ``90 s`` / ``1.5 h``: a time limit for humans."""
    if seconds >= 5400:
        return f"{seconds / 3600:g} h"
    if seconds >= 120:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@dataclass
class Timings:
    """Latency figures of one turn, milliseconds.

    ``recv_to_spawn``: recv returned → claude process started (prompt building,
    config writing, fork/exec). ``result_to_recorded``: result line parsed →
    turn-stats row written (process exit, ack, status peek, sqlite insert).
    """

    recv_to_spawn_ms: float | None = None
    result_to_recorded_ms: float | None = None

    def to_json(self) -> dict[str, float | None]:
        """``{"recv_to_spawn_ms", "result_to_recorded_ms"}``."""
        return {
            "recv_to_spawn_ms": self.recv_to_spawn_ms,
            "result_to_recorded_ms": self.result_to_recorded_ms,
        }


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 3)


class TurnLoop:
    """One agent's turn loop: :meth:`run_forever`, or :meth:`handle` for one message."""

    def __init__(
        self,
        env: HarnessEnv,
        settings: Settings,
        bus: Bus,
        stats: TurnStats,
        models: ModelStore,
        *,
        environ: Mapping[str, str],
        client: UnixClient | None = None,
        runner: ClaudeRunner | None = None,
        python: str | None = None,
    ) -> None:
        self.env = env
        self.settings = settings
        self.bus = bus
        self.stats = stats
        self.models = models
        self.environ = dict(environ)
        self.environ.update(claude_environ(env.agent, self.environ))  # Claude Code telemetry
        if client is None:  # serve passes its client; this is for a loop built on its own
            cf = env.credential_file
            client = broker_client(env.broker, read_credential(cf) if cf is not None else None)
        self.client = client
        self.runner = runner or ClaudeRunner()
        self.python = python
        self.mcp_config_path = env.state_dir / "hyperhive-mcp.json"
        #: the last reason the controller could not be reached (logged with the outage)
        self.unreachable_because = ""
        #: the harness-served MCP tools (serve sets it); None: claude starts the stdio server
        self.mcp: McpEndpoint | None = None
        self._stop = threading.Event()
        self._claude_lock = threading.Lock()  # one claude process at a time (turn or compaction)
        self._flags = threading.Lock()
        self._new_session = False
        self._intro_due = False
        self._compact_pending = False
        self._cancel_requested = False
        self._shutdown = False
        self._timed_out = False
        self._current_turn: int | None = None
        self.turn_timeout = turn_timeout(env, settings)
        self.last_timings = Timings()
        self.on_turn_recorded: Callable[[TurnRow, Timings], None] | None = None
        #: the report to the controller (serve sets it; :mod:`harness.report`)
        self.reporter: Reporter | None = None
        #: OpenTelemetry turn and tool spans (a no-op unless OTEL_EXPORTER_OTLP_ENDPOINT is set)
        self.telemetry = Telemetry.from_environ(env.agent, self.environ)
        # login
        self._creds_changed = threading.Event()
        self._rejected: tuple[Any, ...] | None = None  # credentials fingerprint a 401 came with
        self._login: LoginSession | None = None
        self._login_lock = threading.Lock()
        # boot
        self.plugins: list[Outcome] | None = None  # None until the boot installs ran
        self._release_supported = True
        self._spend_supported = True
        self._unreported: list[dict[str, Any]] = []  # spend reports the controller missed
        self._unreached: str | None = None  # why the last turn never reached the model
        # watchdog: what the loop thread is doing, since when (monotonic), for how long at most
        self._phase: tuple[str, float, float] = ("starting", time.monotonic(), PHASE_SLACK)
        self._progress = time.monotonic()

    # ------------------------------------------------------------------ controls (any thread)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the loop: cancel the running turn (recorded ``cancelled``, message not acked)."""
        with self._flags:
            self._shutdown = True
            self._cancel_requested = True
        self._stop.set()
        self.runner.cancel()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no turn or compaction is running (at most ``timeout`` s); True when idle.

        After :meth:`stop`, a turn that finishes is recorded before this returns.
        """
        if not self._claude_lock.acquire(timeout=timeout):
            return False
        self._claude_lock.release()
        return True

    def cancel_turn(self) -> bool:
        """Cancel the running turn or compaction (the message is acked). False when idle."""
        with self._flags:
            if self.bus.state == TurnState.IDLE:
                return False
            self._cancel_requested = True
        self.runner.cancel()
        self.bus.note("operator cancelled the turn", "warning", self._current_turn)
        return True

    def request_new_session(self) -> None:
        """Make the next turn start a fresh claude session (no ``--continue``)."""
        with self._flags:
            self._new_session = True
        self.bus.note("next turn starts a fresh session (operator /new)")

    def request_compact(self) -> str:
        """Compact now if idle (``"started"``), else after the running turn (``"queued"``)."""
        if self._claude_lock.acquire(blocking=False):
            threading.Thread(target=self._compact_locked, name="compact", daemon=True).start()
            return "started"
        with self._flags:
            self._compact_pending = True
        self.bus.note("compaction queued until the running turn ends")
        return "queued"

    def set_model(self, model: str) -> str:
        """Override the model from the next turn on; return the effective model.

        Raises ``InvalidModel``.
        """
        effective = self.models.set(model)
        self.bus.set_model(effective, "operator" if self.models.override else "settings")
        return effective

    # ------------------------------------------------------------------ socket helpers

    def _status(self) -> Status | None:
        try:
            return Status.from_json(self.client.get("/status", timeout=5.0))
        except (ApiError, Unreachable, KeyError, TypeError, ValueError) as exc:
            log.debug("status peek failed: %s", exc)
            return None

    def _ack(self, msg_id: int) -> None:
        try:
            self.client.call(
                "POST", "/ack", {"ids": [msg_id]}, timeout=10.0, retry=not self.stopping
            )
        except (ApiError, Unreachable) as exc:
            log.warning(
                "ack of message %d failed (%s); it will be redelivered after its lease", msg_id, exc
            )

    def _report_failure(
        self, turn: int, msg: Message, run: RunResult, summary: str | None = None
    ) -> None:
        if self.env.is_manager:
            return
        lines = "\n".join(run.stderr_tail[-STDERR_REPORT:]) or "(no stderr)"
        body = (
            f"[hyperhive] agent {self.env.agent}: turn {turn} "
            f"(message #{msg.id} from {msg.sender}) "
            f"failed: {summary or run.failure_summary()}\nlast stderr lines:\n{lines}"
        )[:MAX_REPORT_CHARS]
        try:
            self.client.post("/send", {"to": MANAGER, "body": body}, timeout=10.0)
        except (ApiError, Unreachable) as exc:
            log.warning("could not tell the manager about the failed turn: %s", exc)

    def _tell_manager(self, body: str, what: str) -> None:
        """Best effort, in a background thread (the controller may not be up yet)."""
        if self.env.is_manager:
            return

        def send() -> None:
            try:
                self.client.post(
                    "/send", {"to": MANAGER, "body": body[:MAX_REPORT_CHARS]}, timeout=10.0,
                    retry=True,
                )  # fmt: skip
            except (ApiError, Unreachable) as exc:
                log.warning("could not tell the manager about %s: %s", what, exc)

        threading.Thread(target=send, name="tell-manager", daemon=True).start()

    def _report_spend(self, row_id: int, row: TurnRow) -> None:
        """``POST /spend``: tell the controller what this turn cost before the next recv, so
        its budget check counts it even where it cannot read the turn-stats file (an agent on
        another machine). Best effort: reports it could not deliver are sent again after the
        next turn (up to ``MAX_UNREPORTED``); a controller without the verb is not asked again.
        """
        if not self._spend_supported:
            return
        self._unreported.append(
            {
                "turn_id": row_id,
                "started_at": row.started_at,
                "cost_usd": max(0.0, row.cost_usd),
                "tokens": row.input_tokens + row.output_tokens + row.cache_creation_tokens,
            }
        )
        del self._unreported[:-MAX_UNREPORTED]
        while self._unreported:
            try:
                self.client.call("POST", "/spend", self._unreported[0], timeout=5.0, retry=False)
            except ApiError as exc:
                if exc.status in (404, 405):
                    log.info("no POST /spend on the controller; it reads the turn stats file")
                    self._spend_supported = False
                    self._unreported.clear()
                    return
                log.warning("spend report refused: %s", exc.message)
            except Unreachable as exc:
                log.debug("spend report: %s", exc)
                return
            self._unreported.pop(0)

    def _release(self, ids: list[int] | None) -> None:
        """``POST /release``: give leased messages back at once (``None``: all of ours).

        Best effort; a controller without the verb (404 / 405) is remembered and not asked again.
        """
        if not self._release_supported:
            return
        body: dict[str, Any] = {} if ids is None else {"ids": ids}
        try:
            data = self.client.call("POST", "/release", body, timeout=5.0, retry=False)
        except ApiError as exc:
            if exc.status in (404, 405):
                log.info("no POST /release on the controller; leased messages wait for the lease")
                self._release_supported = False
            else:
                log.warning("release of leased messages refused: %s", exc.message)
            return
        except Unreachable as exc:
            log.debug("release: %s", exc)
            return
        n = data.get("released") if isinstance(data, dict) else None
        if n:
            log.info("released %s leased message(s) %s", n, ids if ids is not None else "(all)")

    # ------------------------------------------------------------------ claude runs

    def _invocation(self, model: str, continue_session: bool) -> claude.Invocation:
        extras = self.settings.mcp_servers
        mcp = self.mcp
        # a fresh credential per claude run: the one of an earlier run stops working
        served = mcp.mcp_config(mcp.issue()) if mcp is not None and mcp.alive else None
        doc = claude.render_mcp_config(
            socket=self.env.socket,
            api_url=self.env.api_url,
            api_ca=self.env.api_ca,
            flavor=self.env.flavor,
            agent=self.env.agent,
            extras=extras,
            python=self.python or sys.executable,
            pythonpath=claude.import_path(exclude=self.env.state_dir),
            credential_file=str(cf) if (cf := self.env.credential_file) is not None else None,
            hyperhive=served,
        )
        claude.write_mcp_config(self.mcp_config_path, doc)
        plugins = bool(self.settings.plugins)
        argv = claude.build_argv(
            claude_bin=self.env.claude_bin,
            model=model,
            mcp_config=self.mcp_config_path,
            allow=claude.allowed_tools(self.env.flavor, extras, plugins=plugins),
            tools=claude.builtin_tools(plugins),
            continue_session=continue_session,
            max_budget_usd=self.settings.max_budget_usd_per_turn,
        )
        env = self.claude_env()
        return claude.Invocation(argv, env, self.env.state_dir)

    def _pump(self, turn: int | None) -> Callable[[StreamEvent], None]:
        def on_event(ev: StreamEvent) -> None:
            self._progress = time.monotonic()
            if self.reporter is not None:
                if isinstance(ev, SystemEvent) and ev.subtype == "api_retry":
                    self.reporter.api_retry(ev.data)  # the controller hears of it at once
                elif isinstance(ev, MessageStart):
                    self.reporter.api_answered()
            self.telemetry.on_event(ev)
            if isinstance(ev, TextDelta):
                self.bus.text_delta(turn, ev.index, ev.text)
                return
            if isinstance(ev, SystemEvent) and ev.data.get("status") == "requesting":
                pass  # one per API request with partial messages on: not worth a stored event
            elif ev.kind not in LIVE_ONLY_KINDS:
                self.bus.emit(ev.kind, event_json(ev), turn)
            usage = getattr(ev, "usage", None)
            if isinstance(usage, Usage) and ev.kind != "result":
                self.bus.set_usage(usage, turn)

        return on_event

    def _run(self, prompt: str, model: str, continue_session: bool, turn: int | None) -> RunResult:
        inv = self._invocation(model, continue_session)
        log.info(
            "turn %s: starting claude (model %s, %s)",
            turn,
            model,
            "continue" if continue_session else "fresh",
        )
        try:
            return self.runner.run(inv, prompt, self._pump(turn), lambda: self._cancel_requested)
        finally:
            if self.mcp is not None:  # the run is over: its MCP credential opens nothing now
                self.mcp.revoke()

    def _compact(self, turn: int | None) -> RunResult:
        """Run ``/compact`` on the current session; caller holds ``_claude_lock``."""
        self.bus.set_state(TurnState.COMPACTING, turn)
        run = self._run(COMPACT_PROMPT, self.models.current(), True, turn)
        if run.kind == RunKind.OK:
            with self._flags:
                self._intro_due = True
            self.bus.note("compaction done", turn=turn)
        else:
            self._log_failure("compaction", turn, run)
        return run

    def _compact_locked(self) -> None:
        try:
            with self._flags:
                self._compact_pending = False
                self._cancel_requested = False
            self._compact(None)
        except Exception:
            log.exception("compaction failed")
        finally:
            self.bus.set_state(TurnState.IDLE)
            self._claude_lock.release()

    def _log_failure(
        self, what: str, turn: int | None, run: RunResult, summary: str | None = None
    ) -> None:
        summary = summary or run.failure_summary()
        tail = "\n".join(run.stderr_tail)
        log.error("%s (turn %s) failed: %s\n%s", what, turn, summary, tail)
        self.bus.emit(
            "note",
            {"level": "error", "text": f"{what} failed: {summary}", "stderr": run.stderr_tail},
            turn,
        )

    # ------------------------------------------------------------------ one wake

    def handle(self, msg: Message, recv_at: float | None = None) -> TurnRow:
        """Run the turn for ``msg`` (compact + retry once on overflow), ack, record it.

        ``recv_at`` is the ``time.monotonic()`` when recv returned (for the timings).
        """
        recv_at = time.monotonic() if recv_at is None else recv_at
        with self._claude_lock:
            return self._handle_locked(msg, recv_at)

    def _handle_locked(self, msg: Message, recv_at: float) -> TurnRow:
        turn = self.bus.log.next_turn()
        self._current_turn = turn
        started_at = time.time()
        # the previous claude may still be exiting (it was reaped in the background after its
        # result line); it writes its session file on the way out, so wait before looking
        self.runner.reap()
        with self._flags:
            fresh = self._new_session or not claude.session_exists(
                self.env.config_dir, self.env.state_dir
            )
            self._new_session = False
            intro = fresh or self._intro_due
            self._intro_due = False
            if not self._shutdown:
                self._cancel_requested = False
            self._timed_out = False
        self._enter("turn", self.turn_timeout + PHASE_SLACK)
        timer = threading.Timer(self.turn_timeout, self._on_time_limit, args=(turn,))
        timer.daemon = True
        try:
            return self._turn(msg, recv_at, turn, started_at, fresh, intro, timer)
        finally:
            timer.cancel()
            self._current_turn = None
            self.telemetry.turn_aborted()  # a no-op once turn_finished closed the span

    def _on_time_limit(self, turn: int) -> None:
        with self._flags:
            if self._current_turn != turn:
                return
            self._timed_out = True
            self._cancel_requested = True
        limit = fmt_seconds(self.turn_timeout)
        log.error("turn %d: time limit of %s exceeded; cancelling", turn, limit)
        self.bus.note(
            f"the turn ran longer than its time limit ({fmt_seconds(self.turn_timeout)}): "
            "terminating claude", "error", turn,
        )  # fmt: skip
        self.runner.cancel()

    def _turn(
        self,
        msg: Message,
        recv_at: float,
        turn: int,
        started_at: float,
        fresh: bool,
        intro: bool,
        timer: threading.Timer,
    ) -> TurnRow:
        timer.start()
        model = self.models.current()
        self.bus.set_model(model, "operator" if self.models.override else "settings")
        self.bus.emit(
            "turn_start",
            {
                "message": msg.to_json(),
                "model": model,
                "fresh_session": fresh,
                "started_at": started_at,
            },
            turn,
        )
        self.telemetry.turn_started(msg, model, turn)
        self.bus.set_state(TurnState.THINKING, turn)
        if self.reporter is not None:
            self.reporter.turn_started(turn)
        prompt = prompts.wake_prompt(
            msg,
            agent=self.env.agent,
            flavor=self.env.flavor,
            state_dir=self.env.state_dir,
            fresh_session=intro,
            operator_pronouns=self.settings.operator_pronouns,
        )
        runs: list[RunResult] = []
        compactions = 0
        if not self._cancel_requested:
            runs.append(self._run(prompt, model, not fresh, turn))
        if runs and runs[-1].kind == RunKind.PROMPT_TOO_LONG and not self._cancel_requested:
            self.bus.note(
                "context is full (prompt_too_long): compacting, then retrying once", "warning", turn
            )
            compact = self._compact(turn)
            compactions += 1
            if compact.kind == RunKind.OK and not self._cancel_requested:
                self.bus.set_state(TurnState.THINKING, turn)
                retry_prompt = prompts.wake_prompt(
                    msg, agent=self.env.agent, flavor=self.env.flavor, state_dir=self.env.state_dir,
                    fresh_session=True, operator_pronouns=self.settings.operator_pronouns,
                )  # fmt: skip
                with self._flags:
                    self._intro_due = False
                runs.append(self._run(retry_prompt, model, True, turn))
        timer.cancel()
        final = runs[-1] if runs else None
        note: str | None = None
        if self._timed_out and (final is None or final.kind != RunKind.OK):
            kind = RunKind.FAILED
            note = (
                f"time limit of {fmt_seconds(self.turn_timeout)} exceeded: "
                "the claude process tree was terminated"
            )
        elif final is None or (self._cancel_requested and (final.kind != RunKind.OK)):
            kind = RunKind.CANCELLED
        else:
            kind = final.kind
        if note is None and final is not None and kind != RunKind.OK:
            note = final.failure_summary() or None
        # a turn the model never saw does not spend its message: it goes back to the inbox
        unreached = (
            final.never_reached_model()
            if final is not None and kind == RunKind.FAILED and not self._timed_out
            else None
        )
        if unreached is not None:
            note = (
                f"{note or unreached} (never reached the model: "
                f"message #{msg.id} returned to the inbox)"
            )
        self._unreached = unreached
        self.bus.set_state(TurnState.IDLE, turn)
        ended_at = time.time()
        duration_ms = int((ended_at - started_at) * 1000)
        self.bus.set_last_turn(duration_ms)
        if kind in (RunKind.FAILED, RunKind.PROMPT_TOO_LONG) and final is not None:
            self._log_failure("turn", turn, final, note)
        if (
            kind == RunKind.FAILED
            and final is not None
            and final.result is not None
            and final.result.api_error_status == 401
        ):
            self._rejected = login.fingerprint(self.environ, self.env.config_dir)
            log.error("claude's credentials were rejected (401); waiting for a new login")
        if self.reporter is not None:
            api_status = final.result.api_error_status if final and final.result else None
            self.reporter.turn_ended(turn, str(kind), unreached, note, api_status)

        usage = sum((r.usage for r in runs), Usage())
        tools: Counter[str] = Counter()
        for r in runs:
            tools.update(r.tool_calls)
        shutdown = self._shutdown
        if unreached is not None:  # each release counts as a delivery: dead letter after 5
            self._release([msg.id])
        elif not (kind == RunKind.CANCELLED and shutdown):
            self._ack(msg.id)
        else:  # cut off by SIGTERM: hand it back now rather than after its lease
            self._release([msg.id])
        status = self._status()
        if status is not None:
            self.bus.set_status(self.bus.snapshot()["status"], inbox=status.to_json())
        row = TurnRow(
            model=model,
            result_kind=kind,
            started_at=started_at,
            ended_at=ended_at,
            duration_ms=duration_ms,
            turn=turn,
            message_id=msg.id,
            wake_from=msg.sender,
            wake_kind=str(msg.kind),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            cache_creation_tokens=usage.cache_creation_input_tokens,
            cost_usd=round(sum(r.cost_usd for r in runs), 8),
            tool_calls=sum(tools.values()),
            tool_breakdown=dict(tools),
            compactions=compactions,
            open_threads=status.open_threads if status else None,
            pending_reminders=status.pending_reminders if status else None,
            meta_commit=self.settings.meta_commit,
            session_id=final.session_id if final else None,
            exit_code=final.exit_code if final else None,
            note=note,
        )
        row_id = self.stats.record(row)
        if row_id is not None:
            self._report_spend(row_id, row)
        self.telemetry.turn_finished(row)
        recorded = time.monotonic()
        first = runs[0] if runs else None
        self.last_timings = Timings(
            recv_to_spawn_ms=_ms(recv_at, first.spawned if first else None),
            result_to_recorded_ms=_ms(final.result_at if final else None, recorded),
        )
        self.bus.emit(
            "turn_end",
            {
                "result_kind": kind,
                "duration_ms": duration_ms,
                "usage": usage.to_json(),
                "cost_usd": row.cost_usd,
                "tool_calls": row.tool_calls,
                "compactions": compactions,
                "message_id": msg.id,
                "timings": self.last_timings.to_json(),
                "note": row.note,
            },
            turn,
        )
        log.info(
            "turn %d: %s in %d ms (%d in / %d out tokens, %d tool calls)",
            turn, kind, duration_ms, usage.input_tokens, usage.output_tokens, row.tool_calls,
        )  # fmt: skip
        if kind == RunKind.FAILED and final is not None and unreached is None:
            self._report_failure(turn, msg, final, note)
        if self.on_turn_recorded is not None:
            self.on_turn_recorded(row, self.last_timings)
        return row

    # ------------------------------------------------------------------ the loop

    def _unreached_backoff(self, reason: str) -> None:
        """Wait before the next recv after a turn that never reached the model: up to
        ``UNREACHED_BACKOFF`` s, less when the credentials change or (``claude_missing``) the
        claude binary appears. Rejected credentials (401) wait in :meth:`_await_login` instead."""
        if reason == "unauthorized" and self._rejected is not None:
            return  # the login wait before the next recv holds the loop until new credentials
        self.bus.note(
            f"the turn never reached the model ({reason}): the message went back to the inbox; "
            f"retrying within {UNREACHED_BACKOFF:g} s", "warning",
        )  # fmt: skip
        log.warning("turn never reached the model (%s); backing off before the next recv", reason)
        self._enter("backoff", UNREACHED_BACKOFF + PHASE_SLACK)
        deadline = time.monotonic() + UNREACHED_BACKOFF
        missing = reason == "claude_missing"
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            if self._creds_changed.wait(min(left, BINARY_POLL) if missing else left):
                self._creds_changed.clear()
                break
            if missing and shutil.which(self.env.claude_bin, path=self.claude_env().get("PATH")):
                break

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the loop should go on."""
        return not self._stop.wait(seconds)

    def needs_login(self) -> str | None:
        """Why claude cannot authenticate (the ``needs_login`` detail), or ``None`` when it can.

        No credentials at all; or the ones present were rejected with HTTP 401 and have
        not changed since.
        """
        if not login.has_credentials(self.environ, self.env.config_dir):
            return "claude has no credentials: log in from this page, or paste an API key or token"
        if self._rejected is not None:
            if login.fingerprint(self.environ, self.env.config_dir) == self._rejected:
                return (
                    "claude's credentials were rejected (HTTP 401): log in again, "
                    "or paste a new API key or token"
                )
            self._rejected = None
        return None

    def _await_login(self) -> bool:
        """Block while claude cannot authenticate (status ``needs_login``); False when stopped.

        Re-checked every ``LOGIN_POLL`` seconds, and at once when the web UI stored a key or a
        login finished (:meth:`credentials_changed`).
        """
        announced = False
        while (reason := self.needs_login()) is not None:
            if not announced:
                log.warning("%s (config dir %s): waiting", reason, self.env.config_dir)
                announced = True
            self._set_login_status(reason)
            self._enter("login", LOGIN_POLL + PHASE_SLACK)
            self._creds_changed.wait(LOGIN_POLL)
            self._creds_changed.clear()
            if self.stopping:
                return False
        if announced:
            source = login.credential_source(self.environ, self.env.config_dir)
            log.info("claude credentials found (%s); resuming", source)
            self.bus.set_status("online", "")
            self.bus.note(f"logged in ({source}): the turn loop resumes")
        return True

    def _set_login_status(self, reason: str) -> None:
        snap = self._login.snapshot() if self._login is not None else None
        detail = reason
        if snap is not None and snap.state not in LoginState.DONE:
            detail = f"login in progress ({snap.state.replace('_', ' ')}): {snap.message}"
        elif snap is not None and snap.state == LoginState.FAILED:
            detail = f"{reason} — the last login failed: {snap.message}"
        self.bus.set_status("needs_login", detail)

    # ------------------------------------------------------------------ login controls

    def claude_env(self) -> dict[str, str]:
        """The environment every claude process gets (turns, login, plugin commands)."""
        return claude.build_env(self.environ, config_dir=self.env.config_dir)

    def credentials_changed(self) -> None:
        """Wake a loop waiting for credentials so it re-checks now."""
        self._creds_changed.set()
        if self.reporter is not None:
            self.reporter.poke()

    def credential_report(self) -> Credentials:
        """Whether claude can authenticate now, how, and whether the API rejected the
        credentials it has (for :mod:`harness.report`; changes nothing)."""
        source = login.credential_source(self.environ, self.env.config_dir)
        rejected = self._rejected is not None and (
            login.fingerprint(self.environ, self.env.config_dir) == self._rejected
        )
        return Credentials(source is not None, source or "", rejected)

    def login_state(self) -> dict[str, Any]:
        """``{"needs_login", "reason", "source", "stored", "stored_hint", "session"}`` for
        ``GET /api/state``; ``stored_hint`` is the stored secret masked, never the secret."""
        reason = self.needs_login()
        return {
            "needs_login": reason is not None,
            "reason": reason,
            "source": login.credential_source(self.environ, self.env.config_dir),
            "stored": login.stored_kind(self.env.config_dir),
            "stored_hint": login.stored_hint(self.env.config_dir),
            "session": self._login.snapshot().to_json() if self._login is not None else None,
        }

    def _on_login_change(self, snap: LoginSnapshot) -> None:
        self.bus.emit("login", snap.to_json())
        if snap.state == LoginState.SUCCEEDED:
            self.credentials_changed()
        reason = self.needs_login()
        if reason is not None and not self.stopping:
            self._set_login_status(reason)

    def start_login(self, method: str = "claudeai") -> dict[str, Any]:
        """Start ``claude auth login``; return the session snapshot (the URL follows in an event).

        Raises ``LoginBusy`` when one runs, ``InvalidCredential`` for a bad ``method``.
        """
        with self._login_lock:
            if self._login is not None and not self._login.done:
                raise LoginBusy("a login is already in progress: paste its code or cancel it")
            session = LoginSession(
                self.env.claude_bin, self.claude_env(), self.env.state_dir, method=method,
                on_change=self._on_login_change,
            )  # fmt: skip
            self._login = session
        session.start()
        self.bus.emit("login", session.snapshot().to_json())
        return session.snapshot().to_json()

    def submit_login_code(self, code: str) -> dict[str, Any]:
        """Paste the sign-in page's code into the running login. Raises ``LoginBusy`` /
        ``InvalidCredential``."""
        session = self._login
        if session is None or session.done:
            raise LoginBusy("no login is waiting for a code: start one first")
        session.submit_code(code)
        return session.snapshot().to_json()

    def cancel_login(self) -> bool:
        """End the running login; False when none runs."""
        session = self._login
        return session.cancel() if session is not None else False

    def store_credential(self, kind: str, value: str) -> str:
        """Store an operator-supplied API key / OAuth token (see ``harness.login``); wake the
        loop. Returns the credential source now in effect. Raises ``InvalidCredential``."""
        login.store_credential(self.env.config_dir, kind, value)
        self._rejected = None
        self.bus.note(f"the operator stored an {kind.replace('_', ' ')} for claude")
        self.credentials_changed()
        return login.credential_source(self.environ, self.env.config_dir) or "none"

    def forget_credential(self) -> bool:
        """Remove the stored key / token; True when there was one."""
        had = login.forget_credential(self.env.config_dir)
        if had:
            self.bus.note("the operator removed the stored key / token", "warning")
        self.credentials_changed()
        return had

    # ------------------------------------------------------------------ boot, watchdog

    def install_plugins(self) -> list[Outcome]:
        """Add the configured marketplaces and install the plugins (idempotent, never raises);
        failures are noted and — for a sub-agent — reported to the manager."""
        marketplaces, plugins = self.settings.marketplaces, self.settings.plugins
        if not marketplaces and not plugins:
            self.plugins = []
            return []
        n = len(marketplaces) + len(plugins)
        self._enter("plugins", COMMAND_TIMEOUT * (n + 2) + PHASE_SLACK)
        self.bus.note(f"installing {len(marketplaces)} marketplace(s), {len(plugins)} plugin(s)…")

        def outcome(o: Outcome) -> None:
            self.bus.emit("plugin", o.to_json())

        try:
            outcomes = install_all(
                self.env.claude_bin, self.claude_env(), self.env.state_dir, marketplaces, plugins,
                on_outcome=outcome,
            )  # fmt: skip
        except Exception as exc:  # never stop the boot
            log.exception("plugin installation crashed")
            outcomes = [Outcome("plugin", ",".join(plugins), False, "failed", str(exc), 0.0)]
        self.plugins = outcomes
        failures = [o for o in outcomes if not o.ok]
        if failures:
            self.bus.note(
                f"{len(failures)} of {n} plugin/marketplace install(s) failed; the agent runs "
                "without them" + ("" if self.env.is_manager else " (the manager was told)"),
                "error",
            )
            self._tell_manager(failure_report(self.env.agent, failures), "failed plugin installs")
        return outcomes

    def plugin_state(self) -> list[dict[str, Any]] | None:
        """The boot installs' outcomes (``None`` until they ran)."""
        return [o.to_json() for o in self.plugins] if self.plugins is not None else None

    def _enter(self, phase: str, limit: float) -> None:
        self._phase = (phase, time.monotonic(), limit)

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """Is the loop thread making progress? ``(ok, what it is doing)`` — for the systemd
        watchdog: each phase (recv long poll, turn, login wait, plugin installs) has a bound."""
        phase, since, limit = self._phase
        age = (time.monotonic() if now is None else now) - since
        return age <= limit, f"{phase} for {age:.0f} s (limit {limit:.0f} s)"

    def recv(self) -> tuple[dict[str, Any] | None, bool]:
        """One long poll; returns ``(response, reachable)``."""
        try:
            data = self.client.post(
                "/recv",
                {"wait_seconds": RECV_WAIT, "lease_seconds": LEASE_SECONDS},
                timeout=RECV_WAIT + 30.0,
            )
        except Unreachable as exc:
            log.debug("recv: %s", exc)
            # why, for the outage's warning: over TCP it may be TLS (an untrusted certificate)
            self.unreachable_because = str(exc.__cause__ or exc)
            return None, False
        return (data if isinstance(data, dict) else None), True

    def _maybe_compact(self) -> None:
        with self._flags:
            pending = self._compact_pending
        if pending and self._claude_lock.acquire(blocking=False):
            self._compact_locked()

    def run_forever(self) -> None:
        """Loop until :meth:`stop`. Never raises for controller or claude trouble."""
        self._release(None)
        self.install_plugins()
        delay = 1.0
        outage = False
        while not self.stopping:
            self._enter("loop", PHASE_SLACK)
            if not self._await_login():
                break
            try:
                self._enter("recv", RECV_WAIT + 30.0 + PHASE_SLACK)
                data, reachable = self.recv()
            except ApiError as exc:
                log.error("recv refused: %s (%s); retrying in 5 s", exc.message, exc.status)
                self._sleep(5.0)
                continue
            self._enter("loop", PHASE_SLACK)
            if not reachable:
                if not outage:
                    where = self.env.broker.target
                    kind = "API" if self.env.api_url else "socket"
                    log.warning(
                        "controller %s %s unreachable (%s); retrying with backoff",
                        kind,
                        where,
                        self.unreachable_because,
                    )
                    self.bus.set_status("controller_unreachable", f"{kind} {where} unreachable")
                    outage = True
                self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            recv_at = time.monotonic()
            if outage:
                log.info("controller socket reachable again")
                self.bus.set_status("online", "")
                outage = False
                self._release(None)
                if self.reporter is not None:  # a restarted controller knows nothing of us yet
                    self.reporter.poke()
            delay = 1.0
            if data is None:
                continue
            if isinstance(data.get("status"), dict):
                self.bus.set_status(self.bus.snapshot()["status"], inbox=data["status"])
            held = data.get("held")  # over budget: the controller holds recv (docs/budgets.md)
            if isinstance(held, str):
                self.bus.set_status("budget_held", held)
            elif self.bus.snapshot()["status"] == "budget_held":
                self.bus.set_status("online", "")
            raw = data.get("message")
            if raw is None:
                self._maybe_compact()
                continue
            try:
                msg = Message.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("malformed message from recv (%s): %r", exc, raw)
                continue
            if self.stopping:  # leased, never started: hand it back
                self._release([msg.id])
                break
            try:
                self.handle(msg, recv_at)
                if self._unreached is not None:
                    self._unreached_backoff(self._unreached)
            except Exception:
                log.exception("turn for message %d crashed", msg.id)
                self.bus.set_state(TurnState.IDLE)
                self._sleep(1.0)
            self._maybe_compact()
        log.info("turn loop stopped")
