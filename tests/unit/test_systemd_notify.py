"""controller.systemd_notify against a real datagram socket bound as NOTIFY_SOCKET.

systemd's side of sd_notify(3) is an AF_UNIX SOCK_DGRAM socket; each
notification is one datagram of newline-separated ``VAR=value`` assignments.
These tests bind such a socket, point NOTIFY_SOCKET at it and read back the
exact datagrams.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.systemd_notify import SystemdNotify, Watchdog, status_line


class NotifyListener:
    """The systemd end: a bound datagram socket that collects notifications."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def recv(self, timeout: float = 2.0) -> str:
        """The next datagram, decoded; fails the test if none arrives in time."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out: list[str] = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    # sun_path holds 108 bytes: keep the directory short rather than tmp_path.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield NotifyListener(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_ready_sends_ready_1(listener: NotifyListener) -> None:
    notify = SystemdNotify()
    assert notify.enabled
    assert notify.socket_path == listener.address
    notify.ready()
    assert listener.recv() == "READY=1"


def test_watchdog_sends_watchdog_1(listener: NotifyListener) -> None:
    SystemdNotify().watchdog()
    assert listener.recv() == "WATCHDOG=1"


def test_status_sends_the_text(listener: NotifyListener) -> None:
    SystemdNotify().status(status_line(2, 3, 1))
    assert listener.recv() == "STATUS=2/3 agents ready, 1 pending proposal"


def test_status_is_kept_on_one_line(listener: NotifyListener) -> None:
    SystemdNotify().status("line one\nline two")
    assert listener.recv() == "STATUS=line one line two"


def test_stopping_and_extend_timeout(listener: NotifyListener) -> None:
    notify = SystemdNotify()
    notify.extend_timeout(90)
    notify.stopping()
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=90000000"
    assert listener.recv() == "STOPPING=1"


def test_datagrams_arrive_in_order(listener: NotifyListener) -> None:
    notify = SystemdNotify()
    notify.status(status_line(0, 1, 0))
    notify.ready()
    notify.watchdog()
    assert [listener.recv() for _ in range(3)] == [
        "STATUS=0/1 agents ready, 0 pending proposals",
        "READY=1",
        "WATCHDOG=1",
    ]


def test_ready_after_the_sockets_listen(listener: NotifyListener) -> None:
    """The contract the controller keeps: when READY=1 arrives, its socket accepts."""
    directory = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    host_sock = directory / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(host_sock))
        server.listen()
        SystemdNotify().ready()

        assert listener.recv() == "READY=1"
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(host_sock))
        client.close()
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hyperhive-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        SystemdNotify().ready()
        sock.settimeout(2.0)
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_notify_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify = SystemdNotify()
    assert not notify.enabled
    assert notify.socket_path is None
    notify.ready()
    notify.watchdog()
    notify.status("quiet")
    notify.stopping()
    notify.extend_timeout(1)


def test_unreachable_socket_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    notify = SystemdNotify()
    notify.ready()
    notify.watchdog()


def test_unset_environment(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    notify = SystemdNotify(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    # Still notifies, and still knows its watchdog interval.
    assert notify.watchdog_interval() == 2.0
    notify.ready()
    assert listener.recv() == "READY=1"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("120000000", None, 60.0),
        ("1000000", "self", 0.5),
        ("1000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("1000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert SystemdNotify().watchdog_interval() == expected


@pytest.mark.parametrize(
    ("ready", "total", "pending", "expected"),
    [
        (0, 0, 0, "0/0 agents ready, 0 pending proposals"),
        (1, 1, 1, "1/1 agents ready, 1 pending proposal"),
        (3, 5, 2, "3/5 agents ready, 2 pending proposals"),
    ],
)
def test_status_line(ready: int, total: int, pending: int, expected: str) -> None:
    assert status_line(ready, total, pending) == expected


def test_watchdog_pings_while_the_loop_beats(listener: NotifyListener) -> None:
    now = [100.0]
    watchdog = Watchdog(SystemdNotify(), stale_after=10.0, interval=5.0, clock=lambda: now[0])
    watchdog.beat()
    now[0] += 9.0
    assert watchdog.check()
    assert listener.recv() == "WATCHDOG=1"


def test_watchdog_stops_pinging_when_the_loop_hangs(listener: NotifyListener) -> None:
    now = [100.0]
    watchdog = Watchdog(SystemdNotify(), stale_after=10.0, interval=5.0, clock=lambda: now[0])
    watchdog.beat()
    now[0] += 11.0
    assert not watchdog.check()
    assert listener.pending() == []
    watchdog.beat()
    assert watchdog.check()
    assert listener.recv() == "WATCHDOG=1"


def test_watchdog_thread_pings_then_stops(listener: NotifyListener) -> None:
    watchdog = Watchdog(SystemdNotify(), stale_after=60.0, interval=0.02)
    watchdog.beat()
    watchdog.start()
    try:
        assert listener.recv() == "WATCHDOG=1"
        assert listener.recv() == "WATCHDOG=1"
    finally:
        watchdog.stop()
    listener.pending()  # drain pings sent before stop() returned
    time.sleep(0.1)
    assert listener.pending() == []


def test_watchdog_thread_goes_quiet_when_beats_stop(listener: NotifyListener) -> None:
    watchdog = Watchdog(SystemdNotify(), stale_after=0.05, interval=0.02)
    watchdog.beat()
    watchdog.start()
    try:
        time.sleep(0.3)
        listener.pending()  # pings from the first 0.05 s
        time.sleep(0.1)
        assert listener.pending() == []
    finally:
        watchdog.stop()


def test_watchdog_interval_comes_from_watchdog_usec(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert Watchdog(SystemdNotify(), stale_after=10.0).interval == 1.5


def test_no_watchdog_means_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    watchdog = Watchdog(SystemdNotify(), stale_after=10.0)
    assert watchdog.interval is None
    watchdog.start()
    watchdog.stop()
