"""controller.metarepo against real git repos in tmp dirs (pygit2 + the git CLI, no mocks)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pygit2
import pytest

from controller.config import Config
from controller.errors import Conflict, Invalid, NotFound
from controller.metarepo import ApplyFailed, MetaRepo, build_digest, unshare_object_files
from controller.metarepo.core import retry_locked
from controller.ops import ProposalKind, ProposalState
from controller.paths import Layout
from tests.gitutil import git

CFG = Config(default_model="haiku", hyperhive_flake="path:/src/hyperhive")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state", tmp_path / "run")


@pytest.fixture
def meta(layout: Layout) -> MetaRepo:
    return MetaRepo.open_or_init(layout, CFG)


def refs(meta: MetaRepo) -> dict[str, str]:
    return {r.name: str(r.target) for r in meta.repo.references.iterator()}


def write_main(meta: MetaRepo, files: dict[str, bytes | None], message: str = "edit") -> str:
    """Commit on main directly (bypassing hooks), like a controller-side change."""
    repo = meta.repo
    main = repo.references["refs/heads/main"].target
    index = pygit2.Index()
    index.read_tree(repo[main].peel(pygit2.Tree))
    for path, data in files.items():
        if data is None:
            index.remove(path)
        else:
            index.add(pygit2.IndexEntry(path, repo.create_blob(data), pygit2.enums.FileMode.BLOB))
    tree = index.write_tree(repo)
    sig = pygit2.Signature("t", "t@x")
    return str(repo.create_commit("refs/heads/main", sig, sig, message, tree, [main]))


def manifest(name: str, model: str = "haiku", extra: str = "") -> bytes:
    return (
        f"apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n"
        f"  model: {model}\n{extra}"
    ).encode()


def clone_commit(meta: MetaRepo, files: dict[str, bytes | None], message: str) -> str:
    """Commit in the manager's clone (on top of origin/main) with the git CLI."""
    clone = meta.layout.manager_meta
    git("fetch", "-q", "origin", cwd=clone)
    git("checkout", "-q", "-B", "work", "origin/main", cwd=clone)
    for path, data in files.items():
        p = clone / path
        if data is None:
            git("rm", "-q", path, cwd=clone)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            git("add", path, cwd=clone)
    git("commit", "-q", "-m", message, cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone).stdout.strip()


# ---------------------------------------------------------------- init


def test_init_layout(meta: MetaRepo, layout: Layout) -> None:
    repo = meta.repo
    assert repo.is_bare
    assert repo.references["HEAD"].target == "refs/heads/main"
    tree = repo[meta.main_commit()].peel(pygit2.Tree)
    assert sorted(e.name or "" for e in tree) == ["agents", "flake.nix"]
    flake = repo[tree["flake.nix"].id].peel(pygit2.Blob).data.decode()
    assert "path:/src/hyperhive" in flake and "@HYPERHIVE_FLAKE@" not in flake
    yaml = repo.revparse_single("main:agents/manager/agent.yaml").peel(pygit2.Blob).data.decode()
    assert "name: manager" in yaml and "model: haiku" in yaml
    for hook in ("pre-receive", "post-receive"):
        p = layout.meta_git / "hooks" / hook
        assert os.access(p, os.X_OK)
        assert "-m controller.hook" in p.read_text()
    assert repo.config["receive.denyNonFastForwards"] == "true"
    clone = pygit2.Repository(str(layout.manager_meta))
    assert str(clone.references["refs/remotes/origin/main"].target) == meta.main_commit()
    assert clone.config["user.name"] == "manager"


def test_second_open_writes_nothing(meta: MetaRepo, layout: Layout) -> None:
    def snapshot() -> dict[str, float]:
        return {str(p): p.stat().st_mtime_ns for p in layout.meta_git.rglob("*") if p.is_file()}

    before, before_refs = snapshot(), refs(meta)
    again = MetaRepo.open_or_init(layout, CFG)
    assert snapshot() == before
    assert refs(again) == before_refs
    assert again.main_commit() == meta.main_commit()


def test_hooks_heal(meta: MetaRepo, layout: Layout) -> None:
    hook = layout.meta_git / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 0\n")
    MetaRepo.open_or_init(layout, CFG, python="/new/venv/bin/python")
    assert "/new/venv/bin/python -m controller.hook pre-receive" in hook.read_text()


def test_open_requires_repo(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        MetaRepo.open(Layout(tmp_path / "nope", tmp_path / "run"), CFG)


# ---------------------------------------------------------------- desired


def test_desired_digests(meta: MetaRepo) -> None:
    d = meta.desired()
    assert set(d.agents) == {"manager"}
    m = d.agents["manager"]
    tree = meta.repo[meta.main_commit()].peel(pygit2.Tree)
    assert m.config_digest == str((tree / "agents/manager/agent.yaml").id)
    assert m.build_digest == build_digest("", str(tree["flake.nix"].id), "", meta.version)
    assert not m.has_nix and m.commit == d.commit == meta.main_commit()

    write_main(meta, {"agents/alice/agent.yaml": manifest("alice", "sonnet")})
    d2 = meta.desired()
    assert d2.agents["manager"].build_digest == m.build_digest
    assert d2.agents["manager"].config_digest == m.config_digest
    assert d2.agents["alice"].manifest.model == "sonnet"

    write_main(meta, {"agents/alice/agent.nix": b"{ ... }: {}\n"})
    d3 = meta.desired()
    assert d3.agents["alice"].has_nix
    assert d3.agents["alice"].build_digest != d2.agents["alice"].build_digest
    assert d3.agents["alice"].config_digest == d2.agents["alice"].config_digest
    assert d3.agents["manager"].build_digest == m.build_digest

    write_main(meta, {"flake.lock": b'{"nodes": {"root": {}}, "root": "root", "version": 7}\n'})
    d4 = meta.desired()
    assert all(d4.agents[n].build_digest != d3.agents[n].build_digest for n in d4.agents)

    other = MetaRepo.open(meta.layout, CFG, version="9.9.9")
    assert other.desired().agents["manager"].build_digest != d4.agents["manager"].build_digest


def test_desired_is_cached_by_commit(meta: MetaRepo) -> None:
    assert meta.desired() is meta.desired()


def test_desired_reports_invalid_manifests(meta: MetaRepo) -> None:
    write_main(
        meta,
        {
            "agents/alice/agent.yaml": manifest("bob"),
            "agents/carl/agent.yaml": manifest("carl", "'a b'"),
            "agents/dora/agent.yaml": manifest("dora"),
        },
    )
    desired, invalid = meta.desired_checked()
    assert set(desired.agents) == {"manager", "dora"}
    assert "metadata.name" in invalid["alice"]
    assert invalid["carl"].startswith("agents/carl/agent.yaml: spec.model:")


# ---------------------------------------------------------------- proposals


def test_propose_spawn(meta: MetaRepo) -> None:
    main = meta.main_commit()
    p = meta.propose_spawn("alice")
    assert (p.id, p.kind, p.state, p.base, p.title) == (
        1,
        ProposalKind.SPAWN,
        ProposalState.PENDING,
        main,
        "spawn alice",
    )
    assert p.agents == ("alice",)
    assert "+  name: alice" in p.diff and "+  model: haiku" in p.diff
    commit = meta.repo[p.commit].peel(pygit2.Commit)
    assert [str(x) for x in commit.parent_ids] == [main]
    assert meta.main_commit() == main  # main untouched
    assert str(meta.repo.references["refs/tags/proposal/1"].target) == p.commit
    assert [x.id for x in meta.proposals(pending_only=True)] == [1]


@pytest.mark.parametrize("name", ["Alice", "manager", "operator", "toolongname", "", "a_b", "9x"])
def test_propose_spawn_invalid_writes_nothing(meta: MetaRepo, name: str) -> None:
    before = refs(meta)
    with pytest.raises(Invalid) as info:
        meta.propose_spawn(name)
    assert info.value.field == "name"
    assert refs(meta) == before


def test_propose_spawn_conflicts(meta: MetaRepo) -> None:
    meta.propose_spawn("alice")
    before = refs(meta)
    with pytest.raises(Conflict, match="proposal/1 already spawns"):
        meta.propose_spawn("alice")
    write_main(meta, {"agents/bob/agent.yaml": manifest("bob")})
    with pytest.raises(Conflict, match="already exists"):
        meta.propose_spawn("bob")
    assert {k: v for k, v in refs(meta).items() if "tags" in k} == {
        k: v for k, v in before.items() if "tags" in k
    }
    # once denied, the name is free again
    meta.deny(1, "not now")
    assert meta.propose_spawn("alice").id == 2


def test_ids_are_shared_across_prefixes(meta: MetaRepo) -> None:
    assert meta.propose_spawn("alice").id == 1
    main = meta.repo.references["refs/heads/main"].target
    meta.repo.references.create("refs/tags/failed/7", main)
    assert meta.propose_spawn("bob").id == 8
    # somebody else grabbed 9 between our scan and our create: we skip to 10
    meta.repo.references.create("refs/tags/proposal/9", main)
    idx = meta.refs.index
    assert idx is not None
    idx.max_id, idx.racy, idx.fingerprint = 8, False, meta.refs.fingerprint()[0]
    meta.refs.dirty = False  # a stale index on purpose: the create must still be race-safe
    assert meta.propose_spawn("carl").id == 10


def test_propose_commit(meta: MetaRepo) -> None:
    write_main(meta, {"agents/alice/agent.yaml": manifest("alice")})
    meta.sync_manager_clone()
    c1 = clone_commit(
        meta, {"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "alice: sonnet"
    )
    p = meta.propose_commit(c1, note="faster model")
    assert p.kind is ProposalKind.APPLY_COMMIT and p.state is ProposalState.PENDING
    assert p.commit == c1 and p.base == meta.main_commit()
    assert p.agents == ("alice",) and p.note == "faster model" and p.title == "alice: sonnet"
    assert "-  model: haiku" in p.diff and "+  model: sonnet" in p.diff
    with pytest.raises(Conflict, match="already pending as proposal/1"):
        meta.propose_commit(c1)


def test_propose_commit_stack_records_merge_base(meta: MetaRepo) -> None:
    main = meta.main_commit()
    clone = meta.layout.manager_meta
    clone_commit(meta, {"agents/bob/agent.yaml": manifest("bob")}, "spawn bob")
    (clone / "agents/bob/agent.yaml").write_bytes(manifest("bob", "opus"))
    git("commit", "-q", "-am", "bob: opus", cwd=clone)
    tip = git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    p = meta.propose_commit(tip)
    assert p.base == main and p.agents == ("bob",)
    assert "+  model: opus" in p.diff


def test_propose_commit_refuses_a_clone_that_reads_elsewhere(
    meta: MetaRepo, tmp_path: Path
) -> None:
    """The manager owns its clone: it must not make the controller import another repo's
    commits (which the manager could then read back)."""
    clone = meta.layout.manager_meta
    c1 = clone_commit(meta, {"agents/bob/agent.yaml": manifest("bob")}, "spawn bob")
    # a private repository elsewhere on the host, with a commit the manager must not reach
    other = tmp_path / "private"
    git("init", "-q", "-b", "main", str(other), cwd=tmp_path)
    (other / "secret.txt").write_text("s3cret")
    git("add", "secret.txt", cwd=other)
    git("commit", "-qm", "secret", cwd=other)
    secret = git("rev-parse", "HEAD", cwd=other).stdout.strip()
    before = refs(meta)

    def refused(match: str) -> None:
        with pytest.raises(Invalid, match=match) as info:
            meta.propose_commit(secret)
        assert info.value.field == "commit"
        assert refs(meta) == before and secret not in meta.repo

    alternates = clone / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(str(other / ".git" / "objects") + "\n")
    refused("borrows objects from elsewhere")
    alternates.unlink()
    loose = clone / ".git" / "objects" / secret[:2]
    if loose.exists():
        loose.rename(tmp_path / "kept")
    loose.symlink_to(other / ".git" / "objects" / secret[:2])
    refused("symbolic link among its objects")
    loose.unlink()
    if (tmp_path / "kept").exists():
        (tmp_path / "kept").rename(loose)
    real = clone / ".git"
    real.rename(tmp_path / "real-git")
    (clone / ".git").write_text(f"gitdir: {other / '.git'}\n")
    refused("a file or a link")
    (clone / ".git").unlink()
    (clone / ".git").symlink_to(other / ".git")
    refused("a file or a link")
    (clone / ".git").unlink()
    (tmp_path / "real-git").rename(real)
    # the untouched clone still proposes
    assert meta.propose_commit(c1).commit == c1


def test_propose_commit_errors(meta: MetaRepo) -> None:
    bad = clone_commit(
        meta,
        {"agents/eve/agent.yaml": manifest("eve", "3")},
        "eve",
    )
    before = {k: v for k, v in refs(meta).items() if k.startswith("refs/tags/")}
    with pytest.raises(Invalid) as info:
        meta.propose_commit(bad)
    assert info.value.field == "agents/eve/agent.yaml"
    assert "spec.model" in info.value.message
    badname = clone_commit(meta, {"agents/Eve/agent.yaml": manifest("eve")}, "Eve")
    with pytest.raises(Invalid, match="agents/Eve"):
        meta.propose_commit(badname)
    nomgr = clone_commit(meta, {"agents/manager/agent.yaml": None}, "bye manager")
    with pytest.raises(Invalid, match="manager"):
        meta.propose_commit(nomgr)
    with pytest.raises(NotFound):
        meta.propose_commit("deadbeefdeadbeef")
    with pytest.raises(Conflict, match="already part of main"):
        meta.propose_commit(meta.main_commit())
    git("checkout", "-q", "-B", "work", "origin/main", cwd=meta.layout.manager_meta)
    git("commit", "-q", "--allow-empty", "-m", "nothing", cwd=meta.layout.manager_meta)
    with pytest.raises(Conflict, match="changes nothing"):
        meta.propose_commit("HEAD")
    assert {k: v for k, v in refs(meta).items() if k.startswith("refs/tags/")} == before


def test_propose_commit_unrelated_history(meta: MetaRepo, tmp_path: Path) -> None:
    other = tmp_path / "other"
    git("init", "-q", "-b", "main", str(other))
    (other / "x").write_text("x")
    git("add", "x", cwd=other)
    git("commit", "-q", "-m", "x", cwd=other)
    with pytest.raises(Invalid, match="no history"):
        meta.propose_commit("HEAD", other)


# ---------------------------------------------------------------- decisions + apply


def test_approve_deny_states(meta: MetaRepo) -> None:
    a = meta.propose_spawn("alice")
    b = meta.propose_spawn("bob")
    assert meta.approve(a.id).state is ProposalState.APPROVED
    assert (
        meta.repo.references["refs/tags/approved/1"].target
        == meta.repo.references["refs/tags/proposal/1"].target
    )
    d = meta.deny(b.id, "we have enough bobs")
    assert d.state is ProposalState.DENIED and d.note == "we have enough bobs"
    tag = meta.repo[meta.repo.references["refs/tags/denied/2"].target]
    assert isinstance(tag, pygit2.Tag) and tag.message.strip() == "we have enough bobs"
    with pytest.raises(Conflict):
        meta.approve(b.id)
    with pytest.raises(Conflict):
        meta.deny(a.id, "too late")
    with pytest.raises(NotFound):
        meta.approve(99)
    assert meta.proposals(pending_only=True) == []
    assert [p.id for p in meta.proposals()] == [2, 1]
    assert [d.id for d in meta.denied_unnotified()] == [2]
    meta.mark_notified(2)
    assert meta.denied_unnotified() == []


def test_apply_fast_forward(meta: MetaRepo) -> None:
    p = meta.propose_spawn("alice")
    meta.approve(p.id, "go")
    assert meta.approved_unapplied() == [1]
    b = meta.apply_approved(1)
    assert meta.main_commit() == p.commit == b.commit
    assert b.agents == ("alice",) and b.kind is ProposalKind.SPAWN and not b.flake_changed
    assert meta.proposal(1).state is ProposalState.BUILDING
    assert meta.approved_unapplied() == []
    assert [x.id for x in meta.open_builds()] == [1]
    assert meta.last_deploy() == p.commit
    assert meta.record_push() is None
    meta.finish(1, True, "deployed it\n\nalice: create")
    assert meta.open_builds() == []
    pr = meta.proposal(1)
    assert pr.state is ProposalState.DEPLOYED and pr.note.startswith("deployed it")
    meta.finish(1, False, "ignored: an outcome is final")
    assert meta.proposal(1).state is ProposalState.DEPLOYED


def test_apply_merges_when_main_moved(meta: MetaRepo) -> None:
    p = meta.propose_spawn("alice")
    moved = write_main(meta, {"agents/bob/agent.yaml": manifest("bob")})
    meta.approve(p.id)
    b = meta.apply_approved(p.id)
    head = meta.repo[meta.main_commit()].peel(pygit2.Commit)
    assert [str(x) for x in head.parent_ids] == [moved, p.commit]
    assert b.commit == str(head.id)
    assert set(meta.desired().agents) == {"manager", "alice", "bob"}
    # applying again (crash between main move and outcome) does not move main
    assert meta.apply_approved(p.id).commit == b.commit


def test_apply_conflict_leaves_main(meta: MetaRepo) -> None:
    write_main(meta, {"agents/alice/agent.yaml": manifest("alice")})
    meta.sync_manager_clone()
    c = clone_commit(meta, {"agents/alice/agent.yaml": manifest("alice", "sonnet")}, "sonnet")
    p = meta.propose_commit(c)
    main = write_main(meta, {"agents/alice/agent.yaml": manifest("alice", "opus")})
    meta.approve(p.id)
    with pytest.raises(ApplyFailed, match=r"agents/alice/agent\.yaml"):
        meta.apply_approved(p.id)
    assert meta.main_commit() == main
    meta.finish(p.id, False, "conflict")
    assert meta.proposal(p.id).state is ProposalState.FAILED
    assert meta.approved_unapplied() == []


def test_record_push(meta: MetaRepo) -> None:
    # the genesis commit is the controller's own bootstrap: no id, nothing to record
    assert meta.record_push() is None
    assert meta.last_deploy() == meta.main_commit()
    first = write_main(meta, {"flake.lock": b"{}\n"}, "lock the flake")
    b1 = meta.record_push()
    assert b1 is not None and b1.id == 1 and b1.kind is ProposalKind.PUSH
    assert b1.flake_changed and b1.commit == first
    assert meta.record_push() is None
    meta.finish(1, True, "initial")
    new = write_main(meta, {"agents/alice/agent.yaml": manifest("alice")}, "add alice")
    b = meta.record_push()
    assert b is not None and (b.id, b.commit, b.agents, b.flake_changed) == (
        2,
        new,
        ("alice",),
        False,
    )
    p = meta.proposal(2)
    assert p.kind is ProposalKind.PUSH and p.state is ProposalState.BUILDING
    assert p.title == "add alice" and "+  name: alice" in p.diff


def test_ref_index_sees_external_tags(meta: MetaRepo, tmp_path: Path) -> None:
    meta.propose_spawn("alice")
    assert meta.approved_unapplied() == []
    work = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(work))
    git("fetch", "-q", "origin", "refs/tags/*:refs/tags/*", cwd=work)
    git("tag", "approved/1", "proposal/1", cwd=work)
    git("push", "-q", "origin", "approved/1", cwd=work)
    assert meta.approved_unapplied() == [1]


def test_pass_scope_holds_the_index_for_its_thread_only(meta: MetaRepo, tmp_path: Path) -> None:
    import threading

    meta.propose_spawn("alice")
    meta.propose_spawn("bob")
    work = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(work))
    git("fetch", "-q", "origin", "refs/tags/*:refs/tags/*", cwd=work)
    with meta.pass_scope():
        assert meta.approved_unapplied() == []
        meta.approve(1)  # a verb (not a pass write): the index is rebuilt
        assert meta.approved_unapplied() == [1]
        # the controller's own writes are applied to the held index
        build = meta.apply_approved(1)
        assert meta.open_builds()[0].id == build.id and meta.approved_unapplied() == []
        meta.finish(1, True, "ok")
        assert meta.open_builds() == [] and meta.proposal(1).state.value == "deployed"
        # an operator push meanwhile: the pass thread keeps its index ...
        git("tag", "approved/2", "proposal/2", cwd=work)
        git("push", "-q", "origin", "approved/2", cwd=work)
        assert meta.approved_unapplied() == []
        # ... other threads see it at once
        seen: list[list[int]] = []
        t = threading.Thread(target=lambda: seen.append(meta.approved_unapplied()))
        t.start()
        t.join()
        assert seen == [[2]]
    assert meta.approved_unapplied() == [2]  # and the next pass does too


def states(meta: MetaRepo) -> dict[str, tuple[int, ...]]:
    return {s.value: ids for s, ids in meta.ids_by_state().items() if ids}


def test_ids_by_state_follows_every_ref_change(meta: MetaRepo, tmp_path: Path) -> None:
    """``ids_by_state`` is kept between ref changes (``/status`` asks on every request) and
    worked out again after each: the controller's own writes, in a pass and out of it, an
    operator's push, and refs packed or deleted on the host."""
    import time

    from controller.metarepo import RACY_NS

    assert states(meta) == {}
    for name in ("alice", "bob", "carol"):
        meta.propose_spawn(name)
    assert states(meta) == {"pending": (1, 2, 3)}
    meta.approve(1)
    meta.deny(3, "no")
    assert states(meta) == {"pending": (2,), "approved": (1,), "denied": (3,)}
    with meta.pass_scope():
        meta.approved_unapplied()  # the pass checks the ref storage once, then holds it
        build = meta.apply_approved(1)  # a pass write, applied to the held index
        assert states(meta) == {"pending": (2,), "building": (build.id,), "denied": (3,)}
        meta.finish(1, True, "ok")
        assert states(meta) == {"pending": (2,), "deployed": (1,), "denied": (3,)}
    time.sleep(RACY_NS / 1e9 + 0.1)  # past the racy window: the index is trusted as is
    first = meta.ids_by_state()
    assert meta.ids_by_state() is first  # nothing changed: nothing worked out again
    work = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(work))
    git("fetch", "-q", "origin", "refs/tags/*:refs/tags/*", cwd=work)
    git("tag", "approved/2", "proposal/2", cwd=work)
    git("push", "-q", "origin", "approved/2", cwd=work)
    assert states(meta) == {"approved": (2,), "deployed": (1,), "denied": (3,)}
    git("--git-dir", str(meta.path), "pack-refs", "--all")
    assert states(meta) == {"approved": (2,), "deployed": (1,), "denied": (3,)}
    # the hook refuses to delete a decision; on the host, git itself can (from packed-refs)
    git("--git-dir", str(meta.path), "update-ref", "-d", "refs/tags/approved/2")
    assert states(meta) == {"pending": (2,), "deployed": (1,), "denied": (3,)}
    assert [p.id for p in meta.proposals(pending_only=True)] == [2]
    assert [p.id for p in meta.proposals()] == [3, 2, 1]
    assert [p.id for p in meta.proposals(limit=2)] == [3, 2]


def test_sync_manager_clone(meta: MetaRepo) -> None:
    new = write_main(meta, {"agents/alice/agent.yaml": manifest("alice")})
    assert meta.sync_manager_clone() is True
    clone = pygit2.Repository(str(meta.layout.manager_meta))
    assert str(clone.references["refs/remotes/origin/main"].target) == new
    assert (clone[new].peel(pygit2.Tree) / "agents/alice/agent.yaml") is not None
    assert meta.sync_manager_clone() is False


# ---------------------------------------------------------------- manager clone isolation


def object_inodes(git_dir: Path) -> dict[tuple[int, int], Path]:
    return {
        (st.st_dev, st.st_ino): p
        for p in (git_dir / "objects").rglob("*")
        if p.is_file() and not p.is_symlink()
        for st in [p.stat()]
    }


def test_the_manager_clone_shares_no_object_file_with_meta_git(
    meta: MetaRepo, layout: Layout
) -> None:
    """The manager's clone is bound read-write into its sandbox: an object file shared with
    meta.git (libgit2 hardlinks them in a local-path clone) would let it rewrite meta.git."""
    write_main(meta, {"agents/alice/agent.yaml": manifest("alice")})
    clone = layout.manager_meta
    shared = object_inodes(layout.meta_git).keys() & object_inodes(clone / ".git").keys()
    assert not shared
    assert all(p.stat().st_nlink == 1 for p in object_inodes(clone / ".git").values())
    repo = pygit2.Repository(str(clone))
    assert repo.remotes["origin"].url == layout.meta_git.as_uri()
    assert str(repo.references["refs/remotes/origin/main"].target) != meta.main_commit()
    assert meta.sync_manager_clone() is True  # objects are copied in, not linked
    assert not object_inodes(layout.meta_git).keys() & object_inodes(clone / ".git").keys()


def test_an_existing_hardlinked_clone_is_unshared_once(meta: MetaRepo, layout: Layout) -> None:
    clone = layout.manager_meta
    shutil.rmtree(clone)
    write_main(meta, {"agents/alice/agent.yaml": manifest("alice")})
    # a clone made the old way: a plain local path, which libgit2 hardlinks
    pygit2.clone_repository(str(layout.meta_git), str(clone), checkout_branch="main")
    linked = object_inodes(layout.meta_git).keys() & object_inodes(clone / ".git").keys()
    assert linked  # (what the old code left behind)
    (clone / "work.txt").write_text("the manager's uncommitted work\n")
    before = {
        p.relative_to(clone): (p.read_bytes(), p.stat().st_mode)
        for p in (clone / ".git" / "objects").rglob("*")
        if p.is_file()
    }

    again = MetaRepo.open_or_init(layout, CFG)
    assert not object_inodes(layout.meta_git).keys() & object_inodes(clone / ".git").keys()
    after = {
        p.relative_to(clone): (p.read_bytes(), p.stat().st_mode)
        for p in (clone / ".git" / "objects").rglob("*")
        if p.is_file()
    }
    assert after == before  # same files, same content and modes: only the links are gone
    assert all(
        st.st_nlink == 1
        for st in (p.stat() for p in (layout.meta_git / "objects").rglob("*") if p.is_file())
    )
    assert (clone / "work.txt").read_text() == "the manager's uncommitted work\n"
    repo = pygit2.Repository(str(clone))
    assert str(repo.head.target) == again.main_commit()
    git("fsck", "--no-progress", cwd=clone)
    git("fsck", "--no-progress", cwd=layout.meta_git)
    # once: nothing left to do the next time
    assert unshare_object_files(clone) == 0


def test_unsharing_follows_no_symlink(meta: MetaRepo, layout: Layout, tmp_path: Path) -> None:
    """The manager controls its clone: a symlinked objects dir or file is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "file"
    target.write_text("x")
    os.link(target, outside / "file-link")  # nlink 2
    objects = layout.manager_meta / ".git" / "objects"
    (objects / "zz").mkdir()
    (objects / "zz" / "sym").symlink_to(target)
    (objects / "zy").symlink_to(outside, target_is_directory=True)
    assert unshare_object_files(layout.manager_meta) == 0
    assert target.stat().st_nlink == 2
    assert sorted(p.name for p in outside.iterdir()) == ["file", "file-link"]
    real_objects = layout.manager_meta / ".git" / "objects"
    moved = tmp_path / "objects-real"
    real_objects.rename(moved)
    real_objects.symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError):
        unshare_object_files(layout.manager_meta)
    assert target.stat().st_nlink == 2


def _held(path: Path, seconds: float) -> threading.Thread:
    """Hold ``path`` (a ref's lock file, as another git process would) for ``seconds``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")

    def release() -> None:
        time.sleep(seconds)
        path.unlink()

    t = threading.Thread(target=release)
    t.start()
    return t


def test_ref_writes_wait_out_another_process_lock(meta: MetaRepo) -> None:
    """Each write of the proposal → deploy path meets its ref locked by another process
    (``git gc --auto`` packing refs, a push's receive-pack) for a moment: it waits, as git's
    CLI does, instead of failing (a 500 to the manager's ``request_*`` verbs)."""
    refs = meta.path / "refs"
    t = _held(refs / "tags" / "proposal" / "1.lock", 0.2)
    p = meta.propose_spawn("alice")  # allocates proposal/1
    t.join()
    t = _held(refs / "tags" / "approved" / "1.lock", 0.2)
    meta.approve(p.id, "go")
    t.join()
    held = [
        _held(refs / "heads" / "main.lock", 0.2),
        _held(refs / "tags" / "building" / "1.lock", 0.3),
    ]
    b = meta.apply_approved(p.id)
    for t in held:
        t.join()
    assert meta.main_commit() == p.commit == b.commit
    t = _held(refs / "tags" / "deployed" / "1.lock", 0.2)
    meta.finish(1, True, "deployed it")
    t.join()
    assert meta.proposal(1).state is ProposalState.DEPLOYED
    moved = write_main(meta, {"agents/bob/agent.yaml": manifest("bob")})
    t = _held(refs / "notes" / "hyperhive.lock", 0.2)
    pushed = meta.record_push()  # a GitOps push: its note on the new main commit
    t.join()
    assert pushed is not None and pushed.commit == str(moved)


def test_retry_locked_gives_up_and_passes_other_errors() -> None:
    calls: list[int] = []

    def locked() -> None:
        calls.append(1)
        raise OSError("failed to lock file '/x/refs/heads/main.lock' for writing: ")

    with pytest.raises(OSError, match="failed to lock"):
        retry_locked(locked, wait=0.15)
    assert len(calls) > 3  # tried again while it waited, then gave up

    def broken() -> None:
        calls.append(2)
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        retry_locked(broken, wait=5)
    assert calls.count(2) == 1  # not a lock: raised at once
