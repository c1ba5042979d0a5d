"""Crash safety: ``kill -9`` a real ``hyperhive serve`` in the middle of a deploy.

A real controller (subprocess, local runtime, agents under bubblewrap as by
default) runs a stand-in agent (``HYPERHIVE_AGENT_ARGV``) with a 3 s start grace
(``local_start_grace_seconds``), so every deploy has a deterministic window in
which ``building/<id>`` exists, the agent's process is already started and no
outcome is written yet. The manager requests a spawn over its socket, the
operator approves it over the admin socket, and the controller is SIGKILLed
inside that window. The restarted controller must
finish the deploy: ``deployed/<id>`` exactly once (no ``failed/<id>``), one agent
process (the one the dead controller started — not a second), main advanced once,
and one ``ApprovalResolved`` for the manager.

A second test kills the controller before the pass wrote ``building/<id>`` and
approves with a plain ``git push`` while it is down: the restarted controller
deploys it once.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pygit2
import pytest

from controller.auth.operator import load_operator_key
from controller.paths import Layout
from schemas.client import UnixClient
from tests import realserve

ROOT = realserve.ROOT

# Runs inside the sandbox (on by default, as users run it): it can write only its own
# state dir, and its pid there is its pid namespace's, so every start is a random id;
# the host pid is the one harness.pid records.
STANDIN = r"""
import json, os, signal, sys, time, uuid
state = os.environ["HYPERHIVE_STATE_DIR"]
with open(os.path.join(state, "starts.log"), "a") as f:
    f.write(json.dumps({"agent": os.environ["HYPERHIVE_AGENT"], "start": uuid.uuid4().hex}) + "\n")
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""


# the kill must land inside a deploy's 3 s window: poll often
wait_for = functools.partial(realserve.wait_for, timeout=30.0, interval=0.05)


class Controller:
    """One state dir, and the ``hyperhive serve`` processes run on it (one at a time)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "s"
        self.run = root / "r"
        self.script = root / "standin.py"
        self.script.write_text(STANDIN)
        self.config = realserve.write_config(
            root / "config.json",
            manager_port=18900,
            agent_range=50,
            resync_seconds=60,
            crash_watch_seconds=1,
            local_start_grace_seconds=3,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    def env(self) -> dict[str, str]:
        keep = (*realserve.STANDIN_ENV_KEEP, "TMPDIR")
        return realserve.standin_env([sys.executable, str(self.script)], keep)

    def start(self) -> None:
        argv = realserve.serve_argv(self.state, self.config, run=self.run)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env(), stdout=fh, stderr=subprocess.STDOUT
            )
        wait_for("the admin socket", lambda: self.admin.get("/status"), timeout=60)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            realserve.stop(self.proc)
            self.proc = None

    @property
    def admin(self) -> UnixClient:
        key = load_operator_key(Layout(self.state, self.run))
        return UnixClient(str(self.run / "host.sock"), timeout=30, token=key)

    @property
    def manager(self) -> UnixClient:
        token = (self.state / "agents" / "manager" / "credential").read_text().strip()
        return UnixClient(str(self.run / "manager" / "mcp.sock"), timeout=30, token=token)

    def refs(self) -> set[str]:
        repo = pygit2.Repository(str(self.state / "meta.git"))
        return {r.name for r in repo.references.iterator()}

    def main_history(self) -> list[str]:
        repo = pygit2.Repository(str(self.state / "meta.git"))
        main = repo.references["refs/heads/main"].target
        return [str(c.id) for c in repo.walk(main)]

    def starts(self, agent: str) -> list[str]:
        """One id per start of ``agent``'s stand-in (from its own state dir)."""
        try:
            rows = (self.state / "agents" / agent / "state" / "starts.log").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(r)["start"] for r in rows.splitlines() if r.strip()]

    def pid_file(self, agent: str) -> Path:
        return self.state / "agents" / agent / "harness.pid"

    def host_pid(self, agent: str) -> int:
        """The host pid the driver recorded for ``agent`` (bwrap's, when sandboxed)."""
        return int(json.loads(self.pid_file(agent).read_text())["pid"])

    def approvals(self, id: int) -> list[dict[str, Any]]:
        msgs = self.admin.get("/messages?since=0&limit=1000")["messages"]
        return [
            m["event"]
            for m in msgs
            if m.get("event")
            and m["event"].get("type") == "ApprovalResolved"
            and m["event"].get("id") == id
        ]


@pytest.fixture
def ctl() -> Iterator[Controller]:
    root = Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))
    c = Controller(root)
    try:
        yield c
    finally:
        c.stop()
        realserve.kill_agents(c.state)
        shutil.rmtree(root, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_kill_9_mid_deploy_then_restart_finishes_it_exactly_once(ctl: Controller) -> None:
    ctl.start()
    wait_for("the manager", lambda: ctl.starts("manager"), timeout=30)
    wait_for("the startup pass", lambda: (ctl.run / "manager" / "mcp.sock").exists())
    spawn = ctl.manager.post("/request_spawn", {"name": "alice"})
    id = spawn["id"]
    main_before = ctl.main_history()
    ctl.admin.post(f"/proposals/{id}/approve", {})
    # the window: building/<id> written, alice's process started, no outcome yet
    wait_for(
        "building/<id> with alice starting",
        lambda: (
            f"refs/tags/building/{id}" in ctl.refs()
            and ctl.pid_file("alice").exists()
            and ctl.starts("alice")
        ),
        timeout=30,
    )
    assert not {f"refs/tags/deployed/{id}", f"refs/tags/failed/{id}"} & ctl.refs()
    ctl.kill9()
    assert not {f"refs/tags/deployed/{id}", f"refs/tags/failed/{id}"} & ctl.refs()
    [start] = ctl.starts("alice")
    pid = ctl.host_pid("alice")
    assert alive(pid)  # the agent outlives its controller
    if shutil.which("bwrap"):
        assert psutil.Process(pid).name() == "bwrap"  # sandboxed, as by default

    ctl.start()
    wait_for("deployed/<id>", lambda: f"refs/tags/deployed/{id}" in ctl.refs(), timeout=30)
    refs = ctl.refs()
    assert f"refs/tags/failed/{id}" not in refs
    # found again, never started twice
    assert ctl.starts("alice") == [start] and ctl.host_pid("alice") == pid and alive(pid)
    history = ctl.main_history()
    assert len(history) == len(main_before) + 1  # main advanced once (the fast-forward)
    assert history[1:] == main_before
    status = ctl.admin.get("/agents/alice")
    assert status["phase"] == "running"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert [d["state"] for d in status["deploys"]] == ["deployed"]
    assert [e["decision"] for e in ctl.approvals(id)] == ["deployed"]
    # a resync later: still exactly one of everything
    ctl.admin.post("/reconcile", {})
    assert ctl.starts("alice") == [start] and ctl.host_pid("alice") == pid
    assert len(ctl.main_history()) == len(main_before) + 1
    assert [e["decision"] for e in ctl.approvals(id)] == ["deployed"]


def test_kill_9_before_building_then_restart_deploys_once(ctl: Controller) -> None:
    """Killed after approved/<id> but before the pass wrote building/<id>."""
    ctl.start()
    wait_for("the manager", lambda: ctl.starts("manager"), timeout=30)
    wait_for("the startup pass", lambda: (ctl.run / "manager" / "mcp.sock").exists())
    id = ctl.manager.post("/request_spawn", {"name": "bob"})["id"]
    ctl.kill9()
    # approve with plain git while the controller is down (the hook's poke finds nobody)
    work = ctl.root / "op"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env.update(PYTHONPATH=str(ROOT), GIT_COMMITTER_NAME="op", GIT_COMMITTER_EMAIL="op@x")
    env.update(GIT_AUTHOR_NAME="op", GIT_AUTHOR_EMAIL="op@x")
    subprocess.run(["git", "clone", "-q", str(ctl.state / "meta.git"), str(work)], check=True)
    subprocess.run(
        ["git", "fetch", "-q", "origin", "refs/tags/*:refs/tags/*"], cwd=work, env=env, check=True
    )
    subprocess.run(["git", "tag", f"approved/{id}", f"proposal/{id}"], cwd=work, check=True)
    push = subprocess.run(
        ["git", "push", "origin", f"approved/{id}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert push.returncode == 0, push.stderr
    ctl.start()
    wait_for("deployed/<id>", lambda: f"refs/tags/deployed/{id}" in ctl.refs(), timeout=30)
    assert len(ctl.starts("bob")) == 1
    assert [e["decision"] for e in ctl.approvals(id)] == ["deployed"]


def test_a_second_controller_on_the_same_state_dir_refuses_to_start(ctl: Controller) -> None:
    ctl.start()
    argv = realserve.serve_argv(ctl.state, ctl.config, run=ctl.root / "r2")
    second = subprocess.run(
        argv, cwd=ROOT, env=ctl.env(), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2
    assert "refusing to start" in second.stdout + second.stderr
    assert ctl.proc is not None and ctl.proc.poll() is None  # the first one is unharmed
    assert ctl.admin.get("/status")["runtime"] == "local"
