"""The harness' inputs: its environment (the process contract) and ``settings.json``.

Environment (see docs/architecture.md, "Harness process contract"):

=========================  ==================================================
``HYPERHIVE_AGENT``        logical name (``alice``, ``manager``)
``HYPERHIVE_FLAVOR``       ``agent`` or ``manager``
``HYPERHIVE_SOCKET``       the agent's API socket
``HYPERHIVE_API_URL``      the agent API on TCP (``http(s)://host:port``), used
                           instead of the socket when set (another machine)
``HYPERHIVE_API_CA``       CA bundle for an ``https`` API URL (default: system CAs)
``HYPERHIVE_STATE_DIR``    durable dir, claude's fixed cwd
``HYPERHIVE_SETTINGS``     settings.json rendered from the manifest (read-only)
``HYPERHIVE_CREDENTIAL_FILE`` the agent's broker credential (default
                           ``/etc/hyperhive/credential``; see harness.credential)
``HYPERHIVE_WEB_SOCKET``   the web UI's unix socket (default ``web.sock`` beside
                           ``HYPERHIVE_SOCKET``; container ``/run/hive/web.sock``)
``HYPERHIVE_WEB_TCP``      ``1`` opts into a TCP listener for the web UI as well
                           (bearer = the agent credential; default off)
``HYPERHIVE_WEB_HOST``     TCP bind host (default ``127.0.0.1``)
``HYPERHIVE_WEB_PORT``     TCP port (default: settings ``web_port``); only with
                           ``HYPERHIVE_WEB_TCP=1``
``HYPERHIVE_WEB_ALLOWED_HOSTS`` extra ``Host`` names the TCP listener accepts
                           (comma-separated; loopback names always)
``CLAUDE_CONFIG_DIR``      claude credentials + sessions (default ``~/.claude``)
``HYPERHIVE_CLAUDE_BIN``   the claude executable (default ``claude`` on PATH)
``HYPERHIVE_TURN_TIMEOUT`` a turn's time limit in seconds (default: settings
                           ``turn_timeout_seconds``, else 1800)
=========================  ==================================================

``settings.json`` is read once at start; a malformed file is an error the
operator must see (``SettingsError``), a missing one falls back to defaults
derived from the environment so a developer can run ``serve`` by hand.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.credential import BrokerTarget, broker_target, credential_path
from schemas.names import DEFAULT_OPERATOR_PRONOUNS, MANAGER, default_web_port

log = logging.getLogger(__name__)

FLAVORS = ("agent", "manager")
DEFAULT_MODEL = "haiku"
DEFAULT_TURN_TIMEOUT = 1800  # seconds: a turn running longer is cancelled and recorded failed
MIN_TURN_TIMEOUT, MAX_TURN_TIMEOUT = 1, 7 * 86400
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
#: A DNS name or an IP literal (IPv6 in brackets), as it appears in a ``Host`` header.
_HOST_RE = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)$")
#: MCP server keys must be safe inside ``mcp__<key>__<tool>`` names.
MCP_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SettingsError(ValueError):
    """settings.json (or the environment) is unusable; ``str()`` says which field and why."""


@dataclass(frozen=True)
class McpServerSpec:
    """One extra stdio MCP server from ``settings.mcp_servers``.

    ``allowed_tools`` lists tool names auto-approved for claude; ``("*",)``
    (the default) approves every tool of the server.
    """

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Settings:
    """settings.json, as rendered by the controller from the agent manifest."""

    agent: str
    flavor: str = "agent"
    model: str = DEFAULT_MODEL
    allowed_recipients: tuple[str, ...] = ()
    mcp_servers: Mapping[str, McpServerSpec] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    marketplaces: tuple[str, ...] = ()
    web_port: int | None = None
    dashboard_url: str | None = None
    meta_commit: str | None = None
    hyperhive_version: str | None = None
    turn_timeout_seconds: int | None = None
    operator_pronouns: str = DEFAULT_OPERATOR_PRONOUNS
    """How the prompts refer to the operator (the controller's ``operator_pronouns``)."""
    max_budget_usd_per_turn: float | None = None
    """``spec.budget.usdPerTurn``: each claude run's ``--max-budget-usd`` (None: no cap)."""
    frontend_extra: tuple[tuple[str, str], ...] = ()
    """``spec.frontend.extraFiles`` as ``(key, target)``: the UI links to ``<target>/``."""


def _str_list(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{key}: must be a list of strings")
    return tuple(value)


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SettingsError(f"{key}: must be a string")
    return value


def _mcp_servers(doc: Mapping[str, Any]) -> dict[str, McpServerSpec]:
    raw = doc.get("mcp_servers") or {}
    if not isinstance(raw, dict):
        raise SettingsError("mcp_servers: must be an object keyed by server name")
    out: dict[str, McpServerSpec] = {}
    for key, spec in raw.items():
        where = f"mcp_servers.{key}"
        if not isinstance(spec, dict):
            raise SettingsError(f"{where}: must be an object")
        command = spec.get("command")
        if not isinstance(command, str) or not command:
            raise SettingsError(f"{where}.command: is required")
        args = spec.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise SettingsError(f"{where}.args: must be a list of strings")
        env = spec.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise SettingsError(f"{where}.env: must map strings to strings")
        allowed = spec.get("allowedTools", spec.get("allowed_tools", ["*"]))
        if not isinstance(allowed, list) or not all(isinstance(t, str) for t in allowed):
            raise SettingsError(f"{where}.allowedTools: must be a list of strings")
        out[str(key)] = McpServerSpec(command, tuple(args), dict(env), tuple(allowed))
    return out


def parse_settings(doc: Mapping[str, Any], *, agent: str, flavor: str) -> Settings:
    """Build ``Settings`` from a decoded settings.json; ``agent``/``flavor`` are the env fallbacks.

    Raises ``SettingsError`` naming the offending field.
    """
    name = doc.get("agent", agent)
    if not isinstance(name, str) or not name:
        raise SettingsError("agent: must be a non-empty string")
    fl = doc.get("flavor", flavor)
    if fl not in FLAVORS:
        raise SettingsError(f"flavor: must be one of {list(FLAVORS)}")
    model = doc.get("model") or DEFAULT_MODEL
    if not isinstance(model, str):
        raise SettingsError("model: must be a string")
    port = doc.get("web_port")
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        raise SettingsError("web_port: must be an integer 1-65535")
    limit = doc.get("turn_timeout_seconds")
    if limit is not None and (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or not MIN_TURN_TIMEOUT <= limit <= MAX_TURN_TIMEOUT
    ):
        raise SettingsError(
            f"turn_timeout_seconds: must be an integer {MIN_TURN_TIMEOUT}-{MAX_TURN_TIMEOUT}"
        )
    pronouns = doc.get("operator_pronouns") or DEFAULT_OPERATOR_PRONOUNS
    if (
        not isinstance(pronouns, str)
        or len(pronouns) > 32
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in pronouns)
    ):
        raise SettingsError("operator_pronouns: must be one line of at most 32 characters")
    cap = doc.get("max_budget_usd_per_turn")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int | float) or not 0 < cap < 1e7
    ):
        raise SettingsError("max_budget_usd_per_turn: must be a number > 0")
    return Settings(
        agent=name,
        flavor=str(fl),
        model=model,
        allowed_recipients=_str_list(doc, "allowed_recipients"),
        mcp_servers=_mcp_servers(doc),
        plugins=_str_list(doc, "plugins"),
        marketplaces=_str_list(doc, "marketplaces"),
        web_port=port,
        dashboard_url=_opt_str(doc, "dashboard_url"),
        meta_commit=_opt_str(doc, "meta_commit"),
        hyperhive_version=_opt_str(doc, "hyperhive_version"),
        turn_timeout_seconds=limit,
        operator_pronouns=pronouns,
        max_budget_usd_per_turn=float(cap) if cap is not None else None,
        frontend_extra=_frontend_extra(doc),
    )


_TARGET_RE = re.compile(r"^[A-Za-z0-9._~@+-]+(/[A-Za-z0-9._~@+-]+)*$")


def _frontend_extra(doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = doc.get("frontend_extra") or []
    if not isinstance(raw, list):
        raise SettingsError("frontend_extra: must be a list of {key, target}")
    out = []
    for e in raw:
        key = e.get("key") if isinstance(e, dict) else None
        target = e.get("target") if isinstance(e, dict) else None
        if not isinstance(key, str) or not isinstance(target, str) or not key:
            raise SettingsError("frontend_extra: every entry needs a key and a target")
        if not _TARGET_RE.fullmatch(target) or ".." in target.split("/"):
            raise SettingsError(f"frontend_extra: bad target {target[:80]!r}")
        out.append((key, target))
    return tuple(out)


def load_settings(path: Path | None, *, agent: str, flavor: str) -> Settings:
    """Read settings.json at ``path``; a missing file (or ``None``) gives env-derived defaults.

    Raises ``SettingsError`` when the file exists but is not valid JSON or has a bad field.
    """
    if path is None or not path.exists():
        if path is not None:
            log.warning("settings file %s does not exist; using defaults", path)
        return Settings(agent=agent, flavor=flavor)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from exc
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: (root): must be a JSON object")
    return parse_settings(doc, agent=agent, flavor=flavor)


@dataclass(frozen=True)
class HarnessEnv:
    """The process contract, resolved. Paths are absolute."""

    agent: str
    flavor: str
    socket: str
    state_dir: Path
    settings_path: Path | None
    web_host: str
    web_port: int | None
    claude_bin: str
    config_dir: Path
    turn_timeout: float | None = None  # HYPERHIVE_TURN_TIMEOUT (seconds), overrides settings
    web_socket: str = ""  # HYPERHIVE_WEB_SOCKET; "" = web.sock beside ``socket``
    web_tcp: bool = False  # HYPERHIVE_WEB_TCP: serve the UI on TCP too (bearer required)
    credential_file: Path | None = None  # HYPERHIVE_CREDENTIAL_FILE; None = send no bearer
    web_allowed_hosts: tuple[str, ...] = ()  # HYPERHIVE_WEB_ALLOWED_HOSTS, beyond loopback
    api_url: str | None = None  # HYPERHIVE_API_URL: the API over TCP instead of ``socket``
    api_ca: str | None = None  # HYPERHIVE_API_CA: CA bundle for an https ``api_url``

    @property
    def broker(self) -> BrokerTarget:
        """Where the broker API is reached: ``api_url`` when set, else ``socket``."""
        if self.api_url:
            return BrokerTarget(self.api_url, self.api_ca)
        return BrokerTarget(self.socket)

    @property
    def is_manager(self) -> bool:
        """True for the manager flavor (privileged MCP tools, no failure reports to itself)."""
        return self.flavor == "manager"


def resolve_claude_bin(environ: Mapping[str, str]) -> str:
    """``HYPERHIVE_CLAUDE_BIN``, else ``claude`` found on PATH, else the bare name ``claude``."""
    explicit = environ.get("HYPERHIVE_CLAUDE_BIN")
    if explicit:
        return explicit
    return shutil.which("claude", path=environ.get("PATH")) or "claude"


def env_from(environ: Mapping[str, str]) -> HarnessEnv:
    """Resolve the harness environment from ``environ`` (normally ``os.environ``).

    Raises ``SettingsError`` when a variable is malformed. ``HYPERHIVE_AGENT``
    defaults to ``manager`` for the manager flavor; the socket defaults to
    ``/run/hive/mcp.sock`` (the container path) and the state dir to the cwd.
    """
    flavor = environ.get("HYPERHIVE_FLAVOR", "agent")
    if flavor not in FLAVORS:
        raise SettingsError(f"HYPERHIVE_FLAVOR: must be one of {list(FLAVORS)}, got {flavor!r}")
    agent = environ.get("HYPERHIVE_AGENT") or (MANAGER if flavor == "manager" else "")
    if not agent:
        raise SettingsError("HYPERHIVE_AGENT: is required (the agent's logical name)")
    port_s = environ.get("HYPERHIVE_WEB_PORT")
    port: int | None = None
    if port_s:
        try:
            port = int(port_s)
        except ValueError:
            raise SettingsError(f"HYPERHIVE_WEB_PORT: not a port number: {port_s!r}") from None
        if not 0 <= port <= 65535:
            raise SettingsError(f"HYPERHIVE_WEB_PORT: out of range: {port}")
    timeout_s = environ.get("HYPERHIVE_TURN_TIMEOUT")
    turn_timeout: float | None = None
    if timeout_s:
        try:
            turn_timeout = float(timeout_s)
        except ValueError:
            raise SettingsError(
                f"HYPERHIVE_TURN_TIMEOUT: not a number of seconds: {timeout_s!r}"
            ) from None
        if not MIN_TURN_TIMEOUT / 10 <= turn_timeout <= MAX_TURN_TIMEOUT:
            raise SettingsError(f"HYPERHIVE_TURN_TIMEOUT: out of range: {timeout_s}")
    tcp_s = (environ.get("HYPERHIVE_WEB_TCP") or "0").strip().lower()
    if tcp_s not in _TRUE + _FALSE:
        raise SettingsError(f"HYPERHIVE_WEB_TCP: must be 1 or 0, got {tcp_s!r}")
    hosts = tuple(
        h.strip().lower()
        for h in environ.get("HYPERHIVE_WEB_ALLOWED_HOSTS", "").split(",")
        if h.strip()
    )
    bad = [h for h in hosts if not _HOST_RE.match(h)]
    if bad:
        raise SettingsError(f"HYPERHIVE_WEB_ALLOWED_HOSTS: not a host name: {bad[0]!r}")
    socket = environ.get("HYPERHIVE_SOCKET", "/run/hive/mcp.sock")
    try:
        target = broker_target(environ)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    settings = environ.get("HYPERHIVE_SETTINGS")
    config_dir = environ.get("CLAUDE_CONFIG_DIR") or str(Path.home() / ".claude")
    return HarnessEnv(
        agent=agent,
        flavor=flavor,
        socket=socket,
        state_dir=Path(environ.get("HYPERHIVE_STATE_DIR") or os.getcwd()).absolute(),
        settings_path=Path(settings).absolute() if settings else None,
        web_host=environ.get("HYPERHIVE_WEB_HOST") or "127.0.0.1",
        web_port=port,
        claude_bin=resolve_claude_bin(environ),
        config_dir=Path(config_dir).absolute(),
        turn_timeout=turn_timeout,
        web_socket=environ.get("HYPERHIVE_WEB_SOCKET")
        or os.path.join(os.path.dirname(socket), "web.sock"),
        web_tcp=tcp_s in _TRUE,
        credential_file=credential_path(environ),
        web_allowed_hosts=hosts,
        api_url=target.target if target.is_url else None,
        api_ca=target.ca_file,
    )


def web_socket(env: HarnessEnv) -> str:
    """The web UI's unix socket: ``HYPERHIVE_WEB_SOCKET``, else ``web.sock`` beside the broker
    socket (container ``/run/hive/web.sock``; local runtime ``<sock dir>/web.sock``)."""
    return env.web_socket or os.path.join(os.path.dirname(env.socket), "web.sock")


def web_port(env: HarnessEnv, settings: Settings) -> int:
    """The configured UI port: ``HYPERHIVE_WEB_PORT``, else settings ``web_port``, else the
    FNV-1a default. Only used when TCP is opted into (see :func:`web_tcp_port`)."""
    if env.web_port is not None:
        return env.web_port
    if settings.web_port is not None:
        return settings.web_port
    return default_web_port(env.agent)


def web_tcp_port(env: HarnessEnv, settings: Settings) -> int | None:
    """The opt-in TCP port of the UI, or ``None`` (the unix socket only).

    ``None`` unless ``HYPERHIVE_WEB_TCP=1``; then ``HYPERHIVE_WEB_PORT``, else settings
    ``web_port`` (``0``: an ephemeral port). Raises ``SettingsError`` when TCP is opted
    into but neither names a port: a guessed port is not what the operator opened.
    """
    if not env.web_tcp:
        return None
    if env.web_port is None and settings.web_port is None:
        raise SettingsError(
            "HYPERHIVE_WEB_TCP=1 needs a port: set HYPERHIVE_WEB_PORT or settings web_port"
        )
    return web_port(env, settings)


def turn_timeout(env: HarnessEnv, settings: Settings) -> float:
    """A turn's time limit, seconds: ``HYPERHIVE_TURN_TIMEOUT``, settings, else 30 minutes."""
    if env.turn_timeout is not None:
        return env.turn_timeout
    if settings.turn_timeout_seconds is not None:
        return float(settings.turn_timeout_seconds)
    return float(DEFAULT_TURN_TIMEOUT)
