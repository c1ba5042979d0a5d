"""``controller.auth`` on a real filesystem: the operator key and the agents' credentials."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from controller.auth import (
    AgentCredentials,
    CredentialError,
    ensure_operator_key,
    load_operator_key,
)
from controller.auth.secretfile import SECRET_RE
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
