"""The controller's ref watch (``controller.refwatch``): a decision tag starts a pass by itself.

First against a bare repo and real ``git push`` (no hooks): an ``approved/<id>`` or
``denied/<id>`` tag asks for a pass, also the first one ever (git creates the
directory then), the controller's own tags do not. Then a real ``hyperhive serve``
whose post-receive hook was replaced by one that pokes nobody: an approval pushed
with plain git is deployed anyway (the resync tick is 60 s, well past the wait).
"""

from __future__ import annotations

import os
import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.refwatch import (
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    RefWatch,
    is_new_decision,
)
from tests.component.test_crash_safety import ROOT, Controller, ctl, wait_for

__all__ = ["ctl"]  # the fixture, imported for the serve test

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "op",
    "GIT_AUTHOR_EMAIL": "op@x",
    "GIT_COMMITTER_NAME": "op",
    "GIT_COMMITTER_EMAIL": "op@x",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Path, Path, queue.Queue[str], RefWatch]]:
    bare, work = tmp_path / "meta.git", tmp_path / "work"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("init", "-q", str(work), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=work)
    git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    asked: queue.Queue[str] = queue.Queue()
    watch = RefWatch(bare, asked.put)
    assert watch.start()
    try:
        yield bare, work, asked, watch
    finally:
        watch.stop()


def test_a_pushed_approval_asks_for_a_pass_also_the_first_one(
    repo: tuple[Path, Path, queue.Queue[str], RefWatch],
) -> None:
    bare, work, asked, _ = repo
    assert not (bare / "refs" / "tags" / "approved").exists()
    git("tag", "approved/1", cwd=work)
    git("push", "-q", str(bare), "approved/1", cwd=work)
    assert asked.get(timeout=10).startswith("approved/")
    git("tag", "approved/2", cwd=work)
    git("push", "-q", str(bare), "approved/2", cwd=work)
    while (reason := asked.get(timeout=10)) != "approved/2 (ref watch)":
        assert reason.startswith("approved/")  # the first push may be seen twice
    git("tag", "-a", "-m", "no", "denied/3", cwd=work)
    git("push", "-q", str(bare), "denied/3", cwd=work)
    assert asked.get(timeout=10).startswith("denied/")


def test_the_controllers_own_refs_do_not_ask(
    repo: tuple[Path, Path, queue.Queue[str], RefWatch],
) -> None:
    bare, work, asked, _ = repo
    head = git("rev-parse", "HEAD", cwd=work).strip()
    for ref in ("refs/tags/building/1", "refs/tags/deployed/1", "refs/tags/proposal/2"):
        git("update-ref", ref, head, cwd=bare)
    git("commit", "-q", "--allow-empty", "-m", "two", cwd=work)
    git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    # a marker after them: the watch handles events in order, so nothing came before it
    git("update-ref", "refs/tags/approved/9", head, cwd=bare)
    # (the first approved/ tag also creates its directory: one or two requests, both for it)
    assert asked.get(timeout=10).startswith("approved/")
    while not asked.empty():
        assert asked.get().startswith("approved/")


def test_stop_ends_the_thread(repo: tuple[Path, Path, queue.Queue[str], RefWatch]) -> None:
    _, _, _, watch = repo
    thread = watch._thread
    assert thread is not None and thread.is_alive()
    watch.stop()
    assert not thread.is_alive()


def test_a_repo_without_tags_dir_leaves_the_watch_off(tmp_path: Path) -> None:
    watch = RefWatch(tmp_path / "nothing.git", lambda reason: None)
    assert not watch.start()
    watch.stop()  # harmless


def test_the_marker_says_the_watch_is_on(tmp_path: Path) -> None:
    """While on, the watch keeps the controller's pid in its marker (the post-receive
    script skips the poke then); stopped — or never on — there is no marker."""
    bare = tmp_path / "meta.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    marker = tmp_path / "run" / "ref-watch.pid"
    marker.parent.mkdir()
    marker.write_text("1\n")  # a controller killed before it could remove its marker
    watch = RefWatch(bare, lambda reason: None, marker=marker)
    assert watch.start()
    assert marker.read_text() == f"{os.getpid()}\n"
    watch.stop()
    assert not marker.exists()
    (bare / "reftable").mkdir()  # refs that are no files: nothing to watch
    marker.write_text("1\n")
    watch = RefWatch(bare, lambda reason: None, marker=marker)
    assert not watch.start()
    assert not marker.exists()
    watch.stop()


def test_lost_events_ask_for_a_pass(tmp_path: Path) -> None:
    asked: list[str] = []
    watch = RefWatch(tmp_path, asked.append)
    watch._handle([(-1, IN_Q_OVERFLOW, "")])
    assert len(asked) == 1


def test_git_lock_files_and_directories_are_not_decisions() -> None:
    assert is_new_decision(IN_MOVED_TO, "3")
    assert is_new_decision(IN_CREATE, "3")
    assert not is_new_decision(IN_CREATE, "3.lock")
    assert not is_new_decision(IN_CREATE | IN_ISDIR, "x")
    assert not is_new_decision(IN_MOVED_TO, "")


def test_an_approval_pushed_without_the_poke_is_deployed(ctl: Controller) -> None:
    ctl.start()
    wait_for("the manager", lambda: ctl.starts("manager"), timeout=30)
    wait_for("the startup pass", lambda: (ctl.run / "manager" / "mcp.sock").exists())
    id = ctl.manager.post("/request_spawn", {"name": "carol"})["id"]
    meta_git = ctl.state / "meta.git"
    hook = meta_git / "hooks" / "post-receive"
    hook.write_text("#!/bin/sh\ncat >/dev/null\n")  # pokes nobody
    work = ctl.root / "op"
    git("clone", "-q", str(meta_git), str(work), cwd=ctl.root)
    git("fetch", "-q", "origin", "refs/tags/*:refs/tags/*", cwd=work)
    git("tag", f"approved/{id}", f"proposal/{id}", cwd=work)
    env = {**GIT_ENV, "PYTHONPATH": str(ROOT)}  # the pre-receive hook still judges it
    push = subprocess.run(
        ["git", "push", "origin", f"approved/{id}"], cwd=work, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert push.returncode == 0, push.stderr
    wait_for("deployed/<id>", lambda: f"refs/tags/deployed/{id}" in ctl.refs(), timeout=30)
    assert len(ctl.starts("carol")) == 1
    assert "(ref watch)" in ctl.log.read_text()
