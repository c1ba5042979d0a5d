"""A remote manager's commits: pushed to ``refs/hyperhive/manager/*``, proposed from there.

Real meta.git (``MetaRepo.open_or_init``), real ``git push`` on the file system with
``HYPERHIVE_PUSHER=manager`` (what ``controller.githttp`` sets for the manager's
credential; the installed pre-receive hook reads it), and ``propose_commit`` with no
manager clone on the controller's disk (as on the kubernetes runtime).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from controller.config import Config
from controller.errors import Invalid, NotFound
from controller.metarepo import MetaRepo
from controller.ops import ProposalKind, ProposalState
from controller.paths import Layout
from tests.gitutil import git

CFG = Config(default_model="haiku", hyperhive_flake="path:/src/hyperhive")


def manifest(name: str, model: str = "haiku") -> bytes:
    return (
        f"apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n"
        f"  model: {model}\n"
    ).encode()


@pytest.fixture
def meta(tmp_path: Path) -> MetaRepo:
    m = MetaRepo.open_or_init(Layout(tmp_path / "state", tmp_path / "run"), CFG)
    shutil.rmtree(m.layout.manager_meta)  # the manager's clone is in its pod, not here
    return m


@pytest.fixture
def pod_clone(meta: MetaRepo, tmp_path: Path) -> Path:
    """The manager's clone as it is in its pod: cloned from meta.git, elsewhere."""
    clone = tmp_path / "pod-meta"
    git("clone", "-q", str(meta.layout.meta_git), str(clone))
    return clone


def commit(clone: Path, files: dict[str, bytes], message: str) -> str:
    git("checkout", "-q", "-B", "work", "origin/main", cwd=clone)
    for path, data in files.items():
        (clone / path).parent.mkdir(parents=True, exist_ok=True)
        (clone / path).write_bytes(data)
        git("add", path, cwd=clone)
    git("commit", "-q", "-m", message, cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone).stdout.strip()


def push(clone: Path, *refspecs: str, pusher: str | None = "manager") -> tuple[bool, str]:
    """``git push origin <refspecs>`` as ``pusher`` (None: the operator on the file system)."""
    saved = os.environ.get("HYPERHIVE_PUSHER")
    if pusher is None:
        os.environ.pop("HYPERHIVE_PUSHER", None)
    else:
        os.environ["HYPERHIVE_PUSHER"] = pusher
    try:
        r = git("push", "origin", *refspecs, cwd=clone, check=False)
    finally:
        if saved is None:
            os.environ.pop("HYPERHIVE_PUSHER", None)
        else:
            os.environ["HYPERHIVE_PUSHER"] = saved
    return r.returncode == 0, r.stderr


def refs(meta: MetaRepo) -> dict[str, str]:
    return {r.name: str(r.target) for r in meta.repo.references.iterator()}


def test_a_pushed_commit_is_proposed_from_the_namespace(meta: MetaRepo, pod_clone: Path) -> None:
    c = commit(pod_clone, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    with pytest.raises(NotFound, match=r"nor pushed to refs/hyperhive/manager/\*"):
        meta.propose_commit(c)
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/work")
    assert ok, err
    # post-receive asks for no pass (desired state did not move) and says what is next
    assert "propose it with request_apply_commit" in err, err
    assert refs(meta)["refs/hyperhive/manager/work"] == c
    p = meta.propose_commit(c[:12], note="alice")
    assert (p.commit, p.kind, p.state) == (c, ProposalKind.APPLY_COMMIT, ProposalState.PENDING)
    assert "agents/alice/agent.yaml" in p.diff
    # handed over: proposal/<id> holds the commit, the namespace ref is gone
    assert "refs/hyperhive/manager/work" not in refs(meta)
    assert refs(meta)[f"refs/tags/proposal/{p.id}"] == c
    # the ref's name works as well; a moved ref (a rebased commit) is proposed anew
    c2 = commit(pod_clone, {"agents/bob/agent.yaml": manifest("bob")}, "add bob")
    ok, err = push(pod_clone, f"+{c2}:refs/hyperhive/manager/work")
    assert ok, err
    c3 = commit(pod_clone, {"agents/carol/agent.yaml": manifest("carol")}, "add carol")
    ok, err = push(pod_clone, f"+{c3}:refs/hyperhive/manager/work")
    assert ok, err
    assert meta.propose_commit("work").commit == c3
    # the manager may delete its own refs
    ok, err = push(pod_clone, f"{c2}:refs/hyperhive/manager/bob")
    assert ok, err
    ok, err = push(pod_clone, ":refs/hyperhive/manager/bob")
    assert ok, err
    assert not [r for r in refs(meta) if r.startswith("refs/hyperhive/manager/")]


def test_the_namespace_is_capped(meta: MetaRepo, pod_clone: Path) -> None:
    c = commit(pod_clone, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    specs = [f"{c}:refs/hyperhive/manager/n{i}" for i in range(100)]
    ok, err = push(pod_clone, *specs)
    assert ok, err
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/one-more")
    assert not ok and "would hold 101 refs, more than 100" in err, err
    ok, err = push(pod_clone, ":refs/hyperhive/manager/n0", f"{c}:refs/hyperhive/manager/one-more")
    assert ok, err  # a delete in the same push makes room
    # proposing the commit hands it over: every ref at it goes
    meta.propose_commit(c)
    assert not [r for r in refs(meta) if r.startswith("refs/hyperhive/manager/")]


def test_only_commits_the_manager_pushed_are_named(meta: MetaRepo, pod_clone: Path) -> None:
    c = commit(pod_clone, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/a")
    assert ok, err
    for name in ("main", "refs/heads/main", "HEAD", "a~1", "refs/hyperhive/last-deploy"):
        assert meta.pushed_commit(name) is None, name
    # main's commit is reachable from the pushed one: named, then refused as part of main
    assert meta.pushed_commit(meta.main_commit()) is not None


def test_a_bad_pushed_commit_is_refused_with_the_file(meta: MetaRepo, pod_clone: Path) -> None:
    c = commit(pod_clone, {"agents/eve/agent.yaml": manifest("eve", "3")}, "bad eve")
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/eve")
    assert ok, err  # the namespace holds anything; the proposal is where it is judged
    before = {k for k in refs(meta) if k.startswith("refs/tags/")}
    with pytest.raises(Invalid) as info:
        meta.propose_commit(c)
    assert info.value.field == "agents/eve/agent.yaml"
    assert {k for k in refs(meta) if k.startswith("refs/tags/")} == before


@pytest.mark.parametrize(
    ("refspec", "why"),
    [
        ("{c}:refs/heads/main", "refs/heads/main: the manager pushes only to"),
        ("{c}:refs/heads/other", "refs/heads/other: the manager pushes only to"),
        ("{c}:refs/tags/approved/1", "refs/tags/approved/1: the manager pushes only to"),
        ("{c}:refs/tags/mine", "refs/tags/mine: the manager pushes only to"),
        ("{c}:refs/hyperhive/last-deploy", "refs/hyperhive/last-deploy: the manager pushes"),
        ("{c}:refs/hyperhive/managerx", "refs/hyperhive/managerx: the manager pushes only"),
        ("{c}:refs/notes/hyperhive", "refs/notes/hyperhive: the manager pushes only to"),
        ("{tree}:refs/hyperhive/manager/t", "must point at a commit"),
    ],
)
def test_the_manager_is_held_to_its_namespace(
    meta: MetaRepo, pod_clone: Path, refspec: str, why: str
) -> None:
    c = commit(pod_clone, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    tree = git("rev-parse", "HEAD^{tree}", cwd=pod_clone).stdout.strip()
    before = refs(meta)
    # all or nothing: a good ref in the same push does not land either
    ok, err = push(pod_clone, refspec.format(c=c, tree=tree), f"{c}:refs/hyperhive/manager/ok")
    assert not ok
    assert why in err, err
    assert refs(meta) == before


def test_the_operator_cannot_write_the_namespace_nor_an_unknown_pusher(
    meta: MetaRepo, pod_clone: Path
) -> None:
    c = commit(pod_clone, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/x", pusher=None)
    assert not ok and "controller-owned" in err, err
    ok, err = push(pod_clone, f"{c}:refs/hyperhive/manager/x", pusher="alice")
    assert not ok and "not a pusher meta.git knows" in err, err
    assert "refs/hyperhive/manager/x" not in refs(meta)
