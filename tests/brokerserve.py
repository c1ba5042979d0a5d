"""A real ``hyperhive serve`` for the broker's tests: a temp state dir, the local runtime with
a stand-in harness (a ``harness`` package earlier on PYTHONPATH whose ``serve`` only sleeps,
so nothing drains an inbox but the test), restartable and killable; its broker on sqlite or
on a PostgreSQL database (``broker:`` in its config)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from schemas.client import ApiError, UnixClient, Unreachable
from tests.e2e.credentials import agent_client, operator_client

ROOT = Path(__file__).resolve().parents[1]

_FAKE_HARNESS = '''\
"""Stand-in for ``python -m harness serve``: stays up, never touches the inbox."""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (Unreachable, ApiError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Controller:
    """One ``hyperhive serve`` on a temp state dir, restartable."""

    tmp: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    on_postgres: bool = False
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def start(self) -> None:
        self.starts += 1
        log = self.tmp / f"controller-{self.starts}.log"
        self.logs.append(log)
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "--state-dir",
                    str(self.state),
                    "serve",
                    "--config",
                    str(self.tmp / "config.json"),
                ],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_for(
            "the manager socket",
            lambda: (
                self.manager(timeout=5).get("/status") is not None
                and self.admin(timeout=5).get("/messages?limit=1") is not None
            ),
        )

    def admin(self, timeout: float = 30.0) -> UnixClient:
        """host.sock, with the operator key."""
        return operator_client(self.state, timeout=timeout)

    def manager(self, timeout: float = 30.0) -> UnixClient:
        """The manager's socket, with the manager's credential."""
        return agent_client(self.state, "manager", timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def harness_pids(self) -> list[int]:
        """Processes the controller spawned for agents under this state dir."""
        found = []
        for p in psutil.process_iter(["pid", "environ"]):
            try:
                env = p.info["environ"] or {}
            except (psutil.Error, OSError):
                continue
            if env.get("HYPERHIVE_STATE_DIR", "").startswith(str(self.state)):
                found.append(int(p.info["pid"]))
        return found

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        for pid in self.harness_pids():
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def serve_controller(broker: str | None = None) -> Iterator[Controller]:
    """A ``Controller`` (not started yet) on a new temp dir, its broker on ``broker`` (a
    PostgreSQL URL; None: sqlite); killed and removed afterwards, its log tails printed."""
    store = {} if broker is None else {"broker": broker}
    # unix socket paths are limited to 107 bytes: keep the state dir short
    tmp = Path(tempfile.mkdtemp(prefix="hh-bc-", dir="/tmp"))
    fake = tmp / "fakepkg" / "harness"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(_FAKE_HARNESS)
    home = tmp / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "HYPERHIVE_", "PYTHONPATH"))
    }
    env.update(
        {
            "HOME": str(home),
            "PYTHONPATH": f"{tmp / 'fakepkg'}{os.pathsep}{ROOT}",
            "HYPERHIVE_CLAUDE_BIN": "/bin/false",
            "GIT_AUTHOR_NAME": "operator",
            "GIT_AUTHOR_EMAIL": "op@example.org",
            "GIT_COMMITTER_NAME": "operator",
            "GIT_COMMITTER_EMAIL": "op@example.org",
        }
    )
    base = free_port()
    (tmp / "config.json").write_text(
        json.dumps(
            {
                "runtime": "local",
                "dashboard": {"host": "127.0.0.1", "port": 0},
                "ports": {"manager": base, "agent_base": 20000, "agent_range": 900},
                "resync_seconds": 3600,
                "log_level": "warning",
                **store,
            }
        )
    )
    c = Controller(tmp, env, on_postgres=broker is not None)
    try:
        yield c
    finally:
        c.cleanup()
        for log in c.logs:  # pytest shows captured stderr only when the test failed
            if log.exists():
                sys.stderr.write(f"---- {log.name} (tail) ----\n{log.read_text()[-3000:]}\n")
        shutil.rmtree(tmp, ignore_errors=True)
