"""``kill -9`` a real ``hyperhive serve`` in the middle of delivering a forge notification.

A real controller (subprocess, local runtime, a stand-in harness for the manager) runs
with ``forge:`` pointing at the stand-in Forgejo (tests/forge/standin.py) served by this
test. At deploy it provisions the manager's forge user and token. Then a notification
is added and the stand-in holds one request of the delivery:

1. the first request after reading the unread list (the subject lookup): the controller
   has read the notification and not delivered it. SIGKILL. The restarted controller
   delivers it once and marks it read.
2. the mark-read (``PATCH /notifications/threads/{id}``): the broker has committed the
   message, the forge does not know. SIGKILL. The restarted controller marks it read
   without a second message (the broker's idempotency key).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.auth.operator import load_operator_key
from controller.paths import Layout
from schemas.client import UnixClient
from tests import realserve
from tests.forge.standin import StandinForgejo

ROOT = realserve.ROOT

STANDIN_AGENT = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""


class Controller:
    def __init__(self, root: Path, forge: StandinForgejo) -> None:
        self.root = root
        self.state = root / "s"
        self.run = root / "r"
        self.script = root / "agent.py"
        self.script.write_text(STANDIN_AGENT)
        token_file = root / "forge-admin-token"
        token_file.write_text(forge.admin_token + "\n")
        self.config = realserve.write_config(
            root / "config.json",
            manager_port=realserve.free_block(10),
            agent_range=8,
            resync_seconds=60,
            forge={"url": forge.url, "admin_token_file": str(token_file), "poll_seconds": 1},
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    def start(self) -> None:
        env = realserve.standin_env([sys.executable, str(self.script)],
                                    (*realserve.STANDIN_ENV_KEEP, "TMPDIR"))  # fmt: skip
        argv = realserve.serve_argv(self.state, self.config, run=self.run)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
            )
        realserve.wait_for("the admin socket", lambda: self.admin.get("/status"), timeout=60)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            realserve.stop(self.proc)
            self.proc = None

    @property
    def admin(self) -> UnixClient:
        key = load_operator_key(Layout(self.state, self.run))
        return UnixClient(str(self.run / "host.sock"), timeout=30, token=key)

    def forge_messages(self) -> list[dict[str, Any]]:
        msgs = self.admin.get("/messages?since=0&limit=1000")["messages"]
        return [m for m in msgs if m.get("from") == "forge"]


@pytest.fixture
def forge() -> Iterator[StandinForgejo]:
    s = StandinForgejo().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def ctl(forge: StandinForgejo) -> Iterator[Controller]:
    root = Path(tempfile.mkdtemp(prefix="hh-forge-", dir="/tmp"))
    c = Controller(root, forge)
    try:
        yield c
    finally:
        c.stop()
        realserve.kill_agents(c.state)
        shutil.rmtree(root, ignore_errors=True)


def test_kill_between_reading_and_delivering_and_before_marking(
    ctl: Controller, forge: StandinForgejo
) -> None:
    ctl.start()
    token_file = ctl.state / "agents" / "manager" / "state" / "forge-token"
    realserve.wait_for("the manager's forge token", token_file.exists, timeout=60)
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert [t.sha1 for t in forge.user_tokens("manager")] == [token]
    forge._add_user("carol")

    # 1. killed after reading the unread list, before delivering
    forge.issue("carol/site", 1, "Please review", "carol", body="@manager have a look")
    held = forge.stall("GET", "/repos/")
    forge.stalled.clear()
    first = forge.notify("manager", "carol/site", 1)
    assert forge.stalled.wait(30), "the controller never looked the notification up"
    ctl.kill9()
    held.set()
    forge.release()
    assert forge.unread("manager") == [first]
    ctl.start()
    realserve.wait_for("the first notification marked read",
                       lambda: forge.unread("manager") == [], timeout=60)  # fmt: skip
    msgs = ctl.forge_messages()
    assert len(msgs) == 1, msgs
    assert msgs[0]["to"] == "manager"
    assert msgs[0]["body"] == (
        f'[carol/site] issue #1 "Please review" (mention): {forge.url}/carol/site/issues/1'
    )

    # 2. killed after the broker took the message, before the forge heard it was read
    forge.issue("carol/site", 2, "Second", "carol", body="@manager again")
    forge.stalled.clear()
    held = forge.stall("PATCH", "/notifications/threads/")
    second = forge.notify("manager", "carol/site", 2)
    assert forge.stalled.wait(30), "the controller never marked the notification read"
    realserve.wait_for("the second message in the broker", lambda: len(ctl.forge_messages()) == 2)
    ctl.kill9()
    held.set()
    forge.release()
    assert forge.unread("manager") == [second]
    ctl.start()
    realserve.wait_for("the second notification marked read",
                       lambda: forge.unread("manager") == [], timeout=60)  # fmt: skip
    bodies = [m["body"] for m in ctl.forge_messages()]
    assert len(bodies) == 2, json.dumps(bodies)
    assert bodies[1].startswith('[carol/site] issue #2 "Second" (mention)')
    # the restart kept the working token: no new one was made
    assert [t.sha1 for t in forge.user_tokens("manager")] == [token]
