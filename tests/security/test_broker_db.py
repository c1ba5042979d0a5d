"""A broken broker database is noticed at start, never served.

The session's meta repo (agents have been deployed from it) and a consistent
copy of its broker database (sqlite's backup API, padded with messages so the
file has pages to damage) go to a fresh state dir. ``hyperhive serve`` there must:
refuse a database truncated to 0 bytes, one with 4 KiB of garbage in the
middle, and one with a garbage header, each with exit 2 and one error line
naming the file, no traceback; and start with ``--reset-broker``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.broker import Broker
from controller.paths import Layout
from schemas.client import UnixClient
from tests.realserve import serve_argv, standin_env, write_config
from tests.security.support import ROOT, Hive, Tally, kill_agents, wait_for

CATEGORY = "broken broker database"
STANDIN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "time.sleep(3600)\n"
)
"""The agents of the copied state dir: they only have to exist."""


class Copy:
    """A state dir holding the session's meta repo and a copy of its broker database."""

    def __init__(self, hive: Hive, root: Path) -> None:
        self.root = root
        self.layout = Layout(root / "state", root / "run")
        self.layout.state.mkdir(mode=0o700)
        shutil.copytree(hive.layout.meta_git, self.layout.meta_git)
        self.good = root / "broker.good"
        src = sqlite3.connect(f"file:{hive.layout.broker_db}?mode=ro", uri=True)
        dst = sqlite3.connect(str(self.good))
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        broker = Broker(self.good)
        for i in range(300):
            broker.send("manager", "alice", f"note {i}: " + "a fairly ordinary message " * 4)
        broker.close()
        conn = sqlite3.connect(str(self.good))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
        self.config = write_config(
            root / "config.json",
            manager_port=18700,
            agent_range=50,
            resync_seconds=60,
            local_sandbox=False,
        )
        self.env = standin_env([sys.executable, "-c", STANDIN])

    @property
    def db(self) -> Path:
        """The copy's broker database."""
        return self.layout.broker_db

    def restore(self, damage: Callable[[Path], None]) -> None:
        """Put the good copy in place, then ``damage`` it."""
        for p in self.layout.state.glob("broker.sqlite*"):
            p.unlink()
        shutil.copyfile(self.good, self.db)
        damage(self.db)

    def argv(self, *extra: str) -> list[str]:
        """``hyperhive serve`` on the copy."""
        return serve_argv(self.layout.state, self.config, *extra, run=self.layout.run)


@pytest.fixture
def copy(hive: Hive) -> Iterator[Copy]:
    root = Path(tempfile.mkdtemp(prefix="hhdb-", dir="/tmp"))
    try:
        yield Copy(hive, root)
    finally:
        kill_agents(root / "state")
        shutil.rmtree(root, ignore_errors=True)


def _truncate(db: Path) -> None:
    os.truncate(db, 0)


def _garbage_mid_file(db: Path) -> None:
    size = db.stat().st_size
    assert size >= 16 * 4096, f"the copy is too small to damage in the middle ({size} bytes)"
    with open(db, "r+b") as fh:
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(os.urandom(4096))


def _garbage_header(db: Path) -> None:
    with open(db, "r+b") as fh:
        fh.write(os.urandom(100))


def test_a_broken_broker_database_is_refused_at_start(copy: Copy, tally: Tally) -> None:
    for what, damage in (
        ("truncated to 0 bytes", _truncate),
        ("4 KiB of garbage mid-file", _garbage_mid_file),
        ("a garbage header", _garbage_header),
    ):
        copy.restore(damage)
        res = subprocess.run(
            copy.argv(),
            cwd=ROOT,
            env=copy.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = res.stdout + res.stderr
        errors = [line for line in out.splitlines() if " ERROR " in line]
        refused = (
            res.returncode == 2
            and len(errors) == 1
            and str(copy.db) in errors[0]
            and "Traceback" not in out
        )
        tally.record(
            CATEGORY,
            f"start on a broker database {what}",
            refused,
            f"exit {res.returncode}: {errors[0] if errors else out[-600:]}",
        )
        print(f"{what}: exit {res.returncode}: {errors}")
    tally.assert_refused(CATEGORY)

    # --reset-broker moves the damaged file aside and starts on an empty broker
    proc = subprocess.Popen(
        copy.argv("--reset-broker"),
        cwd=ROOT,
        env=copy.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def admin() -> UnixClient:
            key = copy.layout.operator_key.read_text().strip()
            return UnixClient(str(copy.layout.host_sock), timeout=10, token=key)

        wait_for("the reset controller", lambda: admin().get("/status"), timeout=60)
        msgs = admin().get("/messages?since=0&limit=1000")["messages"]
        assert all(m["id"] <= 5 for m in msgs), msgs[:3]
        assert list(copy.layout.state.glob("broker.sqlite.damaged-*")), "nothing moved aside"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
