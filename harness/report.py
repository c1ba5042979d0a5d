"""The harness's report to the controller: what this agent actually has.

``POST /report`` (wire ``AgentReport``) on the agent's own socket, with its own
credential: the claude CLI it resolved and its version, whether claude can
authenticate and where the credentials come from (never the secret), digests of
its ``ANTHROPIC_*`` / ``CLAUDE_CODE_*`` variables (``schemas.wire.reported_env``),
the running or last turn and the last Messages API error since the model last
answered (claude's ``system``/``api_retry`` stream events carry the status and the
retry count, see docs/claude-cli.md). The controller derives the agent's
``LoggedIn``, ``Ready`` and ``Degraded`` conditions from it
(``controller.status``).

A sender thread posts the report at start, at once whenever it changes (an
``api_retry`` event reaches ``hyperhive status`` within one round trip) and every
``HEARTBEAT`` seconds (a restarted controller has it again within that); while
the controller is unreachable it retries every ``RETRY`` seconds. A controller
without the verb (404 / 405) is not asked again. The document is built by the pure
:func:`build_report` from a :class:`Snapshot`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from schemas.client import ApiError, UnixClient, Unreachable
from schemas.wire import ApiTrouble, reported_env

log = logging.getLogger(__name__)

HEARTBEAT = 30.0
"""Seconds between reports when nothing changed."""
RETRY = 2.0
"""Seconds between tries while the controller cannot be reached, and between probes for a
claude binary while there is none."""
VERSION_TIMEOUT = 20.0
"""Seconds ``claude --version`` may take."""


@dataclass(frozen=True)
class Credentials:
    """Whether claude can authenticate (``present``), how (``source``, e.g. ``env
    ANTHROPIC_API_KEY``) and whether the API rejected them (``rejected``)."""

    present: bool
    source: str = ""
    rejected: bool = False


@dataclass(frozen=True)
class Turn:
    """The running (``running``) or last turn: its number, outcome (``ok``, ``failed``,
    ``cancelled``, ``prompt_too_long``), why it never reached the model (``unreached``) and
    its note."""

    running: bool = False
    number: int | None = None
    outcome: str | None = None
    unreached: str | None = None
    note: str | None = None
    at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything a report is built from (``build_report``)."""

    claude_path: str
    claude_found: bool
    claude_version: str | None
    credentials: Credentials
    env: Mapping[str, str]
    turn: Turn
    api: ApiTrouble | None
    started_at: float


def build_report(s: Snapshot) -> dict[str, Any]:
    """The wire ``AgentReport`` for ``s`` (pure; strings cut to the schema's limits)."""
    api = s.api
    return {
        "started_at": s.started_at,
        "claude": {
            "found": s.claude_found,
            "path": s.claude_path[:4096],
            "version": s.claude_version[:200] if s.claude_version else None,
        },
        "credentials": {
            "present": s.credentials.present,
            "source": s.credentials.source[:300],
            "rejected": s.credentials.rejected,
        },
        "env": dict(reported_env(s.env)),
        "turn": {
            "running": s.turn.running,
            "number": s.turn.number,
            "outcome": s.turn.outcome[:40] if s.turn.outcome else None,
            "unreached": s.turn.unreached[:40] if s.turn.unreached else None,
            "note": s.turn.note[:2000] if s.turn.note else None,
            "at": s.turn.at,
        },
        "api": None if api is None else api.to_json(),
    }


def api_retry(data: Mapping[str, Any], now: float) -> ApiTrouble:
    """An ``ApiTrouble`` from the data of claude's ``{"type":"system","subtype":"api_retry",
    "attempt","max_retries","retry_delay_ms","error_status","error"}`` line (``error_status``
    null: no HTTP answer at all)."""

    def num(key: str) -> float:
        v = data.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0

    status = data.get("error_status")
    return ApiTrouble(
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        error=str(data.get("error") or ""),
        attempt=int(num("attempt")),
        max_retries=int(num("max_retries")),
        retry_delay_ms=num("retry_delay_ms"),
        at=now,
    )


def claude_version(path: str, env: Mapping[str, str]) -> str | None:
    """``claude --version``'s first line (``2.1.3 (Claude Code)``), None when it fails."""
    try:
        out = subprocess.run(
            [path, "--version"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s --version failed: %s", path, exc)
        return None
    line = (out.stdout or "").strip().splitlines()
    return line[0].strip() if out.returncode == 0 and line else None


class Reporter:
    """Keeps what the report says and sends it (see the module doc).

    ``claude_bin`` is the configured claude (a path or a name looked up on the PATH of
    ``claude_env()``); ``credentials()`` probes the credentials now; ``environ`` is the
    harness's own environment (its env digests). ``clock`` gives unix seconds.
    """

    def __init__(
        self,
        client: UnixClient,
        claude_bin: str,
        claude_env: Callable[[], Mapping[str, str]],
        credentials: Callable[[], Credentials],
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.client = client
        self.claude_bin = claude_bin
        self.claude_env = claude_env
        self.credentials = credentials
        self.environ = dict(environ)
        self.clock = clock
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._turn = Turn()
        self._api: ApiTrouble | None = None
        self._versions: dict[tuple[str, int], str | None] = {}
        self._started_at = clock()
        self._thread: threading.Thread | None = None
        self.supported = True
        self.sent: dict[str, Any] | None = None  # the last report the controller took

    # ------------------------------------------------------------ what the loop tells us

    def turn_started(self, number: int) -> None:
        """A turn began."""
        with self._lock:
            self._turn = Turn(True, number, None, None, None, self.clock())
        self.poke()

    def turn_ended(
        self,
        number: int,
        outcome: str,
        unreached: str | None,
        note: str | None,
        api_status: int | None,
    ) -> None:
        """A turn ended with ``outcome``; ``api_status`` is the HTTP status of the API error
        it ended on, if any. An ``ok`` turn clears the API error; a failed one that never
        reached the model keeps (or sets) it, marked ``gave_up``."""
        now = self.clock()
        with self._lock:
            self._turn = Turn(False, number, outcome, unreached, note, now)
            if outcome == "ok":
                self._api = None
            elif api_status is not None or unreached == "api_unavailable":
                prev = self._api
                if prev is not None and (api_status is None or prev.status == api_status):
                    self._api = replace(prev, gave_up=True, at=now)
                else:
                    self._api = ApiTrouble(api_status, gave_up=True, at=now)
        self.poke()

    def api_retry(self, data: Mapping[str, Any]) -> None:
        """claude's ``system``/``api_retry`` line: the API failed and claude retries."""
        err = api_retry(data, self.clock())
        with self._lock:
            self._api = err
        self.poke()

    def api_answered(self) -> None:
        """The model answered (a message started streaming): any API error is over."""
        if self._api is None:
            return
        with self._lock:
            self._api = None
        self.poke()

    def poke(self) -> None:
        """Something changed: send the report now."""
        self._changed.set()

    # ------------------------------------------------------------ the report

    def _claude(self) -> tuple[str, bool, str | None]:
        env = self.claude_env()
        path = shutil.which(self.claude_bin, path=env.get("PATH") or os.defpath)
        if path is None:
            return self.claude_bin, False, None
        try:
            key = (path, os.stat(path).st_mtime_ns)
        except OSError:
            return path, False, None
        if key not in self._versions:
            self._versions[key] = claude_version(path, env)
        return path, True, self._versions[key]

    def snapshot(self) -> Snapshot:
        """What the report says now (probes the claude binary and the credentials)."""
        path, found, version = self._claude()
        creds = self.credentials()
        with self._lock:
            turn, api = self._turn, self._api
        return Snapshot(path, found, version, creds, self.environ, turn, api, self._started_at)

    def report(self) -> dict[str, Any]:
        """The wire ``AgentReport`` now."""
        return build_report(self.snapshot())

    # ------------------------------------------------------------ sending

    def send_once(self, doc: dict[str, Any] | None = None) -> bool:
        """Post ``doc`` (default: the report now); False when the controller could not be
        reached (try again soon)."""
        doc = self.report() if doc is None else doc
        try:
            self.client.post("/report", doc, timeout=5.0)
        except ApiError as exc:
            if exc.status in (404, 405):
                log.info("the controller takes no POST /report; not reporting")
                self.supported = False
            else:
                log.warning("report refused: %s", exc.message)
                self.sent = doc  # the same report would be refused again: wait for a change
            return True
        except Unreachable as exc:
            log.debug("report: %s", exc)
            return False
        self.sent = doc
        return True

    def run(self) -> None:
        """The sender loop (until :meth:`stop`)."""
        last_at = float("-inf")
        while not self._stop.is_set() and self.supported:
            self._changed.clear()
            doc = self.report()
            due = time.monotonic() - last_at >= self.heartbeat
            ok = True
            if doc != self.sent or due:
                ok = self.send_once(doc)
                if ok:
                    last_at = time.monotonic()
            claude_missing = not doc["claude"]["found"]
            wait = RETRY if not ok or claude_missing else self.heartbeat
            self._changed.wait(wait)

    def start(self) -> None:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self.run, name="report", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sender thread (it may be inside one request: not joined for long)."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(1.0)
