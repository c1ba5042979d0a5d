"""The set-up the real-serve stories share: a real ``hyperhive serve`` (``tests/e2e/swarm.py``)
whose agents run the real ``claude`` CLI against a fake Messages API served here.

- ``require_claude()``: the CLI, or the calling test module skipped;
- ``is_manager(req)``: whether a Messages API request comes from the manager's turn;
- ``scripted_swarm(tmp, model, agent_ports=...)``: the fake API answering with ``model``
  and a prepared (not started) ``Swarm``; afterwards the controller and every harness are
  killed, the API stopped and the controller log's tail written to stderr;
- ``spawn_approved(s, name)``: the operator asks the manager for ``name`` and approves the
  first proposal; returns once ``name`` runs.

Used by the e2e story (``tests/e2e``), the metrics and traces stories (``tests/metrics``),
the budget story (``tests/budget``) and the kubernetes story (``tests/kubernetes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.swarm import Swarm
from tests.fakeapi import FakeAnthropic, Reply, Request, find_claude_cli
from tests.realserve import ROOT, wait_for


def require_claude() -> Path:
    """The real ``claude`` CLI (``find_claude_cli``); called at a test module's import, it
    skips the whole module when the CLI is not installed."""
    claude = find_claude_cli(ROOT)
    if claude is None:
        pytest.skip(
            "the claude CLI is not installed (npm ci, or set HYPERHIVE_CLAUDE_BIN)",
            allow_module_level=True,
        )
    return claude


def is_manager(req: Request) -> bool:
    """Whether ``req`` comes from the manager's turn (only it has ``request_spawn``)."""
    return "mcp__hyperhive__request_spawn" in req.tool_names


def write_log_tail(tmp: Path) -> None:
    """The tail (6000 characters) of the controller log under ``tmp``, to stderr: what a
    failed story shows about the controller."""
    log = tmp / "controller.log"
    if log.exists():
        sys.stderr.write("---- controller log (tail) ----\n" + log.read_text()[-6000:])


@contextlib.contextmanager
def scripted_swarm(
    tmp: Path, model: Callable[[Request], Reply], *, agent_ports: int
) -> Iterator[Swarm]:
    """A fake Messages API answering with ``model`` and a ``Swarm`` prepared on ``tmp``
    (``agent_ports`` ports for its agents) whose harnesses use it; the caller may change
    its config and environment before ``start``. On exit the controller and every harness'
    process group are killed (SIGKILL), the API stopped, and the controller log's tail
    written to stderr."""
    api = FakeAnthropic(model).start()
    s = Swarm.prepare(tmp, api, require_claude(), agent_ports=agent_ports)
    try:
        yield s
    finally:
        if s.proc is not None:
            s.proc.kill()
            s.proc.wait()
        for pids in s.harness_procs().values():
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
        api.stop()
        write_log_tail(tmp)


def spawn_approved(s: Swarm, name: str, timeout: float = 90) -> None:
    """The operator sends the manager ``please spawn <name>`` (its scripted turn proposes
    ``name``), waits for the pending proposal, approves proposal 1 and waits (``timeout``
    seconds) for ``name`` to run."""
    s.cli("send", "manager", f"please spawn {name}")
    wait_for("proposal/1", lambda: json.loads(s.cli("pending", "-o", "json").stdout))
    s.cli("approve", "1")
    wait_for(f"{name} running", lambda: s.phase(name) == "running", timeout=timeout)
