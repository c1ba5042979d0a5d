"""meta.git hooks, driven by real `git clone` / `git tag` / `git push` against the bare repo."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_agent import FakeOps

from controller.api import make_admin_app
from controller.auth import ensure_operator_key
from controller.broker import Broker
from controller.config import Config
from controller.metarepo import MetaRepo
from controller.paths import Layout
from hivehttp import serve_unix
from tests.gitutil import git

CFG = Config(default_model="haiku")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state", tmp_path / "run")


@pytest.fixture
def meta(layout: Layout) -> MetaRepo:
    return MetaRepo.open_or_init(layout, CFG)


@pytest.fixture
def work(meta: MetaRepo, tmp_path: Path) -> Path:
    """The operator's clone of meta.git, with every tag fetched."""
    w = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(w))
    return w


def fetch(work: Path) -> None:
    git("fetch", "-q", "--tags", "--force", "origin", cwd=work)


def push(work: Path, *refspecs: str) -> subprocess.CompletedProcess[str]:
    return git("push", "origin", *refspecs, cwd=work, check=False)


def refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res.stderr
    assert "pre-receive hook declined" in res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def tags(meta: MetaRepo) -> set[str]:
    return {r.name for r in meta.repo.references.iterator() if r.name.startswith("refs/tags/")}


def test_approve_with_a_pushed_tag(meta: MetaRepo, work: Path) -> None:
    p = meta.propose_spawn("alice")
    fetch(work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    res = push(work, "approved/1")
    assert res.returncode == 0, res.stderr
    assert "controller is not running" in res.stderr  # post-receive says so and exits 0
    assert meta.approved_unapplied() == [p.id]


def test_annotated_approval_and_denial(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    fetch(work)
    git("tag", "-a", "approved/1", "-m", "looks good", "proposal/1", cwd=work)
    git("tag", "-a", "denied/2", "-m", "no more bobs", "proposal/2", cwd=work)
    res = push(work, "approved/1", "denied/2")
    assert res.returncode == 0, res.stderr
    assert meta.proposal(1).note == "looks good"
    assert meta.proposal(2).note == "no more bobs"


@pytest.mark.parametrize("prefix", ["proposal", "building", "deployed", "failed"])
def test_forged_controller_tags_refused(meta: MetaRepo, work: Path, prefix: str) -> None:
    before = tags(meta)
    git("tag", f"{prefix}/5", "HEAD", cwd=work)
    refused(push(work, f"{prefix}/5"), f"{prefix}/5", "controller only")
    assert tags(meta) == before


def test_controller_bookkeeping_refs_refused(meta: MetaRepo, work: Path) -> None:
    # last-deploy already points at the genesis commit: moving it elsewhere is refused
    git("commit", "-q", "--allow-empty", "-m", "scratch", cwd=work)
    refused(push(work, "HEAD:refs/hyperhive/last-deploy"), "controller-owned")
    refused(push(work, "HEAD:refs/hyperhive/other"), "controller-owned")
    refused(push(work, "HEAD:refs/notes/hyperhive"), "controller-owned")


def test_decisions_are_final(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    meta.approve(1)
    fetch(work)
    # move approved/1 elsewhere
    git("tag", "-f", "approved/1", "proposal/2", cwd=work)
    refused(push(work, "--force", "approved/1"), "decisions are final", "move")
    # delete it
    refused(push(work, ":refs/tags/approved/1"), "decisions are final", "delete")
    # deny what is approved
    git("tag", "-a", "denied/1", "-m", "changed my mind", "proposal/1", cwd=work)
    refused(push(work, "denied/1"), "already approved")
    assert meta.proposal(1).state.value == "approved"


def test_decision_checks(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    fetch(work)
    git("tag", "approved/7", "HEAD", cwd=work)
    refused(push(work, "approved/7"), "there is no proposal/7")
    git("tag", "approved/01", "proposal/1", cwd=work)
    refused(push(work, "approved/01"), "positive integer")
    git("tag", "approved/1", "proposal/2", cwd=work)
    refused(push(work, "approved/1"), "must point at proposal/1's commit")
    git("tag", "-f", "approved/2", "proposal/2", cwd=work)
    git("tag", "-a", "denied/2", "-m", "no", "proposal/2", cwd=work)
    refused(push(work, "approved/2", "denied/2"), "already")
    assert meta.approved_unapplied() == []
    assert tags(meta) == {"refs/tags/proposal/1", "refs/tags/proposal/2"}


def test_approving_a_deployed_id_is_refused(meta: MetaRepo, work: Path) -> None:
    meta.propose_spawn("alice")
    meta.approve(1)
    meta.apply_approved(1)
    fetch(work)
    git("tag", "-a", "denied/1", "-m", "late", "proposal/1", cwd=work)
    refused(push(work, "denied/1"), "already approved")


def test_main_push_validates_manifests(meta: MetaRepo, work: Path) -> None:
    main = meta.main_commit()
    (work / "agents/alice").mkdir()
    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\n"
        "spec: {model: 'no spaces'}\n"
    )
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "alice", cwd=work)
    refused(push(work, "main"), "agents/alice/agent.yaml", "spec.model")
    assert meta.main_commit() == main

    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: bob}\n"
    )
    git("commit", "-q", "-am", "alice named bob", cwd=work)
    refused(push(work, "main"), "agents/alice/agent.yaml", "metadata.name")

    (work / "agents/alice/agent.yaml").write_text(
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\nspec: {model: sonnet}\n"
    )
    git("commit", "-q", "-am", "alice ok", cwd=work)
    res = push(work, "main")
    assert res.returncode == 0, res.stderr
    assert meta.desired().agents["alice"].manifest.model == "sonnet"


def test_main_push_keeps_manager_and_flake(meta: MetaRepo, work: Path) -> None:
    git("rm", "-q", "-r", "agents/manager", cwd=work)
    git("commit", "-q", "-m", "bye", cwd=work)
    refused(push(work, "main"), "agents/manager/agent.yaml", "must stay")
    git("reset", "-q", "--hard", "origin/main", cwd=work)
    git("rm", "-q", "flake.nix", cwd=work)
    git("commit", "-q", "-m", "no flake", cwd=work)
    refused(push(work, "main"), "flake.nix")


def test_main_is_fast_forward_only_and_undeletable(meta: MetaRepo, work: Path) -> None:
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=work)
    assert push(work, "main").returncode == 0
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "other", cwd=work)
    res = push(work, "--force", "main")
    assert res.returncode != 0
    res = push(work, ":main")
    assert res.returncode != 0


def test_operator_branches_are_free(meta: MetaRepo, work: Path) -> None:
    git("commit", "-q", "--allow-empty", "-m", "wip", cwd=work)
    assert push(work, "HEAD:refs/heads/wip").returncode == 0
    assert push(work, ":refs/heads/wip").returncode == 0


@pytest.fixture
def poke_server(layout: Layout) -> Iterator[FakeOps]:
    """The real host.sock app (fake swarm ops) with the install's operator key."""
    broker = Broker(layout.state / "broker.sqlite")
    ops = FakeOps()
    listener = serve_unix(
        make_admin_app(broker, ops, ensure_operator_key(layout)), layout.host_sock
    )
    try:
        yield ops
    finally:
        listener.stop(timeout=3.0)
        broker.close()


def _approve_by_push(meta: MetaRepo, work: Path) -> subprocess.CompletedProcess[str]:
    meta.propose_spawn("alice")
    fetch(work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    res = push(work, "approved/1")
    assert res.returncode == 0, res.stderr
    return res


def test_post_receive_pokes_the_controller(
    meta: MetaRepo, work: Path, poke_server: FakeOps
) -> None:
    res = _approve_by_push(meta, work)
    assert poke_server.passes == ["hook"]
    assert "the controller is reconciling" in res.stderr


def test_post_receive_without_the_operator_key_still_accepts_the_push(
    meta: MetaRepo, work: Path, layout: Layout, poke_server: FakeOps
) -> None:
    """A pusher who cannot read operator.key: the push stands, the poke is skipped."""
    layout.operator_key.write_text("x" * 43 + "\n")  # not the server's key
    res = _approve_by_push(meta, work)
    assert poke_server.passes == []
    assert "could not poke the controller" in res.stderr
    assert "operator key" in res.stderr
    layout.operator_key.unlink()
    git("tag", "denied/2", "proposal/1", cwd=work)  # any push runs the hook again
    res = push(work, "HEAD:refs/heads/wip")
    assert res.returncode == 0, res.stderr
    assert poke_server.passes == []
    assert str(layout.operator_key) in res.stderr and "hyperhive serve" in res.stderr
