"""controller.drivers.local with a real stand-in harness process (no mocks of processes)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.config import Config
from controller.drivers.base import Deployment
from controller.drivers.local import LocalDriver
from controller.errors import PermanentError, TransientError
from controller.model import AgentManifest, DesiredAgent, Phase
from controller.paths import Layout

STANDIN = r"""
import json, os, signal, sys, time
settings = json.load(open(os.environ["HYPERHIVE_SETTINGS"]))
mode = settings.get("model")
with open(os.path.join(os.environ["HYPERHIVE_STATE_DIR"], "standin.json"), "w") as f:
    json.dump({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(),
               "settings": settings}, f)
print("standin up as", os.environ["HYPERHIVE_AGENT"], flush=True)
if mode == "crash":
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""

ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
    "ANTHROPIC_API_KEY": "sk-test",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "1000",
    "HYPERHIVE_CLAUDE_BIN": "/opt/claude",
    "SECRET_OF_THE_CONTROLLER": "nope",
    "HOME": "/root-of-operator",
}


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state", tmp_path / "run")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "standin.py"
    p.write_text(STANDIN)
    return p


@pytest.fixture
def driver(layout: Layout, script: Path) -> Iterator[LocalDriver]:
    d = LocalDriver(
        layout, Config(), ENV, argv=[sys.executable, str(script)], stop_timeout=2.0, start_grace=0.2
    )
    yield d
    for name in list(d.observe()):
        d.stop(name)


def deployment(name: str, model: str = "haiku", cfg: str = "c1", port: int = 8123) -> Deployment:
    agent = DesiredAgent(
        name=name,
        manifest=AgentManifest(name=name, model=model),
        commit="abc123",
        config_digest=cfg,
        build_digest="b1",
        has_nix=True,
    )
    settings = {"agent": name, "model": model, "web_port": port, "hyperhive_version": "0.1.0"}
    return Deployment(agent, settings, port, f"git+file:///x?rev=abc123#{name}")


def standin(layout: Layout, name: str) -> dict:  # type: ignore[type-arg]
    path = layout.agent_state(name) / "standin.json"
    for _ in range(100):
        if path.exists():
            try:
                return json.loads(path.read_text())  # type: ignore[no-any-return]
            except ValueError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"stand-in for {name} never started")


def test_create_runs_the_harness_with_the_contract(driver: LocalDriver, layout: Layout) -> None:
    lines: list[str] = []
    driver.create(deployment("alice"), lines.append)
    obs = driver.observe()["alice"]
    assert obs.phase is Phase.RUNNING
    assert (obs.commit, obs.config_digest, obs.build_digest, obs.hyperhive_version) == (
        "abc123",
        "c1",
        "b1",
        "0.1.0",
    )
    assert "agent.nix is not built under the local runtime" in obs.detail
    assert any("not built" in line for line in lines)

    s = standin(layout, "alice")
    env = s["env"]
    assert env["HYPERHIVE_AGENT"] == "alice"
    assert env["HYPERHIVE_FLAVOR"] == "agent"
    assert env["HYPERHIVE_SOCKET"] == str(layout.agent_sock("alice"))
    assert env["HYPERHIVE_STATE_DIR"] == str(layout.agent_state("alice"))
    assert env["HYPERHIVE_SETTINGS"] == str(layout.agent_settings("alice"))
    assert env["HYPERHIVE_CREDENTIAL_FILE"] == str(layout.agent_credential("alice"))
    assert env["HYPERHIVE_WEB_SOCKET"] == str(layout.agent_web_sock("alice"))
    assert env["HYPERHIVE_SANDBOX"] == "none (local_sandbox is off)"
    assert env["HYPERHIVE_WEB_PORT"] == "8123"
    assert env["HYPERHIVE_WEB_HOST"] == "127.0.0.1"
    assert env["CLAUDE_CONFIG_DIR"] == str(layout.agent_claude("alice"))
    assert env["HOME"] == str(layout.agent_dir("alice") / "home")
    for k in (
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
        "HYPERHIVE_CLAUDE_BIN",
        "PATH",
    ):
        assert env[k] == ENV[k]
    assert "SECRET_OF_THE_CONTROLLER" not in env
    assert "HYPERHIVE_META_DIR" not in env
    assert s["cwd"] == str(layout.agent_state("alice"))

    settings = layout.agent_settings("alice")
    assert stat.S_IMODE(settings.stat().st_mode) == 0o444
    assert json.loads(settings.read_text())["model"] == "haiku"
    assert stat.S_IMODE(layout.agent_claude("alice").stat().st_mode) == 0o700
    marker = json.loads((layout.agent_dir("alice") / "deployed.json").read_text())
    assert marker["commit"] == "abc123" and marker["has_nix"] is True
    pid_file = layout.agent_dir("alice") / "harness.pid"
    assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600
    info = json.loads(pid_file.read_text())
    assert info["pid"] == s["pid"]
    assert os.getpgid(info["pid"]) == info["pid"]  # its own session / process group
    log = (layout.log_dir / "alice.log").read_text()
    assert "standin up as alice" in log


def test_manager_gets_its_meta_clone(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("manager", port=8000), lambda _: None)
    env = standin(layout, "manager")["env"]
    assert env["HYPERHIVE_FLAVOR"] == "manager"
    assert env["HYPERHIVE_META_DIR"] == str(layout.manager_meta)
    assert env["HYPERHIVE_SOCKET"] == str(layout.manager_sock)


def test_observe_survives_a_controller_restart(
    driver: LocalDriver, layout: Layout, script: Path
) -> None:
    driver.create(deployment("alice"), lambda _: None)
    pid = standin(layout, "alice")["pid"]
    fresh = LocalDriver(layout, Config(), ENV, argv=[sys.executable, str(script)], stop_timeout=2.0)
    assert fresh.observe()["alice"].phase is Phase.RUNNING
    assert fresh.pid("alice") == pid
    fresh.stop("alice")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert driver.observe()["alice"].phase is Phase.STOPPED


def test_reused_pid_is_not_the_agent(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("alice"), lambda _: None)
    driver.stop("alice")
    pid_file = layout.agent_dir("alice") / "harness.pid"
    me = psutil.Process(os.getpid())
    # a pid file naming a live process that is not ours (create time differs)
    pid_file.write_text(
        json.dumps({"pid": me.pid, "pgid": me.pid, "create_time": me.create_time() - 100})
    )
    obs = driver.observe()["alice"]
    assert obs.phase is Phase.FAILED
    driver.stop("alice")  # must not signal the test runner
    assert not pid_file.exists()
    assert driver.observe()["alice"].phase is Phase.STOPPED


def test_stop_start_restart_idempotent(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("alice"), lambda _: None)
    first = driver.pid("alice")
    driver.start("alice")
    assert driver.pid("alice") == first
    driver.stop("alice")
    driver.stop("alice")
    assert driver.observe()["alice"].phase is Phase.STOPPED
    assert driver.pid("alice") is None
    driver.start("alice")
    second = driver.pid("alice")
    assert second is not None and second != first
    driver.restart("alice")
    third = driver.pid("alice")
    assert third is not None and third != second


def test_apply_manifest_restarts_with_new_settings(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("alice"), lambda _: None)
    old = standin(layout, "alice")["pid"]
    (layout.agent_state("alice") / "standin.json").unlink()
    driver.apply_manifest(deployment("alice", model="sonnet", cfg="c2"))
    s = standin(layout, "alice")
    assert s["pid"] != old and s["settings"]["model"] == "sonnet"
    assert driver.observe()["alice"].config_digest == "c2"


def test_crash_is_observed_as_failed(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("alice"), lambda _: None)
    pid = driver.pid("alice")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if driver.observe()["alice"].phase is Phase.FAILED:
            break
        time.sleep(0.02)
    obs = driver.observe()["alice"]
    assert obs.phase is Phase.FAILED and "exited" in obs.detail
    driver.start("alice")
    assert driver.observe()["alice"].phase is Phase.RUNNING


def test_exit_at_start_is_transient(driver: LocalDriver, layout: Layout) -> None:
    with pytest.raises(TransientError, match="exited at start with code 3"):
        driver.create(deployment("alice", model="crash"), lambda _: None)
    assert driver.observe()["alice"].phase is Phase.FAILED


def test_stubborn_process_is_killed(layout: Layout, script: Path) -> None:
    d = LocalDriver(
        layout, Config(), ENV, argv=[sys.executable, str(script)], stop_timeout=0.5, start_grace=0.2
    )
    d.create(deployment("alice", model="stubborn"), lambda _: None)
    pid = d.pid("alice")
    assert pid is not None
    t0 = time.monotonic()
    d.stop("alice")
    assert time.monotonic() - t0 < 5
    assert d.pid("alice") is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_destroy_keeps_state(driver: LocalDriver, layout: Layout) -> None:
    driver.create(deployment("alice"), lambda _: None)
    (layout.agent_state("alice") / "notes.md").write_text("remember")
    driver.destroy("alice")
    assert "alice" not in driver.observe()
    assert (layout.agent_state("alice") / "notes.md").read_text() == "remember"
    assert layout.agent_claude("alice").is_dir()
    driver.destroy("alice")  # idempotent


def test_start_requires_a_deploy(driver: LocalDriver) -> None:
    with pytest.raises(PermanentError, match="never deployed"):
        driver.start("ghost")


def test_default_argv_is_the_harness() -> None:
    from controller.drivers.local import DEFAULT_ARGV

    assert (sys.executable, "-m", "harness", "serve") == DEFAULT_ARGV
