"""Controller configuration: defaults, a YAML/JSON file, command-line overrides.

The file's schema is ``schemas/json/config.schema.json``; a bad file is refused
at start with the offending field named.
"""

from __future__ import annotations

import enum
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from controller.budget.core import Limits
from controller.drivers.kubernetes.settings import KubeSettings, kube_settings_from_dict
from schemas.names import DEFAULT_OPERATOR_PRONOUNS
from schemas.validate import ValidationFailed, validate


class Runtime(enum.StrEnum):
    """Which runtime driver runs the agents."""

    AUTO = "auto"
    LOCAL = "local"
    NIXOS_CONTAINER = "nixos-container"
    KUBERNETES = "kubernetes"


class ConfigError(ValueError):
    """The config file is unreadable or invalid; ``str()`` names file and field."""


@dataclass(frozen=True)
class TcpListen:
    """An optional TCP listener of the controller (the agent API, meta.git over HTTP).

    ``host``/``port`` to bind (port 0: any free port); ``hosts``: names clients may
    put in ``Host`` besides the loopback names; ``tls_cert``/``tls_key``: PEM files
    for HTTPS (None: plain HTTP, TLS terminated in front of it); ``max_connections``
    and ``per_client`` (None: the listener's defaults) cap open connections.
    """

    host: str
    port: int
    hosts: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int | None = None
    per_client: int | None = None

    @property
    def scheme(self) -> str:
        """``https`` when a certificate is configured, else ``http``."""
        return "https" if self.tls_cert is not None else "http"


def _listen(doc: dict[str, Any] | None, field: str) -> TcpListen | None:
    if doc is None:
        return None
    host, _, port_s = str(doc["listen"]).rpartition(":")
    port = int(port_s)
    if port > 65535:
        raise ValidationFailed(f"{field}.listen: port {port} is above 65535", f"{field}.listen")
    tls = doc.get("tls")
    return TcpListen(
        host=host[1:-1] if host.startswith("[") else host,
        port=port,
        hosts=tuple(h.lower() for h in doc.get("hosts", ())),
        tls_cert=Path(tls["cert"]) if tls else None,
        tls_key=Path(tls["key"]) if tls else None,
        max_connections=doc.get("max_connections"),
        per_client=doc.get("per_client"),
    )


@dataclass(frozen=True)
class Config:
    """Effective controller settings. Ports are TCP ports; seconds are seconds."""

    runtime: Runtime = Runtime.AUTO
    state_dir: Path | None = None
    run_dir: Path | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 7000
    dashboard_hosts: tuple[str, ...] = ()
    """Host names the dashboard answers to besides the loopback names (``Host`` allow-list;
    a request naming any other host is refused, which ends DNS rebinding)."""
    api: TcpListen | None = None
    """The agent and manager APIs on TCP as well (``api:`` in the file); None: unix sockets
    only, the default."""
    git: TcpListen | None = None
    """meta.git over git's smart HTTP protocol (``git:`` in the file); None: off."""
    manager_port: int = 8000
    agent_port_base: int = 8100
    agent_port_range: int = 900
    resync_seconds: float = 60.0
    crash_watch_seconds: float = 10.0
    """How often the crash watch looks at the agents between passes."""
    parallel_actions: int = 4
    """How many agents a pass creates / rebuilds / starts at once (the manager goes first)."""
    hyperhive_flake: str = "github:hyperhive/hyperhive"
    default_model: str = "haiku"
    operator_pronouns: str = DEFAULT_OPERATOR_PRONOUNS
    """How agents' prompts refer to the operator (rendered into every settings.json)."""
    log_level: str = "info"
    local_sandbox: bool = True
    """local runtime: run each harness under bubblewrap when ``bwrap`` exists (on unless the
    config says ``local_sandbox: false``; ``status`` shows ``Isolated`` either way)."""
    local_start_grace: float = 0.3
    """local runtime: seconds a fresh harness must survive for its start to count."""
    kubernetes: KubeSettings = field(default_factory=KubeSettings)
    """kubernetes runtime: namespace, image, workload kind, egress (``docs/kubernetes.md``)."""
    forge_url: str | None = None
    """The hive forge (Forgejo) the controller administers (``forge.url``); None: no forge."""
    forge_admin_token_file: Path | None = None
    """File holding the forge admin token (default ``<state>/forge-admin-token``)."""
    forge_poll_seconds: float = 15.0
    """How often forge notifications are fetched and delivered."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    """TCP port of Prometheus ``/metrics`` (``None``: not served; 0: any free port)."""
    metrics_token_file: Path | None = None
    """Bearer token every scrape must send (required unless ``metrics_host`` is loopback)."""
    otel_endpoint: str | None = None
    """OTLP/HTTP base URL for traces (``None``: ``$OTEL_EXPORTER_OTLP_ENDPOINT``, else off)."""
    claude_code_telemetry: bool = False
    """Turn on Claude Code's own OpenTelemetry export in every agent (to the same endpoint)."""
    budget: Limits | None = None
    """The swarm-wide budget per UTC day (``budget:`` in the file; docs/budgets.md)."""
    broker: str | None = None
    """Where the broker keeps messages: None (``sqlite``) for ``<state>/broker.sqlite``, or a
    ``postgresql://`` URL (docs/broker.md "Stores")."""

    def resolved_runtime(self) -> Runtime:
        """``auto`` → ``nixos-container`` when that executable is on PATH, else ``local``
        (``kubernetes`` is never picked by ``auto``: it is asked for by name)."""
        if self.runtime is not Runtime.AUTO:
            return self.runtime
        return Runtime.NIXOS_CONTAINER if shutil.which("nixos-container") else Runtime.LOCAL


def config_from_dict(doc: dict[str, Any], base: Config | None = None) -> Config:
    """Build a ``Config`` from a parsed config document (already schema-valid or not).

    Raises ``ValidationFailed`` if ``doc`` does not match the config schema.
    """
    validate(doc, "config")
    cfg = base or Config()
    dash = doc.get("dashboard", {})
    ports = doc.get("ports", {})
    forge = doc.get("forge", {})
    return replace(
        cfg,
        runtime=Runtime(doc.get("runtime", cfg.runtime)),
        state_dir=Path(doc["state_dir"]) if "state_dir" in doc else cfg.state_dir,
        run_dir=Path(doc["run_dir"]) if "run_dir" in doc else cfg.run_dir,
        dashboard_host=dash.get("host", cfg.dashboard_host),
        dashboard_port=dash.get("port", cfg.dashboard_port),
        dashboard_hosts=tuple(h.lower() for h in dash.get("hosts", cfg.dashboard_hosts)),
        api=_listen(doc["api"], "api") if "api" in doc else cfg.api,
        git=_listen(doc["git"], "git") if "git" in doc else cfg.git,
        manager_port=ports.get("manager", cfg.manager_port),
        agent_port_base=ports.get("agent_base", cfg.agent_port_base),
        agent_port_range=ports.get("agent_range", cfg.agent_port_range),
        resync_seconds=float(doc.get("resync_seconds", cfg.resync_seconds)),
        crash_watch_seconds=float(doc.get("crash_watch_seconds", cfg.crash_watch_seconds)),
        parallel_actions=int(doc.get("parallel_actions", cfg.parallel_actions)),
        hyperhive_flake=doc.get("hyperhive_flake", cfg.hyperhive_flake),
        default_model=doc.get("default_model", cfg.default_model),
        operator_pronouns=doc.get("operator_pronouns", cfg.operator_pronouns),
        log_level=doc.get("log_level", cfg.log_level),
        local_sandbox=bool(doc.get("local_sandbox", cfg.local_sandbox)),
        local_start_grace=float(doc.get("local_start_grace_seconds", cfg.local_start_grace)),
        kubernetes=kube_settings_from_dict(doc.get("kubernetes"), cfg.kubernetes),
        forge_url=forge.get("url", cfg.forge_url),
        forge_admin_token_file=(
            Path(forge["admin_token_file"])
            if "admin_token_file" in forge
            else cfg.forge_admin_token_file
        ),
        forge_poll_seconds=float(forge.get("poll_seconds", cfg.forge_poll_seconds)),
        **_observability(doc, cfg),
        budget=Limits.from_doc(doc["budget"]) if "budget" in doc else cfg.budget,
        broker=_broker(doc.get("broker"), cfg.broker),
    )


def _broker(value: str | None, default: str | None) -> str | None:
    """The ``broker`` key: None for sqlite (the default), else the PostgreSQL URL."""
    if value is None:
        return default
    return None if value == "sqlite" else value


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _observability(doc: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The ``metrics`` and ``otel`` keys; a non-loopback ``metrics.host`` without
    ``metrics.token_file`` is refused (``ValidationFailed``): /metrics names every agent."""
    metrics = doc.get("metrics", {})
    otel = doc.get("otel", {})
    host = metrics.get("host", cfg.metrics_host)
    token = metrics.get("token_file")
    if host not in LOOPBACK and token is None:
        raise ValidationFailed(
            "metrics.host", f"{host!r} is not a loopback address: set metrics.token_file too"
        )
    return {
        "metrics_host": host,
        "metrics_port": metrics.get("port", cfg.metrics_port),
        "metrics_token_file": Path(token) if token else cfg.metrics_token_file,
        "otel_endpoint": otel.get("endpoint", cfg.otel_endpoint),
        "claude_code_telemetry": bool(otel.get("claude_code", cfg.claude_code_telemetry)),
    }


def load_config(path: Path | None) -> Config:
    """Read ``path`` (YAML or JSON) into a ``Config``; ``None`` gives the defaults.

    Raises ``ConfigError`` naming the file and the offending field.
    """
    if path is None:
        return Config()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: config must be a mapping, got {type(doc).__name__}")
    try:
        return config_from_dict(doc)
    except ValidationFailed as exc:
        raise ConfigError(f"{path}: {exc}") from exc
