"""The per-agent ``SocketRegistry`` on the shared HTTP core (listeners themselves:
``test_hivehttp.py``)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_agent import FakeOps

from controller.auth import AgentCredentials
from controller.broker import Broker
from controller.httpserve import SocketRegistry, raise_fd_limit
from controller.paths import Layout
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import MANAGER


@pytest.fixture
def d() -> Path:
    return Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))


@pytest.fixture
def registry(d: Path) -> Iterator[SocketRegistry]:
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db)
    reg = SocketRegistry(broker, FakeOps(), layout, AgentCredentials(layout))
    yield reg
    reg.close_all(timeout=3.0)
    broker.close()


def client(registry: SocketRegistry, agent: str, **kw: float) -> UnixClient:
    """A client of ``agent``'s socket holding ``agent``'s own credential."""
    served = registry.get(agent) or registry.ensure(agent)
    token = registry.credentials.ensure(agent)
    return UnixClient(str(served.path), token=token, **kw)


def test_stop_ends_parked_long_polls(registry: SocketRegistry) -> None:
    registry.ensure("bob")
    bob = client(registry, "bob", timeout=30)
    errors: list[BaseException] = []

    def park() -> None:
        try:
            bob.post("/recv", {"wait_seconds": 60})
        except (Unreachable, ApiError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=park) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    registry.remove("bob", timeout=5.0)
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5
    assert len(errors) == 3  # clients see the connection go
    # the parked workers did not take a message meant for the next server
    registry.broker.send("alice", "bob", "kept")
    registry.ensure("bob")
    assert client(registry, "bob").post("/recv", {})["message"]["body"] == "kept"


def test_registry_ensure_is_idempotent_and_flavored(registry: SocketRegistry) -> None:
    a1 = registry.ensure("alice")
    assert registry.ensure("alice") is a1
    m = registry.ensure(MANAGER)
    assert m.path == registry.layout.manager_sock
    assert client(registry, MANAGER).get("/list")["agents"]
    with pytest.raises(ApiError) as e:
        client(registry, "alice").get("/list")
    assert e.value.status == 404
    assert registry.names() == ["alice", MANAGER]


def test_registry_recreates_a_vanished_socket(registry: SocketRegistry) -> None:
    a1 = registry.ensure("alice")
    assert a1.path is not None
    os.unlink(a1.path)
    a2 = registry.ensure("alice")
    assert a2 is not a1 and not a1.alive
    assert client(registry, "alice").get("/status")["unread"] == 0


def test_registry_sync_and_bad_names(registry: SocketRegistry) -> None:
    registry.sync(["alice", "bob", MANAGER])
    assert registry.names() == ["alice", "bob", MANAGER]
    bob = registry.get("bob")
    assert bob is not None and bob.path is not None
    registry.sync(["alice", MANAGER])
    assert registry.names() == ["alice", MANAGER]
    assert not bob.path.exists()
    for bad in ("../../etc", "Alice", "", "a/b", "operator", "x" * 20, "alice\n"):
        with pytest.raises(ValueError):
            registry.ensure(bad)
    assert not registry.remove("nobody")


def test_fifty_agent_sockets_cost_no_threads(registry: SocketRegistry) -> None:
    """Every agent socket is a listener on the one HTTP loop: no thread per socket."""
    registry.ensure("a0")
    before = threading.active_count()
    names = [f"a{i}" for i in range(50)]
    registry.sync(names)
    assert threading.active_count() - before <= 1
    for n in names[::7]:
        assert client(registry, n).get("/status")["unread"] == 0
    t0 = time.monotonic()
    registry.close_all(timeout=3.0)
    assert time.monotonic() - t0 < 5


def test_each_socket_takes_only_its_own_agents_credential(registry: SocketRegistry) -> None:
    registry.sync(["alice", "bob"])
    alice_sock = str(registry.layout.agent_sock("alice"))
    bob_token = registry.credentials.ensure("bob")
    for token in (None, "", "x" * 43, bob_token):
        with pytest.raises(ApiError) as e:
            UnixClient(alice_sock, token=token).get("/status")
        assert e.value.status == 401, token
    assert client(registry, "alice").get("/status")["unread"] == 0
    # rotation: the old credential stops working at once
    old = registry.credentials.ensure("alice")
    new = registry.credentials.issue("alice")
    with pytest.raises(ApiError):
        UnixClient(alice_sock, token=old).get("/status")
    assert UnixClient(alice_sock, token=new).get("/status")["unread"] == 0


def test_raise_fd_limit_is_safe() -> None:
    import resource

    soft = raise_fd_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
    assert raise_fd_limit() == soft
