"""``controller.auth`` on a real filesystem: the operator key and the agents' credentials."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from controller.auth import (
    AgentCredentials,
    CredentialError,
    bearer_token,
    ensure_operator_key,
    load_operator_key,
)
from controller.auth.secretfile import SECRET_RE, new_secret
from controller.paths import Layout
from schemas.names import MANAGER


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(state=tmp_path / "state", run=tmp_path / "run")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_operator_key_made_once_0600(layout: Layout) -> None:
    with pytest.raises(CredentialError) as err:
        load_operator_key(layout)
    assert str(layout.operator_key) in err.value.message
    assert "hyperhive serve" in err.value.message
    old = os.umask(0)  # even with a permissive umask the key is 0600
    try:
        key = ensure_operator_key(layout)
    finally:
        os.umask(old)
    assert SECRET_RE.fullmatch(key)
    assert _mode(layout.operator_key) == 0o600
    assert ensure_operator_key(layout) == key == load_operator_key(layout)
    assert [p.name for p in layout.state.iterdir()] == ["operator.key"]  # no temp files left


def test_operator_key_races_make_one_key(layout: Layout) -> None:
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(ensure_operator_key(layout))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8


def test_operator_key_errors_name_the_file(layout: Layout) -> None:
    ensure_operator_key(layout)
    layout.operator_key.chmod(0o644)
    ensure_operator_key(layout)
    assert _mode(layout.operator_key) == 0o600  # narrowed again
    layout.operator_key.write_text("not a key\n")
    for fn in (ensure_operator_key, load_operator_key):
        with pytest.raises(CredentialError) as err:
            fn(layout)
        assert str(layout.operator_key) in err.value.message and "malformed" in err.value.message
    if os.geteuid() != 0:
        layout.operator_key.chmod(0)
        with pytest.raises(CredentialError) as err:
            load_operator_key(layout)
        assert "permission denied" in err.value.message


def test_agent_credential_issue_verify_rotate_remove(layout: Layout) -> None:
    creds = AgentCredentials(layout)
    assert creds.current("alice") is None and not creds.verify("alice", "x" * 43)
    a1 = creds.issue("alice")
    b = creds.issue("bob")
    m = creds.issue(MANAGER)
    assert _mode(layout.agent_credential("alice")) == 0o600
    assert layout.agent_credential("alice").read_text().strip() == a1
    assert creds.verify("alice", a1) and creds.verify("bob", b) and creds.verify(MANAGER, m)
    assert not creds.verify("alice", b) and not creds.verify("bob", a1)
    assert not creds.verify("alice", None) and not creds.verify("alice", "")
    assert not creds.verify("alice", a1 + "x") and not creds.verify("alice", "\u00e9" * 43)
    assert creds.identify(a1) == "alice" and creds.identify(m) == MANAGER
    assert creds.identify("y" * 43) is None and creds.identify(None) is None
    a2 = creds.issue("alice")  # recreate: rotation
    assert a2 != a1 and creds.verify("alice", a2) and not creds.verify("alice", a1)
    assert creds.identify(a1) is None and creds.identify(a2) == "alice"
    assert creds.ensure("alice") == a2  # ensure keeps a current one
    assert creds.remove("alice") and not creds.remove("alice")
    assert not creds.verify("alice", a2) and creds.identify(a2) is None
    assert creds.ensure("alice") not in (a1, a2)  # and makes one when there is none


def test_a_rotation_by_another_instance_is_honoured(layout: Layout) -> None:
    """The controller's sockets and the swarm may hold different instances (or processes)."""
    api, swarm = AgentCredentials(layout), AgentCredentials(layout)
    old = swarm.issue("alice")
    assert api.verify("alice", old) and api.identify(old) == "alice"  # now cached in api
    new = swarm.issue("alice")
    assert not api.verify("alice", old) and api.verify("alice", new)
    assert api.identify(old) is None and api.identify(new) == "alice"
    fresh = AgentCredentials(layout).issue("bob")
    assert api.identify(fresh) == "bob"  # an agent api never saw is found on a miss
    layout.agent_credential("bob").unlink()
    assert not api.verify("bob", fresh) and api.identify(fresh) is None


def test_bad_names_and_files(layout: Layout) -> None:
    creds = AgentCredentials(layout)
    for bad in ("../x", "Alice", "", "a/b", "alice\n"):
        with pytest.raises(ValueError):
            creds.issue(bad)
        assert not creds.verify(bad, "x" * 43)
    path = layout.agent_credential("carol")
    path.parent.mkdir(parents=True)
    path.write_text("short\n")
    assert creds.current("carol") is None and not creds.verify("carol", "short")
    token = creds.ensure("carol")  # a malformed file is replaced
    assert creds.verify("carol", token)


def test_header_check_is_verify_of_the_header(layout: Layout) -> None:
    """``header_check`` (the agent sockets' form) gives ``verify``'s verdict on the parsed
    header for every spelling, and follows rotation and removal at the very next call."""
    creds, other = AgentCredentials(layout), AgentCredentials(layout)
    old = creds.issue("alice").encode()
    bob = creds.issue("bob").encode()
    check = creds.header_check("alice")

    def same(tokens: list[bytes]) -> None:
        for t in tokens:
            for value in (
                None,
                b"",
                b"Bearer " + t,
                b"bearer " + t,
                b"BEARER   " + t + b"  ",
                b"Bearer " + t + b"x",
                b"Bearer " + t[:-1],
                b"Bearer " + t + b" " + t,
                b"Basic " + t,
                t,
                b"Bearer \xe9" + t[1:],
                b"Bearer " + t[:-1] + b"\x00",
                b"Bearer " + b"a" * 5000,
            ):
                token = None if value is None else bearer_token(value.decode("latin-1"))
                assert check(value) == creds.verify("alice", token), value

    same([old, bob])
    assert check(b"Bearer " + old) and not check(b"Bearer " + bob)
    new = creds.issue("alice").encode()  # rotation by this instance
    assert not check(b"Bearer " + old) and check(b"Bearer " + new)
    newer = other.issue("alice").encode()  # by another instance (or process)
    assert not check(b"Bearer " + new) and check(b"bearer " + newer)
    same([old, new, newer])
    layout.agent_credential("alice").unlink()  # deleted by hand
    assert not check(b"Bearer " + newer) and not check(b"bearer " + newer)
    last = other.ensure("alice").encode()
    assert check(b"Bearer " + last)
    assert other.remove("alice") and not check(b"Bearer " + last)
    assert not creds.header_check("../x")(b"Bearer " + bob)  # a bad name: refuses all


def test_a_rewrite_in_place_keeping_size_and_mtime_is_noticed(layout: Layout) -> None:
    """The cache is keyed by the file's identity, ctime included: a credential rewritten
    in place (same inode, same size) with its mtime put back stops working at once."""
    creds = AgentCredentials(layout)
    old = creds.issue("alice")
    path = layout.agent_credential("alice")
    check = creds.header_check("alice")
    assert check(b"Bearer " + old.encode()) and creds.verify("alice", old)
    before = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp granularity, so the ctime moves
    new = new_secret()
    with path.open("r+b") as f:
        f.write(f"{new}\n".encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert not check(b"Bearer " + old.encode()) and not creds.verify("alice", old)
    assert check(b"Bearer " + new.encode()) and creds.verify("alice", new)
