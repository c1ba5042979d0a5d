"""Run one ``claude -p`` process: prompt on stdin, stream-json on stdout, cancellable.

:class:`ClaudeRunner` starts the process in its own session (process group),
feeds the prompt, parses every stdout line with :func:`harness.stream.parse_line`
and hands each event to a callback, keeps the last 20 stderr lines, and can be
cancelled from another thread (:meth:`ClaudeRunner.cancel` terminates the whole
process tree: claude and its MCP server children). One process at a time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.claude import Invocation
from harness.stream import Result, StreamEvent, SystemInit, ToolUse, Unknown, Usage, parse_line

log = logging.getLogger(__name__)

STDERR_TAIL = 20
TERMINATE_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


#: API statuses after which the model never saw the prompt: the credentials were refused
UNAUTHORIZED_STATUSES = frozenset({401, 403})
#: ... or the API was overloaded / unreachable behind a proxy (a 500 may be caused by the
#: request itself, so it spends the message like any other failure)
UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504, 529})
#: lower-case fragments of claude's error result when it has no usable login
LOGIN_MARKERS = ("please run /login", "invalid api key", "not logged in")
#: ... and when no HTTP answer came at all
UNREACHABLE_MARKERS = ("connection error", "econnrefused", "enotfound", "etimedout", "fetch failed")


class RunKind:
    """How a claude run ended (also the turn-stats ``result_kind``)."""

    OK = "ok"
    FAILED = "failed"
    PROMPT_TOO_LONG = "prompt_too_long"
    CANCELLED = "cancelled"


@dataclass
class RunResult:
    """The outcome of one claude process.

    Times are ``time.monotonic()`` seconds: ``spawned`` right after the
    process started, ``result_at`` when the result line was parsed (``None``
    without one), ``ended`` after the process exited and stderr drained.
    """

    exit_code: int | None
    result: Result | None
    stderr_tail: list[str]
    tool_calls: Counter[str]
    last_usage: Usage | None
    session_id: str | None
    cancelled: bool
    spawned: float
    result_at: float | None
    ended: float
    error: str | None = None  # spawn failure etc.
    unknown_lines: int = 0

    @property
    def kind(self) -> str:
        """``ok`` / ``failed`` / ``prompt_too_long`` / ``cancelled`` (see ``RunKind``)."""
        if self.cancelled:
            return RunKind.CANCELLED
        if self.result is not None and self.result.prompt_too_long:
            return RunKind.PROMPT_TOO_LONG
        if self.result is not None and not self.result.is_error and self.exit_code == 0:
            return RunKind.OK
        return RunKind.FAILED

    @property
    def usage(self) -> Usage:
        """Token sums of the run (from the result line; zeros without one)."""
        return self.result.usage if self.result is not None else Usage()

    @property
    def cost_usd(self) -> float:
        """Dollars (from the result line; 0 without one)."""
        return self.result.cost_usd if self.result is not None else 0.0

    def never_reached_model(self) -> str | None:
        """Why this failed run never got an answer from the model, or ``None`` when it did
        (or did not fail that way). The message it ran for was not spent.

        ``claude_missing``: the process could not be started. ``claude_exited``: it exited
        (non-zero) before printing any stream event. ``unauthorized``: the API refused the
        credentials (HTTP 401 / 403, or claude's "please log in" result). ``api_unavailable``:
        the API could not be reached or was overloaded (429, 502-504, 529, a connection
        error). A run in which the model answered at least once (usage or a tool call seen)
        is never one of these, nor a cancelled one.
        """
        if self.kind != RunKind.FAILED or self.cancelled:
            return None
        if self.last_usage is not None or self.tool_calls:
            return None
        if self.result is None:
            if self.error is not None:
                return "claude_missing"
            if self.session_id is None and self.exit_code not in (None, 0):
                return "claude_exited"
            return None
        if not self.result.is_error:
            return None
        status = self.result.api_error_status
        text = self.result.text.lower()
        if status in UNAUTHORIZED_STATUSES or any(m in text for m in LOGIN_MARKERS):
            return "unauthorized"
        if status in UNAVAILABLE_STATUSES or (
            status is None and any(m in text for m in UNREACHABLE_MARKERS)
        ):
            return "api_unavailable"
        return None

    def failure_summary(self) -> str:
        """One line on why the run failed (empty when it did not)."""
        if self.kind == RunKind.OK:
            return ""
        if self.error:
            return self.error
        if self.result is not None and self.result.is_error:
            return (
                f"claude reported an error: {self.result.text.strip()[:500] or self.result.subtype}"
            )
        if self.result is None:
            return f"claude exited with code {self.exit_code} without a result line"
        return f"claude exited with code {self.exit_code}"


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    cancelled: bool = False
    killers: list[threading.Thread] = field(default_factory=list)


def kill_tree(pid: int, grace: float = TERMINATE_GRACE) -> None:
    """Terminate process ``pid`` and all its descendants (SIGTERM, wait ``grace`` s, SIGKILL).

    Also signals ``pid``'s process group, catching children that were re-parented.
    """
    # imported here: psutil is ~10 ms of the harness' start-up, before its web UI answers,
    # and only a cancelled or timed-out turn needs it
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ClaudeRunner:
    """Runs claude processes one at a time; :meth:`cancel` is safe from any thread.

    Fast path: after a successful result line the run returns at once and the
    process is reaped in the background (claude takes ~180 ms to shut its MCP
    servers down after printing the result); the next :meth:`run` — and
    :meth:`reap` — wait for that exit, so two claude processes never overlap.
    Failed runs wait for the exit (code and stderr tail are part of the report).
    """

    def __init__(self, exit_grace: float = 10.0) -> None:
        self.exit_grace = exit_grace
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._reaper: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """True while a claude process is running (including a background exit)."""
        with self._lock:
            return self._running is not None

    def cancel(self) -> bool:
        """Terminate the running process tree; return False when nothing runs."""
        with self._lock:
            running = self._running
            if running is None:
                return False
            running.cancelled = True
        kill_tree(running.proc.pid)
        return True

    def reap(self, timeout: float | None = None) -> bool:
        """Wait for a backgrounded exit; True when no claude process is left."""
        reaper = self._reaper
        if reaper is not None:
            reaper.join(timeout)
            if reaper.is_alive():
                return False
            self._reaper = None
        return True

    def _finish(
        self, proc: subprocess.Popen[bytes], threads: list[threading.Thread], drain: bool
    ) -> int:
        """Drain stdout (if the pump stopped early), wait for the exit (kill after the grace)."""
        assert proc.stdout is not None and proc.stderr is not None
        try:
            if drain:
                for raw in proc.stdout:
                    log.debug("claude stdout after the result line: %r", raw[:200])
            try:
                code = proc.wait(self.exit_grace if drain else None)
            except subprocess.TimeoutExpired:
                log.warning(
                    "claude did not exit %.0f s after its result line; killing it", self.exit_grace
                )
                kill_tree(proc.pid)
                code = proc.wait()
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
            for t in threads:
                t.join(timeout=5)
            proc.stdout.close()
            proc.stderr.close()
        return int(proc.returncode if proc.returncode is not None else code)

    def run(
        self,
        inv: Invocation,
        prompt: str,
        on_event: Callable[[StreamEvent], None],
        should_cancel: Callable[[], bool] | None = None,
    ) -> RunResult:
        """Start claude per ``inv``, write ``prompt`` to its stdin, pump its events.

        Returns at a successful result line (``exit_code`` 0, the exit is reaped
        in the background) or when the process exits. ``on_event`` is called in
        this thread for every parsed event; an exception from it is logged and
        does not stop the run. Never raises for a claude failure: spawn errors
        come back as ``error`` with kind ``failed``. ``should_cancel`` is checked once the
        process is registered, closing the gap between a caller's cancel check and the spawn.
        """
        self.reap()
        tools: Counter[str] = Counter()
        stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        try:
            proc = subprocess.Popen(
                inv.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=inv.cwd,
                env=inv.env,
                start_new_session=True,
            )
        except OSError as exc:
            now = time.monotonic()
            return RunResult(
                None,
                None,
                [],
                tools,
                None,
                None,
                False,
                now,
                None,
                now,
                error=f"cannot start claude: {exc}",
            )
        spawned = time.monotonic()
        running = _Running(proc)
        with self._lock:
            self._running = running
        if should_cancel is not None and should_cancel():
            self.cancel()
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(prompt.encode("utf-8"))
                proc.stdin.close()
            except OSError:  # claude died before reading: the exit code tells
                pass

        def drain_stderr() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                text = raw.decode("utf-8", errors="replace").rstrip()
                if text:
                    stderr_tail.append(text)
                    log.debug("claude stderr: %s", text)

        threads = [
            threading.Thread(target=feed, name="claude-stdin", daemon=True),
            threading.Thread(target=drain_stderr, name="claude-stderr", daemon=True),
        ]
        for t in threads:
            t.start()
        result: Result | None = None
        result_at: float | None = None
        last_usage: Usage | None = None
        session_id: str | None = None
        unknown = 0
        fast = False
        try:
            for raw in proc.stdout:
                for ev in parse_line(raw):
                    if isinstance(ev, Result):
                        result, result_at = ev, time.monotonic()
                        session_id = ev.session_id or session_id
                    elif isinstance(ev, SystemInit):
                        session_id = ev.session_id or session_id
                    elif isinstance(ev, ToolUse):
                        tools[ev.name] += 1
                    elif isinstance(ev, Unknown):
                        unknown += 1
                    usage = getattr(ev, "usage", None)
                    if isinstance(usage, Usage) and not isinstance(ev, Result):
                        last_usage = usage
                    try:
                        on_event(ev)
                    except Exception:
                        log.exception("event handler failed for %s", ev.kind)
                if result is not None and not result.is_error and not running.cancelled:
                    fast = True
                    break
        except BaseException:
            self._finish(proc, threads, drain=False)
            with self._lock:
                self._running = None
            raise

        def finish() -> int:
            try:
                return self._finish(proc, threads, drain=fast)
            finally:
                with self._lock:
                    self._running = None

        if fast:
            self._reaper = threading.Thread(target=finish, name="claude-reaper", daemon=True)
            self._reaper.start()
            code: int | None = 0
            cancelled = False
        else:
            code = finish()
            cancelled = running.cancelled
        return RunResult(
            exit_code=code,
            result=result,
            stderr_tail=list(stderr_tail),
            tool_calls=tools,
            last_usage=last_usage,
            session_id=session_id,
            cancelled=cancelled,
            spawned=spawned,
            result_at=result_at,
            ended=time.monotonic(),
            unknown_lines=unknown,
        )
