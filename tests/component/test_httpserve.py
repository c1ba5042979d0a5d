"""waitress on unix sockets and TCP in threads; the per-agent ``SocketRegistry``."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_agent import FakeOps

from controller.broker import Broker
from controller.httpserve import (
    SocketInUse,
    SocketRegistry,
    raise_fd_limit,
    serve_tcp,
    serve_unix,
)
from controller.paths import Layout
from schemas.client import ApiError, UnixClient, Unreachable
from schemas.names import MANAGER


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A minimal WSGI app."""
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"path": environ["PATH_INFO"]}).encode()]


@pytest.fixture
def d() -> Path:
    return Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))


@pytest.fixture
def registry(d: Path) -> Iterator[SocketRegistry]:
    layout = Layout(state=d, run=d / "run")
    broker = Broker(layout.broker_db)
    reg = SocketRegistry(broker, FakeOps(), layout)
    yield reg
    reg.close_all(timeout=3.0)
    broker.close()


def test_serve_unix_creates_dir_perms_and_stops(d: Path) -> None:
    path = d / "deep" / "dir" / "api.sock"
    served = serve_unix(hello, path, perms=0o600)
    assert served.alive and served.path == path
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert UnixClient(str(path)).get("/x") == {"path": "/x"}
    served.stop()
    served.stop()  # idempotent
    assert not path.exists() and not served.alive
    with pytest.raises(Unreachable):
        UnixClient(str(path)).get("/x")


def test_stale_socket_is_replaced_live_one_refused(d: Path) -> None:
    path = d / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as after a crash
    served = serve_unix(hello, path)
    assert UnixClient(str(path)).get("/") == {"path": "/"}
    with pytest.raises(SocketInUse):
        serve_unix(hello, path)
    assert UnixClient(str(path)).get("/") == {"path": "/"}  # the live one was left alone
    served.stop()
    regular = d / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(FileExistsError):
        serve_unix(hello, regular)
    with pytest.raises(ValueError):
        serve_unix(hello, d / ("x" * 120) / "a.sock")


def test_stop_does_not_remove_a_replacement_socket(d: Path) -> None:
    path = d / "api.sock"
    first = serve_unix(hello, path)
    os.unlink(path)  # someone removed it; a new server took the path
    second = serve_unix(hello, path)
    first.stop()
    assert path.exists()
    assert UnixClient(str(path)).get("/") == {"path": "/"}
    second.stop()


def test_serve_tcp_ephemeral_port(d: Path) -> None:
    served = serve_tcp(hello, "127.0.0.1", 0)
    assert served.port and served.port > 0 and served.host == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    conn.request("GET", "/tcp")
    assert json.loads(conn.getresponse().read()) == {"path": "/tcp"}
    conn.close()
    served.stop()
    with pytest.raises(OSError):
        c = http.client.HTTPConnection("127.0.0.1", served.port, timeout=2)
        c.request("GET", "/")
        c.getresponse()


def test_stop_ends_parked_long_polls(registry: SocketRegistry) -> None:
    served = registry.ensure("bob")
    client = UnixClient(str(served.path), timeout=30)
    errors: list[BaseException] = []

    def park() -> None:
        try:
            client.post("/recv", {"wait_seconds": 60})
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
    served = registry.ensure("bob")
    assert UnixClient(str(served.path)).post("/recv", {})["message"]["body"] == "kept"


def test_registry_ensure_is_idempotent_and_flavored(registry: SocketRegistry) -> None:
    a1 = registry.ensure("alice")
    assert registry.ensure("alice") is a1
    m = registry.ensure(MANAGER)
    assert m.path == registry.layout.manager_sock
    assert UnixClient(str(m.path)).get("/list")["agents"]
    with pytest.raises(ApiError) as e:
        UnixClient(str(a1.path)).get("/list")
    assert e.value.status == 404
    assert registry.names() == ["alice", MANAGER]


def test_registry_recreates_a_vanished_socket(registry: SocketRegistry) -> None:
    a1 = registry.ensure("alice")
    assert a1.path is not None
    os.unlink(a1.path)
    a2 = registry.ensure("alice")
    assert a2 is not a1 and not a1.alive
    assert UnixClient(str(a2.path)).get("/status")["unread"] == 0


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


def test_fifty_agent_sockets_thread_budget(registry: SocketRegistry) -> None:
    """Each agent socket costs its loop thread plus its worker pool, nothing more."""
    before = threading.active_count()
    names = [f"a{i}" for i in range(50)]
    registry.sync(names)
    per = registry.threads + 1
    assert threading.active_count() - before <= 50 * per + 2
    for n in names[::7]:
        served = registry.get(n)
        assert served is not None
        assert UnixClient(str(served.path)).get("/status")["unread"] == 0
    t0 = time.monotonic()
    registry.close_all(timeout=3.0)
    assert time.monotonic() - t0 < 5


def test_raise_fd_limit_is_safe() -> None:
    import resource

    soft = raise_fd_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
    assert raise_fd_limit() == soft
