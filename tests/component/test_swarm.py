"""controller.swarm end to end: real meta.git, real git pushes, real stand-in agent processes.

Only the broker is a fake (it records emitted events and checks them against
events.schema.json).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from controller.config import Config
from controller.drivers.local import LocalDriver
from controller.errors import Conflict, NotFound
from controller.metarepo import MetaRepo
from controller.model import ActionKind, Phase
from controller.ops import Lifecycle, ProposalKind, ProposalState
from controller.paths import Layout
from controller.swarm import Swarm
from schemas.names import default_web_port
from schemas.validate import validate
from tests.gitutil import git
from tests.realserve import wait_for

CFG = Config(default_model="haiku", agent_port_base=18100, manager_port=18000)

STANDIN = r"""
import json, os, signal, sys, time
settings = json.load(open(os.environ["HYPERHIVE_SETTINGS"]))
record = os.path.join(os.environ["HYPERHIVE_STATE_DIR"], "standin.json")
with open(record + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "settings": settings}, f)
os.replace(record + ".tmp", record)  # a reader sees the old record or the whole new one
print("standin up", flush=True)
if settings.get("model") == "crash":
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
START_GRACE = 0.15
"""The driver's start grace: a stand-in that exits within it failed to start."""
CRASH_GRACE = 60.0
"""The start grace while a test deploys the stand-in that exits at once (model ``crash``):
its exit must land within the grace however slowly python starts under load (a start
that fails returns as soon as the process exits, so this costs nothing)."""


class FakeBroker:
    """Records every emit_event call (no coalescing: the swarm must not repeat itself)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.closed: list[str] = []
        self.dead: dict[str, int] = {}

    def emit_event(
        self, recipient: str, event: dict[str, Any], dedup_key: str | None = None
    ) -> Any:
        validate(event, "events")
        self.calls.append((recipient, event, dedup_key))
        return None

    def close_threads(self, agent: str, reason: str | None = None) -> int:
        self.closed.append(agent)
        return 0

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(self.dead)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for _, e, _ in self.calls if e["type"] == type_]

    def approvals(self) -> list[tuple[int, str]]:
        return [(e["id"], e["decision"]) for e in self.of("ApprovalResolved")]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.layout = Layout(tmp / "state", tmp / "run")
        self.script = tmp / "standin.py"
        self.script.write_text(STANDIN)
        self.clock = Clock()
        self.broker = FakeBroker()
        self.deploys: list[tuple[str, bool]] = []
        self.destroys: list[str] = []
        self.meta = MetaRepo.open_or_init(self.layout, CFG)
        self.driver = self.make_driver()
        self.swarm = self.make_swarm()
        self._op: Path | None = None

    def make_driver(self) -> LocalDriver:
        return LocalDriver(
            self.layout,
            CFG,
            ENV,
            argv=[sys.executable, str(self.script)],
            stop_timeout=2.0,
            start_grace=START_GRACE,
        )

    def make_swarm(self, meta: MetaRepo | None = None) -> Swarm:
        def on_deploy(agent: str) -> None:
            pid_file = self.layout.agent_dir(agent) / "harness.pid"
            self.deploys.append((agent, pid_file.exists()))

        return Swarm(
            self.layout,
            CFG,
            meta or self.meta,
            self.broker,
            self.driver,
            on_deploy,
            on_destroy=self.destroys.append,
            clock=self.clock,
        )

    @property
    def op(self) -> Path:
        """The operator's clone of meta.git (fresh tags fetched)."""
        if self._op is None:
            self._op = self.tmp / "op"
            git("clone", "-q", str(self.meta.path), str(self._op))
        git("fetch", "-q", "--tags", "--force", "origin", cwd=self._op)
        git("checkout", "-q", "-B", "main", "origin/main", cwd=self._op)
        return self._op

    def push_tag(self, *tag_args: str) -> None:
        op = self.op
        git("tag", *tag_args, cwd=op)
        name = next(a for a in tag_args if "/" in a)
        git("push", "-q", "origin", name, cwd=op)

    def push_main(self, files: dict[str, str | None], message: str) -> str:
        op = self.op
        for path, text in files.items():
            if text is None:
                git("rm", "-q", "-r", path, cwd=op)
            else:
                (op / path).parent.mkdir(parents=True, exist_ok=True)
                (op / path).write_text(text)
                git("add", path, cwd=op)
        git("commit", "-q", "-m", message, cwd=op)
        git("push", "-q", "origin", "main", cwd=op)
        return git("rev-parse", "HEAD", cwd=op).stdout.strip()

    def clone_commit(self, files: dict[str, str], message: str) -> str:
        clone = self.layout.manager_meta
        git("fetch", "-q", "origin", cwd=clone)
        git("checkout", "-q", "-B", "work", "origin/main", cwd=clone)
        for path, text in files.items():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_text(text)
            git("add", path, cwd=clone)
        git("commit", "-q", "-m", message, cwd=clone)
        return git("rev-parse", "HEAD", cwd=clone).stdout.strip()

    def tags(self) -> dict[str, str]:
        return {
            r.name[len("refs/tags/") :]: str(r.target)
            for r in self.meta.repo.references.iterator()
            if r.name.startswith("refs/tags/")
        }

    def status(self) -> dict[str, Any]:
        return json.loads(self.layout.status_file.read_text())  # type: ignore[no-any-return]

    def standin(self, agent: str) -> dict[str, Any]:
        """What the stand-in the driver runs for ``agent`` now recorded at its start (pid,
        settings). A process writes it a moment after it was started (seconds later under
        load), and until then the file is the previous process's: wait for the record
        whose pid is the driver's (any record under bwrap, whose pids are the sandbox's
        own; a stopped agent's last one)."""
        path = self.layout.agent_state(agent) / "standin.json"
        sandboxed = self.driver.bwrap()[0] is not None

        def current() -> dict[str, Any] | None:
            doc: dict[str, Any] = json.loads(path.read_text())
            pid = self.driver.pid(agent)
            return doc if sandboxed or pid is None or doc["pid"] == pid else None

        return wait_for(f"{agent}'s stand-in to record its start", current)  # type: ignore[no-any-return]

    def cond(self, agent: str, type_: str) -> dict[str, Any]:
        rows = self.status()["agents"][agent]["conditions"]
        return next(c for c in rows if c["type"] == type_)


def manifest(name: str, model: str = "haiku", extra: str = "") -> str:
    return (
        "apiVersion: hyperhive/v1\nkind: Agent\n"
        f"metadata:\n  name: {name}\nspec:\n  model: {model}\n{extra}"
    )


# Named so the modules that import them (test_swarm_depth, test_swarm_credentials) do not
# shadow an imported name with every ``env`` / ``up`` parameter.
@pytest.fixture(name="env")
def swarm_env(tmp_path: Path) -> Iterator[Env]:
    """A fresh ``Env``; its agents are stopped afterwards."""
    e = Env(tmp_path)
    yield e
    for name in list(e.driver.observe()):
        e.driver.stop(name)


@pytest.fixture(name="up")
def swarm_up(env: Env) -> Env:
    """The swarm after its first pass: manager running (the genesis commit has no id)."""
    result = env.swarm.reconcile()
    assert result.ok, result.errors
    return env


def spawn_alice(env: Env) -> int:
    p = env.swarm.request_spawn("alice")
    env.push_tag(f"approved/{p.id}", f"proposal/{p.id}")
    res = env.swarm.reconcile()
    assert res.ok, res.errors
    return p.id


def crash(env: Env, agent: str = "alice") -> None:
    """SIGKILL the agent's running stand-in and wait until the driver sees it gone."""
    os.kill(env.standin(agent)["pid"], signal.SIGKILL)
    wait_for(
        f"the driver to see {agent} dead",
        lambda: env.driver.observe()[agent].phase is Phase.FAILED,
        interval=0.02,
    )


# ------------------------------------------------------------------ the main story


def test_first_pass_deploys_the_manager(env: Env) -> None:
    result = env.swarm.reconcile()
    assert result.ok
    assert [(a.agent, a.kind) for a in result.plan] == [("manager", ActionKind.CREATE)]
    assert env.driver.observe()["manager"].phase is Phase.RUNNING
    assert env.deploys == [("manager", False)]  # socket first, process after
    # the genesis commit is the controller's bootstrap: no id, no tags, nothing announced
    assert env.tags() == {} and env.swarm.proposals() == []
    assert env.meta.last_deploy() == env.meta.main_commit()
    assert env.broker.approvals() == []
    assert env.cond("manager", "Ready")["status"] == "True"
    assert env.status()["agents"]["manager"]["web_port"] == 18000
    assert env.standin("manager")["settings"]["web_port"] == 18000
    assert env.swarm.reconcile().plan == ()
    assert env.swarm.reconcile(dry_run=True).to_json()["in_sync"] is True


def test_spawn_approve_by_git_push_deploys(up: Env) -> None:
    env = up
    p = env.swarm.request_spawn("alice")
    assert p.state is ProposalState.PENDING and p.agents == ("alice",)
    assert [x.id for x in env.swarm.proposals(pending_only=True)] == [p.id]
    env.push_tag(f"approved/{p.id}", f"proposal/{p.id}")
    result = env.swarm.reconcile()
    assert result.ok, result.errors
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.CREATE)]
    obs = env.driver.observe()["alice"]
    assert obs.phase is Phase.RUNNING and obs.commit == env.meta.main_commit() == p.commit
    assert f"deployed/{p.id}" in env.tags()
    assert env.swarm.proposal(p.id).state is ProposalState.DEPLOYED
    assert env.broker.approvals()[-1] == (p.id, "deployed")
    event = env.broker.of("ApprovalResolved")[-1]
    assert event["kind"] == "spawn" and event["agents"] == ["alice"]
    settings = env.standin("alice")["settings"]
    port = default_web_port("alice", 18000, 18100, 900)
    assert settings["web_port"] == port and settings["model"] == "haiku"
    assert settings["meta_commit"] == p.commit and settings["flavor"] == "agent"
    assert (env.layout.agent_dir("alice") / "web-port").read_text().strip() == str(port)
    assert ("alice", False) in env.deploys
    assert env.cond("alice", "Ready")["status"] == "True"
    assert env.cond("alice", "UpToDate")["reason"] == "UpToDate"
    rows = {r["name"]: r for r in env.swarm.list_agents()}
    assert rows["alice"]["phase"] == "running" and rows["alice"]["web_port"] == port
    assert env.swarm.agent_names() == frozenset({"manager", "alice"})
    # the manager's clone learns the new main
    clone = pygit2.Repository(str(env.layout.manager_meta))
    assert str(clone.references["refs/remotes/origin/main"].target) == p.commit
    assert env.swarm.reconcile().plan == ()


def test_deny_is_reported_exactly_once(up: Env) -> None:
    env = up
    p = env.swarm.request_spawn("bob")
    env.push_tag("-a", f"denied/{p.id}", "-m", "we have enough bobs", f"proposal/{p.id}")
    before = len(env.broker.calls)
    assert env.swarm.reconcile().ok
    denied = [e for e in env.broker.of("ApprovalResolved") if e["decision"] == "denied"]
    assert denied == [
        {
            "type": "ApprovalResolved",
            "id": p.id,
            "kind": "spawn",
            "agents": ["bob"],
            "decision": "denied",
            "note": "we have enough bobs",
        }
    ]
    env.swarm.reconcile()
    Env.make_swarm(env).reconcile()  # a restarted controller does not repeat it either
    assert len(env.broker.calls) == before + 1
    assert "bob" not in env.driver.observe()
    assert env.swarm.proposal(p.id).state is ProposalState.DENIED


def test_conflicting_proposals_fail_the_second(up: Env) -> None:
    env = up
    spawn_alice(env)
    c1 = env.clone_commit({"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet")
    p1 = env.swarm.request_apply_commit(c1, "faster")
    c2 = env.clone_commit({"agents/alice/agent.yaml": manifest("alice", "opus")}, "alice: opus")
    p2 = env.swarm.request_apply_commit(c2, "smarter")
    env.swarm.approve(p1.id)
    env.swarm.approve(p2.id, "try it")
    result = env.swarm.reconcile()
    assert not result.ok
    assert any(f"proposal/{p2.id}" in e and "agents/alice/agent.yaml" in e for e in result.errors)
    assert env.meta.main_commit() == c1
    assert env.swarm.proposal(p1.id).state is ProposalState.DEPLOYED
    failed = env.swarm.proposal(p2.id)
    assert failed.state is ProposalState.FAILED
    assert "merge conflict" in failed.note and "agents/alice/agent.yaml" in failed.note
    assert env.standin("alice")["settings"]["model"] == "sonnet"
    assert (p2.id, "failed") in env.broker.approvals()
    tag = env.meta.repo[env.meta.repo.references[f"refs/tags/failed/{p2.id}"].target]
    assert isinstance(tag, pygit2.Tag) and "merge conflict" in tag.message


def test_non_conflicting_proposals_merge(up: Env) -> None:
    env = up
    a = env.swarm.request_spawn("alice")
    b = env.swarm.request_spawn("bob")
    env.swarm.approve(a.id)
    env.swarm.approve(b.id)
    assert env.swarm.reconcile().ok
    assert {"alice", "bob"} <= set(env.driver.observe())
    head = env.meta.repo[env.meta.main_commit()].peel(pygit2.Commit)
    assert len(head.parent_ids) == 2
    assert env.swarm.proposal(a.id).state is ProposalState.DEPLOYED
    assert env.swarm.proposal(b.id).state is ProposalState.DEPLOYED


def test_push_and_approval_in_one_pass_get_their_own_ids(up: Env) -> None:
    env = up
    p = env.swarm.request_spawn("alice")
    env.swarm.approve(p.id)
    env.push_main({"agents/bob/agent.yaml": manifest("bob")}, "bob by hand")
    assert env.swarm.reconcile().ok
    push = env.swarm.proposals()[0]
    assert push.id == p.id + 1 and push.kind is ProposalKind.PUSH
    assert push.agents == ("bob",) and push.state is ProposalState.DEPLOYED
    assert env.swarm.proposal(p.id).state is ProposalState.DEPLOYED
    assert {"alice", "bob"} <= set(env.driver.observe())
    assert env.meta.last_deploy() == env.meta.main_commit()


def test_gitops_push_changes_model_with_a_restart(up: Env) -> None:
    env = up
    spawn_alice(env)
    old_pid = env.standin("alice")["pid"]
    new_main = env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet"
    )
    result = env.swarm.reconcile()
    assert result.ok, result.errors
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.APPLY_MANIFEST)]
    s = env.standin("alice")
    assert s["pid"] != old_pid and s["settings"]["model"] == "sonnet"
    assert s["settings"]["meta_commit"] == new_main
    push_ids = [p.id for p in env.swarm.proposals() if p.kind is ProposalKind.PUSH]
    latest = env.swarm.proposal(max(push_ids))
    assert latest.state is ProposalState.DEPLOYED and latest.commit == new_main
    assert latest.agents == ("alice",) and latest.title == "alice: sonnet"
    assert env.broker.approvals()[-1] == (latest.id, "deployed")
    assert env.swarm.reconcile().plan == ()


def test_agent_nix_change_rebuilds(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.push_main({"agents/alice/agent.nix": "{ pkgs, ... }: { }\n"}, "alice: packages")
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.REBUILD)]
    assert env.broker.of("Rebuilt")[-1]["agent"] == "alice"
    up_to_date = env.cond("alice", "UpToDate")
    assert up_to_date["status"] == "True"
    assert "agent.nix is not built under the local runtime" in up_to_date["message"]
    assert "agent.nix is not built" in env.swarm.status()["runtime_note"]


def test_new_hyperhive_version_rebuilds_everything(up: Env) -> None:
    env = up
    spawn_alice(env)
    newer = MetaRepo.open(env.layout, CFG, version="0.2.0")
    result = env.make_swarm(newer).reconcile()
    assert result.ok
    assert {(a.agent, a.kind) for a in result.plan} == {
        ("manager", ActionKind.REBUILD),
        ("alice", ActionKind.REBUILD),
    }
    assert env.standin("alice")["settings"]["hyperhive_version"] == "0.2.0"


def test_prune_removes_the_process_keeps_state(up: Env) -> None:
    env = up
    spawn_alice(env)
    (env.layout.agent_state("alice") / "notes.md").write_text("keep me")
    pid = env.standin("alice")["pid"]
    env.push_main({"agents/alice": None}, "retire alice")
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.DESTROY)]
    assert "alice" not in env.driver.observe()
    assert env.destroys == ["alice"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not env.layout.agent_dir("alice").exists()
    [stone] = env.swarm.tombstones()
    assert stone["name"] == "alice" and stone["id"].startswith("alice-")
    kept = Path(stone["path"])
    assert (kept / "state" / "notes.md").read_text() == "keep me"
    assert "alice" not in env.status()["agents"]
    assert env.broker.closed == ["alice"]  # nobody waits on a gone agent's answer


def test_agent_rows_carry_dead_letter_counts(up: Env) -> None:
    env = up
    env.broker.dead = {"manager": 2}
    rows = {r["name"]: r for r in env.swarm.list_agents()}
    assert rows["manager"]["dead_letters"] == 2


# ------------------------------------------------------------------ crash safety


def test_building_without_outcome_is_finished_exactly_once(up: Env) -> None:
    env = up
    p = env.swarm.request_spawn("alice")
    env.swarm.approve(p.id)
    # the controller applied the proposal and wrote building/<id>, then got kill -9'd
    env.meta.apply_approved(p.id)
    main = env.meta.main_commit()
    assert f"building/{p.id}" in env.tags() and f"deployed/{p.id}" not in env.tags()

    restarted = env.make_swarm(MetaRepo.open_or_init(env.layout, CFG))
    result = restarted.reconcile()
    assert result.ok, result.errors
    assert env.meta.main_commit() == main  # never re-applied
    assert f"deployed/{p.id}" in env.tags()
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    tags = env.tags()
    restarted.reconcile()
    assert env.tags() == tags
    assert [x for x in env.broker.approvals() if x[0] == p.id] == [(p.id, "deployed")]


def test_push_recorded_but_not_finished_is_not_duplicated(up: Env) -> None:
    env = up
    env.push_main({"agents/alice/agent.yaml": manifest("alice")}, "alice")
    build = env.meta.record_push()  # then the controller died
    assert build is not None
    restarted = env.make_swarm(MetaRepo.open_or_init(env.layout, CFG))
    assert restarted.reconcile().ok
    ids = [p.id for p in env.swarm.proposals()]
    assert max(ids) == build.id  # no second id for the same push
    assert env.swarm.proposal(build.id).state is ProposalState.DEPLOYED


# ------------------------------------------------------------------ dry run, holds, failures


def test_dry_run_writes_nothing(up: Env) -> None:
    env = up
    p = env.swarm.request_spawn("alice")
    env.swarm.approve(p.id)
    env.push_main({"agents/bob/agent.yaml": manifest("bob")}, "bob")

    def snapshot() -> tuple[Any, ...]:
        files = {
            str(f): (f.stat().st_mtime_ns, f.stat().st_size)
            for f in env.layout.state.rglob("*")
            if f.is_file() and "/logs/" not in str(f)
        }
        return env.tags(), env.meta.main_commit(), files, sorted(env.driver.observe())

    before = snapshot()
    calls = len(env.broker.calls)
    result = env.swarm.reconcile(dry_run=True)
    assert result.dry_run and result.plan
    assert [(a.agent, a.kind) for a in result.plan] == [("bob", ActionKind.CREATE)]
    assert any(x.startswith(f"approved/{p.id}") for x in result.pending)
    assert any(x.startswith("main ") for x in result.pending)
    assert result.to_json()["in_sync"] is False
    assert snapshot() == before
    assert len(env.broker.calls) == calls


def test_kill_is_remembered_until_start(up: Env) -> None:
    env = up
    spawn_alice(env)
    out = env.swarm.lifecycle(Lifecycle.KILL, "alice")
    assert "stopped" in out
    assert env.swarm.reconcile().plan == ()
    assert env.driver.observe()["alice"].phase is Phase.STOPPED
    assert env.status()["agents"]["alice"]["held"] == "stopped by request"
    assert env.cond("alice", "Ready")["reason"] == "StoppedByRequest"
    # a controller restart keeps the hold
    assert env.make_swarm().reconcile().plan == ()
    assert "running" in env.swarm.lifecycle(Lifecycle.START, "alice")
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    assert env.swarm.reconcile().plan == ()
    pid = env.standin("alice")["pid"]
    assert "restarted" in env.swarm.lifecycle(Lifecycle.RESTART, "alice")
    assert env.standin("alice")["pid"] != pid
    assert "updated" in env.swarm.lifecycle(Lifecycle.UPDATE, "alice")
    with pytest.raises(NotFound):
        env.swarm.lifecycle(Lifecycle.START, "ghost")


def test_deploy_clears_a_hold(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.swarm.lifecycle(Lifecycle.KILL, "alice")
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet")
    assert env.swarm.reconcile().ok
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    assert env.status()["agents"]["alice"]["held"] is None


def test_suspend_stops_and_start_is_refused(up: Env) -> None:
    env = up
    spawn_alice(env)
    env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", extra="  suspend: true\n")}, "pause"
    )
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.STOP)]
    assert env.cond("alice", "Ready")["reason"] == "Suspended"
    with pytest.raises(Conflict, match="suspend"):
        env.swarm.lifecycle(Lifecycle.START, "alice")


def test_transient_failure_fails_the_deploy_and_backs_off(up: Env) -> None:
    env = up
    env.driver.start_grace = CRASH_GRACE
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "crash")}, "alice crashes")
    result = env.swarm.reconcile()
    assert not result.ok and "exited at start with code 3" in result.errors[0]
    latest = env.swarm.proposals()[0]
    assert latest.state is ProposalState.FAILED and "alice" in latest.note
    rec = env.cond("alice", "Reconciling")
    assert (rec["status"], rec["reason"]) == ("True", "RetryScheduled")
    log = env.layout.log_dir / "alice.log"
    starts = log.read_text().count("standin up")
    again = env.swarm.reconcile()
    assert again.plan and again.ok  # planned, but held back by the backoff
    assert log.read_text().count("standin up") == starts
    env.clock.now += 60
    env.swarm.reconcile()
    assert log.read_text().count("standin up") == starts + 1
    # fixing desired state resets the backoff at once
    env.driver.start_grace = START_GRACE  # a start that runs waits the whole grace out
    env.push_main({"agents/alice/agent.yaml": manifest("alice", "haiku")}, "alice fixed")
    assert env.swarm.reconcile().ok
    assert env.driver.observe()["alice"].phase is Phase.RUNNING
    assert env.swarm.proposals()[0].state is ProposalState.DEPLOYED


def test_crash_is_reported_and_restarted(up: Env) -> None:
    env = up
    spawn_alice(env)
    crash(env)
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.START)]
    crashes = env.broker.of("ContainerCrash")
    assert len(crashes) == 1 and crashes[0]["agent"] == "alice" and crashes[0]["restarts"] == 1
    assert env.driver.observe()["alice"].phase is Phase.RUNNING


def test_conditions_keep_their_transition_time(up: Env) -> None:
    env = up
    first = env.cond("manager", "Ready")["lastTransitionTime"]
    env.clock.now += 100
    env.swarm.reconcile()
    assert env.cond("manager", "Ready")["lastTransitionTime"] == first
    mtime = env.layout.status_file.stat().st_mtime_ns
    env.swarm.reconcile()
    assert env.layout.status_file.stat().st_mtime_ns == mtime  # a no-op pass writes nothing


def test_invalid_manifest_at_main_stalls_without_pruning(up: Env) -> None:
    env = up
    spawn_alice(env)
    # bypass the hook: write main with pygit2 directly
    repo = env.meta.repo
    main = repo.references["refs/heads/main"].target
    index = pygit2.Index()
    index.read_tree(repo[main].peel(pygit2.Tree))
    blob = repo.create_blob(
        b"apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\nspec: {model: 'x y'}\n"
    )
    index.add(pygit2.IndexEntry("agents/alice/agent.yaml", blob, pygit2.enums.FileMode.BLOB))
    sig = pygit2.Signature("t", "t@x")
    repo.create_commit("refs/heads/main", sig, sig, "broken", index.write_tree(repo), [main])
    result = env.swarm.reconcile()
    assert not result.ok and any("spec.model" in e for e in result.errors)
    assert env.driver.observe()["alice"].phase is Phase.RUNNING  # not pruned
    stalled = env.cond("alice", "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidManifest")
    assert env.swarm.proposals()[0].state is ProposalState.FAILED


def test_recipients_and_pass_requests(up: Env) -> None:
    env = up
    env.push_main(
        {"agents/alice/agent.yaml": manifest("alice", extra="  allowedRecipients: [bob]\n")}, "a"
    )
    env.swarm.reconcile()
    assert env.swarm.allowed_recipients("alice") == ("bob", "manager")
    assert env.swarm.allowed_recipients("manager") == ()
    assert env.swarm.wait_for_pass_request(0.01) is None
    env.swarm.request_pass("poke")
    env.swarm.request_pass("poke")
    env.swarm.request_pass("resync")
    assert env.swarm.wait_for_pass_request(1) == "poke, resync"
    assert env.swarm.wait_for_pass_request(0.01) is None
    st = env.swarm.status()
    assert st["runtime"] == "local" and st["main"] == env.meta.main_commit()
    assert st["pending"] == 0 and {a["name"] for a in st["agents"]} == {"manager", "alice"}


# ------------------------------------------------------------------ observed once per change


def test_requests_are_served_from_the_last_observation_until_the_driver_reports_a_change(
    up: Env,
) -> None:
    env = up
    spawn_alice(env)
    row = next(r for r in env.swarm.list_agents() if r["name"] == "alice")
    assert row["phase"] == "running"
    version = env.swarm.version()
    # nothing changed: the same token, and the same rows without observing again
    assert env.swarm.version() == version
    gen = env.driver.generation()
    # the harness dies: the driver's own child exiting is a driver event, so the very
    # next request sees it (no crash-watch tick needed)
    crash(env)
    assert env.driver.generation() != gen
    row = next(r for r in env.swarm.list_agents() if r["name"] == "alice")
    assert row["phase"] == "failed"
    assert env.swarm.version() != version


def test_tombstones_are_listed_from_disk_and_follow_a_destroy(up: Env) -> None:
    env = up
    spawn_alice(env)
    assert env.swarm.tombstones() == []
    env.swarm.destroy("alice")
    stones = env.swarm.tombstones()
    assert [(t["name"], t["in_place"]) for t in stones] == [("alice", False)]
    # the listing handed out is a copy: changing it changes nothing the next caller sees
    stones[0]["name"] = "mallory"
    assert [t["name"] for t in env.swarm.tombstones()] == ["alice"]


def test_status_json_is_the_status_and_follows_changes(up: Env) -> None:
    env = up
    spawn_alice(env)
    body = env.swarm.status_json()
    assert json.loads(body) == json.loads(json.dumps(env.swarm.status(), default=str))
    assert env.swarm.status_json() is body  # nothing moved: the encoded document is kept
    crash(env)
    doc = json.loads(env.swarm.status_json())
    assert next(r for r in doc["agents"] if r["name"] == "alice")["phase"] == "failed"
    # a quiet pass after a pass that planned nothing plans nothing, and still restarts
    # what the driver reports dead
    result = env.swarm.reconcile()
    assert [(a.agent, a.kind) for a in result.plan] == [("alice", ActionKind.START)]
    assert not env.swarm.reconcile().plan
    assert not env.swarm.reconcile().plan
    doc = json.loads(env.swarm.status_json())
    assert next(r for r in doc["agents"] if r["name"] == "alice")["phase"] == "running"


def test_status_rows_leave_out_the_observed_commit_that_is_main(up: Env) -> None:
    env = up
    spawn_alice(env)
    before = env.meta.main_commit()
    st = env.swarm.status()
    full = next(r for r in env.swarm.list_agents() if r["name"] == "alice")
    row = next(r for r in st["agents"] if r["name"] == "alice")
    assert st["main"] == before
    assert {c["observedCommit"] for c in full["conditions"]} == {before}  # list_agents: all
    assert row["conditions"] and all("observedCommit" not in c for c in row["conditions"])
    # the same rows but for it: a reader takes the document's main for a missing one
    assert [{**c, "observedCommit": st["main"]} for c in row["conditions"]] == full["conditions"]
    assert {k: v for k, v in row.items() if k != "conditions"} == {
        k: v for k, v in full.items() if k != "conditions"
    }
    assert env.swarm.status()["agents"] is st["agents"]  # nothing moved: the rows are kept
    env.push_main({"agents/bob/agent.yaml": manifest("bob")}, "bob")
    st = env.swarm.status()  # the rows follow main at once: still nothing to repeat
    row = next(r for r in st["agents"] if r["name"] == "alice")
    assert st["main"] != before
    assert all("observedCommit" not in c for c in row["conditions"])
    full = next(r for r in env.swarm.list_agents() if r["name"] == "alice")
    assert {c["observedCommit"] for c in full["conditions"]} == {st["main"]}


def test_one_shot_dry_run_takes_no_lock_and_writes_nothing(tmp_path: Path) -> None:
    from controller.serve import one_shot_pass, state_lock

    layout = Layout.for_state(tmp_path / "state")
    MetaRepo.open_or_init(layout, CFG)  # what a first `hyperhive serve` leaves

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(f): (f.stat().st_mtime_ns, f.stat().st_size)
            for f in layout.state.rglob("*")
            if not f.is_dir()
        }

    with state_lock(layout):  # a controller holds the state dir: a read needs no lock
        before = snapshot()
        result = one_shot_pass(CFG, str(layout.state), None, dry_run=True)
        assert snapshot() == before
    assert result["dry_run"] is True and not result["in_sync"]
    assert [(a["agent"], a["action"]) for a in result["plan"]] == [("manager", "create")]
    assert not layout.broker_db.exists() and not layout.run.exists()
    with pytest.raises(NotFound):  # no meta repo: nothing to plan, and none is made
        one_shot_pass(CFG, str(tmp_path / "empty"), None, dry_run=True)
    assert not (tmp_path / "empty").exists()


def test_an_agents_report_moves_its_conditions_and_the_version(up: Env) -> None:
    env = up
    spawn_alice(env)
    report: dict[str, Any] = {
        "claude": {"found": True, "path": "/usr/bin/claude", "version": "2.1.3 (Claude Code)"},
        "credentials": {"present": True, "source": "env ANTHROPIC_API_KEY", "rejected": False},
        "turn": {"running": True, "number": 1},
        "api": {"status": 529, "error": "overloaded", "attempt": 1, "max_retries": 10},
    }
    validate(report, "wire#AgentReport")
    before = env.swarm.version()
    assert env.swarm.agent_report("alice", report) is True
    assert env.swarm.agent_report("alice", report) is False  # the same report: no change
    assert env.swarm.version() != before  # the dashboard's ETag moves with it
    row = next(a for a in env.swarm.status()["agents"] if a["name"] == "alice")
    conds = {c["type"]: c for c in row["conditions"]}
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("True", "ApiOverloaded")
    assert row["harness"]["api"]["status"] == 529
    json.loads(env.swarm.status_json())  # the encoded status follows too
    assert b"ApiOverloaded" in env.swarm.status_json()
    # only alice's row speaks for alice: another agent's report does not touch it
    env.swarm.agent_report("manager", {**report, "api": None})
    row = next(a for a in env.swarm.status()["agents"] if a["name"] == "alice")
    assert any(c["reason"] == "ApiOverloaded" for c in row["conditions"])
    # the manager hears the agent's own word on its login (a key in its environment here)
    env.swarm.watch()

    def alices(kind: str) -> int:
        return sum(1 for e in env.broker.of(kind) if e["agent"] == "alice")

    assert alices("LoggedIn") == 1
    needs = alices("NeedsLogin")
    # a restart replaces the process: its report goes with it until the new one reports
    env.swarm.lifecycle(Lifecycle.RESTART, "alice")
    row = next(a for a in env.swarm.status()["agents"] if a["name"] == "alice")
    assert "harness" not in row
    assert {c["type"]: c["reason"] for c in row["conditions"]}["Degraded"] == "NotReported"
    env.swarm.watch()  # meanwhile the controller's own reading does not flip the login state
    env.swarm.agent_report("alice", report)
    env.swarm.watch()
    assert alices("NeedsLogin") == needs and alices("LoggedIn") == 1
