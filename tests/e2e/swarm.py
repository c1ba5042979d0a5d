"""A real ``hyperhive serve`` on a temp state dir, driven the way the operator drives it.

``Swarm`` runs the controller (``start`` / ``stop``), the CLI (``cli``), git on the
meta repo and the operator's clone, and reads the status over host.sock with the
operator key. ``swarm_env`` is the environment both need: the fake Messages API
for the real ``claude`` CLI, an empty ``HOME``, the repo on ``PYTHONPATH`` and the
operator's git identity; ``Swarm.prepare`` makes a state dir's config with free
ports. Shared by the e2e story and the security replay
(``tests/security``, whose ``Hive`` adds the operator's other credentials).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil

from controller.auth.secretfile import CredentialError
from schemas.client import UnixClient, Unreachable
from tests.e2e.credentials import operator_client
from tests.fakeapi import FakeAnthropic, Request
from tests.realserve import ROOT, free_block, free_port, serve_argv, wait_for, write_config


def swarm_env(api: FakeAnthropic, home: Path, claude: Path) -> dict[str, str]:
    """This process's environment without any ``ANTHROPIC_`` / ``CLAUDE_`` / ``HYPERHIVE_``
    variable, plus what a real ``hyperhive serve`` needs to run the ``claude`` CLI at
    ``claude`` against ``api``: ``home`` as ``HOME``, the repo on ``PYTHONPATH`` and the
    operator's git identity (``operator <op@example.org>``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "HYPERHIVE_"))
    }
    env.update(api.cli_env(home))
    for k in ("CLAUDE_CONFIG_DIR", "CLAUDE_CODE_TMPDIR"):
        env.pop(k, None)  # each agent has its own (the driver sets them; the sandbox hides HOME)
    env.update(
        {
            "HOME": str(home),
            "HYPERHIVE_CLAUDE_BIN": str(claude),
            "PYTHONPATH": str(ROOT),
            "GIT_AUTHOR_NAME": "operator",
            "GIT_AUTHOR_EMAIL": "op@example.org",
            "GIT_COMMITTER_NAME": "operator",
            "GIT_COMMITTER_EMAIL": "op@example.org",
        }
    )
    return env


@dataclass
class Swarm:
    """One controller instance with its state dir, driven like an operator would."""

    tmp: Path
    api: FakeAnthropic
    env: dict[str, str]
    dashboard_port: int
    proc: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def prepare(cls, tmp: Path, api: FakeAnthropic, claude: Path, agent_ports: int) -> Self:
        """A swarm in ``tmp``, not started: ``tmp/home`` the operator's empty ``HOME``
        (``swarm_env``), ``tmp/config.json`` with a free dashboard port, a free manager
        port with ``agent_ports`` free ports above it, a 30 s resync and the model
        ``claude-test``."""
        home = tmp / "home"
        home.mkdir()
        env = swarm_env(api, home, claude)
        base = free_block(agent_ports + 1)
        dash = free_port()
        write_config(
            tmp / "config.json",
            manager_port=base,
            agent_range=agent_ports,
            dashboard_port=dash,
            resync_seconds=30,
            default_model="claude-test",
        )
        return cls(tmp, api, env, dash)

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def host_sock(self) -> str:
        return str(self.state / "run" / "host.sock")

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "controller.cli", "--state-dir", str(self.state), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            input=input,
            cwd=ROOT,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"hyperhive {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            )
        return r

    def start(self) -> None:
        log = open(self.tmp / "controller.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            serve_argv(self.state, self.tmp / "config.json"),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_for("the admin socket", lambda: self.status(), timeout=60)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None

    @property
    def admin(self) -> UnixClient:
        """host.sock with the operator key (``CredentialError`` before the first start)."""
        return operator_client(self.state, timeout=10)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.admin.get("/status")
        return data

    def agent(self, name: str) -> dict[str, Any] | None:
        try:
            for a in self.status().get("agents", []):
                if a.get("name") == name:
                    return dict(a)
        except (Unreachable, OSError, CredentialError):
            return None
        return None

    def phase(self, name: str) -> str | None:
        a = self.agent(name)
        return None if a is None else str(a.get("phase"))

    def tags(self, prefix: str) -> list[str]:
        out = subprocess.run(
            ["git", "--git-dir", str(self.state / "meta.git"), "tag", "--list", f"{prefix}/*"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted(out.split())

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=cwd or self.tmp / "m",
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def push(self, *refs: str) -> str:
        """``git push origin <refs>`` from the operator's clone; what the remote (the
        meta repo's hooks) said, from stderr. Fails unless the push succeeded."""
        r = subprocess.run(
            ["git", "push", "origin", *refs],
            cwd=self.tmp / "m",
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"git push origin {' '.join(refs)}:\n{r.stdout}\n{r.stderr}"
        return r.stderr

    def harness_procs(self) -> dict[str, list[int]]:
        """Running harnesses under this state dir, by agent name: the pid of the top
        process of each (the outer ``bwrap`` when sandboxed; its children, the
        sandbox's init and the harness python, are the same harness, not a second)."""
        matched: dict[int, tuple[str, int]] = {}  # pid -> (agent, parent pid)
        for p in psutil.process_iter(["pid", "ppid", "cmdline", "environ"]):
            try:
                cmd = p.info["cmdline"] or []
                env = p.info["environ"] or {}
            except (psutil.Error, OSError):
                continue
            if (
                "harness" in " ".join(cmd)
                and "serve" in cmd
                and env.get("HYPERHIVE_STATE_DIR", "").startswith(str(self.state))
            ):
                matched[p.info["pid"]] = (env.get("HYPERHIVE_AGENT", "?"), p.info["ppid"])
        found: dict[str, list[int]] = {}
        for pid, (agent, ppid) in sorted(matched.items()):
            if ppid not in matched:
                found.setdefault(agent, []).append(pid)
        return found

    def requests_where(self, pred: Callable[[Request], bool]) -> list[Request]:
        return [r for r in list(self.api.parsed) if pred(r)]

    def messages(self) -> list[dict[str, Any]]:
        out = self.cli("messages", "-o", "json").stdout
        data: list[dict[str, Any]] = json.loads(out)
        return data
