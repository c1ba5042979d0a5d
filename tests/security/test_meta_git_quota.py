"""Attacks on meta.git's size from the manager's push namespace (docs/approvals.md).

The hook caps the manager's refs, not the objects it pushes: with the real git CLI over the
git listener of a real ``hyperhive serve`` (``new_hive`` of test_new_surfaces), the manager
pushes 24 MiB of incompressible data again and again, each time under a ref it then drops.
The quota must refuse the push that goes past the hour's bytes (429 with ``Retry-After``)
and bound what meta.git grew; a push to the namespace alone must start no pass (no poke);
``git gc --prune`` must take the dropped refs' objects away. The quota's arithmetic (push
count, the wait it answers) is checked on its own with an injected clock.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from controller.auth.operator import load_operator_key
from controller.config import Config
from controller.githttp import (
    HOUR,
    MANAGER_PUSH_BYTES_PER_HOUR,
    MAX_PUSH_BYTES,
    GitHttp,
    PushQuota,
)
from controller.metarepo import MetaRepo
from controller.paths import Layout
from schemas.names import MANAGER
from tests.security import test_new_surfaces as surfaces
from tests.security.support import Tally, http
from tests.security.test_new_surfaces import NewHive, _dir_bytes, _git

new_hive = surfaces.new_hive  # the same real serve (a fixture)

GROWTH = "meta.git: the manager's pushes are held to a quota"
BLOB = 24 * 1024 * 1024


def test_repeated_big_pushes_are_refused_past_the_hours_bytes(
    new_hive: NewHive, tally: Tally, tmp_path: Path
) -> None:
    h = new_hive
    cred = h.layout.agent_credential(MANAGER).read_text().strip()
    auth = ["-c", f"http.extraHeader=Authorization: Bearer {cred}"]
    clone = tmp_path / "mgr"
    r = _git(*auth, "clone", "-q", f"http://127.0.0.1:{h.git_port}/meta.git", str(clone),
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    before = _dir_bytes(h.layout.meta_git)
    sent, refused, said = 0, None, ""
    base = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    for i in range(MANAGER_PUSH_BYTES_PER_HOUR // BLOB + 5):
        _git("reset", "-q", "--hard", base, cwd=clone)  # each push sends one new blob only
        (clone / "blob.bin").write_bytes(os.urandom(BLOB))
        _git("add", "blob.bin", cwd=clone)
        _git("commit", "-q", "-m", f"push {i}", cwd=clone)
        r = _git(*auth, "push", "origin", f"HEAD:refs/hyperhive/manager/r{i}", cwd=clone)
        if r.returncode != 0:
            refused, said = i, r.stderr
            break
        sent += BLOB
        if i == 0:
            tally.record(GROWTH, "a push to the namespace alone asks for no pass",
                         "propose it with request_apply_commit" in r.stderr
                         and "reconciling" not in r.stderr, r.stderr[-300:])  # fmt: skip
        _git(*auth, "push", "-q", "origin", f":refs/hyperhive/manager/r{i}", cwd=clone)
    grew = (_dir_bytes(h.layout.meta_git) - before) / 2**20
    tally.figure("manager push quota", f"{sent >> 20} MiB accepted, then push {refused} refused; "
                 f"meta.git grew {grew:.0f} MiB")  # fmt: skip
    tally.record(GROWTH, "a push past the hour's bytes is refused with 429",
                 refused is not None and "429" in said, said[-300:])  # fmt: skip
    limit = (MANAGER_PUSH_BYTES_PER_HOUR + MAX_PUSH_BYTES) / 2**20
    tally.record(GROWTH, "meta.git grew at most the hour's quota", grew < limit,
                 f"grew {grew:.0f} MiB (quota {limit:.0f})")  # fmt: skip
    reply = http(("127.0.0.1", h.git_port), "POST", "/meta.git/git-receive-pack",
                 headers=[("Authorization", f"Bearer {cred}"),
                          ("Content-Type", "application/x-git-receive-pack-request")],
                 body=b"0000")  # fmt: skip
    wait = reply.header("retry-after") or ""
    tally.record(GROWTH, "the refusal says when to retry",
                 reply.status == 429 and wait.isdigit() and 0 < int(wait) <= HOUR,
                 reply.brief()[:200])  # fmt: skip
    key = load_operator_key(h.layout)
    mine = http(("127.0.0.1", h.git_port), "GET", "/meta.git/info/refs?service=git-upload-pack",
                headers=[("Authorization", f"Bearer {key}")])  # fmt: skip
    tally.record(GROWTH, "the operator is not held by the manager's quota", mine.status == 200,
                 mine.brief()[:200])  # fmt: skip
    tally.assert_refused(GROWTH)


def test_gc_prunes_the_objects_of_dropped_refs(tmp_path: Path, monkeypatch: object) -> None:
    layout = Layout.for_state(tmp_path / "state")
    git_dir = layout.meta_git
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    work = tmp_path / "work"
    _git("init", "-q", str(work), cwd=tmp_path)
    (work / "blob.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    _git("add", "blob.bin", cwd=work)
    _git("commit", "-q", "-m", "big", cwd=work)
    r = _git("push", "-q", str(git_dir), "HEAD:refs/hyperhive/manager/big", cwd=work)
    assert r.returncode == 0, r.stderr
    _git("--git-dir", str(git_dir), "update-ref", "-d", "refs/hyperhive/manager/big", cwd=tmp_path)
    before = _dir_bytes(git_dir / "objects")
    import controller.githttp as githttp

    monkeypatch.setattr(githttp, "GC_PRUNE_AGE", "now")  # type: ignore[attr-defined]
    assert GitHttp(layout, "k").gc()
    after = _dir_bytes(git_dir / "objects")
    assert before > 8 * 2**20 > after, (before, after)


def test_the_quota_counts_pushes_and_says_how_long_to_wait() -> None:
    now = [1000.0]
    q = PushQuota(pushes=3, size=100, clock=lambda: now[0])
    for _ in range(3):
        assert q.refuse() is None
        q.charge(1)
        now[0] += 10
    assert q.refuse() == HOUR - 30  # the first push leaves the hour then
    now[0] += HOUR - 30
    assert q.refuse() is None
    q.charge(99)  # bytes: 1 + 1 + 99 = 101 in the hour now
    assert q.refuse() == 20  # the two small ones must go: the second at +20 s


def test_gc_takes_no_refs_lock_while_the_controller_writes(tmp_path: Path) -> None:
    """A controller write holds a ref's lock (a proposal's note, main's compare-and-swap)
    while gc runs after a manager push: gc must neither fail on it nor take it. Git's own
    ``gc`` (``gc --auto`` after a receive) must not either, from meta.git's config alone.
    Reflog expiry locked every ref: the cause of a 500 on ``request_apply_commit``."""
    layout = Layout.for_state(tmp_path / "state")
    MetaRepo.open_or_init(layout, Config(hyperhive_flake="path:/src/hyperhive"))
    git_dir = layout.meta_git
    r = _git("--git-dir", str(git_dir), "notes", "--ref=hyperhive", "add", "-m", "{}", "main",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    held = [git_dir / "refs" / "heads" / "main.lock", git_dir / "refs" / "notes" / "hyperhive.lock"]
    for lock in held:
        lock.write_bytes(b"")
    assert GitHttp(layout, "k").gc()
    plain = _git("--git-dir", str(git_dir), "gc", "--quiet", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert all(lock.exists() for lock in held)  # still the writer's, untouched
