"""Agents under the local runtime's bubblewrap sandbox, with the real ``bwrap``.

A probe runs as the agent's harness (``LocalDriver(sandbox=True)``) and reports
what it can see and reach: other agents' credentials, state and sockets, the
operator's ``host.sock``, ``broker.sqlite``, ``meta.git``, ``operator.key`` and logs,
other processes; its own state, credential and socket dir; a TCP server on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from controller.config import Config
from controller.drivers import bwrap as bw
from controller.drivers.base import Deployment
from controller.drivers.local import LocalDriver
from controller.drivers.nixos_container import NixosContainerDriver
from controller.model import AgentManifest, DesiredAgent
from controller.paths import Layout
from controller.status import (
    AgentFacts,
    CondStatus,
    CondType,
    Isolation,
    compute_conditions,
    condition,
    driver_isolation,
)

HAVE_BWRAP = any(
    os.access(os.path.join(d, "bwrap"), os.X_OK) for d in os.environ.get("PATH", "").split(":")
)
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bwrap is not installed")

PROBE_READ = r"""
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return "ERR " + type(e).__name__
"""
"""``read(path)``, put before each probe run in the sandbox: the file's text, or ``ERR <error>``."""

PROBE = r"""
import json, os, signal, socket, sys, time

targets = json.loads(os.environ["ANTHROPIC_PROBE_TARGETS"])
report = {"pid": os.getpid(), "env_credential": os.environ.get("HYPERHIVE_CREDENTIAL_FILE"),
          "tmpdir": os.environ.get("TMPDIR"),
          "env_web_socket": os.environ.get("HYPERHIVE_WEB_SOCKET")}

def connect_unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(path)
        return s.recv(16).decode()
    except OSError as e:
        return "ERR " + type(e).__name__
    finally:
        s.close()

def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

report["read"] = {k: read(v) for k, v in targets["read"].items()}
report["exists"] = {k: os.path.exists(v) for k, v in targets["exists"].items()}
report["connect"] = {k: connect_unix(v) for k, v in targets["connect"].items()}
report["write"] = {k: write(v) for k, v in targets["write"].items()}
report["listdir_state"] = sorted(os.listdir(targets["state_root"]))
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
report["controller_environ"] = read("/proc/%d/environ" % targets["controller_pid"])
try:
    os.kill(targets["controller_pid"], 0)
    report["signal_controller"] = "sent"
except OSError as e:
    report["signal_controller"] = "ERR " + type(e).__name__
tcp = socket.create_connection(("127.0.0.1", targets["tcp_port"]), timeout=3)
report["tcp"] = tcp.recv(16).decode()
tcp.close()

# serve our own web socket; the test connects to it from outside
web = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
web.bind(os.environ["HYPERHIVE_WEB_SOCKET"])
web.listen(4)

state = os.environ["HYPERHIVE_STATE_DIR"]
with open(os.path.join(state, "report.json.tmp"), "w") as f:
    json.dump(report, f)
os.replace(os.path.join(state, "report.json.tmp"), os.path.join(state, "report.json"))

def on_term(*_):
    time.sleep(0.4)  # a graceful shutdown that takes a while
    with open(os.path.join(state, "clean-exit"), "w") as f:
        f.write("bye")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
web.settimeout(0.05)
while True:
    try:
        conn, _ = web.accept()
        conn.sendall(b"web-ok")
        conn.close()
    except socket.timeout:
        pass
    with open(os.path.join(state, "heartbeat"), "w") as f:
        f.write(str(time.time()))
"""


class Server:
    """A listening socket in a thread that greets every client with ``greeting``."""

    def __init__(self, sock: socket.socket, greeting: bytes) -> None:
        self.sock = sock
        self.greeting = greeting
        sock.listen(16)
        sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(self.greeting)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def unix_server(path: Path, greeting: bytes) -> Server:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return Server(s, greeting)


def deployment(name: str) -> Deployment:
    agent = DesiredAgent(
        name=name,
        manifest=AgentManifest(name=name, model="haiku"),
        commit="abc123",
        config_digest="c1",
        build_digest="b1",
        has_nix=False,
    )
    settings = {"agent": name, "model": "haiku", "web_port": 8123, "hyperhive_version": "0.1.0"}
    return Deployment(agent, settings, 8123, f"git+file:///x?rev=abc123#{name}")


def wait_file(path: Path, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A state dir with the operator's files, two agents and real listening sockets."""
    lay = Layout(tmp_path / "state", tmp_path / "run")
    lay.state.mkdir(parents=True)
    (lay.meta_git / "refs").mkdir(parents=True)
    (lay.meta_git / "HEAD").write_text("ref: refs/heads/main\n")
    lay.broker_db.write_bytes(b"SQLite format 3\x00 messages")
    lay.operator_key.write_text("operator-secret\n")
    lay.log_dir.mkdir()
    (lay.log_dir / "bob.log").write_text("bob's log\n")
    for a in ("alice", "bob", "manager"):
        lay.agent_state(a).mkdir(parents=True)
        lay.agent_credential(a).write_text(f"{a}-credential\n")
        lay.agent_credential(a).chmod(0o600)
    (lay.agent_state("bob") / "notes.md").write_text("bob's notes\n")
    (lay.agent_claude("bob")).mkdir(parents=True)
    (lay.agent_claude("bob") / ".credentials.json").write_text('{"key": "bob-api-key"}')
    servers = [
        unix_server(lay.host_sock, b"host-ok"),
        unix_server(lay.agent_sock("bob"), b"bob-ok"),
        unix_server(lay.agent_sock("alice"), b"alice-ok"),
    ]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    servers.append(Server(tcp, b"tcp-ok"))
    script = tmp_path / "probe.py"
    script.write_text(PROBE_READ + PROBE)
    targets = {
        "read": {
            "own_credential": str(lay.agent_credential("alice")),
            "own_settings": str(lay.agent_settings("alice")),
            "bob_credential": str(lay.agent_credential("bob")),
            "bob_notes": str(lay.agent_state("bob") / "notes.md"),
            "bob_claude": str(lay.agent_claude("bob") / ".credentials.json"),
            "operator_key": str(lay.operator_key),
            "broker": str(lay.broker_db),
            "meta_head": str(lay.meta_git / "HEAD"),
            "bob_log": str(lay.log_dir / "bob.log"),
        },
        "exists": {
            "host_sock": str(lay.host_sock),
            "broker": str(lay.broker_db),
            "meta_git": str(lay.meta_git),
            "operator_key": str(lay.operator_key),
            "logs": str(lay.log_dir),
            "bob_dir": str(lay.agent_dir("bob")),
            "bob_sock_dir": str(lay.agent_sock_dir("bob")),
            "manager_dir": str(lay.agent_dir("manager")),
        },
        "connect": {
            "own": str(lay.agent_sock("alice")),
            "bob": str(lay.agent_sock("bob")),
            "host": str(lay.host_sock),
        },
        "write": {
            "own_state": str(lay.agent_state("alice") / "probe"),
            "own_sock_dir": str(lay.agent_sock_dir("alice") / "probe"),
            "own_settings": str(lay.agent_settings("alice")),
            "own_credential": str(lay.agent_credential("alice")),
            "meta_git": str(lay.meta_git / "refs" / "deployed-9999"),
            "state_root": str(lay.state / "planted"),
            "etc": "/etc/hyperhive-probe",
        },
        "state_root": str(lay.state),
        "controller_pid": os.getpid(),
        "tcp_port": tcp.getsockname()[1],
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ANTHROPIC_PROBE_TARGETS": json.dumps(targets),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{targets['tcp_port']}",
        "TMPDIR": str(lay.state / "tmp"),
    }
    driver = LocalDriver(
        lay,
        Config(),
        env,
        argv=[sys.executable, str(script)],
        stop_timeout=5.0,
        start_grace=0.3,
        sandbox=True,
    )
    try:
        yield {"layout": lay, "driver": driver, "env": env, "script": script}
    finally:
        for name in list(driver.observe()):
            driver.stop(name)
        for s in servers:
            s.close()


@needs_bwrap
def test_an_agent_sees_only_its_own_files_and_sockets(world: dict[str, Any]) -> None:
    lay: Layout = world["layout"]
    driver: LocalDriver = world["driver"]
    driver.create(deployment("alice"), lambda _line: None)
    report = json.loads(wait_file(lay.agent_state("alice") / "report.json"))

    assert report["env_credential"] == str(lay.agent_credential("alice"))
    assert report["env_web_socket"] == str(lay.agent_web_sock("alice"))
    assert report["tmpdir"] == "/tmp"
    r = report["read"]
    assert r["own_credential"] == "alice-credential\n"
    assert json.loads(r["own_settings"])["agent"] == "alice"
    for hidden in (
        "bob_credential",
        "bob_notes",
        "bob_claude",
        "operator_key",
        "broker",
        "meta_head",
        "bob_log",
    ):
        assert r[hidden] == "ERR FileNotFoundError", hidden
    assert not any(report["exists"].values()), report["exists"]
    # the state dir shows only the path down to the agent's own dir
    assert report["listdir_state"] == ["agents"]
    c = report["connect"]
    assert c["own"] == "alice-ok"
    assert c["bob"].startswith("ERR") and c["host"].startswith("ERR")
    w = report["write"]
    assert w["own_state"] and w["own_sock_dir"]
    assert not w["own_settings"] and not w["own_credential"] and not w["etc"]
    assert not (lay.meta_git / "refs" / "deployed-9999").exists()
    assert not w["state_root"] and not (lay.state / "planted").exists()
    # its own pid namespace: only the sandbox's processes, not the controller's
    assert max(report["pids"]) < 10 and os.getpid() not in report["pids"]
    assert report["controller_environ"].startswith("ERR")
    assert report["signal_controller"].startswith("ERR")
    # the network is shared: loopback (a Messages API on 127.0.0.1) is reachable
    assert report["tcp"] == "tcp-ok"
    # its web UI socket in its own socket dir is reachable from the controller
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(lay.agent_web_sock("alice")))
    assert s.recv(16) == b"web-ok"
    s.close()

    iso = driver.isolation("alice")
    assert (iso.isolated, iso.reason) == (True, "Bubblewrap")


@needs_bwrap
def test_stop_waits_for_the_harness_inside_the_sandbox(world: dict[str, Any]) -> None:
    lay: Layout = world["layout"]
    driver: LocalDriver = world["driver"]
    driver.create(deployment("alice"), lambda _line: None)
    wait_file(lay.agent_state("alice") / "report.json")
    info = json.loads((lay.agent_dir("alice") / "harness.pid").read_text())
    driver.stop("alice")
    # bwrap's monitor dies at once on SIGTERM; the harness got its time to shut down
    assert (lay.agent_state("alice") / "clean-exit").read_text() == "bye"
    with pytest.raises(ProcessLookupError):
        os.killpg(info["pgid"], 0)


@needs_bwrap
def test_agents_outlive_the_controller(world: dict[str, Any], tmp_path: Path) -> None:
    lay: Layout = world["layout"]
    starter = tmp_path / "start_alice.py"
    starter.write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from controller.config import Config\n"
        "from controller.drivers.base import Deployment\n"
        "from controller.drivers.local import LocalDriver\n"
        "from controller.model import AgentManifest, DesiredAgent\n"
        "from controller.paths import Layout\n"
        "a = DesiredAgent(name='alice', manifest=AgentManifest(name='alice', model='haiku'),"
        " commit='abc123', config_digest='c1', build_digest='b1', has_nix=False)\n"
        "dep = Deployment(a, {'agent': 'alice', 'web_port': 8123, 'hyperhive_version': '0.1.0'},"
        " 8123, 'x')\n"
        f"lay = Layout(Path({str(lay.state)!r}), Path({str(lay.run)!r}))\n"
        f"env = json.loads({json.dumps(json.dumps(world['env']))})\n"
        f"d = LocalDriver(lay, Config(), env, argv=[sys.executable, {str(world['script'])!r}],"
        " sandbox=True)\n"
        "d.create(dep, print)\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, str(starter)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        timeout=60,
    )
    # the controller process is gone; the sandboxed agent keeps running
    beat = lay.agent_state("alice") / "heartbeat"
    first = float(wait_file(beat))
    deadline = time.monotonic() + 10
    while float(beat.read_text() or 0) <= first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert float(beat.read_text() or 0) > first
    pid = world["driver"].pid("alice")
    assert pid is not None and psutil.Process(pid).name() == "bwrap"


@needs_bwrap
def test_the_sandbox_hides_a_run_dir_outside_the_state_dir(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "elsewhere" / "run")
    driver = LocalDriver(lay, Config(), {"PATH": os.environ["PATH"]}, sandbox=True)
    argv = driver.command("alice")
    hidden = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert str(lay.state) in hidden and str(lay.run) in hidden
    assert "/tmp" in hidden and "/run" in hidden
    # nothing of <state> or <run> is bound back except the agent's own paths
    bound = [
        argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--ro-bind-try")
    ]
    own = [str(lay.agent_dir("alice")), str(lay.agent_sock_dir("alice"))]
    for src in bound:
        if src.startswith((str(lay.state), str(lay.run))):
            assert src.startswith(tuple(own)), src
    assert "--unshare-pid" in argv and "--die-with-parent" not in argv


def test_without_bwrap_the_agent_is_not_isolated(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "run")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    driver = LocalDriver(lay, Config(), {"PATH": str(empty)}, sandbox=True)
    iso = driver.isolation("alice")
    assert (iso.isolated, iso.reason) == (False, "NoSandbox")
    assert "install bubblewrap" in iso.message
    assert driver.command("alice") == list(driver.argv)
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nwhile True:\n    time.sleep(0.1)\n")
    driver = LocalDriver(
        lay, Config(), {"PATH": str(empty)}, argv=[sys.executable, str(script)], sandbox=True
    )
    driver.create(deployment("alice"), lambda _line: None)
    try:
        log = (lay.log_dir / "alice.log").read_text()
        assert "NOT sandboxed: bwrap is not installed" in log
        assert driver.isolation("alice").reason == "NoSandbox"
    finally:
        driver.stop("alice")
    off = LocalDriver(lay, Config(), {"PATH": os.environ["PATH"]}, sandbox=False)
    iso = off.isolation("alice")
    assert (iso.isolated, iso.reason) == (False, "NoSandbox")
    assert "local_sandbox" in iso.message


def test_isolated_condition(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "run")
    container = driver_isolation(NixosContainerDriver(lay, Config()), "alice")
    assert container is not None and (container.isolated, container.reason) == (True, "Container")
    assert driver_isolation(object(), "alice") is None

    def cond(iso: Isolation | None) -> Any:
        facts = AgentFacts(name="alice", desired=None, observed=None, isolation=iso)
        return condition(compute_conditions(facts), CondType.ISOLATED)

    assert cond(None) is None  # a runtime that reports nothing gets no condition
    c = cond(Isolation(False, "NoSandbox", "install bubblewrap"))
    assert (c.status, c.reason, c.message) == (CondStatus.FALSE, "NoSandbox", "install bubblewrap")
    c = cond(Isolation(True, "Bubblewrap", "x"))
    assert (c.status, c.reason) == (CondStatus.TRUE, "Bubblewrap")


def test_local_sandbox_is_on_by_default() -> None:
    from controller.config import config_from_dict

    assert Config().local_sandbox is True
    assert config_from_dict({}).local_sandbox is True
    assert config_from_dict({"local_sandbox": False}).local_sandbox is False


CLI_PROBE = r"""
import json, os, subprocess, sys, time
import harness.serve, harness.loop  # the harness's python and its imports work inside
extra = json.loads(os.environ["ANTHROPIC_PROBE_ENV"])
env = {**os.environ, **extra}
p = subprocess.run(
    [os.environ["HYPERHIVE_CLAUDE_BIN"], "-p", "--output-format", "stream-json", "--verbose",
     "--model=claude-test"],
    input="say hello", capture_output=True, text=True, timeout=120, env=env,
)
state = os.environ["HYPERHIVE_STATE_DIR"]
with open(os.path.join(state, "cli.json.tmp"), "w") as f:
    json.dump({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr[-2000:]}, f)
os.replace(os.path.join(state, "cli.json.tmp"), os.path.join(state, "cli.json"))
while True:
    time.sleep(0.1)
"""


@needs_bwrap
def test_claude_and_the_harness_run_inside_the_sandbox(tmp_path: Path) -> None:
    from tests.fakeapi.server import OFFLINE_ENV, FakeAnthropic, Rules, find_claude_cli, reply_text

    cli = find_claude_cli()
    if cli is None:
        pytest.skip("the claude CLI is not installed")
    root = Path(__file__).resolve().parents[2]
    lay = Layout(tmp_path / "state", tmp_path / "run")
    script = tmp_path / "cli_probe.py"
    script.write_text(CLI_PROBE)
    with FakeAnthropic(Rules(default=reply_text("hello from the fake"))) as api:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(root),
            "HYPERHIVE_CLAUDE_BIN": str(cli),
            "ANTHROPIC_BASE_URL": api.base_url,  # a Messages API on 127.0.0.1
            "ANTHROPIC_API_KEY": "test-key",
            "ANTHROPIC_PROBE_ENV": json.dumps(OFFLINE_ENV),
        }
        driver = LocalDriver(
            lay, Config(), env, argv=[sys.executable, str(script)], start_grace=0.3, sandbox=True
        )
        try:
            driver.create(deployment("alice"), lambda _line: None)
            assert driver.isolation("alice").reason == "Bubblewrap"
            out = json.loads(wait_file(lay.agent_state("alice") / "cli.json", timeout=120))
        finally:
            driver.stop("alice")
    assert out["rc"] == 0, out["stderr"]
    lines = [json.loads(line) for line in out["stdout"].splitlines() if line.strip()]
    result = [x for x in lines if x.get("type") == "result"]
    assert result and result[-1]["result"] == "hello from the fake"
    assert api.parsed and api.parsed[0].last_user_text == "say hello"
    # claude kept its config and session in the agent's own claude dir
    assert any(lay.agent_claude("alice").iterdir())


@needs_bwrap
def test_an_agent_started_unsandboxed_stays_not_isolated_until_restarted(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "run")
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nwhile True:\n    time.sleep(0.1)\n")
    env = {"PATH": os.environ["PATH"]}
    argv = [sys.executable, str(script)]
    plain = LocalDriver(lay, Config(), env, argv=argv, sandbox=False)
    plain.create(deployment("alice"), lambda _line: None)
    sandboxed = LocalDriver(lay, Config(), env, argv=argv, sandbox=True)
    try:
        iso = sandboxed.isolation("alice")
        assert (iso.isolated, iso.reason) == (False, "NoSandbox") and "restart" in iso.message
        sandboxed.restart("alice")
        assert sandboxed.isolation("alice").reason == "Bubblewrap"
    finally:
        sandboxed.stop("alice")


# ---------------------------------------------------------------- the operator's home

HOME_PROBE = r"""
import json, os, subprocess, sys, time
import harness, harness.serve, harness.loop  # the harness's python and its imports work inside

home = os.environ["ANTHROPIC_PROBE_HOME"]
extra = json.loads(os.environ["ANTHROPIC_PROBE_ENV"])

def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return "ERR " + type(e).__name__

def writable(path):
    try:
        with open(os.path.join(path, "planted"), "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

report = {
    "harness_file": harness.__file__,
    "home_env": os.environ["HOME"],
    "ssh_key": read(os.path.join(home, ".ssh", "id_ed25519")),
    "history": read(os.path.join(home, ".bash_history")),
    "config": read(os.path.join(home, ".config", "gh", "hosts.yml")),
    "home": listdir(home),
    "root": listdir("/root"),
    "home_root": listdir("/home"),
    "write_home": writable(home),
    "write_own_home": writable(os.environ["HOME"]),
}
p = subprocess.run(
    [os.environ["HYPERHIVE_CLAUDE_BIN"], "-p", "--output-format", "stream-json", "--verbose",
     "--model=claude-test"],
    input="say hello", capture_output=True, text=True, timeout=120, env={**os.environ, **extra},
)
report["cli"] = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr[-2000:]}
git = subprocess.run(["git", "--version"], capture_output=True, text=True)
report["git"] = git.stdout.strip()
state = os.environ["HYPERHIVE_STATE_DIR"]
with open(os.path.join(state, "home.json.tmp"), "w") as f:
    json.dump(report, f)
os.replace(os.path.join(state, "home.json.tmp"), os.path.join(state, "home.json"))
while True:
    time.sleep(0.1)
"""

START_AGENT = r"""
import json, os, sys, time
from pathlib import Path
from controller.config import Config
from controller.drivers.base import Deployment
from controller.drivers.local import LocalDriver
from controller.model import AgentManifest, DesiredAgent
from controller.paths import Layout
import controller, harness
assert controller.__file__.startswith(sys.argv[4]), controller.__file__  # the copy in the home
a = DesiredAgent(name="alice", manifest=AgentManifest(name="alice", model="haiku"),
                 commit="abc123", config_digest="c1", build_digest="b1", has_nix=False)
dep = Deployment(a, {"agent": "alice", "web_port": 8123, "hyperhive_version": "0.1.0"}, 8123, "x")
lay = Layout(Path(sys.argv[1]), Path(sys.argv[2]))
env = json.loads(sys.argv[3])
d = LocalDriver(lay, Config(), env, argv=[sys.executable, sys.argv[5]], sandbox=True)
d.create(dep, print)
out = lay.agent_state("alice") / "home.json"
deadline = time.monotonic() + 150
try:
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"isolation": d.isolation("alice").reason, "argv": d.command("alice")}))
finally:
    d.stop("alice")
"""


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """``dst`` a copy of ``src`` with hard links where the filesystem allows (fast)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link)


def operator_home(parent: Path) -> dict[str, Path]:
    """A home like an operator's: secrets, and hyperhive's checkout, venv and claude in it.

    The checkout is a copy of hyperhive's packages; the venv (no pip) finds them and
    this venv's dependencies through a .pth file; the claude CLI sits in a node_modules.
    """
    root = Path(__file__).resolve().parents[2]
    home = Path(tempfile.mkdtemp(prefix="hh-op-", dir=parent))
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (home / ".bash_history").write_text("export ANTHROPIC_API_KEY=sk-secret\n")
    (home / ".config" / "gh").mkdir(parents=True)
    (home / ".config" / "gh" / "hosts.yml").write_text("oauth_token: gho_secret\n")
    src = home / "src" / "hyperhive"
    for pkg in ("controller", "harness", "schemas", "hivehttp"):
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = home / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    [site] = list((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "hyperhive-test.pth").write_text("\n".join([str(src), *deps]) + "\n")
    return {"home": home, "src": src, "venv": venv}


def add_claude(home: Path, cli: Path) -> Path:
    """The claude CLI's package copied into ``home/app/node_modules``; its ``.bin/claude``."""
    pkg = Path(os.path.realpath(cli))
    while pkg.parent.name != "node_modules" and pkg.parent.parent.name != "node_modules":
        pkg = pkg.parent  # up to node_modules/<pkg> or node_modules/@scope/<pkg>
    rel = pkg.relative_to(pkg.parents[1] if pkg.parent.name.startswith("@") else pkg.parent)
    modules = home / "app" / "node_modules"
    _link_or_copy_tree(pkg, modules / rel)
    (modules / ".bin").mkdir()
    target = Path(os.path.realpath(cli)).relative_to(pkg)
    (modules / ".bin" / "claude").symlink_to(Path("..") / rel / target)
    return modules / ".bin" / "claude"


@needs_bwrap
def test_the_operators_home_is_hidden_and_the_harness_and_claude_still_run(
    tmp_path: Path,
) -> None:
    """The controller runs from a venv and a checkout in its HOME (elsewhere than /home, or
    under /home with HYPERHIVE_TEST_HOME_PARENT=/home), with its state dir in that HOME
    too, as the default layout has it: the agent sees none of the home's secrets, yet the
    harness imports and the claude CLI in the home's node_modules answers."""
    from tests.fakeapi.server import OFFLINE_ENV, FakeAnthropic, Rules, find_claude_cli, reply_text

    cli = find_claude_cli()
    if cli is None:
        pytest.skip("the claude CLI is not installed")
    parent = Path(os.environ.get("HYPERHIVE_TEST_HOME_PARENT") or tmp_path)
    op = operator_home(parent)
    home = op["home"]
    try:
        claude = add_claude(home, cli)
        script = tmp_path / "home_probe.py"
        script.write_text(PROBE_READ + HOME_PROBE)
        starter = tmp_path / "start_agent.py"
        starter.write_text(START_AGENT)
        lay = Layout(home / ".local" / "state" / "hyperhive", tmp_path / "run")
        with FakeAnthropic(Rules(default=reply_text("hello from the fake"))) as api:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "HYPERHIVE_CLAUDE_BIN": str(claude),
                "ANTHROPIC_BASE_URL": api.base_url,
                "ANTHROPIC_API_KEY": "test-key",
                "ANTHROPIC_PROBE_ENV": json.dumps(OFFLINE_ENV),
                "ANTHROPIC_PROBE_HOME": str(home),
            }
            args = [str(lay.state), str(lay.run), json.dumps(env), str(op["src"]), str(script)]
            res = subprocess.run(
                [str(op["venv"] / "bin" / "python"), str(starter), *args],
                cwd=tmp_path,
                env={"PATH": env["PATH"], "HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=240,
            )
        assert res.returncode == 0, res.stderr[-3000:]
        started = json.loads(res.stdout.strip().splitlines()[-1])
        report = json.loads((lay.agent_state("alice") / "home.json").read_text())
    finally:
        shutil.rmtree(home, ignore_errors=True)

    assert started["isolation"] == "Bubblewrap"
    argv: list[str] = started["argv"]
    bound = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind")]
    for whole in (str(home), "/root", "/home", "/"):
        assert whole not in bound[1:], whole  # (bound[0] is the read-only host root)
    # the home's secrets are not there
    assert report["ssh_key"] == "ERR FileNotFoundError"
    assert report["history"] == "ERR FileNotFoundError"
    assert report["config"] == "ERR FileNotFoundError"
    # only what runs the harness is bound back into the home (and the state dir's path)
    assert report["home"] == [".local", "app", "src", "venv"], report["home"]
    assert ".ssh" not in report["root"] and ".bash_history" not in report["root"]
    # other people's homes: only the path down to what is bound back
    for entry in report["home_root"]:
        assert any(b.startswith(f"/home/{entry}/") for b in bound), entry
    assert not report["write_home"]
    # the agent's own HOME is its own dir, and writable
    assert report["home_env"] == str(lay.agent_dir("alice") / "home")
    assert report["write_own_home"]
    # the harness came from the checkout in the home, and claude from the home's node_modules
    assert report["harness_file"].startswith(str(op["src"]))
    assert report["cli"]["rc"] == 0, report["cli"]["stderr"]
    lines = [json.loads(x) for x in report["cli"]["stdout"].splitlines() if x.strip()]
    result = [x for x in lines if x.get("type") == "result"]
    assert result and result[-1]["result"] == "hello from the fake"
    assert report["git"].startswith("git version")


def test_no_bind_shows_a_whole_home(tmp_path: Path) -> None:
    """PATH and PYTHONPATH entries that are a home (or above one) are never bound back; the
    controller's HOME is hidden after a bind that contains it (``/tmp/<dir>``), read-only."""
    home = tmp_path / "op"
    (home / ".ssh").mkdir(parents=True)
    (home / "bin").mkdir()
    (home / "x.py").write_text("")
    (tmp_path / "lib").mkdir()  # a PYTHONPATH entry in /tmp: its /tmp/<dir> is bound back
    lay = Layout(home / "state", tmp_path / "run")
    env = {
        "HOME": str(home),
        "PATH": os.pathsep.join([str(home), str(home / "bin"), "/root", "/home", "/usr/bin"]),
        "PYTHONPATH": os.pathsep.join([str(home), "/", str(tmp_path / "lib")]),
    }
    command = [sys.executable, str(home / "x.py")]
    driver = LocalDriver(lay, Config(), env, argv=command)
    paths = driver.sandbox_paths("alice")
    assert Path(os.path.realpath(home)) in paths.homes
    argv = bw.sandbox_argv("bwrap", paths, command, env)
    mounts = [(a, argv[i + 1]) for i, a in enumerate(argv) if a.startswith("--")]
    bound = [p for a, p in mounts[1:] if a in ("--bind", "--ro-bind")]
    for whole in (str(home), "/root", "/home", "/"):
        assert whole not in bound, whole
    assert str(home / "bin") in bound
    assert str(home / "x.py") in bound  # a file in the home itself: only that file
    top = "/tmp/" + tmp_path.relative_to("/tmp").parts[0]
    for root in ("/tmp", "/run", "/home", "/root"):
        assert ("--tmpfs", root) in mounts
    order = [("--ro-bind", top), ("--tmpfs", str(home)), ("--ro-bind", str(home / "bin"))]
    assert [mounts.index(m) for m in order] == sorted(mounts.index(m) for m in order)
    assert ("--remount-ro", str(home)) in mounts
    assert ("--remount-ro", "/tmp") not in mounts  # the private /tmp stays writable
