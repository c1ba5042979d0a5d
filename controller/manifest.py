"""Agent manifests: parse + validate ``agents/<name>/agent.yaml``, render settings.json.

Pure functions, no I/O. The manifest format is ``schemas/json/agent.schema.json``::

    apiVersion: hyperhive/v1
    kind: Agent
    metadata: {name: alice}
    spec: {model: haiku, suspend: false, allowedRecipients: [...], mcpServers: {...}, ...}

``parse_manifest`` turns the YAML text into an ``AgentManifest`` or raises
``ManifestInvalid`` (an ``Invalid``, HTTP 400) whose ``field`` is the file path
and whose message names the offending schema field. ``render_settings`` turns a
manifest into the harness's ``settings.json`` document (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import yaml

from controller.budget.core import Limits
from controller.errors import Invalid
from controller.frontend.paths import BadPath, check_relative, check_target, overlaps
from controller.model import (
    AgentManifest,
    ExtraFiles,
    ForgeSpec,
    Frontend,
    McpServer,
    Resources,
)
from schemas.names import DEFAULT_OPERATOR_PRONOUNS, MANAGER
from schemas.validate import ValidationFailed, validate

API_VERSION = "hyperhive/v1"
KIND = "Agent"
MANIFEST_FILE = "agent.yaml"
NIX_FILE = "agent.nix"
MAX_MANIFEST_BYTES = 256 * 1024


def manifest_path(dirname: str) -> str:
    """The manifest's path inside the meta repo: ``agents/<dirname>/agent.yaml``."""
    return f"agents/{dirname}/{MANIFEST_FILE}"


class ManifestInvalid(Invalid):
    """A manifest that does not parse or fails the schema.

    ``field`` (as on every ``Invalid``) is the file path in the meta repo
    (``agents/alice/agent.yaml``); ``path`` is the same; ``schema_field`` is the
    offending field inside the document (``spec.model``, ``metadata.name``,
    ``(root)``) and ``reason`` what is wrong with it. ``str()`` reads
    ``agents/alice/agent.yaml: spec.model: does not match ...``.
    """

    def __init__(self, path: str, schema_field: str, reason: str) -> None:
        super().__init__(f"{path}: {schema_field}: {reason}", field=path)
        self.path = path
        self.schema_field = schema_field
        self.reason = reason


def load_manifest_doc(text: str | bytes, dirname: str) -> dict[str, Any]:
    """Parse YAML and validate it against the agent schema; return the document.

    Raises ``ManifestInvalid`` for bad YAML, a non-mapping document, a schema
    violation, or ``metadata.name`` differing from ``dirname``.
    """
    path = manifest_path(dirname)
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid(path, "(root)", f"is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestInvalid(path, "(root)", f"is not UTF-8: {exc}") from exc
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(path, "(root)", f"is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestInvalid(path, "(root)", f"is not valid YAML{where}: {problem}") from exc
    if not isinstance(doc, dict):
        got = "empty" if doc is None else type(doc).__name__
        raise ManifestInvalid(path, "(root)", f"must be a mapping, got {got}")
    try:
        validate(doc, "agent")
    except ValidationFailed as exc:
        raise ManifestInvalid(path, exc.field, exc.reason) from exc
    name = doc["metadata"]["name"]
    if name != dirname:
        raise ManifestInvalid(
            path, "metadata.name", f"is {name!r} but the directory is agents/{dirname}/"
        )
    _check_frontend(path, (doc.get("spec") or {}).get("frontend") or {})
    return doc


def _check_frontend(path: str, fe: dict[str, Any]) -> None:
    """``spec.frontend`` path rules (``controller.frontend.paths``): ManifestInvalid naming
    the field when a source or target is absolute, has ``..``, or overwrites a built-in."""
    field = "spec.frontend.dist"
    try:
        if "dist" in fe:
            check_relative(fe["dist"])
        targets: dict[str, str] = {}
        for key, entry in (fe.get("extraFiles") or {}).items():
            field = f"spec.frontend.extraFiles.{key}.source"
            check_relative(entry["source"])
            field = f"spec.frontend.extraFiles.{key}.target"
            targets[check_target(entry.get("target", key))] = key
    except BadPath as exc:
        raise ManifestInvalid(path, field, str(exc)) from None
    if (clash := overlaps(list(targets))) is not None:
        a, b = clash
        raise ManifestInvalid(
            path,
            f"spec.frontend.extraFiles.{targets[b]}.target",
            f"{b!r} overlaps the target {a!r} of entry {targets[a]!r}",
        )


def manifest_from_doc(doc: dict[str, Any]) -> AgentManifest:
    """Build an ``AgentManifest`` from a schema-valid document (no validation here)."""
    spec: dict[str, Any] = doc.get("spec") or {}
    servers = tuple(
        McpServer(
            key=key,
            command=str(s["command"]),
            args=tuple(str(a) for a in s.get("args", ())),
            env={str(k): str(v) for k, v in (s.get("env") or {}).items()},
            allowed_tools=tuple(s.get("allowedTools", ("*",))),
        )
        for key, s in sorted((spec.get("mcpServers") or {}).items())
    )
    res = spec.get("resources") or {}
    forge: dict[str, Any] = spec.get("forge") or {}
    fe: dict[str, Any] = spec.get("frontend") or {}
    return AgentManifest(
        name=str(doc["metadata"]["name"]),
        model=str(spec.get("model", "haiku")),
        suspend=bool(spec.get("suspend", False)),
        allowed_recipients=tuple(spec.get("allowedRecipients", ())),
        mcp_servers=servers,
        plugins=tuple(spec.get("plugins", ())),
        marketplaces=tuple(spec.get("marketplaces", ())),
        resources=Resources(
            memory_max=res.get("memoryMax"),
            cpu_quota=res.get("cpuQuota"),
            tasks_max=res.get("tasksMax"),
        ),
        turn_timeout_seconds=spec.get("turnTimeoutSeconds"),
        forge=ForgeSpec(
            skip_notify_reasons=tuple(forge.get("skipNotifyReasons", ())),
            keep_subscriptions=bool(forge.get("keepSubscriptions", False)),
        ),
        frontend=Frontend(
            dist=check_relative(fe["dist"]) if "dist" in fe else None,
            extra_files=tuple(
                ExtraFiles(
                    key=key,
                    source=check_relative(e["source"]),
                    target=check_target(e.get("target", key)),
                )
                for key, e in sorted((fe.get("extraFiles") or {}).items())
            ),
        ),
        budget=Limits.from_doc(spec.get("budget"), "spec.budget"),
    )


def parse_manifest(text: str | bytes, dirname: str) -> AgentManifest:
    """Parse and validate ``agents/<dirname>/agent.yaml`` → ``AgentManifest``.

    Raises ``ManifestInvalid`` (field = the file path, message naming the
    schema field) when the YAML is bad, the schema fails, or ``metadata.name``
    is not ``dirname``.
    """
    return manifest_from_doc(load_manifest_doc(text, dirname))


def default_manifest_yaml(name: str, model: str) -> str:
    """The ``agent.yaml`` a spawn proposal adds (and the manager's first manifest)."""
    return (
        f"apiVersion: {API_VERSION}\n"
        f"kind: {KIND}\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  model: {model}\n"
    )


def flavor(agent: str) -> str:
    """``manager`` for the manager, ``agent`` for everyone else."""
    return "manager" if agent == MANAGER else "agent"


def render_settings(
    manifest: AgentManifest,
    *,
    web_port: int,
    dashboard_url: str,
    meta_commit: str,
    hyperhive_version: str,
    operator_pronouns: str = DEFAULT_OPERATOR_PRONOUNS,
) -> dict[str, Any]:
    """The harness's ``settings.json`` for one agent (docs/architecture.md).

    Shape::

        {"agent", "flavor", "model", "allowed_recipients": [..], "mcp_servers":
         {key: {"command", "args", "env", "allowedTools"}}, "plugins", "marketplaces",
         "web_port", "dashboard_url", "meta_commit", "hyperhive_version",
         "operator_pronouns"}
        (+ "turn_timeout_seconds" when the manifest sets spec.turnTimeoutSeconds,
         + "max_budget_usd_per_turn" when it sets spec.budget.usdPerTurn,
         + "frontend_extra": [{"key", "target"}] when it sets spec.frontend.extraFiles)

    A server keyed ``hyperhive`` is dropped: it would shadow the built-in surface.
    """
    settings: dict[str, Any] = {
        "agent": manifest.name,
        "flavor": flavor(manifest.name),
        "model": manifest.model,
        "allowed_recipients": list(manifest.allowed_recipients),
        "mcp_servers": {
            s.key: {
                "command": s.command,
                "args": list(s.args),
                "env": dict(s.env),
                "allowedTools": list(s.allowed_tools),
            }
            for s in manifest.mcp_servers
            if s.key != "hyperhive"
        },
        "plugins": list(manifest.plugins),
        "marketplaces": list(manifest.marketplaces),
        "web_port": web_port,
        "dashboard_url": dashboard_url,
        "meta_commit": meta_commit,
        "hyperhive_version": hyperhive_version,
        "operator_pronouns": operator_pronouns,
    }
    if manifest.turn_timeout_seconds is not None:
        settings["turn_timeout_seconds"] = manifest.turn_timeout_seconds
    if manifest.frontend.extra_files:  # the built-in UI links to them (docs/web-ui.md)
        settings["frontend_extra"] = [
            {"key": e.key, "target": e.target} for e in manifest.frontend.extra_files
        ]
    if manifest.budget is not None and manifest.budget.usd_per_turn is not None:
        settings["max_budget_usd_per_turn"] = manifest.budget.usd_per_turn
    return settings
