"""controller.statedir: umask 077 and owner-only modes for the state and run dirs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.broker import Broker
from controller.paths import Layout
from controller.statedir import prepare_state_dirs


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_new_dirs_and_everything_created_after_are_owner_only(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "run")
    assert prepare_state_dirs(lay) == []
    assert mode(lay.state) == 0o700 and mode(lay.run) == 0o700
    broker = Broker(lay.broker_db)
    try:
        broker.send("manager", "alice", "hello")
        for p in (lay.broker_db, Path(f"{lay.broker_db}-wal"), Path(f"{lay.broker_db}-shm")):
            assert mode(p) == 0o600, p
    finally:
        broker.close()
    lay.log_dir.mkdir()
    (lay.log_dir / "alice.log").write_text("x")
    assert mode(lay.log_dir) == 0o700 and mode(lay.log_dir / "alice.log") == 0o600


def test_an_old_state_dir_is_tightened(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "state", tmp_path / "state" / "run")
    os.umask(0o022)
    lay.state.mkdir()
    lay.run.mkdir()
    files = [
        lay.broker_db,
        Path(f"{lay.broker_db}-wal"),
        Path(f"{lay.broker_db}-shm"),
        lay.status_file,
        lay.lock_file,
        lay.operator_key,
    ]
    for f in files:
        f.write_text("x")
        f.chmod(0o644)
    dirs = [lay.log_dir, lay.meta_git, lay.state / "agents", lay.run / "agents"]
    for d in dirs:
        d.mkdir()
        d.chmod(0o755)
    (lay.log_dir / "alice.log").write_text("x")
    hook = lay.meta_git / "hooks"
    hook.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (lay.state / "link").symlink_to(outside)

    changed = prepare_state_dirs(lay)

    for f in files:
        assert mode(f) == 0o600, f
    for d in dirs:
        assert mode(d) == 0o700, d
    assert mode(lay.log_dir / "alice.log") == 0o600
    assert mode(lay.state) == 0o700
    assert mode(outside) == 0o644  # symlinks are not followed
    assert mode(hook) == 0o755  # inside meta.git: unreachable for others once meta.git is 0700
    assert {c.path for c in changed} >= {*files, *dirs, lay.state}
    assert all(c.new == c.old & 0o700 for c in changed)
    assert "0644 -> 0600" in str(next(c for c in changed if c.path == lay.broker_db))
    assert prepare_state_dirs(lay) == []  # idempotent
