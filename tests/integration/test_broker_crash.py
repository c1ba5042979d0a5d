"""kill -9 the real ``hyperhive serve`` (its broker on sqlite, then on PostgreSQL) while 1,000
messages are being sent over the manager socket; restart it; every send answered with
success is there exactly once, in per-sender order, and so is every keyed send that was
retried until it succeeded.

The controller runs the local runtime with a stand-in harness (a ``harness`` package
earlier on PYTHONPATH whose ``serve`` only sleeps), so nothing drains the manager's inbox
but this test: four sender threads on the manager socket (with the manager's
credential, read from its state dir as the harness would), two to ``operator``
(checked through host.sock ``GET /messages``, with the operator key) and two to
``manager`` itself (drained with ``POST /recv`` afterwards, so delivery is checked
too). The restart must not rotate the manager's credential: a sender that got a 401
after it would fail the test. Threads 0 and 1 send with an
``idempotency_key`` and retry a failed send with the same key until it succeeds; threads
2 and 3 send without one and move on after a failure, as a client without keys must.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from schemas.client import ApiError, UnixClient, Unreachable
from tests.brokerstore import STORES
from tests.e2e.credentials import agent_client, operator_client

ROOT = Path(__file__).resolve().parents[2]
PER_THREAD = 250
KILL_AFTER = 300
PREFIX = "bc:"

_FAKE_HARNESS = '''\
"""Stand-in for ``python -m harness serve``: stays up, never touches the inbox."""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (Unreachable, ApiError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Controller:
    """One ``hyperhive serve`` on a temp state dir, restartable."""

    tmp: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    on_postgres: bool = False
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def start(self) -> None:
        self.starts += 1
        log = self.tmp / f"controller-{self.starts}.log"
        self.logs.append(log)
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "--state-dir",
                    str(self.state),
                    "serve",
                    "--config",
                    str(self.tmp / "config.json"),
                ],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        _wait_for(
            "the manager socket",
            lambda: (
                self.manager(timeout=5).get("/status") is not None
                and self.admin(timeout=5).get("/messages?limit=1") is not None
            ),
        )

    def admin(self, timeout: float = 30.0) -> UnixClient:
        """host.sock, with the operator key."""
        return operator_client(self.state, timeout=timeout)

    def manager(self, timeout: float = 30.0) -> UnixClient:
        """The manager's socket, with the manager's credential."""
        return agent_client(self.state, "manager", timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def harness_pids(self) -> list[int]:
        """Processes the controller spawned for agents under this state dir."""
        found = []
        for p in psutil.process_iter(["pid", "environ"]):
            try:
                env = p.info["environ"] or {}
            except (psutil.Error, OSError):
                continue
            if env.get("HYPERHIVE_STATE_DIR", "").startswith(str(self.state)):
                found.append(int(p.info["pid"]))
        return found

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        for pid in self.harness_pids():
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=STORES)
def controller(request: pytest.FixtureRequest) -> Iterator[Controller]:
    """A controller on a fresh state dir; its broker on sqlite, or on a fresh PostgreSQL
    database (``broker:`` in its config)."""
    store = {} if request.param == "sqlite" else {"broker": request.getfixturevalue("pg_url")}
    # unix socket paths are limited to 107 bytes: keep the state dir short
    tmp = Path(tempfile.mkdtemp(prefix="hh-bc-", dir="/tmp"))
    fake = tmp / "fakepkg" / "harness"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(_FAKE_HARNESS)
    home = tmp / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "HYPERHIVE_", "PYTHONPATH"))
    }
    env.update(
        {
            "HOME": str(home),
            "PYTHONPATH": f"{tmp / 'fakepkg'}{os.pathsep}{ROOT}",
            "HYPERHIVE_CLAUDE_BIN": "/bin/false",
            "GIT_AUTHOR_NAME": "operator",
            "GIT_AUTHOR_EMAIL": "op@example.org",
            "GIT_COMMITTER_NAME": "operator",
            "GIT_COMMITTER_EMAIL": "op@example.org",
        }
    )
    base = _free_port()
    (tmp / "config.json").write_text(
        json.dumps(
            {
                "runtime": "local",
                "dashboard": {"host": "127.0.0.1", "port": 0},
                "ports": {"manager": base, "agent_base": 20000, "agent_range": 900},
                "resync_seconds": 3600,
                "log_level": "warning",
                **store,
            }
        )
    )
    c = Controller(tmp, env, on_postgres=bool(store))
    try:
        yield c
    finally:
        c.cleanup()
        for log in c.logs:  # pytest shows captured stderr only when the test failed
            if log.exists():
                sys.stderr.write(f"---- {log.name} (tail) ----\n{log.read_text()[-3000:]}\n")
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Sender:
    """One sender thread's plan and outcome."""

    k: int
    to: str
    keyed: bool
    acked: dict[int, int] = field(default_factory=dict)  # n -> message id answered
    failed: list[int] = field(default_factory=list)  # n whose send got no success answer
    duplicates: int = 0  # keyed retries answered with "duplicate": true

    def body(self, n: int) -> str:
        return f"{PREFIX}t{self.k}:{n:04d}"


def _run_sender(
    client: UnixClient, s: Sender, acked_total: list[int], lock: threading.Lock
) -> None:
    for n in range(PER_THREAD):
        doc: dict[str, Any] = {"to": s.to, "body": s.body(n)}
        if s.keyed:
            doc["idempotency_key"] = f"crash-{s.k}-{n}"
        deadline = time.monotonic() + 90
        while True:
            try:
                r = client.post("/send", doc)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                if not s.keyed:
                    s.failed.append(n)  # unknown outcome: a client without a key moves on
                    time.sleep(0.02)
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the controller is restarting: same request, same key
                continue
            s.acked[n] = int(r["id"])
            s.duplicates += bool(r.get("duplicate"))
            with lock:
                acked_total[0] += 1
            break


def _all_messages(admin: UnixClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = admin.get(f"/messages?since={since}&limit=1000")["messages"]
        if not page:
            return out
        out += page
        since = page[-1]["id"]


def test_kill9_mid_stream_every_acknowledged_send_exactly_once(controller: Controller) -> None:
    controller.start()
    _wait_for("the manager's (stand-in) harness", lambda: bool(controller.harness_pids()))
    senders = [
        Sender(0, "operator", keyed=True),
        Sender(1, "manager", keyed=True),
        Sender(2, "operator", keyed=False),
        Sender(3, "manager", keyed=False),
    ]
    acked_total = [0]
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=_run_sender,
            args=(controller.manager(timeout=10.0), s, acked_total, lock),
            daemon=True,
        )
        for s in senders
    ]
    for t in threads:
        t.start()
    _wait_for("the first acknowledged sends", lambda: acked_total[0] >= KILL_AFTER, 60)
    controller.kill9()
    at_kill = acked_total[0]
    time.sleep(0.3)  # let every sender notice the outage
    controller.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a sender is stuck"
    # the store under test holds the messages: no sqlite file when PostgreSQL does
    assert (controller.state / "broker.sqlite").exists() != controller.on_postgres
    assert at_kill < 4 * PER_THREAD, "the kill came after the stream ended; nothing was tested"
    print(
        f"killed after {at_kill} acknowledged sends; unkeyed sends without an answer: "
        f"{sum(len(s.failed) for s in senders)}; keyed retries answered as duplicates: "
        f"{sum(s.duplicates for s in senders)}"
    )

    stored: dict[int, list[tuple[int, int]]] = {s.k: [] for s in senders}  # k -> [(id, n)]
    for m in _all_messages(controller.admin()):
        if m["from"] == "manager" and m["body"].startswith(PREFIX):
            k, n = m["body"][len(PREFIX) + 1 :].split(":")
            assert m["to"] == senders[int(k)].to
            stored[int(k)].append((int(m["id"]), int(n)))

    for s in senders:
        rows = stored[s.k]
        ns = [n for _, n in sorted(rows)]
        assert len(ns) == len(set(ns)), f"thread {s.k}: a message is stored twice"
        assert ns == sorted(ns), f"thread {s.k}: stored out of send order"
        ids = {n: i for i, n in rows}
        for n, mid in s.acked.items():
            assert ids.get(n) == mid, f"thread {s.k}: acknowledged send {n} (id {mid}) missing"
        if s.keyed:
            assert set(s.acked) == set(range(PER_THREAD)) == set(ids), f"thread {s.k}"
        else:
            assert set(s.acked) | set(s.failed) == set(range(PER_THREAD))
            # an unacknowledged send may or may not have been committed, but never twice
            assert set(ids) - set(s.acked) <= set(s.failed)

    # the manager's inbox: every message to it is delivered by recv exactly once, in order
    mgr = controller.manager()
    got: list[str] = []
    while (m := mgr.post("/recv", {})["message"]) is not None:
        if m["body"].startswith(PREFIX):
            got.append(m["body"])
    expected = [
        f"{PREFIX}t{k}:{n:04d}"
        for _, n, k in sorted((i, n, k) for k in (1, 3) for i, n in stored[k])
    ]
    assert got == expected
    assert mgr.post("/recv", {})["message"] is None
    status = mgr.get("/status")
    assert status["unread"] == 0 and status["dead_letters"] == 0
