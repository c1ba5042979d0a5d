"""claude's credentials: detect them, store an operator-supplied key, drive ``claude auth login``.

**Detection** (:func:`has_credentials`) — credentials count as present when any holds:

- an API key or token in the environment (``ANTHROPIC_API_KEY``,
  ``ANTHROPIC_AUTH_TOKEN``, ``CLAUDE_CODE_OAUTH_TOKEN``), or a cloud provider
  switch (``CLAUDE_CODE_USE_BEDROCK`` / ``_VERTEX`` / ``_FOUNDRY``);
- the same keys in the ``env`` block of ``$CLAUDE_CONFIG_DIR/settings.json``
  (where :func:`store_credential` puts an operator-supplied one);
- ``$CLAUDE_CONFIG_DIR/.credentials.json`` exists and is not empty (an OAuth
  login done with ``claude auth login``);
- ``$CLAUDE_CONFIG_DIR/settings.json`` names an ``apiKeyHelper``.

**Stored key or token** (:func:`store_credential`): the operator pastes an API key
(``sk-ant-api…``, sent as ``x-api-key``) or a long-lived OAuth token (``claude
setup-token`` on a machine with a browser prints one; sent as ``Authorization:
Bearer``). It goes into the ``env`` block of ``$CLAUDE_CONFIG_DIR/settings.json``
(mode 0600) — the CLI's own user settings, which it applies to its environment
on every start and which take precedence over the process environment (verified
with claude 2.1.197: a settings ``ANTHROPIC_API_KEY`` beats one in the
environment). So every ``claude`` the harness starts (turns, compaction, plugin
commands, ``claude auth status``) and one run by hand in the container use it,
and it lives where the login lives: in the agent's claude dir, kept across
restarts and ``destroy`` (gone with ``purge``). A stored OAuth token also sets
``env.ANTHROPIC_API_KEY`` to ``""`` so a controller-wide key in the environment
does not win over the operator's choice for this agent. Which kind was stored
and when is kept (without the secret) in ``$CLAUDE_CONFIG_DIR/hyperhive-login.json``:
the CLI validates settings.json, so hyperhive adds no keys of its own there.

**Interactive login** (:class:`LoginSession`): ``claude auth login [--console]``
over stdio pipes. The CLI prints (claude 2.1.197, stdout)::

    Opening browser to sign in…
    If the browser didn't open, visit: https://claude.com/cai/oauth/authorize?code=true&…
    Paste code here if prompted >            (no newline)

then reads lines from stdin of the form ``CODE#STATE`` (what the sign-in page
shows); a line without ``#`` gets ``Invalid code. Please make sure the full code
was copied.`` on stderr and another wait. It exchanges the code for tokens,
writes ``.credentials.json``, prints ``Login successful.`` and exits 0 — or
prints ``Login failed: <reason>`` on stderr and exits 1. ``claude setup-token``
is an interactive (TTY) flow that prints nothing over pipes: it is for the
operator's own machine; its token is then pasted here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.turn import kill_tree

log = logging.getLogger(__name__)

ENV_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
PROVIDER_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")
SETTINGS_FILE = "settings.json"
CREDENTIALS_FILE = ".credentials.json"
RECORD_FILE = "hyperhive-login.json"
#: What the operator may store, and the variable claude reads it from.
STORED_KINDS = {"api_key": "ANTHROPIC_API_KEY", "oauth_token": "CLAUDE_CODE_OAUTH_TOKEN"}
MAX_SECRET = 4096
_SECRET_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
_KEY_PREFIX_RE = re.compile(r"^sk-ant-[a-z]+[0-9]*-")  # names the key's type, not the key
URL_RE = re.compile(r"visit:\s*(https://\S+)")
LOGIN_TIMEOUT = 15 * 60.0  # an unattended login process is ended after this


class InvalidCredential(ValueError):
    """A key or token that cannot be stored; ``str()`` says why."""


def _settings(config_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((config_dir / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def credential_source(environ: Mapping[str, str], config_dir: Path) -> str | None:
    """Where claude's credentials come from (for the UI), or ``None`` when it has none.

    One of ``stored api key`` / ``stored oauth token`` (settings.json ``env``, see
    :func:`store_credential`), ``env <VAR>``, ``provider <bedrock|vertex|foundry>``,
    ``claude login`` (``.credentials.json``), ``apiKeyHelper``. The settings ``env``
    block is checked first because claude applies it over its environment.
    """
    settings = _settings(config_dir)
    senv = settings.get("env") if isinstance(settings.get("env"), dict) else {}
    assert isinstance(senv, dict)
    merged: dict[str, str] = {k: v for k, v in environ.items() if isinstance(v, str)}
    merged.update({k: v for k, v in senv.items() if isinstance(k, str) and isinstance(v, str)})
    for var in PROVIDER_SWITCHES:
        if _truthy(merged.get(var)):
            return "provider " + var.rsplit("_", 1)[-1].lower()
    if senv.get("ANTHROPIC_API_KEY"):
        return "stored api key"
    if senv.get("CLAUDE_CODE_OAUTH_TOKEN"):
        return "stored oauth token"
    for var in ENV_KEYS:
        if merged.get(var):
            return f"env {var}"
    try:
        if (config_dir / CREDENTIALS_FILE).stat().st_size > 2:
            return "claude login"
    except OSError:
        pass
    if settings.get("apiKeyHelper"):
        return "apiKeyHelper"
    return None


def has_credentials(environ: Mapping[str, str], config_dir: Path) -> bool:
    """True when claude can authenticate without an interactive login (see module doc)."""
    return credential_source(environ, config_dir) is not None


def fingerprint(environ: Mapping[str, str], config_dir: Path) -> tuple[Any, ...]:
    """Something that changes whenever the credentials may have changed (no secrets in it)."""
    stats: list[Any] = []
    for name in (SETTINGS_FILE, CREDENTIALS_FILE, RECORD_FILE):
        try:
            st = (config_dir / name).stat()
            stats.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((name, None))
    keys = tuple(hash(environ.get(k, "")) for k in ENV_KEYS)
    return (*stats, keys)


def check_secret(kind: object, value: object) -> tuple[str, str]:
    """Validate what the operator pasted: ``(kind, value)``, or raise ``InvalidCredential``."""
    if kind not in STORED_KINDS:
        raise InvalidCredential(f"kind: must be one of {sorted(STORED_KINDS)}")
    if not isinstance(value, str) or not value.strip():
        raise InvalidCredential("value: is required (the key or token)")
    value = value.strip()
    if len(value) > MAX_SECRET:
        raise InvalidCredential(f"value: is longer than {MAX_SECRET} characters")
    if not _SECRET_RE.match(value):
        raise InvalidCredential("value: must be one word of printable characters (no spaces)")
    assert isinstance(kind, str)
    return kind, value


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".hyperhive-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def store_credential(
    config_dir: Path, kind: str, value: str, clock: Callable[[], float] = time.time
) -> None:
    """Put an API key or OAuth token into ``settings.json``'s ``env`` (see module doc).

    Keeps every other setting (the CLI writes plugins and marketplaces there too).
    Raises ``InvalidCredential`` for a bad value, ``OSError`` when the file cannot be written.
    """
    kind, value = check_secret(kind, value)
    doc = _settings(config_dir)
    env = doc.get("env") if isinstance(doc.get("env"), dict) else {}
    assert isinstance(env, dict)
    env = dict(env)
    if kind == "api_key":
        env["ANTHROPIC_API_KEY"] = value
        env.pop("CLAUDE_CODE_OAUTH_TOKEN", None)
    else:
        env["CLAUDE_CODE_OAUTH_TOKEN"] = value
        env["ANTHROPIC_API_KEY"] = ""  # beat a controller-wide key in the environment
    doc["env"] = env
    _write_json(config_dir / SETTINGS_FILE, doc)
    _write_json(config_dir / RECORD_FILE, {"kind": kind, "stored_at": clock()})
    log.info("stored an operator-supplied %s in %s", kind, config_dir / SETTINGS_FILE)


def forget_credential(config_dir: Path) -> bool:
    """Remove a key or token :func:`store_credential` put there; True when there was one.

    A ``claude auth login`` (``.credentials.json``) is left alone.
    """
    record = config_dir / RECORD_FILE
    doc = _settings(config_dir)
    env = doc.get("env")
    had = False
    if isinstance(env, dict) and record.exists():
        for var in STORED_KINDS.values():
            if var in env:
                had = had or bool(env[var])
                del env[var]
        if not env:
            del doc["env"]
        _write_json(config_dir / SETTINGS_FILE, doc)
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    return had


def stored_kind(config_dir: Path) -> str | None:
    """``api_key`` / ``oauth_token`` when the operator stored one through the harness."""
    try:
        doc = json.loads((config_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return kind if kind in STORED_KINDS else None


def mask_secret(value: str) -> str:
    """A stored secret as the UI may show it: its kind prefix and last four characters.

    ``sk-ant-api03-…wxyz``-style for Anthropic keys (the prefix names the key type,
    not the key), ``…wxyz`` otherwise; the last four only when twelve more characters stay hidden.
    """
    prefix = _KEY_PREFIX_RE.match(value)
    head = prefix.group(0) if prefix else ""
    # the last four only when at least twelve more stay hidden
    tail = value[-4:] if len(value) - len(head) >= 16 else ""
    return f"{head}…{tail}"


def stored_hint(config_dir: Path) -> str | None:
    """The stored key / token, masked (:func:`mask_secret`), or None when none is stored."""
    kind = stored_kind(config_dir)
    if kind is None:
        return None
    env = _settings(config_dir).get("env")
    value = env.get(STORED_KINDS[kind]) if isinstance(env, dict) else None
    return mask_secret(value) if isinstance(value, str) and value else None


# ------------------------------------------------------------------------ interactive login


class LoginState:
    """Where a :class:`LoginSession` is."""

    STARTING = "starting"  # process started, no URL yet
    WAITING_CODE = "waiting_code"  # the URL is known; paste the code
    EXCHANGING = "exchanging"  # a code was sent; the CLI talks to the token endpoint
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    DONE = frozenset({SUCCEEDED, FAILED, CANCELLED})


class LoginBusy(RuntimeError):
    """A login is already running, or the session is not waiting for a code."""


def check_code(code: object) -> str:
    """The pasted code must be ``CODE#STATE`` (one line); raise ``InvalidCredential`` otherwise."""
    if not isinstance(code, str) or not code.strip():
        raise InvalidCredential("code: is required (paste what the sign-in page shows)")
    code = code.strip()
    if len(code) > MAX_SECRET or not _SECRET_RE.match(code) or "#" not in code:
        raise InvalidCredential(
            "code: paste the whole code the sign-in page shows — one word of the form CODE#STATE"
        )
    return code


@dataclass
class LoginSnapshot:
    """What the UI shows about the login in progress (never the pasted code)."""

    state: str
    method: str
    url: str | None
    message: str
    started_at: float
    ended_at: float | None

    def to_json(self) -> dict[str, Any]:
        """``{"state", "method", "url", "message", "started_at", "ended_at"}``."""
        return {
            "state": self.state,
            "method": self.method,
            "url": self.url,
            "message": self.message,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class LoginSession:
    """One ``claude auth login`` process driven over pipes.

    ``on_change(snapshot)`` is called (from reader threads) on every state change.
    Thread-safe: :meth:`submit_code` and :meth:`cancel` come from web threads.
    """

    def __init__(
        self,
        claude_bin: str,
        env: Mapping[str, str],
        cwd: Path,
        *,
        method: str = "claudeai",
        on_change: Callable[[LoginSnapshot], None] | None = None,
        timeout: float = LOGIN_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if method not in ("claudeai", "console"):
            raise InvalidCredential("method: must be 'claudeai' (subscription) or 'console'")
        self.argv = [claude_bin, "auth", "login", f"--{method}"]
        self.env = dict(env)
        self.cwd = cwd
        self.method = method
        self.on_change = on_change
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = LoginState.STARTING
        self._url: str | None = None
        self._message = "starting claude auth login"
        self._started = clock()
        self._ended: float | None = None
        self._out = ""
        self._err_lines: list[str] = []
        self._done = threading.Event()

    # -- state

    def snapshot(self) -> LoginSnapshot:
        """The current state (for ``GET /api/state`` and ``login`` events)."""
        with self._lock:
            return LoginSnapshot(
                self._state, self.method, self._url, self._message, self._started, self._ended
            )

    @property
    def done(self) -> bool:
        """True once the process ended (succeeded, failed or cancelled)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session ended; True when it did."""
        return self._done.wait(timeout)

    def _set(self, state: str | None = None, message: str | None = None) -> None:
        with self._lock:
            changed = False
            if state is not None and state != self._state and self._state not in LoginState.DONE:
                self._state = state
                changed = True
                if state in LoginState.DONE:
                    self._ended = self._clock()
            if message is not None and message != self._message:
                self._message = message
                changed = True
        if changed and self.on_change is not None:
            try:
                self.on_change(self.snapshot())
            except Exception:
                log.exception("login state callback failed")

    # -- process

    def start(self) -> LoginSession:
        """Start the process and its reader threads; returns ``self``."""
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            self._set(LoginState.FAILED, f"cannot start claude: {exc}")
            self._done.set()
            return self
        log.info("login: started %s (pid %d)", " ".join(self.argv[1:]), self._proc.pid)
        for target, name in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            threading.Thread(target=target, name=f"login-{name}", daemon=True).start()
        threading.Thread(target=self._watch, name="login-wait", daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 4096)  # the code prompt has no newline: read what is there
            except OSError:
                break
            if not chunk:
                break
            text = chunk.decode("utf-8", errors="replace")
            with self._lock:
                self._out = (self._out + text)[-16384:]
                out = self._out
            m = URL_RE.search(out)
            if m and self._url is None:
                with self._lock:
                    self._url = m.group(1)
                self._set(
                    LoginState.WAITING_CODE,
                    "open the link, sign in, and paste the code the page shows",
                )
            if "Login successful" in text:
                self._set(message="login successful")

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            log.info("login: claude: %s", line)
            with self._lock:
                self._err_lines = [*self._err_lines, line][-20:]
            if line.startswith("Invalid code"):
                self._set(LoginState.WAITING_CODE, line)

    def _watch(self) -> None:
        assert self._proc is not None
        try:
            code = self._proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._set(message=f"no code within {self.timeout / 60:.0f} min; login ended")
            self._kill()
            code = self._proc.wait()
            self._set(LoginState.CANCELLED)
        with self._lock:
            err = self._err_lines[-1] if self._err_lines else ""
            state = self._state
        if state not in LoginState.DONE:
            if code == 0:
                self._set(LoginState.SUCCEEDED, "login successful")
            else:
                self._set(LoginState.FAILED, err or f"claude auth login exited with code {code}")
        log.info("login: claude auth login exited with %s (%s)", code, self.snapshot().state)
        self._done.set()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            kill_tree(self._proc.pid, grace=2.0)

    def submit_code(self, code: str) -> None:
        """Send the pasted ``CODE#STATE`` line. Raises ``InvalidCredential`` / ``LoginBusy``."""
        code = check_code(code)
        with self._lock:
            state = self._state
            proc = self._proc
        if state != LoginState.WAITING_CODE or proc is None or proc.stdin is None:
            raise LoginBusy(f"the login is not waiting for a code (it is {state})")
        self._set(LoginState.EXCHANGING, "code sent; waiting for claude to finish the login")
        try:
            proc.stdin.write(code.encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise LoginBusy(f"the login process is gone: {exc}") from None

    def cancel(self) -> bool:
        """End the process (state ``cancelled``); False when it had already ended."""
        if self.done or self.snapshot().state in LoginState.DONE:
            return False
        self._set(LoginState.CANCELLED, "login cancelled by the operator")
        self._kill()
        return True
