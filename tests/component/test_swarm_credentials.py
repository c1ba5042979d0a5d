"""The agents' broker credentials through the swarm's lifecycle, with real stand-in agents:
issued before the first create, kept across restarts and updates, rotated on recreate,
removed on destroy (never kept in a tombstone), made for an agent deployed without one."""

from __future__ import annotations

import stat

from test_swarm import Env, crash, spawn_alice, swarm_env  # noqa: F401 (swarm_env: the env fixture)

from controller.ops import Lifecycle
from schemas.names import MANAGER


def _cred(env: Env, agent: str) -> str | None:
    path = env.layout.agent_credential(agent)
    return path.read_text().strip() if path.exists() else None


def test_credentials_follow_the_agent_lifecycle(env: Env) -> None:
    assert env.swarm.reconcile().ok
    manager = _cred(env, MANAGER)
    assert manager is not None and env.swarm.credentials.verify(MANAGER, manager)
    spawn_alice(env)
    first = _cred(env, "alice")
    assert first is not None
    mode = stat.S_IMODE(env.layout.agent_credential("alice").stat().st_mode)
    assert mode == 0o600
    # a restart or an update keeps the credential: the running harness holds it
    env.swarm.lifecycle(Lifecycle.RESTART, "alice")
    assert _cred(env, "alice") == first
    assert env.swarm.reconcile().ok
    assert _cred(env, "alice") == first and _cred(env, MANAGER) == manager
    # the process vanishes for good (its runtime is gone): the next create is a recreate
    crash(env)
    env.driver.destroy("alice")
    assert env.swarm.reconcile().ok
    second = _cred(env, "alice")
    assert second is not None and second != first
    assert not env.swarm.credentials.verify("alice", first)
    # destroy: the credential is gone, and the tombstone does not carry it
    env.swarm.destroy("alice")
    assert _cred(env, "alice") is None
    assert not env.swarm.credentials.verify("alice", second)
    stones = list(env.layout.tombstones.iterdir())
    assert stones and not any(p.name == "credential" for s in stones for p in s.rglob("*"))
    # spawning the name again restores the state, with a fresh credential
    spawn_alice(env)
    third = _cred(env, "alice")
    assert third is not None and third not in (first, second)


def test_an_agent_deployed_before_credentials_gets_one(env: Env) -> None:
    assert env.swarm.reconcile().ok
    spawn_alice(env)
    env.layout.agent_credential("alice").unlink()  # as an older hyperhive left it
    env.swarm.lifecycle(Lifecycle.RESTART, "alice")
    token = _cred(env, "alice")
    assert token is not None and env.swarm.credentials.verify("alice", token)
