"""Read one container's journal for the dashboard's log viewer.

seeds/003 (the original's ``GET /api/journal/{name}?unit=&lines=``): it shells
out ``journalctl -M <container> -b --no-pager --output=short-iso
--lines=<N>`` (N capped at 5000), with an optional unit filter restricted to
the harness service "so the shell-out can't be coerced into reading unrelated
units", and validates the container name against the live list *before*
invoking journalctl. This module keeps all three restrictions:

- ``container`` must be in ``live`` (the caller's list of running containers,
  e.g. from the driver's ``observe``) and look like one of ours (``h-<agent>`` /
  ``hm1nd``) — else ``NotFound``; journalctl never sees an arbitrary name.
- ``unit`` is ``hyperhive-agent.service`` (the harness, nix/modules/harness-base.nix)
  or None (the whole machine journal) — else ``Invalid``.
- ``lines`` is 1..5000 — else ``Invalid``.

``journalctl -M`` reads the journal of a *running* machine (registered with
systemd-machined); a stopped container is a ``Conflict``. The controller's unit
runs as root, so journalctl has the access it needs. argv only, never a shell.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence

from controller.errors import Conflict, Invalid, NotFound, TransientError
from schemas.names import AGENT_NAME_RE, MANAGER, MANAGER_CONTAINER

HARNESS_UNIT = "hyperhive-agent.service"
ALLOWED_UNITS = frozenset({HARNESS_UNIT})
MAX_LINES = 5000
TIMEOUT = 30.0


def _is_our_container(name: str) -> bool:
    if name == MANAGER_CONTAINER:
        return True
    agent = name[2:] if name.startswith("h-") else ""
    return bool(agent) and agent != MANAGER and bool(AGENT_NAME_RE.match(agent))


def run_captured(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell, stdin closed) and capture its output as text; no exit check.

    Undecodable bytes are replaced. ``FileNotFoundError``, ``TimeoutExpired``
    and other ``OSError`` reach the caller, which words them for its own use.
    """
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def journal_argv(
    container: str, unit: str | None, lines: int, journalctl: str = "journalctl"
) -> list[str]:
    """``journalctl -M NAME -b --no-pager --output=short-iso --lines=N [-u UNIT]`` (no checks)."""
    argv = [
        journalctl,
        "-M",
        container,
        "-b",
        "--no-pager",
        "--output=short-iso",
        f"--lines={lines}",
    ]
    if unit is not None:
        argv += ["-u", unit]
    return argv


def read_journal(
    container: str,
    live: Iterable[str],
    unit: str | None,
    lines: int,
    *,
    journalctl: str = "journalctl",
    timeout: float = TIMEOUT,
) -> str:
    """The last ``lines`` journal lines of ``container`` since its boot, as text.

    Raises ``NotFound`` (container not live / not ours), ``Invalid`` (``unit``
    not allowed, ``lines`` outside 1..5000; ``field`` names the parameter),
    ``Conflict`` (journalctl failed: typically the machine is not running) and
    ``TransientError`` (journalctl missing or timed out).
    """
    if (
        not isinstance(container, str)
        or container not in set(live)
        or not _is_our_container(container)
    ):
        raise NotFound(f"no running container {container!r}", field="container")
    if unit is not None and unit not in ALLOWED_UNITS:
        raise Invalid(
            f"unit {unit!r} is not allowed: use {HARNESS_UNIT!r} or omit it for the whole journal",
            field="unit",
        )
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_LINES:
        raise Invalid(
            f"lines must be an integer from 1 to {MAX_LINES}, got {lines!r}", field="lines"
        )
    argv = journal_argv(container, unit, lines, journalctl)
    try:
        proc = run_captured(argv, timeout)
    except FileNotFoundError as exc:
        raise TransientError(f"{journalctl} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"journalctl -M {container} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise Conflict(
            f"journalctl -M {container} failed (exit {proc.returncode})"
            + (f": {why[-1]}" if why else "")
            + "; is the container running?",
            field="container",
        )
    return proc.stdout
