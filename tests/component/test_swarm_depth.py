"""The reconciler in depth: crash watch and CrashLoopBackOff, login / update transitions,
tombstones (prune, destroy, restore, purge), describe, journal, agent config, and the
backoff state that survives a controller restart.

Same setup as test_swarm.py: a real meta.git, real stand-in agent processes, a fake clock
for the swarm (backoff, crash windows) and a recording broker.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from test_swarm import (  # noqa: F401 (swarm_env, swarm_up: the env and up fixtures)
    CFG,
    CRASH_GRACE,
    Env,
    crash,
    manifest,
    spawn_alice,
    swarm_env,
    swarm_up,
)

from controller.drivers.local import LocalDriver, tail_lines
from controller.errors import Conflict, Invalid, NotFound
from controller.metarepo import MetaRepo
from controller.model import ActionKind, Phase
from controller.ops import Lifecycle, ProposalState
from controller.status import CRASH_LIMIT
from schemas.validate import validate
from tests.realserve import wait_for


def keys(env: Env, type_: str) -> list[str | None]:
    return [k for _, e, k in env.broker.calls if e["type"] == type_]


# ------------------------------------------------------------------ crash watch


def test_crash_restarts_with_backoff_then_stalls_in_a_crash_loop(up: Env) -> None:
    env = up
    spawn_alice(env)
    # crash 1: restarted at once
    crash(env)
    assert env.swarm.watch() == ["crash: alice"]
    assert env.swarm.wait_for_pass_request(0) == "crash: alice"
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.START)]
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    [ev] = env.broker.of("ContainerCrash")
    assert ev["agent"] == "alice" and ev["restarts"] == 1 and "restarting now" in ev["note"]
    # crash 2: 10 s of backoff
    env.clock.now += 1
    crash(env)
    env.swarm.watch()
    env.swarm.reconcile()
    assert env.driver.observe()["alice"].phase is Phase.FAILED
    rec = env.cond("alice", "Reconciling")
    assert (rec["status"], rec["reason"]) == ("True", "CrashBackOff")
    assert env.swarm.watch() == []  # nothing due yet
    env.clock.now += 10
    assert env.swarm.watch() == ["due: alice start"]
    env.swarm.reconcile()
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    # crashes 3..5 within the window: the crash loop stalls it
    for _ in range(CRASH_LIMIT - 2):
        env.clock.now += 1
        crash(env)
        env.swarm.watch()
        env.clock.now += 50  # past the backoff (20 s, 40 s)
        env.swarm.reconcile()
    assert env.driver.observe()["alice"].phase is Phase.FAILED
    stalled = env.cond("alice", "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "CrashLoopBackOff")
    assert env.cond("alice", "Ready")["reason"] == "CrashLoopBackOff"
    assert env.cond("alice", "Reconciling")["reason"] == "Stalled"
    last = env.broker.of("ContainerCrash")[-1]
    assert last["restarts"] == CRASH_LIMIT and "not restarted" in last["note"]
    # coalesced: one dedup key for the crashes, a distinct one for the crash loop
    assert set(keys(env, "ContainerCrash")) == {"crash:alice", keys(env, "ContainerCrash")[-1]}
    assert str(keys(env, "ContainerCrash")[-1]).startswith("crashloop:alice:")
    # no restart loop: not even much later, not after a controller restart
    env.clock.now += 3600
    assert env.swarm.watch() == []
    env.swarm.reconcile()
    assert env.driver.observe()["alice"].phase is Phase.FAILED
    restarted = env.make_swarm(MetaRepo.open_or_init(env.layout, CFG))
    result = restarted.reconcile()
    assert result.plan and env.driver.observe()["alice"].phase is Phase.FAILED
    assert env.cond("alice", "Stalled")["reason"] == "CrashLoopBackOff"
    assert env.status()["crashes"]["alice"]["stalled"] is True
    # the operator starts it: the crash loop is cleared
    assert "running" in restarted.lifecycle(Lifecycle.START, "alice")
    restarted.reconcile()
    assert env.cond("alice", "Stalled")["status"] == "False"
    assert "alice" not in env.status()["crashes"]
    types = [e["type"] for e in restarted.describe("alice")["events"]]
    assert "CrashLoopBackOff" in types and "PhaseChanged" in types
    assert [t for t in types if t != "PhaseChanged"][-1] in ("Requested", "Started")


def test_a_desired_change_clears_the_crash_loop(up: Env) -> None:
    env = up
    spawn_alice(env)
    for _ in range(CRASH_LIMIT):
        env.clock.now += 1
        crash(env)
        env.swarm.watch()
        env.clock.now += 400
        env.swarm.reconcile()
        env.clock.now -= 400
    assert env.cond("alice", "Stalled")["reason"] == "CrashLoopBackOff"
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet")
    assert env.swarm.reconcile().ok
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    assert env.cond("alice", "Stalled")["status"] == "False"


def test_the_first_pass_seeds_the_watch_and_passes_are_not_crashes(env: Env) -> None:
    assert env.swarm.watch() == []  # nothing seeded yet
    assert env.swarm.reconcile().ok
    spawn_alice(env)
    # a restarted controller finds alice dead: restarted, but no crash event for the past
    crash(env)
    restarted = env.make_swarm(MetaRepo.open_or_init(env.layout, CFG))
    result = restarted.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.START)]
    assert env.broker.of("ContainerCrash") == []
    # kill (a hold), suspend and a model change are transitions of ours, not crashes
    restarted.lifecycle(Lifecycle.KILL, "alice")
    assert restarted.watch() == []
    restarted.lifecycle(Lifecycle.START, "alice")
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "sonnet")
    restarted.reconcile()
    env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", extra="  suspend: true\n")}, "pause"
    )
    restarted.reconcile()
    assert restarted.watch() == []
    assert env.broker.of("ContainerCrash") == []


def test_watch_never_waits_for_a_running_pass(up: Env) -> None:
    env = up
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with env.swarm.core.pass_lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    assert env.swarm.watch() == []
    assert time.monotonic() - t0 < 0.5
    release.set()
    t.join()


# ------------------------------------------------------------------ login / update


def test_login_transitions_fire_once_each(up: Env) -> None:
    env = up
    assert env.broker.of("NeedsLogin") == []  # seeded at start: the manager is not news
    spawn_alice(env)
    assert env.broker.of("NeedsLogin") == [{"type": "NeedsLogin", "agent": "alice"}]
    creds = env.layout.agent_claude("alice") / ".credentials.json"
    creds.write_text("{}")
    env.swarm.watch()
    assert env.broker.of("LoggedIn") == [{"type": "LoggedIn", "agent": "alice"}]
    env.swarm.watch()
    env.swarm.reconcile()
    assert len(env.broker.of("LoggedIn")) == 1
    assert env.cond("alice", "LoggedIn")["status"] == "True"
    creds.unlink()
    env.swarm.watch()
    assert len(env.broker.of("NeedsLogin")) == 2
    # a restarted controller seeds silently
    env.make_swarm(MetaRepo.open_or_init(env.layout, CFG)).reconcile()
    assert len(env.broker.of("NeedsLogin")) == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"env": {"ANTHROPIC_API_KEY": "sk-pasted"}},
        {"env": {"CLAUDE_CODE_OAUTH_TOKEN": "tok", "ANTHROPIC_API_KEY": ""}},
        {"apiKeyHelper": "/state/key.sh"},
    ],
)
def test_a_key_pasted_in_the_agent_ui_counts_as_logged_in(
    up: Env, settings: dict[str, object]
) -> None:
    env = up
    spawn_alice(env)
    assert env.cond("alice", "LoggedIn")["status"] == "False"
    claude_settings = env.layout.agent_claude("alice") / "settings.json"
    claude_settings.write_text(json.dumps({"model": "x", **settings}))
    env.swarm.watch()
    assert env.broker.of("LoggedIn") == [{"type": "LoggedIn", "agent": "alice"}]
    env.swarm.reconcile()
    assert env.cond("alice", "LoggedIn")["status"] == "True"
    # an emptied key is no login
    claude_settings.write_text(json.dumps({"env": {"ANTHROPIC_API_KEY": ""}}))
    env.swarm.watch()
    env.swarm.reconcile()
    assert env.cond("alice", "LoggedIn")["status"] == "False"


def test_needs_update_for_an_agent_that_cannot_be_rebuilt(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", extra="  suspend: true\n")}, "pause"
    )
    env.swarm.reconcile()
    assert env.broker.of("NeedsUpdate") == []
    env.push_main({"flake.nix": "{ outputs = _: { }; }\n"}, "flake: bump")
    env.swarm.reconcile()
    assert [e["agent"] for e in env.broker.of("Rebuilt")][-1] == "manager"
    [ev] = env.broker.of("NeedsUpdate")
    assert ev["agent"] == "alice" and "flake" in ev["note"]
    up_to_date = env.cond("alice", "UpToDate")
    assert (up_to_date["status"], up_to_date["reason"]) == ("False", "NeedsRebuild")
    env.swarm.reconcile()
    assert len(env.broker.of("NeedsUpdate")) == 1


def test_a_hyperhive_upgrade_is_drift(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.push_main({"agents/bob/agent.yaml": manifest("bob", extra="  suspend: true\n")}, "bob")
    env.swarm.reconcile()
    newer = env.make_swarm(MetaRepo.open(env.layout, CFG, version="9.9.9"))
    result = newer.reconcile()
    assert result.ok, result.errors
    assert {(a.agent, a.kind) for a in result.plan} == {
        ("manager", ActionKind.REBUILD),
        ("alice", ActionKind.REBUILD),
    }
    assert all("hyperhive 0.1.0 → 9.9.9" in a.reason for a in result.plan)
    assert env.cond("alice", "UpToDate")["status"] == "True"
    assert env.driver.observe()["alice"].hyperhive_version == "9.9.9"
    assert newer.status()["version"] == "9.9.9"
    # bob never ran: nothing to update
    assert env.cond("bob", "UpToDate")["reason"] == "NotDeployed"


def test_upgrade_drift_of_a_suspended_agent_shows_needs_update(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", extra="  suspend: true\n")}, "pause"
    )
    env.swarm.reconcile()
    newer = env.make_swarm(MetaRepo.open(env.layout, CFG, version="9.9.9"))
    newer.reconcile()
    up_to_date = env.cond("alice", "UpToDate")
    assert (up_to_date["status"], up_to_date["reason"]) == ("False", "NeedsUpdate")
    assert "0.1.0 is deployed, 9.9.9 is current" in up_to_date["message"]
    row = next(a for a in newer.list_agents() if a["name"] == "alice")
    assert row["hyperhive_version"] == "0.1.0"


def test_version_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller import __version__
    from controller.serve import hyperhive_version

    monkeypatch.delenv("HYPERHIVE_VERSION_OVERRIDE", raising=False)
    assert hyperhive_version() == __version__
    monkeypatch.setenv("HYPERHIVE_VERSION_OVERRIDE", "7.0.0")
    assert hyperhive_version() == "7.0.0"


# ------------------------------------------------------------------ tombstones


def test_prune_keeps_a_tombstone_and_respawn_restores_it(up: Env) -> None:
    env = up
    spawn_alice(env)
    port = env.status()["agents"]["alice"]["web_port"]
    (env.layout.agent_state("alice") / "notes.md").write_text("remember me")
    (env.layout.agent_claude("alice") / ".credentials.json").write_text('{"token": 1}')
    deployed = env.driver.observe()["alice"].commit
    env.push_main({"agents/alice": None}, "retire alice")
    assert env.swarm.reconcile().ok
    [stone] = env.swarm.tombstones()
    validate({"tombstones": [stone]}, "admin#TombstonesResponse")
    assert stone["name"] == "alice" and stone["commit"] == deployed
    assert stone["bytes"] > 0 and not stone["in_place"]
    assert Path(stone["path"]).parent == env.layout.tombstones
    # spawn the same name again: notes, login and port come back
    spawn_alice(env)
    assert env.swarm.tombstones() == []
    assert (env.layout.agent_state("alice") / "notes.md").read_text() == "remember me"
    assert env.cond("alice", "LoggedIn")["status"] == "True"
    assert env.status()["agents"]["alice"]["web_port"] == port
    assert env.standin("alice")["settings"]["web_port"] == port
    types = [e["type"] for e in env.swarm.describe("alice")["events"]]
    assert "Tombstoned" in types and "Restored" in types


def test_destroy_is_a_commit_on_main(up: Env) -> None:
    env = up
    spawn_alice(env)
    before = env.meta.main_commit()
    msg = env.swarm.destroy("alice")
    assert "alice destroyed (deployed/" in msg and "state is kept" in msg
    assert "alice" not in env.driver.observe() and "alice" not in env.meta.desired().agents
    head = env.meta.repo[env.meta.main_commit()]
    assert head.parent_ids == [env.meta.repo[before].id]  # type: ignore[attr-defined]
    assert head.message == "destroy alice\n"  # type: ignore[attr-defined]
    assert head.author.name == "operator"  # type: ignore[attr-defined]
    latest = env.swarm.proposals()[0]
    assert latest.state is ProposalState.DEPLOYED and latest.title == "destroy alice"
    assert len(env.swarm.tombstones()) == 1
    with pytest.raises(NotFound):
        env.swarm.destroy("alice")
    with pytest.raises(Invalid):
        env.swarm.destroy("manager")
    with pytest.raises(Invalid):
        env.swarm.destroy("Bad!")


def test_destroy_with_purge_keeps_nothing(up: Env) -> None:
    env = up
    spawn_alice(env)
    (env.layout.agent_state("alice") / "notes.md").write_text("secret")
    assert (env.layout.log_dir / "alice.log").exists()
    msg = env.swarm.destroy("alice", purge=True)
    assert "deleted" in msg
    assert not env.layout.agent_dir("alice").exists()
    assert env.swarm.tombstones() == []
    assert not (env.layout.log_dir / "alice.log").exists()
    assert env.status()["purge"] == []


def test_purge(up: Env) -> None:
    env = up
    spawn_alice(env)
    with pytest.raises(Conflict, match="desired state"):
        env.swarm.purge("alice")
    env.swarm.destroy("alice")
    spawn_alice(env)  # restores the tombstone
    env.clock.now += 5
    env.swarm.destroy("alice")  # and buries it again
    # state an older hyperhive kept in place is a tombstone too
    (env.layout.state / "agents" / "zed" / "state").mkdir(parents=True)
    stones = env.swarm.tombstones()
    assert [(s["name"], s["in_place"]) for s in stones] == [("alice", False), ("zed", True)]
    with pytest.raises(NotFound):
        env.swarm.purge("alice-1")
    with pytest.raises(NotFound):
        env.swarm.purge("bob")
    with pytest.raises(Invalid):
        env.swarm.purge("manager")
    with pytest.raises(Invalid):
        env.swarm.purge("../etc")
    msg = env.swarm.purge(stones[0]["id"])
    assert msg.startswith(f"purged tombstone {stones[0]['id']}")
    assert "purged zed: 1 tombstone(s)" in env.swarm.purge("zed")
    assert env.swarm.tombstones() == []
    # destroy --purge of an agent already destroyed purges what is kept
    spawn_alice(env)
    env.swarm.destroy("alice")
    assert "purged alice" in env.swarm.destroy("alice", purge=True)
    assert env.swarm.tombstones() == []


# ------------------------------------------------------------------ describe, journal, config


def test_describe(up: Env) -> None:
    env = up
    pid = spawn_alice(env)
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet")
    env.swarm.reconcile()
    d = env.swarm.describe("alice")
    validate(d, "admin#DescribeResponse")
    assert d["phase"] == "running" and d["model"] == "sonnet"
    main = env.meta.main_commit()
    assert {c["observedCommit"] for c in d["conditions"]} == {main}
    ids = [x["id"] for x in d["deploys"]]
    assert ids == sorted(ids, reverse=True) and ids[-1] == pid
    spawn = d["deploys"][-1]
    assert spawn["tags"] == [
        f"proposal/{pid}",
        f"approved/{pid}",
        f"building/{pid}",
        f"deployed/{pid}",
    ]
    assert spawn["state"] == "deployed" and spawn["kind"] == "spawn"
    assert "alice: create" in spawn["note"]
    assert d["deploys"][0]["title"] == "alice: sonnet"
    events = d["events"]
    assert [e["type"] for e in events] == [
        "Created",
        "Deployed",
        "PhaseChanged",
        "NeedsLogin",
        "ManifestApplied",
        "Deployed",
    ]
    assert events[1]["message"].startswith(f"deployed/{pid} {spawn['commit'][:12]} (spawn ")
    assert events[1]["message"].endswith(": create")
    assert events[2]["message"] == "absent → running"
    assert events[5]["message"].startswith(f"deployed/{d['deploys'][0]['id']} ")
    assert env.swarm.describe("manager")["deploys"] == []  # the genesis commit has no id
    env.push_main({"flake.lock": "{}\n"}, "lock the flake")
    env.swarm.reconcile()
    flake = env.swarm.describe("manager")["deploys"]
    assert [d["title"] for d in flake] == ["lock the flake"]
    assert env.swarm.describe("alice")["deploys"][0]["title"] == "lock the flake"
    with pytest.raises(NotFound):
        env.swarm.describe("nobody")
    with pytest.raises(Invalid):
        env.swarm.describe("NOPE")


def test_conditions_follow_main_without_moving_their_transition_time(up: Env) -> None:
    env = up
    spawn_alice(env)
    before = env.cond("alice", "Ready")
    env.clock.now += 50
    env.push_main({"agents/bob/agent.yaml": manifest("bob")}, "bob")
    env.swarm.reconcile()
    after = env.cond("alice", "Ready")
    assert after["lastTransitionTime"] == before["lastTransitionTime"]
    assert after["observedCommit"] == env.meta.main_commit() != before["observedCommit"]


def test_journal_under_the_local_runtime(up: Env) -> None:
    env = up
    spawn_alice(env)
    # the stand-in logs its start a moment after it was started (later under load)
    wait_for(
        "alice's start in its journal",
        lambda: "standin up" in env.swarm.journal("alice", None, 5000),
    )
    text = env.swarm.journal("alice", None, 5000)
    assert "standin up" in text and "hyperhive: starting" in text
    assert env.swarm.journal("alice", "hyperhive-agent.service", 1).count("\n") == 1
    with pytest.raises(Invalid) as exc:
        env.swarm.journal("alice", "sshd.service", 10)
    assert exc.value.field == "unit"
    for bad in (0, 5001, -1):
        with pytest.raises(Invalid) as exc:
            env.swarm.journal("alice", None, bad)
        assert exc.value.field == "lines"
    with pytest.raises(NotFound):
        env.swarm.journal("bob", None, 10)
    with pytest.raises(Invalid):
        env.swarm.journal("../x", None, 10)


def test_tail_lines(tmp_path: Path) -> None:
    p = tmp_path / "log"
    assert tail_lines(p, 3) == ""
    p.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail_lines(p, 2) == "line 99998\nline 99999\n"
    assert tail_lines(p, 5000).count("\n") == 5000
    p.write_text("no newline")
    assert tail_lines(p, 3) == "no newline\n"


def test_agent_config(up: Env) -> None:
    env = up
    spawn_alice(env)
    c = env.swarm.agent_config("alice")
    validate(c, "admin#AgentConfigResponse")
    assert c["commit"] == env.driver.observe()["alice"].commit
    assert "name: alice" in (c["manifest"] or "") and c["agent_nix"] is None
    assert c["settings"]["model"] == "haiku"
    env.push_main({"agents/alice/agent.nix": "{ ... }: { }\n"}, "nix")
    env.swarm.reconcile()
    assert env.swarm.agent_config("alice")["agent_nix"] == "{ ... }: { }\n"
    with pytest.raises(NotFound):
        env.swarm.agent_config("bob")


# ------------------------------------------------------------------ persistence


def test_retry_backoff_survives_a_controller_restart(up: Env) -> None:
    env = up
    env.driver.start_grace = CRASH_GRACE  # every start here is the crashing stand-in's
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "crash")}, "alice crashes")
    assert not env.swarm.reconcile().ok
    log = env.layout.log_dir / "alice.log"
    starts = log.read_text().count("standin up")
    failure = env.status()["failures"]["alice"]
    assert failure["kind"] == "transient" and failure["attempts"] == 1
    restarted = env.make_swarm(MetaRepo.open_or_init(env.layout, CFG))
    restarted.reconcile()
    assert log.read_text().count("standin up") == starts  # still backing off
    assert env.cond("alice", "Reconciling")["reason"] == "RetryScheduled"
    env.clock.now += 60
    restarted.reconcile()
    assert log.read_text().count("standin up") == starts + 1
    assert env.status()["failures"]["alice"]["attempts"] == 2


def test_status_json_shape(up: Env) -> None:
    env = up
    spawn_alice(env)
    doc = env.status()
    assert set(doc) >= {"agents", "holds", "failures", "crashes", "events", "purge", "main"}
    assert [e["type"] for e in doc["events"]["alice"]] == [
        "Created",
        "Deployed",
        "PhaseChanged",
        "NeedsLogin",
    ]
    for row in doc["agents"].values():
        for c in row["conditions"]:
            validate(c, "admin#Condition")


# ------------------------------------------------------------------ local driver extras


SANDBOXED = r"""
import json, os, signal, sys, time
state = os.environ["HYPERHIVE_STATE_DIR"]
agent_dir = os.path.dirname(state)
def can_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
with open(os.path.join(state, "standin.json"), "w") as f:
    json.dump({"pid": os.getpid(), "sandbox": os.environ.get("HYPERHIVE_SANDBOX"),
               "state": can_write(os.path.join(state, "probe")),
               "home": can_write(os.path.join(os.environ["HOME"], "probe")),
               "agent_dir": can_write(os.path.join(agent_dir, "escape")),
               "etc": can_write("/etc/hyperhive-sandbox-probe"),
               "tmp": can_write("/tmp/hyperhive-sandbox-probe")}, f)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""


@pytest.mark.skipif(
    not any(
        os.access(os.path.join(d, "bwrap"), os.X_OK) for d in os.environ.get("PATH", "").split(":")
    ),
    reason="bwrap is not installed",
)
def test_bubblewrap_sandbox(tmp_path: Path) -> None:
    import sys

    env = Env(tmp_path)
    script = tmp_path / "sandboxed.py"
    script.write_text(SANDBOXED)
    env.driver = LocalDriver(
        env.layout,
        CFG,
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        argv=[sys.executable, str(script)],
        stop_timeout=2.0,
        start_grace=0.3,
        sandbox=True,
    )
    env.swarm = env.make_swarm()
    try:
        assert env.swarm.reconcile().ok
        argv = env.driver.command("manager")
        assert argv[0].endswith("bwrap") and "--ro-bind" in argv
        out = env.standin("manager")
        assert out["sandbox"] == "bwrap"
        assert out["state"] and out["home"]
        assert not out["etc"]  # the host is read-only, even for root
        assert out["tmp"] and not Path("/tmp/hyperhive-sandbox-probe").exists()  # private /tmp
        # settings.json's dir is not writable (here it sits under the private /tmp, so the
        # write lands there, never on the host)
        assert not (env.layout.agent_dir("manager") / "escape").exists()
    finally:
        for name in list(env.driver.observe()):
            env.driver.stop(name)


def test_log_rotation(tmp_path: Path) -> None:
    env = Env(tmp_path)
    import sys

    env.driver = LocalDriver(
        env.layout,
        CFG,
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        argv=[sys.executable, str(env.script)],
        stop_timeout=2.0,
        start_grace=0.15,
        log_max_bytes=1000,
    )
    env.swarm = env.make_swarm()
    try:
        assert env.swarm.reconcile().ok
        log = env.layout.log_dir / "manager.log"
        # the stand-in logs its start a moment after it was started (later under load):
        # a line landing after the rotation would be left in the truncated log
        wait_for(
            "the manager's stand-in to log its start", lambda: b"standin up" in log.read_bytes()
        )
        with open(log, "ab") as fh:
            fh.write(b"x" * 2000 + b"\n")
        assert env.driver.rotate_logs() == ["manager"]
        assert log.stat().st_size == 0
        assert (env.layout.log_dir / "manager.log.1").stat().st_size > 2000
        env.swarm.lifecycle(Lifecycle.RESTART, "manager")  # writes, then rotates at start
        # ...and the new process logs its start after the restart returned
        wait_for(
            "the restarted manager's start in its journal",
            lambda: "standin up" in env.swarm.journal("manager", None, 10),
        )
    finally:
        for name in list(env.driver.observe()):
            env.driver.stop(name)


def test_agent_argv_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.serve import agent_argv

    monkeypatch.delenv("HYPERHIVE_AGENT_ARGV", raising=False)
    assert agent_argv() is None
    monkeypatch.setenv("HYPERHIVE_AGENT_ARGV", json.dumps(["/bin/true", "x"]))
    assert agent_argv() == ["/bin/true", "x"]
    for bad in ("[", "[]", '"x"', "[1]"):
        monkeypatch.setenv("HYPERHIVE_AGENT_ARGV", bad)
        with pytest.raises(ValueError, match="HYPERHIVE_AGENT_ARGV"):
            agent_argv()


def test_a_quiet_watch_writes_nothing_and_a_crash_is_persisted_at_once(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.swarm.reconcile()
    mtime = env.layout.status_file.stat().st_mtime_ns
    for _ in range(3):
        assert env.swarm.watch() == []
    assert env.layout.status_file.stat().st_mtime_ns == mtime
    crash(env)
    env.swarm.watch()
    assert env.status()["crashes"]["alice"]["times"]  # before any pass ran
    assert env.status()["events"]["alice"][-1]["type"] == "Crashed"


@pytest.mark.parametrize("workers", [1, 4])
def test_agents_start_in_parallel_with_distinct_ports(tmp_path: Path, workers: int) -> None:
    import sys
    from dataclasses import replace

    cfg = replace(CFG, parallel_actions=workers)
    env = Env(tmp_path)
    env.driver = LocalDriver(
        env.layout,
        cfg,
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        argv=[sys.executable, str(env.script)],
        stop_timeout=2.0,
        start_grace=0.5,
    )
    env.swarm = env.make_swarm()
    env.swarm.config = cfg
    try:
        assert env.swarm.reconcile().ok
        names = [f"w{i}" for i in range(6)]
        env.push_main({f"agents/{n}/agent.yaml": manifest(n) for n in names}, "six at once")
        t0 = time.monotonic()
        result = env.swarm.reconcile()
        took = time.monotonic() - t0
        assert result.ok, result.errors
        assert {a.agent for a in result.plan} == set(names)
        obs = env.driver.observe()
        assert all(obs[n].phase is Phase.RUNNING for n in names)
        ports = [env.status()["agents"][n]["web_port"] for n in names]
        assert len(set(ports)) == len(ports)
        if workers == 1:
            assert took >= 6 * 0.5
        else:
            assert took < 6 * 0.5
        assert env.swarm.proposals()[0].state is ProposalState.DEPLOYED
    finally:
        for name in list(env.driver.observe()):
            env.driver.stop(name)
