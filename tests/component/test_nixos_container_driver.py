"""Component tests of the nixos-container driver and the journal viewer against fake executables.

The fakes in ``tests/component/fakebin/`` (``nixos-container``, ``systemctl``,
``journalctl``) record their argv as JSON lines in ``$FAKEBIN_LOG`` and keep
container state under ``$FAKEBIN_STATE``; the fake ``create`` writes a conf
like nixpkgs' nixos-container.pl (HOST_ADDRESS=10.233.N.1, PRIVATE_NETWORK=1,
...) and leaves it behind when the build fails. They are copied to a temp
``bin/`` with this interpreter in the shebang and put first on PATH.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.config import Config
from controller.drivers.base import Deployment, Driver
from controller.drivers.journal import MAX_LINES, read_journal
from controller.drivers.nixos_container import (
    CLEARED_KEYS,
    DROPIN_NAME,
    NixosContainerDriver,
    agent_for_container,
    bind_flags,
    check_bind_path,
    classify_failure,
    clean_line,
    parse_conf,
    render_limits,
    rewrite_conf,
    split_flake_ref,
)
from controller.errors import (
    Conflict,
    Invalid,
    NotFound,
    PermanentError,
    TransientError,
)
from controller.model import AgentManifest, DesiredAgent, Phase, Resources
from controller.paths import Layout
from schemas.names import MANAGER

FAKEBIN = Path(__file__).parent / "fakebin"
TOOLS = ("nixos-container", "systemctl", "journalctl")


@dataclass
class Fake:
    """The fake host: layout, driver, where the fakes log and keep state."""

    root: Path
    layout: Layout
    driver: NixosContainerDriver
    bindir: Path
    log: Path
    state: Path
    conf_dir: Path
    dropin_dir: Path
    sink: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded call, oldest first."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def calls(self, tool: str | None = None) -> list[list[str]]:
        """Recorded argv (tool name first), optionally of one tool."""
        return [[r["tool"], *r["argv"]] for r in self.rows() if tool is None or r["tool"] == tool]

    def clear(self) -> None:
        """Forget the calls recorded so far."""
        self.log.write_text("")

    def conf(self, container: str) -> Path:
        return self.conf_dir / f"{container}.conf"

    def container(self, container: str) -> dict[str, Any]:
        path = self.state / "containers" / f"{container}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_container(self, container: str, **kw: Any) -> None:
        st = self.container(container)
        st.update(kw)
        path = self.state / "containers" / f"{container}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(st))


def install_fakes(bindir: Path) -> None:
    """Copy the fakes to ``bindir`` with this interpreter in the shebang (no env lookup)."""
    bindir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        text = (FAKEBIN / tool).read_text().split("\n", 1)[1]
        dst = bindir / tool
        dst.write_text(f"#!{sys.executable}\n{text}")
        dst.chmod(0o755)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """A driver wired to the fakes on PATH, with conf and drop-in dirs under tmp_path."""
    bindir = tmp_path / "bin"
    install_fakes(bindir)
    state = tmp_path / "fakestate"
    state.mkdir()
    conf_dir = tmp_path / "etc" / "nixos-containers"
    dropin_dir = tmp_path / "etc" / "systemd" / "system.control"
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKEBIN_LOG", str(log))
    monkeypatch.setenv("FAKEBIN_STATE", str(state))
    monkeypatch.setenv("FAKEBIN_CONF_DIR", str(conf_dir))
    for knob in (
        "FAKEBIN_FAIL_CREATE",
        "FAKEBIN_FAIL_UPDATE",
        "FAKEBIN_FAIL_START",
        "FAKEBIN_FAIL_MESSAGE",
        "FAKEBIN_STATUS_ERROR",
        "FAKEBIN_LIST_EXTRA",
        "FAKEBIN_BUILD_LINES",
        "FAKEBIN_BUILD_DELAY",
        "FAKEBIN_JOURNAL_FAIL",
    ):
        monkeypatch.delenv(knob, raising=False)
    layout = Layout(tmp_path / "state", tmp_path / "run")
    driver = NixosContainerDriver(
        layout, Config(), conf_dir=conf_dir, dropin_dir=dropin_dir, clock=lambda: 1000.0
    )
    yield Fake(tmp_path, layout, driver, bindir, log, state, conf_dir, dropin_dir)


def deployment(
    agent: str = "alice",
    *,
    commit: str = "c1",
    config: str = "cfg1",
    build: str = "b1",
    resources: Resources | None = None,
    flake_ref: str | None = None,
    model: str = "haiku",
) -> Deployment:
    """A Deployment like the Swarm makes (flake ref ``git+file://<meta.git>?rev=<c>#<agent>``)."""
    manifest = AgentManifest(name=agent, model=model, resources=resources or Resources())
    want = DesiredAgent(
        name=agent, manifest=manifest, commit=commit, config_digest=config, build_digest=build
    )
    settings = {"agent": agent, "model": model, "web_port": 8123, "hyperhive_version": "0.1.0"}
    ref = flake_ref or f"git+file:///var/lib/hyperhive/meta.git?rev={commit}#{agent}"
    return Deployment(agent=want, settings=settings, web_port=8123, flake_ref=ref)


def expected_flags(layout: Layout, agent: str) -> str:
    sock = layout.run / ("manager" if agent == MANAGER else f"agents/{agent}")
    a = layout.state / "agents" / agent
    flags = [
        f"--bind={sock}:/run/hive",
        f"--bind={a}/claude:/root/.claude",
        f"--bind={a}/state:/state",
        f"--bind-ro={a}/settings.json:/etc/hyperhive/settings.json",
        f"--bind-ro={a}/credential:/etc/hyperhive/credential",
    ]
    if agent == MANAGER:
        flags.append(f"--bind={layout.state}/manager/meta:/meta")
    return " ".join(flags)


# ---------------------------------------------------------------- protocol


def test_is_a_driver(fake: Fake) -> None:
    driver: Driver = fake.driver
    assert driver.name == "nixos-container"


# ---------------------------------------------------------------- create


def test_create_runs_exact_commands_and_rewrites_the_conf(fake: Fake) -> None:
    d = deployment()
    fake.driver.create(d, fake.sink.append)

    ref = "git+file:///var/lib/hyperhive/meta.git?rev=c1#alice"
    assert fake.calls() == [
        ["nixos-container", "create", "h-alice", "--flake", ref],
        ["nixos-container", "start", "h-alice"],
    ]
    # The realistic conf the fake create wrote, after the rewrite: host network,
    # addresses cleared, other keys (AUTO_START, FLAKE) kept in place, binds set.
    assert fake.conf("h-alice").read_text() == (
        "PRIVATE_NETWORK=0\n"
        "HOST_ADDRESS=\n"
        "LOCAL_ADDRESS=\n"
        "HOST_BRIDGE=\n"
        "HOST_PORT=\n"
        "AUTO_START=0\n"
        "FLAKE=git+file:///var/lib/hyperhive/meta.git?rev=c1\n"
        "HOST_ADDRESS6=\n"
        "LOCAL_ADDRESS6=\n"
        "LOCAL_MAC_ADDRESS=\n"
        f'EXTRA_NSPAWN_FLAGS="{expected_flags(fake.layout, "alice")}"\n'
    )
    st = fake.container("h-alice")
    assert st["running"] is True
    assert st["network"] == "host"
    assert st["system"].endswith("-nixos-system-h-alice")


def test_create_writes_sources_settings_and_marker(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    lay = fake.layout
    for p in (lay.agent_state("alice"), lay.agent_claude("alice"), lay.agent_sock_dir("alice")):
        assert p.is_dir(), p
    assert stat.S_IMODE(lay.agent_claude("alice").stat().st_mode) == 0o700
    settings = lay.agent_settings("alice")
    assert json.loads(settings.read_text())["agent"] == "alice"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o444
    marker = json.loads((lay.agent_dir("alice") / "deployed.json").read_text())
    assert marker == {
        "commit": "c1",
        "config_digest": "cfg1",
        "build_digest": "b1",
        "hyperhive_version": "0.1.0",
        "deployed_at": 1000.0,
        "has_nix": False,
        "web_port": 8123,
    }


def test_each_build_runs_in_a_fresh_temporary_cwd(fake: Fake) -> None:
    fake.driver.create(deployment("alice"), fake.sink.append)
    fake.driver.create(deployment("bob"), fake.sink.append)
    fake.driver.rebuild(deployment("bob", build="b2"), fake.sink.append)
    cwds = [r["cwd"] for r in fake.rows() if r["argv"][0] in ("create", "update")]
    assert len(cwds) == 3
    assert len(set(cwds)) == 3
    for cwd in cwds:
        assert cwd != os.getcwd()
        assert Path(cwd).name.startswith("hyperhive-build-h-")
        assert not Path(cwd).exists(), "the build dir is removed afterwards"


def test_concurrent_builds_do_not_share_the_tmp_symlink(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKEBIN_BUILD_LINES", "3")
    monkeypatch.setenv("FAKEBIN_BUILD_DELAY", "0.2")
    errors: list[BaseException] = []

    def run(agent: str) -> None:
        try:
            fake.driver.create(deployment(agent), lambda line: None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    for name in ("h-alice", "h-bob"):
        st = fake.container(name)
        assert st["running"]
        assert st["system"].endswith(f"-nixos-system-{name}"), "got another build's result"


def test_build_output_is_streamed_before_the_process_exits(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKEBIN_BUILD_LINES", "4")
    monkeypatch.setenv("FAKEBIN_BUILD_DELAY", "0.4")
    finished = fake.state / "build-finished"
    seen: list[tuple[str, bool, float]] = []

    def sink(line: str) -> None:
        seen.append((line, finished.exists(), time.monotonic()))

    caplog.set_level(logging.INFO, logger="hyperhive.drivers.nixos_container")
    fake.driver.create(deployment(), sink)

    builds = [(line, done, t) for line, done, t in seen if "nixos-system-h-alice" in line]
    assert [line.split("(")[-1] for line, _, _ in builds] == ["1/4)", "2/4)", "3/4)", "4/4)"]
    first_line, done_at_first, t_first = builds[0]
    assert not done_at_first, "the first line arrived only after the build had finished"
    assert builds[-1][2] - t_first >= 1.0, "lines arrived together, i.e. buffered"
    # stderr is merged in order ("host IP is ..." is printed on stderr)
    assert any(line.startswith("host IP is 10.233.") for line, _, _ in seen)
    assert any(first_line in r.getMessage() for r in caplog.records)
    build_log = (fake.layout.log_dir / "alice.build.log").read_text()
    assert first_line in build_log and "exit 0" in build_log


def test_failed_create_removes_the_leftover_conf(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKEBIN_FAIL_CREATE", "1")
    with pytest.raises(PermanentError) as err:
        fake.driver.create(deployment(), fake.sink.append)
    msg = str(err.value)
    assert "nixos-container create h-alice failed (exit 255)" in msg
    assert "does not provide attribute" in msg
    assert "failed to build container from flake" in msg
    # the last ~20 lines only: the early trace lines are not in the message
    assert "trace line 30" in msg and "trace line 5\n" not in msg
    assert len(msg.splitlines()) <= 21
    assert not fake.conf("h-alice").exists()
    assert [c[1] for c in fake.calls()] == ["create"]
    assert not (fake.layout.agent_dir("alice") / "deployed.json").exists()
    assert any("removed the leftover" in line for line in fake.sink)

    # the next attempt is a clean create, not "already exists"
    monkeypatch.delenv("FAKEBIN_FAIL_CREATE")
    fake.driver.create(deployment(), fake.sink.append)
    assert fake.container("h-alice")["running"]


def test_network_failures_are_transient(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEBIN_FAIL_CREATE", "1")
    monkeypatch.setenv(
        "FAKEBIN_FAIL_MESSAGE",
        "error: unable to download 'https://cache.nixos.org/x.narinfo': Couldn't resolve host",
    )
    with pytest.raises(TransientError):
        fake.driver.create(deployment(), fake.sink.append)
    assert not fake.conf("h-alice").exists()


def test_create_of_an_existing_container_updates_it(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    fake.clear()
    fake.driver.create(deployment(build="b2"), fake.sink.append)
    assert [c[1] for c in fake.calls("nixos-container")] == ["update", "status", "stop", "start"]
    assert json.loads((fake.layout.agent_dir("alice") / "deployed.json").read_text())[
        "build_digest"
    ] == ("b2")


def test_manager_gets_hm1nd_and_the_meta_bind(fake: Fake) -> None:
    fake.driver.create(deployment(MANAGER), fake.sink.append)
    assert fake.calls()[0] == [
        "nixos-container",
        "create",
        "hm1nd",
        "--flake",
        "git+file:///var/lib/hyperhive/meta.git?rev=c1#manager",
    ]
    conf = parse_conf(fake.conf("hm1nd").read_text())
    assert conf["EXTRA_NSPAWN_FLAGS"] == expected_flags(fake.layout, MANAGER)
    assert f"--bind={fake.layout.run}/manager:/run/hive" in conf["EXTRA_NSPAWN_FLAGS"]
    assert fake.layout.manager_meta.is_dir()
    assert fake.container("hm1nd")["running"]


@pytest.mark.parametrize(
    "ref",
    [
        "git+file:///var/lib/hyperhive/meta.git?rev=c1",  # no attr: would build #container
        "git+file:///var/lib/hyperhive/meta.git?rev=c1#bob",  # someone else's attr
        "#alice",
    ],
)
def test_flake_ref_must_name_the_agent(fake: Fake, ref: str) -> None:
    with pytest.raises(PermanentError):
        fake.driver.create(deployment(flake_ref=ref), fake.sink.append)
    assert fake.calls() == []


def test_bind_paths_with_whitespace_are_refused_before_anything_runs(
    fake: Fake, tmp_path: Path
) -> None:
    layout = Layout(tmp_path / "my state", tmp_path / "run")
    driver = NixosContainerDriver(
        layout, Config(), conf_dir=fake.conf_dir, dropin_dir=fake.dropin_dir
    )
    with pytest.raises(PermanentError, match="unquoted"):
        driver.create(deployment(), fake.sink.append)
    assert fake.calls() == []


def test_bin_mapping_is_used_instead_of_path(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    driver = NixosContainerDriver(
        fake.layout,
        Config(),
        conf_dir=fake.conf_dir,
        dropin_dir=fake.dropin_dir,
        bin={t: str(fake.bindir / t) for t in TOOLS},
    )
    driver.create(deployment(), fake.sink.append)
    assert fake.container("h-alice")["running"]


def test_missing_nixos_container_is_transient(fake: Fake) -> None:
    driver = NixosContainerDriver(
        fake.layout, Config(), conf_dir=fake.conf_dir, bin={"nixos-container": "/nonexistent/nc"}
    )
    with pytest.raises(TransientError, match="cannot run"):
        driver.create(deployment(), fake.sink.append)
    with pytest.raises(TransientError, match="not found"):
        driver.observe()


def test_start_failure_after_a_good_build_keeps_the_container(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKEBIN_FAIL_START", "1")
    with pytest.raises(TransientError, match="failed to start container"):
        fake.driver.create(deployment(), fake.sink.append)
    assert fake.conf("h-alice").exists(), "a built container is not cleaned up"
    assert (fake.layout.agent_dir("alice") / "deployed.json").exists()
    obs = fake.driver.observe()["alice"]
    assert obs.phase is Phase.STOPPED and obs.build_digest == "b1"


# ---------------------------------------------------------------- drop-in


def test_limits_drop_in_and_daemon_reload_only_on_change(fake: Fake) -> None:
    limits = Resources(memory_max="2G", cpu_quota="150%", tasks_max=256)
    fake.driver.create(deployment(resources=limits), fake.sink.append)
    dropin = fake.dropin_dir / "container@h-alice.service.d" / DROPIN_NAME
    text = dropin.read_text()
    assert text.endswith("[Service]\nMemoryMax=2G\nCPUQuota=150%\nTasksMax=256\n")
    assert text.startswith("# Written by hyperhive")
    assert fake.calls("systemctl") == [["systemctl", "daemon-reload"]]
    # create: build, daemon-reload, then start
    assert [c[:2] for c in fake.calls()] == [
        ["nixos-container", "create"],
        ["systemctl", "daemon-reload"],
        ["nixos-container", "start"],
    ]

    fake.clear()
    fake.driver.rebuild(deployment(resources=limits, build="b2"), fake.sink.append)
    assert fake.calls("systemctl") == [], "same limits: no daemon-reload"

    fake.clear()
    fake.driver.rebuild(
        deployment(resources=Resources(memory_max="1G"), build="b3"), fake.sink.append
    )
    assert fake.calls("systemctl") == [["systemctl", "daemon-reload"]]
    assert dropin.read_text().endswith("[Service]\nMemoryMax=1G\n")

    fake.clear()
    fake.driver.rebuild(deployment(build="b4"), fake.sink.append)
    assert not dropin.exists() and not dropin.parent.exists()
    assert fake.calls("systemctl") == [["systemctl", "daemon-reload"]]

    fake.clear()
    fake.driver.rebuild(deployment(build="b5"), fake.sink.append)
    assert fake.calls("systemctl") == []


def test_render_limits_refuses_anything_but_values() -> None:
    assert render_limits(Resources()) is None
    with pytest.raises(PermanentError):
        render_limits(Resources(memory_max="1G\nExecStartPre=/bin/sh"))
    with pytest.raises(PermanentError):
        render_limits(Resources(cpu_quota="50"))
    with pytest.raises(PermanentError):
        render_limits(Resources(tasks_max=0))


# ---------------------------------------------------------------- rebuild


def test_rebuild_updates_rewrites_the_conf_and_restarts(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    # someone (a manual nixos-container command) put the veth addresses back
    conf = fake.conf("h-alice")
    conf.write_text(
        conf.read_text().replace("HOST_ADDRESS=\n", "HOST_ADDRESS=10.233.0.1\n")
        + "LOCAL_ADDRESS=10.233.0.2\nPRIVATE_NETWORK=1\n"
    )
    fake.clear()
    fake.driver.rebuild(deployment(build="b2", commit="c2"), fake.sink.append)
    ref = "git+file:///var/lib/hyperhive/meta.git?rev=c2#alice"
    assert fake.calls() == [
        ["nixos-container", "update", "h-alice", "--flake", ref],
        ["nixos-container", "status", "h-alice"],
        ["nixos-container", "stop", "h-alice"],
        ["nixos-container", "start", "h-alice"],
    ]
    env = parse_conf(conf.read_text())
    assert env["PRIVATE_NETWORK"] == "0"
    assert all(env[k] == "" for k in CLEARED_KEYS)
    assert conf.read_text().count("LOCAL_ADDRESS=") == 1
    assert fake.container("h-alice")["network"] == "host"
    assert fake.container("h-alice")["starts"] == 2
    assert any("reloading container" in line for line in fake.sink)
    marker = json.loads((fake.layout.agent_dir("alice") / "deployed.json").read_text())
    assert (marker["commit"], marker["build_digest"]) == ("c2", "b2")


def test_failed_rebuild_changes_nothing(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    conf_before = fake.conf("h-alice").read_text()
    marker = fake.layout.agent_dir("alice") / "deployed.json"
    marker_before = marker.read_text()
    monkeypatch.setenv("FAKEBIN_FAIL_UPDATE", "1")
    fake.clear()
    with pytest.raises(PermanentError, match="nixos-container update h-alice failed"):
        fake.driver.rebuild(deployment(build="b2"), fake.sink.append)
    assert [c[1] for c in fake.calls()] == ["update"]
    assert fake.conf("h-alice").read_text() == conf_before
    assert marker.read_text() == marker_before
    assert fake.container("h-alice")["running"], "the old system keeps running"


def test_rebuild_of_an_absent_container_creates_it(fake: Fake) -> None:
    fake.driver.rebuild(deployment(), fake.sink.append)
    assert [c[1] for c in fake.calls("nixos-container")] == ["create", "start"]


# ---------------------------------------------------------------- observe


def test_observe_parses_list_status_markers_and_gone(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.driver.create(deployment("alice"), fake.sink.append)
    fake.driver.create(deployment("bob", config="cfg-b"), fake.sink.append)
    fake.driver.create(deployment(MANAGER), fake.sink.append)
    fake.driver.create(deployment("carol"), fake.sink.append)
    fake.driver.stop("bob")
    fake.set_container("hm1nd", running=False, failed=True)
    # a declarative container that is not ours, and a name with no valid agent
    (fake.conf_dir / "webserver.conf").write_text("PRIVATE_NETWORK=1\n")
    (fake.conf_dir / "h-Bad.conf").write_text("PRIVATE_NETWORK=1\n")
    monkeypatch.setenv("FAKEBIN_LIST_EXTRA", "h-ghost")  # listed, then gone
    monkeypatch.setenv("FAKEBIN_STATUS_ERROR", "h-carol")

    fake.clear()
    obs = fake.driver.observe()
    assert set(obs) == {"alice", "bob", "manager", "carol", "ghost"}
    assert obs["alice"].phase is Phase.RUNNING
    assert (obs["alice"].commit, obs["alice"].config_digest, obs["alice"].build_digest) == (
        "c1",
        "cfg1",
        "b1",
    )
    assert obs["alice"].hyperhive_version == "0.1.0"
    assert obs["bob"].phase is Phase.STOPPED and obs["bob"].config_digest == "cfg-b"
    assert obs["manager"].phase is Phase.FAILED
    assert "container@hm1nd.service failed" in obs["manager"].detail
    assert obs["carol"].phase is Phase.FAILED
    assert "exited 255" in obs["carol"].detail and "Connection timed out" in obs["carol"].detail
    assert obs["ghost"].phase is Phase.ABSENT and obs["ghost"].build_digest is None
    status_calls = [c[2] for c in fake.calls("nixos-container") if c[1] == "status"]
    assert sorted(status_calls) == ["h-alice", "h-bob", "h-carol", "h-ghost", "hm1nd"]
    assert ["nixos-container", "status", "webserver"] not in fake.calls()
    assert sorted(c[2] for c in fake.calls("systemctl")) == [
        "container@h-bob.service",
        "container@hm1nd.service",
    ]


def test_observe_without_marker_says_so(fake: Fake) -> None:
    (fake.conf_dir).mkdir(parents=True)
    (fake.conf_dir / "h-dave.conf").write_text("PRIVATE_NETWORK=1\n")
    obs = fake.driver.observe()["dave"]
    assert obs.phase is Phase.STOPPED and obs.commit is None
    assert "deployed.json" in obs.detail


# ---------------------------------------------------------------- apply_manifest


def test_apply_manifest_rewrites_settings_in_place_and_restarts_the_harness(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    settings = fake.layout.agent_settings("alice")
    inode = settings.stat().st_ino
    fake.clear()
    fake.driver.apply_manifest(deployment(config="cfg2", commit="c2", model="sonnet"))
    assert fake.calls() == [
        ["nixos-container", "status", "h-alice"],
        ["systemctl", "-M", "h-alice", "restart", "hyperhive-agent.service"],
    ]
    assert json.loads(settings.read_text())["model"] == "sonnet"
    assert settings.stat().st_ino == inode, "a file bind mount pins the inode"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o444
    assert fake.container("h-alice")["harness_restarts"] == 1
    marker = json.loads((fake.layout.agent_dir("alice") / "deployed.json").read_text())
    assert (marker["config_digest"], marker["commit"], marker["build_digest"]) == (
        "cfg2",
        "c2",
        "b1",
    )


def test_apply_manifest_on_a_stopped_container_only_writes(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    fake.driver.stop("alice")
    fake.clear()
    fake.driver.apply_manifest(deployment(config="cfg2"))
    assert fake.calls() == [["nixos-container", "status", "h-alice"]]
    assert fake.driver.observe()["alice"].config_digest == "cfg2"


def test_apply_manifest_needs_the_container(fake: Fake) -> None:
    with pytest.raises(TransientError, match="does not exist"):
        fake.driver.apply_manifest(deployment())


# ---------------------------------------------------------------- lifecycle


def test_stop_start_restart_are_idempotent(fake: Fake) -> None:
    fake.driver.stop("alice")
    fake.driver.destroy("alice")
    assert fake.calls() == [], "absent: no-op without running anything"

    fake.driver.create(deployment(), fake.sink.append)
    fake.clear()
    fake.driver.start("alice")
    assert fake.calls() == [["nixos-container", "status", "h-alice"]]

    fake.clear()
    fake.driver.stop("alice")
    fake.driver.stop("alice")
    assert fake.calls() == [
        ["nixos-container", "status", "h-alice"],
        ["nixos-container", "stop", "h-alice"],
        ["nixos-container", "status", "h-alice"],
    ]

    fake.clear()
    fake.driver.restart("alice")
    assert fake.calls() == [
        ["nixos-container", "status", "h-alice"],
        ["nixos-container", "start", "h-alice"],
    ]
    assert fake.container("h-alice")["running"]

    with pytest.raises(PermanentError, match="does not exist"):
        fake.driver.start("bob")


def test_start_recreates_missing_bind_sources(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    fake.driver.stop("alice")
    sock_dir = fake.layout.agent_sock_dir("alice")
    sock_dir.rmdir()  # /run is a tmpfs: gone after a reboot
    fake.layout.agent_settings("alice").unlink()
    fake.driver.start("alice")
    assert sock_dir.is_dir()
    assert fake.container("h-alice")["running"]
    assert json.loads(fake.layout.agent_settings("alice").read_text()) == {}


def test_destroy_removes_container_conf_dropin_and_marker(fake: Fake) -> None:
    fake.driver.create(deployment(resources=Resources(tasks_max=64)), fake.sink.append)
    fake.clear()
    fake.driver.destroy("alice")
    assert fake.calls() == [
        ["nixos-container", "status", "h-alice"],
        ["nixos-container", "stop", "h-alice"],
        ["nixos-container", "destroy", "h-alice"],
        ["systemctl", "daemon-reload"],
    ]
    assert not fake.conf("h-alice").exists()
    assert not (fake.dropin_dir / "container@h-alice.service.d").exists()
    assert not (fake.layout.agent_dir("alice") / "deployed.json").exists()
    assert fake.layout.agent_state("alice").is_dir(), "state stays for the tombstone"
    assert fake.layout.agent_settings("alice").exists()
    fake.clear()
    fake.driver.destroy("alice")
    assert fake.calls() == []
    assert fake.driver.observe() == {}


def test_lifecycle_refuses_invalid_names(fake: Fake) -> None:
    for name in ("Bad", "-rf", "a b", "x" * 10):
        with pytest.raises(PermanentError):
            fake.driver.stop(name)
    assert fake.calls() == []


# ---------------------------------------------------------------- pure helpers


def test_rewrite_conf_keeps_other_keys_and_is_idempotent() -> None:
    text = (
        "# a comment\n"
        "PRIVATE_NETWORK=1\n"
        "HOST_ADDRESS=10.233.0.1\n"
        "LOCAL_ADDRESS=10.233.0.2\n"
        "HOST_ADDRESS6=fc00::1\n"
        "AUTO_START=1\n"
        'EXTRA_NSPAWN_FLAGS="--bind=/old:/old"\n'
        "HOST_ADDRESS=10.233.9.1\n"
        "SOMETHING_ELSE=kept\n"
    )
    new = rewrite_conf(text, ["--bind=/a:/b", "--bind-ro=/c:/d"])
    assert new == (
        "# a comment\n"
        "PRIVATE_NETWORK=0\n"
        "HOST_ADDRESS=\n"
        "LOCAL_ADDRESS=\n"
        "HOST_ADDRESS6=\n"
        "AUTO_START=1\n"
        'EXTRA_NSPAWN_FLAGS="--bind=/a:/b --bind-ro=/c:/d"\n'
        "SOMETHING_ELSE=kept\n"
        "LOCAL_ADDRESS6=\n"
        "HOST_BRIDGE=\n"
        "LOCAL_MAC_ADDRESS=\n"
        "HOST_PORT=\n"
    )
    assert rewrite_conf(new, ["--bind=/a:/b", "--bind-ro=/c:/d"]) == new


@pytest.mark.parametrize(
    "path",
    ["/var/lib/my state", "/var/lib/it's", '/var/"q"', "/var/a\\b", "/var/$HOME", "/var/*", "/a:b"],
)
def test_check_bind_path_refuses_what_the_start_script_would_mangle(path: str) -> None:
    with pytest.raises(PermanentError):
        check_bind_path(Path(path))


def test_check_bind_path_accepts_plain_paths() -> None:
    assert check_bind_path(Path("/var/lib/hyperhive/agents/web-2/state")) == (
        "/var/lib/hyperhive/agents/web-2/state"
    )
    with pytest.raises(PermanentError):
        check_bind_path(Path("relative/path"))


def test_bind_flags_from_the_layout(tmp_path: Path) -> None:
    layout = Layout(Path("/var/lib/hyperhive"), Path("/run/hyperhive"))
    assert bind_flags(layout, "alice") == [
        "--bind=/run/hyperhive/agents/alice:/run/hive",
        "--bind=/var/lib/hyperhive/agents/alice/claude:/root/.claude",
        "--bind=/var/lib/hyperhive/agents/alice/state:/state",
        "--bind-ro=/var/lib/hyperhive/agents/alice/settings.json:/etc/hyperhive/settings.json",
        "--bind-ro=/var/lib/hyperhive/agents/alice/credential:/etc/hyperhive/credential",
    ]
    assert bind_flags(layout, MANAGER)[0] == "--bind=/run/hyperhive/manager:/run/hive"
    assert bind_flags(layout, MANAGER)[-1] == "--bind=/var/lib/hyperhive/manager/meta:/meta"


def test_split_flake_ref_like_nixos_container() -> None:
    assert split_flake_ref("git+file:///m.git?rev=abc#alice") == (
        "git+file:///m.git?rev=abc",
        "alice",
    )
    assert split_flake_ref("/a#b#c") == ("/a#b", "c")
    for bad in ("/a", "/a#", '/a#"x"', "#a"):
        with pytest.raises(PermanentError):
            split_flake_ref(bad)


def test_agent_for_container() -> None:
    assert agent_for_container("hm1nd") == MANAGER
    assert agent_for_container("h-alice") == "alice"
    assert agent_for_container("h-manager") is None
    assert agent_for_container("h-Bad") is None
    assert agent_for_container("webserver") is None


def test_classify_failure_and_clean_line() -> None:
    assert classify_failure(["error: syntax error, unexpected '}'"], 1) is PermanentError
    assert classify_failure(["error: cannot connect to socket at '/nix/var'"], 1) is TransientError
    assert classify_failure([], -9) is TransientError
    assert clean_line(b"\x1b[31;1merror:\x1b[0m boom\r\n") == "error: boom"
    assert clean_line(b"[1/3 built] \r[2/3 built]\n") == "[2/3 built]"
    assert clean_line(b"caf\xc3\xa9 \xff\n") == "café \ufffd"


# ---------------------------------------------------------------- journal


def test_read_journal_runs_exact_argv(fake: Fake) -> None:
    out = read_journal("h-alice", ["h-alice", "hm1nd"], None, 200)
    assert "h-alice systemd[1]: line 1" in out
    out = read_journal("hm1nd", ["hm1nd"], "hyperhive-agent.service", MAX_LINES)
    assert "hm1nd hyperhive-agent.service: line 3" in out
    assert fake.calls() == [
        [
            "journalctl",
            "-M",
            "h-alice",
            "-b",
            "--no-pager",
            "--output=short-iso",
            "--lines=200",
        ],
        [
            "journalctl",
            "-M",
            "hm1nd",
            "-b",
            "--no-pager",
            "--output=short-iso",
            "--lines=5000",
            "-u",
            "hyperhive-agent.service",
        ],
    ]


@pytest.mark.parametrize(
    ("container", "live", "unit", "lines", "error", "field"),
    [
        ("h-bob", ["h-alice"], None, 10, NotFound, "container"),
        ("webserver", ["webserver"], None, 10, NotFound, "container"),
        ("-D/etc", ["-D/etc"], None, 10, NotFound, "container"),
        ("h-alice", ["h-alice"], "sshd.service", 10, Invalid, "unit"),
        ("h-alice", ["h-alice"], "hyperhive-agent", 10, Invalid, "unit"),
        ("h-alice", ["h-alice"], None, MAX_LINES + 1, Invalid, "lines"),
        ("h-alice", ["h-alice"], None, 0, Invalid, "lines"),
        ("h-alice", ["h-alice"], None, True, Invalid, "lines"),
    ],
)
def test_read_journal_validates_before_running_anything(
    fake: Fake,
    container: str,
    live: list[str],
    unit: str | None,
    lines: int,
    error: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error) as err:
        read_journal(container, live, unit, lines)
    assert getattr(err.value, "field", None) == field
    assert fake.calls() == []


def test_read_journal_of_a_stopped_machine_is_a_conflict(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKEBIN_JOURNAL_FAIL", "1")
    with pytest.raises(Conflict, match="No machine 'h-alice' known"):
        read_journal("h-alice", ["h-alice"], None, 10)


def test_driver_journal_only_for_running_containers(fake: Fake) -> None:
    fake.driver.create(deployment(), fake.sink.append)
    assert "line 1" in fake.driver.journal("alice", "hyperhive-agent.service", 5)
    fake.driver.stop("alice")
    with pytest.raises(NotFound):
        fake.driver.journal("alice")
