"""Install ``spec.marketplaces`` and ``spec.plugins`` with the CLI's own plugin commands, at boot.

claude 2.1.197 (verified against a local marketplace directory, offline):

- ``claude plugin marketplace add <source>`` (a path, a URL, or ``owner/repo`` on
  GitHub) — exit 0 with ``✔ Successfully added marketplace: NAME`` the first time
  and ``✔ Marketplace 'NAME' already on disk — declared in user settings`` after
  that; exit 1 with ``✘ …`` (``Path does not exist``, a failed clone) on stderr.
- ``claude plugin install <plugin>[@<marketplace>]`` — exit 0 with ``✔ Successfully
  installed plugin: …`` or ``✔ Plugin "…" is already installed``; exit 1 with
  ``✘ Failed to install plugin "…": Plugin "…" not found in …`` on stderr.
- ``claude plugin list --json`` / ``claude plugin marketplace list --json`` — JSON arrays
  (``[{"id": "hello@mkt", "enabled": true, …}]`` / ``[{"name", "source", "path" | "url" |
  "repo", …}]``).
- Both write ``$CLAUDE_CONFIG_DIR/settings.json`` (``enabledPlugins``,
  ``extraKnownMarketplaces``) and ``$CLAUDE_CONFIG_DIR/plugins/``; a ``-p`` run then
  lists the plugin in its init line (``"plugins": [{"name", "path", "source"}]``) and
  offers its commands and skills through the ``Skill`` tool.

:func:`install_all` is idempotent: what ``list --json`` already shows is not
installed again, and an "already" answer counts as success. Failures are
collected (spec + the CLI's last output lines), never raised: the boot goes on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 300.0  # a marketplace add may clone a repository
OUTPUT_LINES = 20

Runner = Callable[[list[str], Mapping[str, str], Path, float], "Completed"]


@dataclass(frozen=True)
class Completed:
    """A finished command: exit code (``None`` when it could not run) and its output."""

    code: int | None
    stdout: str
    stderr: str


def run_command(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> Completed:
    """Run ``argv``; a spawn failure or a timeout becomes ``code=None`` with the reason."""
    try:
        p = subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Completed(None, "", f"timed out after {timeout:.0f} s")
    except OSError as exc:
        return Completed(None, "", f"cannot run {argv[0]}: {exc}")
    return Completed(
        p.returncode,
        p.stdout.decode("utf-8", errors="replace"),
        p.stderr.decode("utf-8", errors="replace"),
    )


@dataclass(frozen=True)
class Outcome:
    """One marketplace or plugin: ``kind`` (``marketplace`` / ``plugin``), ``spec``, ``ok``,
    ``action`` (``added`` / ``installed`` / ``present`` / ``failed``), ``detail`` (a line for
    the UI; for a failure the CLI's last output lines) and ``seconds`` spent."""

    kind: str
    spec: str
    ok: bool
    action: str
    detail: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "spec", "ok", "action", "detail", "seconds"}``."""
        return {
            "kind": self.kind,
            "spec": self.spec,
            "ok": self.ok,
            "action": self.action,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def _tail(c: Completed) -> str:
    lines = [ln.strip() for ln in (c.stdout + "\n" + c.stderr).splitlines() if ln.strip()]
    return "\n".join(lines[-OUTPUT_LINES:]) or f"exit code {c.code}"


def _last_line(c: Completed) -> str:
    lines = [ln.strip() for ln in (c.stdout + "\n" + c.stderr).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _json_list(c: Completed) -> list[dict[str, Any]] | None:
    if c.code != 0:
        return None
    try:
        doc = json.loads(c.stdout)
    except ValueError:
        return None
    if not isinstance(doc, list):
        return None
    return [d for d in doc if isinstance(d, dict)]


def marketplace_known(spec: str, known: Sequence[Mapping[str, Any]]) -> bool:
    """True when ``marketplace list --json`` already has ``spec`` (by path, URL, repo or name)."""
    candidates = {spec, spec.rstrip("/")}
    if spec.startswith(("/", ".", "~")):
        candidates.add(os.path.abspath(os.path.expanduser(spec)))
    for m in known:
        for key in ("path", "url", "repo", "name", "installLocation"):
            v = m.get(key)
            if isinstance(v, str) and v.rstrip("/") in candidates:
                return True
    return False


def plugin_installed(spec: str, installed: Sequence[Mapping[str, Any]]) -> bool:
    """True when ``plugin list --json`` has ``spec`` (``name@marketplace``, or a bare ``name``)."""
    for p in installed:
        pid = p.get("id")
        if not isinstance(pid, str):
            continue
        if pid == spec or ("@" not in spec and pid.split("@", 1)[0] == spec):
            return True
    return False


def _already(c: Completed) -> bool:
    return "already" in (c.stdout + c.stderr).lower()


def install_all(
    claude_bin: str,
    env: Mapping[str, str],
    cwd: Path,
    marketplaces: Sequence[str],
    plugins: Sequence[str],
    *,
    run: Runner = run_command,
    timeout: float = COMMAND_TIMEOUT,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Add every marketplace, then install every plugin; return one :class:`Outcome` each.

    Marketplaces first, so ``name@marketplace`` specs resolve on a fresh claude dir.
    Never raises for a CLI failure.
    """
    out: list[Outcome] = []

    def done(o: Outcome) -> None:
        out.append(o)
        last = o.detail.splitlines()[-1] if o.detail else ""
        (log.info if o.ok else log.warning)("%s %s: %s (%s)", o.kind, o.spec, o.action, last)
        if on_outcome is not None:
            on_outcome(o)

    if marketplaces:
        known = _json_list(
            run([claude_bin, "plugin", "marketplace", "list", "--json"], env, cwd, timeout)
        )
        for spec in marketplaces:
            t0 = time.monotonic()
            if known is not None and marketplace_known(spec, known):
                done(Outcome("marketplace", spec, True, "present", "already added", 0.0))
                continue
            c = run([claude_bin, "plugin", "marketplace", "add", spec], env, cwd, timeout)
            dt = time.monotonic() - t0
            if c.code == 0:
                action = "present" if _already(c) else "added"
                done(Outcome("marketplace", spec, True, action, _last_line(c), dt))
            elif c.code is not None and _already(c):
                done(Outcome("marketplace", spec, True, "present", _last_line(c), dt))
            else:
                done(Outcome("marketplace", spec, False, "failed", _tail(c), dt))
    if plugins:
        installed = _json_list(run([claude_bin, "plugin", "list", "--json"], env, cwd, timeout))
        for spec in plugins:
            t0 = time.monotonic()
            if installed is not None and plugin_installed(spec, installed):
                done(Outcome("plugin", spec, True, "present", "already installed", 0.0))
                continue
            c = run([claude_bin, "plugin", "install", spec], env, cwd, timeout)
            dt = time.monotonic() - t0
            if c.code == 0:
                action = "present" if _already(c) else "installed"
                done(Outcome("plugin", spec, True, action, _last_line(c), dt))
            elif c.code is not None and _already(c):
                done(Outcome("plugin", spec, True, "present", _last_line(c), dt))
            else:
                done(Outcome("plugin", spec, False, "failed", _tail(c), dt))
    return out


def failure_report(agent: str, failures: Sequence[Outcome]) -> str:
    """The message the manager gets when some installs failed."""
    lines = [
        f"[hyperhive] agent {agent}: {len(failures)} of its configured plugins/marketplaces "
        "could not be installed at boot (the agent runs without them):"
    ]
    for f in failures:
        lines.append(f"- {f.kind} {f.spec}:")
        lines.extend("    " + ln for ln in f.detail.splitlines()[-8:])
    return "\n".join(lines)
