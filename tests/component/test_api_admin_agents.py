"""The admin socket's agent verbs over a real unix socket, backed by a real Swarm (stand-in
agents): describe, destroy, journal, config, tombstones, purge — and the CLI on top of them
(``hyperhive status NAME``, ``destroy``, ``purge``, ``tombstones``, their ``--help``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_swarm import CFG, ENV, STANDIN, FakeBroker

from controller import cli
from controller.api.admin import make_admin_app
from controller.auth import ensure_operator_key
from controller.broker import Broker
from controller.drivers.local import LocalDriver
from controller.metarepo import MetaRepo
from controller.paths import Layout
from controller.swarm import Swarm
from hivehttp import Listener, serve_unix
from schemas.client import ApiError, UnixClient
from schemas.validate import validate


@dataclass
class Host:
    root: Path
    layout: Layout
    swarm: Swarm
    driver: LocalDriver
    broker: Broker
    admin: Listener
    key: str

    @property
    def client(self) -> UnixClient:
        return UnixClient(str(self.layout.host_sock), timeout=60, token=self.key)

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        base = ["--state-dir", str(self.layout.state), "--run-dir", str(self.layout.run)]
        code = cli.main([*base, *argv])
        out = capsys.readouterr()
        return code, out.out, out.err


@pytest.fixture
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))  # short: sun_path is 107 bytes
    layout = Layout(root / "s", root / "r")
    script = root / "standin.py"
    script.write_text(STANDIN)
    meta = MetaRepo.open_or_init(layout, CFG)
    driver = LocalDriver(
        layout, CFG, ENV, argv=["python3", str(script)], stop_timeout=2.0, start_grace=0.15
    )
    swarm = Swarm(layout, CFG, meta, FakeBroker(), driver)
    assert swarm.reconcile().ok
    p = swarm.request_spawn("alice")
    swarm.approve(p.id)
    assert swarm.reconcile().ok
    broker = Broker(layout.broker_db)
    key = ensure_operator_key(layout)
    admin = serve_unix(make_admin_app(broker, swarm, key), layout.host_sock)
    h = Host(root, layout, swarm, driver, broker, admin, key)
    try:
        yield h
    finally:
        admin.stop(timeout=3.0)
        broker.close()
        for name in list(driver.observe()):
            driver.stop(name)
        shutil.rmtree(root, ignore_errors=True)


def err(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int, str | None]:
    return exc.value.status, exc.value.field


def test_describe_journal_config(host: Host) -> None:
    c = host.client
    d = c.get("/agents/alice")
    validate(d, "admin#DescribeResponse")
    assert d["name"] == "alice" and d["phase"] == "running" and d["deploys"][0]["id"] == 1
    j = c.get("/agents/alice/journal?lines=3&unit=hyperhive-agent.service")
    validate(j, "admin#JournalResponse")
    assert j["lines"] == 3 and j["text"].count("\n") <= 3
    assert "standin up" in c.get("/agents/alice/journal")["text"]
    cfg = c.get("/agents/alice/config")
    validate(cfg, "admin#AgentConfigResponse")
    assert "name: alice" in cfg["manifest"]
    assert c.get("/agents/manager")["name"] == "manager"


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "field"),
    [
        ("GET", "/agents/Alice", None, 400, "name"),
        ("GET", "/agents/a.b", None, 400, "name"),
        ("GET", "/agents/a%2F..", None, 405, None),  # /agents/{name}/{verb} is POST only
        ("GET", "/agents/nobody", None, 404, "name"),
        ("GET", "/agents/alice/journal?lines=0", None, 400, "lines"),
        ("GET", "/agents/alice/journal?lines=5001", None, 400, "lines"),
        ("GET", "/agents/alice/journal?lines=abc", None, 400, "lines"),
        ("GET", "/agents/alice/journal?unit=sshd.service", None, 400, "unit"),
        ("GET", "/agents/nobody/journal", None, 404, "name"),
        ("GET", "/agents/nobody/config", None, 404, "name"),
        ("POST", "/agents/alice/destroy", {"purge": "yes"}, 400, "purge"),
        ("POST", "/agents/alice/destroy", {"force": True}, 400, "force"),
        ("POST", "/agents/alice/destroy", [], 400, "(root)"),
        ("POST", "/agents/manager/destroy", {}, 400, "name"),
        ("POST", "/agents/nobody/destroy", {}, 404, "name"),
        ("POST", "/tombstones/alice/purge", {}, 409, "name"),
        ("POST", "/tombstones/nobody/purge", {}, 404, "name"),
        ("POST", "/tombstones/nobody-123/purge", {}, 404, "name"),
        ("POST", "/tombstones/..x/purge", {}, 400, "name"),
        ("POST", "/tombstones/alice-12345678901234567890/purge", {}, 400, "name"),
        ("POST", "/tombstones/nobody/purge", {"all": True}, 400, "all"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    host: Host, method: str, url: str, body: Any, status: int, field: str | None
) -> None:
    with pytest.raises(ApiError) as exc:
        host.client.call(method, url, body)
    assert err(exc) == (status, field)


def test_destroy_tombstones_purge(host: Host) -> None:
    c = host.client
    r = c.post("/agents/alice/destroy", {})
    validate(r, "admin#ResultResponse")
    assert "alice destroyed" in r["result"]
    stones = c.get("/tombstones")
    validate(stones, "admin#TombstonesResponse")
    [t] = stones["tombstones"]
    assert t["name"] == "alice"
    r = c.post(f"/tombstones/{t['id']}/purge", {})
    assert r["name"] == t["id"] and "purged tombstone" in r["result"]
    assert c.get("/tombstones") == {"tombstones": []}


def test_cli_status_destroy_tombstones_purge(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = host.cli(capsys, "status")
    assert code == 0 and "alice" in out and "AGENT" in out and "STATE" in out
    code, out, _ = host.cli(capsys, "status", "alice")
    assert code == 0
    for word in ("Conditions:", "Ready", "Deploys:", "deployed/1", "Events:", "Created"):
        assert word in out, out
    code, out, _ = host.cli(capsys, "status", "alice", "-o", "json")
    assert code == 0 and json.loads(out)["name"] == "alice"
    code, _, errs = host.cli(capsys, "status", "nobody")
    assert code == 1 and "no agent 'nobody'" in errs
    code, out, _ = host.cli(capsys, "destroy", "alice")
    assert code == 0 and "alice destroyed" in out and "hyperhive purge alice" in out
    code, out, _ = host.cli(capsys, "tombstones")
    assert code == 0 and "alice-" in out
    code, out, _ = host.cli(capsys, "tombstones", "-o", "json")
    assert [t["name"] for t in json.loads(out)] == ["alice"]
    code, out, _ = host.cli(capsys, "purge", "alice")
    assert code == 0 and "purged alice" in out
    code, out, _ = host.cli(capsys, "tombstones")
    assert "no tombstones" in out
    code, _, errs = host.cli(capsys, "destroy", "manager")
    assert code == 1 and "manager cannot be destroyed" in errs


@pytest.mark.parametrize(
    ("verb", "words"),
    [
        ("status", ["CrashLoopBackOff", "deploys", "-o"]),
        ("destroy", ["tombstone", "--purge", "spec.suspend"]),
        ("purge", ["tombstone", "no undo"]),
        ("tombstones", ["restores", "purge"]),
    ],
)
def test_cli_help_explains(verb: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in out, (w, out)
