"""The Swarm wired to the nixos-container driver (fake ``nixos-container``, ``systemctl`` and
``journalctl`` on PATH): flake refs ``…#<agent>``, the journal, crash watch on a container
that went down, destroy with a tombstone."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_nixos_container_driver import Fake, fake  # noqa: F401  (the fixture)
from test_swarm import CFG, FakeBroker

from controller.errors import Invalid
from controller.metarepo import MetaRepo
from controller.model import Phase
from controller.swarm import Swarm


def make(fake: Fake) -> tuple[Swarm, MetaRepo, FakeBroker]:  # noqa: F811
    meta = MetaRepo.open_or_init(fake.layout, CFG)
    broker = FakeBroker()
    return Swarm(fake.layout, CFG, meta, broker, fake.driver), meta, broker


def test_swarm_drives_nixos_containers(fake: Fake) -> None:  # noqa: F811
    swarm, meta, broker = make(fake)
    assert swarm.reconcile().ok
    main = meta.main_commit()
    [create] = [c for c in fake.calls("nixos-container") if c[1] == "create"]
    assert create[2:] == ["hm1nd", "--flake", f"git+file://{meta.path}?rev={main}#manager"]
    p = swarm.request_spawn("alice")
    swarm.approve(p.id)
    result = swarm.reconcile()
    assert result.ok, result.errors
    creates = [c for c in fake.calls("nixos-container") if c[1] == "create"]
    assert creates[-1][2:] == [
        "h-alice",
        "--flake",
        f"git+file://{meta.path}?rev={meta.main_commit()}#alice",
    ]
    assert fake.driver.observe()["alice"].phase is Phase.RUNNING

    # the journal goes through the driver: journalctl -M h-alice
    text = swarm.journal("alice", "hyperhive-agent.service", 2)
    assert "h-alice hyperhive-agent.service: line 1" in text
    [jc] = fake.calls("journalctl")
    assert jc[1:3] == ["-M", "h-alice"] and "--lines=2" in jc and "hyperhive-agent.service" in jc
    with pytest.raises(Invalid):
        swarm.journal("alice", "sshd.service", 2)

    # a container that went down on its own is a crash: reported, started again
    fake.set_container("h-alice", running=False)
    assert swarm.watch() == ["crash: alice"]
    assert [e["agent"] for e in broker.of("ContainerCrash")] == ["alice"]
    swarm.reconcile()
    assert fake.driver.observe()["alice"].phase is Phase.RUNNING

    # destroy: nixos-container destroy, state kept as a tombstone
    (fake.layout.agent_state("alice") / "notes.md").write_text("kept")
    assert "alice destroyed" in swarm.destroy("alice")
    assert any(c[1:] == ["destroy", "h-alice"] for c in fake.calls("nixos-container"))
    [stone] = swarm.tombstones()
    assert (Path(stone["path"]) / "state" / "notes.md").read_text() == "kept"
    cfg = swarm.agent_config("manager")
    assert cfg["settings"]["web_port"] == CFG.manager_port
