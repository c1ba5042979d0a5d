"""A real PostgreSQL server for tests (Debian's ``postgresql``), one per test session, and a
fresh database per test.

``PgServer.start()`` runs ``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<v>/bin``
(or ``HYPERHIVE_PG_BIN``) with the data dir and the unix socket in a temp dir; no TCP.
initdb and postgres refuse to run as root, and CI runs as root: then both run as the
``postgres`` system user, which owns the temp dir. ``fsync`` is off (the tests kill clients,
never the server or the machine).

Fixtures: ``pg_server`` (session) and ``pg_url`` (a new empty database, dropped after the
test), available to every test through ``tests/conftest.py``. In CI
(``CI=true``) a missing PostgreSQL fails the test with what to install; elsewhere the test
is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PORT = 5432
"""Only names the socket file (``.s.PGSQL.5432``) in the private socket dir."""

SUPERUSER = "hh"


def pg_bin() -> Path:
    """The dir holding ``initdb`` and ``postgres``; fails in CI, skips elsewhere."""
    env = os.environ.get("HYPERHIVE_PG_BIN")
    candidates = [Path(env)] if env else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    why = (
        "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it; "
        "or set HYPERHIVE_PG_BIN to the dir holding initdb and postgres)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class PgServer:
    """One running server; ``url(db)`` is a libpq URL for database ``db`` on its socket."""

    root: Path
    proc: subprocess.Popen[bytes]
    user: str | None
    log: Path
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        """The dir holding the server's unix socket."""
        return self.root / "sock"

    @classmethod
    def start(cls) -> PgServer:
        """initdb into a new temp dir and start the server; waits until it accepts."""
        bindir = pg_bin()
        user = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="hh-pg-", dir="/tmp"))
        (root / "sock").mkdir()
        log = root / "postgres.log"
        log.touch()
        if user is not None:
            pw = pwd.getpwnam(user)
            for p in (root, root / "sock", log):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=user,
            cwd=root,
        )
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(root / "data"),
                "-k",
                str(root / "sock"),
                "-p",
                str(PORT),
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            user=user,
            cwd=root,
            start_new_session=True,
        )
        server = cls(root, proc, user, log)
        server._wait_ready()
        return server

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def url(self, db: str) -> str:
        """A libpq URL for database ``db`` over the unix socket."""
        return f"postgresql://{SUPERUSER}@/{db}?host={self.socket_dir}&port={PORT}"

    def create_database(self) -> str:
        """A new empty database; its name."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever is still connected to it."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())

    def stop(self) -> None:
        """Fast shutdown, then remove the temp dir."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started on first use)."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A libpq URL of a fresh, empty database (dropped after the test)."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
