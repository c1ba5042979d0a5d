"""How the harness invokes the ``claude`` CLI: argv, environment, MCP config, tool lists.

Pure functions except :func:`write_mcp_config` and :func:`session_exists`
(which read/write files). The facts they respect (docs/claude-cli.md):

- variadic flags (``--allowedTools``, ``--mcp-config``, ``--tools``) swallow a
  trailing prompt, so every flag uses the ``--flag=value`` form and the prompt
  goes on stdin — never in argv;
- as root, bypassPermissions is refused: an explicit allow list plus a deny list;
- ``MCP_CONNECTION_NONBLOCKING=0`` so MCP tools exist on the first request;
- sessions live under ``$CLAUDE_CONFIG_DIR/projects/<mangled cwd>/`` and are
  tied to the cwd, which is why the cwd is always the state dir.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import MCP_KEY_RE, McpServerSpec
from schemas.wire import AGENT_VERBS, MANAGER_ONLY_VERBS

log = logging.getLogger(__name__)

SERVER_KEY = "hyperhive"
#: Built-in tools the agent may use (also the ``--tools`` set, so nothing else is offered).
BUILTIN_TOOLS: tuple[str, ...] = ("Bash", "Edit", "Glob", "Grep", "Read", "Write")
#: Added to the built-ins when the agent has plugins: their commands and skills run through it.
PLUGIN_TOOL = "Skill"
#: Built-ins refused outright (belt and braces: ``--tools`` already hides them).
DENIED_TOOLS: tuple[str, ...] = ("WebFetch", "WebSearch", "Task", "TodoWrite", "NotebookEdit")
MANAGER_VERBS: tuple[str, ...] = (*AGENT_VERBS, *MANAGER_ONLY_VERBS)
#: ``--settings`` for every run: hyperhive owns compaction; no auto memory.
CLAUDE_SETTINGS: dict[str, Any] = {"autoCompactEnabled": False, "autoMemoryEnabled": False}


def hyperhive_tools(flavor: str) -> list[str]:
    """``mcp__hyperhive__<verb>`` for every verb the flavor's MCP server exposes."""
    verbs = MANAGER_VERBS if flavor == "manager" else AGENT_VERBS
    return [f"mcp__{SERVER_KEY}__{v}" for v in verbs]


def usable_extras(extras: Mapping[str, McpServerSpec]) -> dict[str, McpServerSpec]:
    """The extra MCP servers that may be wired in.

    Drops (with a warning) the key ``hyperhive`` — user config must not shadow
    the built-in surface — and keys that cannot appear in a tool name.
    """
    out: dict[str, McpServerSpec] = {}
    for key, spec in extras.items():
        if key == SERVER_KEY:
            log.warning(
                "extra MCP server %r dropped: the key is reserved for the built-in server", key
            )
            continue
        if not MCP_KEY_RE.match(key):
            log.warning("extra MCP server %r dropped: keys must match %s", key, MCP_KEY_RE.pattern)
            continue
        out[key] = spec
    return out


def builtin_tools(plugins: bool = False) -> list[str]:
    """The ``--tools`` set: :data:`BUILTIN_TOOLS`, plus ``Skill`` when plugins are configured."""
    return [*BUILTIN_TOOLS, PLUGIN_TOOL] if plugins else list(BUILTIN_TOOLS)


def allowed_tools(
    flavor: str, extras: Mapping[str, McpServerSpec], plugins: bool = False
) -> list[str]:
    """The ``--allowedTools`` list: built-ins, the flavor's hyperhive tools, extras.

    An extra's ``allowedTools: ["*"]`` becomes ``mcp__<key>__*``; a concrete
    list becomes one ``mcp__<key>__<tool>`` per entry. ``plugins`` adds ``Skill``.
    """
    allow = builtin_tools(plugins) + hyperhive_tools(flavor)
    for key, spec in usable_extras(extras).items():
        tools = spec.allowed_tools or ("*",)
        if "*" in tools:
            allow.append(f"mcp__{key}__*")
        else:
            allow.extend(f"mcp__{key}__{t}" for t in tools)
    return allow


def render_mcp_config(
    *,
    socket: str,
    flavor: str,
    agent: str,
    extras: Mapping[str, McpServerSpec],
    python: str = sys.executable,
    pythonpath: str | None = None,
    credential_file: str | None = None,
    hyperhive: Mapping[str, Any] | None = None,
    api_url: str | None = None,
    api_ca: str | None = None,
) -> dict[str, Any]:
    """The ``--mcp-config`` document::

        {"mcpServers": {
            "hyperhive": {"command": python, "args": ["-m", "harness.mcp_server"],
                          "env": {"HYPERHIVE_SOCKET", "HYPERHIVE_FLAVOR", "HYPERHIVE_AGENT",
                                  "PYTHONSAFEPATH": "1", ["PYTHONPATH": pythonpath],
                                  ["HYPERHIVE_CREDENTIAL_FILE": credential_file]}},
            "<key>": {"command", "args", "env"}, ...}}

    ``PYTHONSAFEPATH`` keeps the server from importing out of its cwd (the state
    dir, where the agent writes files); ``pythonpath`` (see :func:`import_path`)
    lets it import what ``serve`` imports. The module is run directly, not through
    ``python -m harness mcp``, so claude's wait for it skips the CLI's argparse set-up.
    ``credential_file`` is where the server
    reads the agent's broker credential (the path, never the secret: this document is
    written to the state dir).

    ``api_url`` / ``api_ca``, when the harness reaches its API over TCP, are passed on
    as ``HYPERHIVE_API_URL`` / ``HYPERHIVE_API_CA``.

    ``hyperhive``, when given, replaces the stdio entry: the harness serves the tools itself
    (``{"type": "http", "url", "headers"}`` from :meth:`harness.mcp_http.McpEndpoint.mcp_config`),
    so claude starts no server process.
    """
    env = {"HYPERHIVE_SOCKET": socket, "HYPERHIVE_FLAVOR": flavor, "HYPERHIVE_AGENT": agent}
    env["PYTHONSAFEPATH"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if credential_file:
        env["HYPERHIVE_CREDENTIAL_FILE"] = credential_file
    if api_url:
        env["HYPERHIVE_API_URL"] = api_url
        if api_ca:
            env["HYPERHIVE_API_CA"] = api_ca
    # a remote manager's meta clone (harness.metaclone): request_apply_commit pushes first
    for var in ("HYPERHIVE_META_DIR", "HYPERHIVE_META_URL"):
        if flavor == "manager" and os.environ.get(var):
            env[var] = os.environ[var]
    servers: dict[str, Any] = {
        SERVER_KEY: dict(hyperhive)
        if hyperhive is not None
        else {"command": python, "args": ["-m", "harness.mcp_server"], "env": env}
    }
    for key, spec in usable_extras(extras).items():
        servers[key] = {"command": spec.command, "args": list(spec.args), "env": dict(spec.env)}
    return {"mcpServers": servers}


def import_path(exclude: Path | None = None) -> str:
    """This interpreter's ``sys.path`` as a ``PYTHONPATH`` value: absolute entries only,
    without ``exclude``, first occurrence kept. A wrapper (the Nix one) adds site dirs at run
    time; passing them on makes ``python -m harness mcp`` import what ``serve`` imports."""
    skip = {str(exclude)} if exclude is not None else set()
    keep = [p for p in sys.path if p and os.path.isabs(p) and p not in skip]
    return os.pathsep.join(dict.fromkeys(keep))


def write_mcp_config(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically, mode 0600 (env values may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Invocation:
    """Everything needed to start one claude run (argv has no prompt; it goes on stdin)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def build_argv(
    *,
    claude_bin: str,
    model: str,
    mcp_config: Path,
    allow: Sequence[str],
    deny: Sequence[str] = DENIED_TOOLS,
    tools: Sequence[str] = BUILTIN_TOOLS,
    continue_session: bool,
    max_budget_usd: float | None = None,
) -> list[str]:
    """``claude -p`` argv, every valued flag in ``--flag=value`` form; the prompt is not in it.

    ``max_budget_usd`` (``spec.budget.usdPerTurn``) becomes ``--max-budget-usd``: claude
    stops the run after the API request that reaches it (docs/budgets.md)."""
    argv = [
        claude_bin,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        f"--model={model}",
        f"--mcp-config={mcp_config}",
        "--strict-mcp-config",
        f"--tools={','.join(tools)}",
        f"--allowedTools={','.join(allow)}",
        f"--disallowedTools={','.join(deny)}",
        f"--settings={json.dumps(CLAUDE_SETTINGS, separators=(',', ':'))}",
    ]
    if max_budget_usd is not None:
        argv.append(f"--max-budget-usd={max_budget_usd:g}")
    if continue_session:
        argv.append("--continue")
    return argv


def build_env(base: Mapping[str, str], *, config_dir: Path) -> dict[str, str]:
    """claude's environment: all of ``base`` (the harness' own environment, which the
    driver or systemd unit already curated: ``ANTHROPIC_*``, ``CLAUDE_CODE_*``, PATH, ...)
    plus ``CLAUDE_CONFIG_DIR``, ``MCP_CONNECTION_NONBLOCKING=0`` and
    ``DISABLE_AUTO_COMPACT=1`` (hyperhive compacts itself)."""
    env = dict(base)
    env.setdefault("PATH", os.defpath)
    env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    env["MCP_CONNECTION_NONBLOCKING"] = "0"
    env["DISABLE_AUTO_COMPACT"] = "1"
    return env


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def project_dir_name(cwd: Path | str) -> str:
    """The directory name claude uses for ``cwd`` under ``$CLAUDE_CONFIG_DIR/projects``.

    claude-code 2.1.x (docs/claude-cli.md): ``realpath(cwd)`` with every UTF-16
    code unit outside ``[a-zA-Z0-9]`` replaced by ``-``; longer than 200
    characters → the first 200, ``-``, base-36 of ``abs(java_string_hash(path))``.
    """
    path = os.path.realpath(cwd)
    data = path.encode("utf-16-le", errors="surrogatepass")
    units = [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]
    name = "".join(chr(u) if chr(u).isascii() and chr(u).isalnum() else "-" for u in units)
    if len(name) <= 200:
        return name
    h = 0
    for u in units:  # JS: h = (h << 5) - h + charCodeAt(i) | 0
        h = (h * 31 + u) & 0xFFFFFFFF
    if h >= 2**31:
        h -= 2**32
    return f"{name[:200]}-{_base36(abs(h))}"


def project_dir(config_dir: Path, cwd: Path) -> Path:
    """Where claude keeps the sessions for ``cwd``: ``<config>/projects/<project_dir_name>``."""
    return config_dir / "projects" / project_dir_name(cwd)


def session_exists(config_dir: Path, cwd: Path) -> bool:
    """True when claude has a session transcript for ``cwd`` (so ``--continue`` resumes it)."""
    d = project_dir(config_dir, cwd)
    try:
        return any(p.suffix == ".jsonl" for p in d.iterdir())
    except OSError:
        return False
