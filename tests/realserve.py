"""What a test that runs a real ``hyperhive serve`` subprocess needs, whatever it drives.

- ``free_port()`` / ``free_block(n)``: loopback ports nobody listens on right now;
- ``wait_for(what, fn)``: poll until ``fn()`` is truthy, failing with what was awaited;
- ``write_config(path, ...)``: the local-runtime config file ``serve --config`` reads;
- ``standin_env(argv)``: a minimal environment whose agents are a stand-in command;
- ``stop(proc)``: SIGTERM, then SIGKILL after a grace;
- ``kill_agents(state)``: SIGKILL every agent a dead or stopped controller left running.

Used by the e2e story (``tests/e2e``), the security replay (``tests/security``) and the
component tests that kill a controller (``tests/component/test_crash_safety.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
"""The repository (the cwd and ``PYTHONPATH`` of every ``hyperhive serve`` run here)."""

STANDIN_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
"""What ``standin_env`` keeps of this process's environment by default."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports above it (on 127.0.0.1, below 65000).

    Raises ``RuntimeError`` when 200 tries found none."""
    for _ in range(200):
        base = free_port()
        if base + n > 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``fn`` every ``interval`` s until it returns something truthy (returned); fail
    naming ``what`` and the last exception ``fn`` raised after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc!r})"
    )


def write_config(
    path: Path,
    *,
    manager_port: int,
    agent_range: int,
    dashboard_port: int = 0,
    **settings: Any,
) -> Path:
    """Write a local-runtime ``serve --config`` file to ``path`` (returned): the dashboard on
    ``127.0.0.1:dashboard_port`` (0: any free port), the manager's UI port ``manager_port``
    and ``agent_range`` agent ports above it, then ``settings`` (``resync_seconds``, ...)."""
    doc = {
        "runtime": "local",
        "dashboard": {"host": "127.0.0.1", "port": dashboard_port},
        "ports": {
            "manager": manager_port,
            "agent_base": manager_port + 1,
            "agent_range": agent_range,
        },
        **settings,
    }
    path.write_text(json.dumps(doc))
    return path


def standin_env(
    agent_argv: Sequence[str], keep: Sequence[str] = STANDIN_ENV_KEEP
) -> dict[str, str]:
    """The environment of a ``hyperhive serve`` whose agents run ``agent_argv`` instead of
    the harness (``HYPERHIVE_AGENT_ARGV``): only ``keep`` of this process's environment,
    and the repository on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(ROOT)
    env["HYPERHIVE_AGENT_ARGV"] = json.dumps(list(agent_argv))
    return env


def serve_argv(state: Path, config: Path, *extra: str, run: Path | None = None) -> list[str]:
    """``hyperhive serve`` on ``state`` (run dir ``run``, default the controller's own
    choice) with ``config``, then ``extra`` arguments."""
    argv = [sys.executable, "-m", "controller.cli", "--state-dir", str(state)]
    if run is not None:
        argv += ["--run-dir", str(run)]
    return [*argv, "serve", "--config", str(config), *extra]


def stop(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM ``proc`` and wait ``grace`` s for it; SIGKILL it (and wait 5 s) if it is
    still running then."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def kill_agents(state: Path) -> None:
    """SIGKILL the process group of every agent a pid file under ``state`` names (if it is
    still the same process: its start time matches)."""
    for pid_file in (state / "agents").glob("*/harness.pid"):
        try:
            info = json.loads(pid_file.read_text())
            proc = psutil.Process(int(info["pid"]))
            if abs(proc.create_time() - float(info["create_time"])) < 0.05:
                os.killpg(int(info["pgid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError, psutil.Error):
            continue
