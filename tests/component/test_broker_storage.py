"""The broker when its storage fails: disk full → 507, read-only / damaged → 503, nothing stored;
on PostgreSQL: lost connections and a read-only database are 503s, a newer schema is refused.

Disk full is a real full filesystem: the broker runs in a child process whose
database lives on a 1 MiB tmpfs (bubblewrap ``--size``), and fills it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller.broker import Broker, BrokerDiskFull, BrokerStorageError
from controller.broker.postgres import POOL_MAX
from controller.broker.sqlite import SqliteStore
from controller.errors import HyperhiveError

HAVE_BWRAP = any(
    os.access(os.path.join(d, "bwrap"), os.X_OK) for d in os.environ.get("PATH", "").split(":")
)
ROOT = Path(__file__).resolve().parents[2]

FILL = r"""
import json, os, sqlite3, sys
from pathlib import Path
from controller.broker import Broker, BrokerDiskFull
data = Path(os.environ["FILL_DATA"])
db = data / "broker.sqlite"
broker = Broker(db)
ok = 0
error = None
for i in range(100000):
    try:
        broker.send("manager", "alice", f"{i} " + "x" * 2000)
        ok += 1
    except BrokerDiskFull as exc:
        error = {"type": type(exc).__name__, "status": exc.status, "code": exc.code,
                 "message": exc.message}
        break
status = broker.status("alice")
last = broker.last_id()
# free the space the filler took, and the broker writes again
os.unlink(data / "filler")
after = broker.send("manager", "alice", "after the disk had room again").id
broker.close()
conn = sqlite3.connect(db)
rows = conn.execute("SELECT count(*), max(id) FROM messages").fetchone()
check = conn.execute("PRAGMA quick_check").fetchone()[0]
print(json.dumps({"ok": ok, "error": error, "unread": status.unread, "last": last,
                  "after": after, "rows": rows, "check": check}))
"""


@pytest.mark.skipif(not HAVE_BWRAP, reason="bwrap is not installed")
def test_a_full_disk_is_a_507_and_nothing_is_half_written(tmp_path: Path) -> None:
    script = tmp_path / "fill.py"
    script.write_text(FILL)
    data = tmp_path / "data"
    data.mkdir()
    prefix = f"import os; open('{data}/filler', 'wb').write(os.urandom(256 * 1024)); "
    argv = [
        "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--size", str(1024 * 1024), "--tmpfs", str(data),
        "--",
        sys.executable, "-c", prefix + f"exec(open({str(script)!r}).read())",
    ]  # fmt: skip
    res = subprocess.run(
        argv,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FILL_DATA": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] > 10
    assert out["error"]["status"] == 507 and out["error"]["code"] == "insufficient_storage"
    assert "full" in out["error"]["message"] and "nothing was stored" in out["error"]["message"]
    # every acknowledged send is there, the failed one is not, ids never skip
    assert out["unread"] == out["ok"] and out["last"] == out["ok"]
    assert out["after"] == out["ok"] + 1
    assert out["rows"] == [out["ok"] + 1, out["ok"] + 1]
    assert out["check"] == "ok"


def _conn(broker: Broker) -> sqlite3.Connection:
    """The sqlite store's one connection (to set its limits from the test)."""
    store = broker._store
    assert isinstance(store, SqliteStore)
    return store._conn


def test_disk_full_from_the_page_limit(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker.sqlite")
    try:
        broker.send("manager", "alice", "first")
        pages = _conn(broker).execute("PRAGMA page_count").fetchone()[0]
        _conn(broker).execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(BrokerDiskFull) as info:
            for i in range(1000):
                broker.send("manager", "alice", f"{i} " + "y" * 4000)
        assert isinstance(info.value, HyperhiveError) and info.value.status == 507
        n = broker.last_id()
        assert broker.status("alice").unread == n
        _conn(broker).execute("PRAGMA max_page_count = 1000000")
        assert broker.send("manager", "alice", "room again").id == n + 1
    finally:
        broker.close()


def test_a_read_only_database_is_a_503(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker.sqlite")
    try:
        broker.send("manager", "alice", "first")
        _conn(broker).execute("PRAGMA query_only = 1")
        with pytest.raises(BrokerStorageError) as info:
            broker.send("manager", "alice", "second")
        assert not isinstance(info.value, BrokerDiskFull)
        assert info.value.status == 503 and info.value.code == "storage_unavailable"
        assert "read-only" in info.value.message and "nothing was stored" in info.value.message
        assert str(tmp_path / "broker.sqlite") in info.value.message
        _conn(broker).execute("PRAGMA query_only = 0")
        assert [m.body for m in broker.recent("alice")] == ["first"]
        assert broker.send("manager", "alice", "third").id == 2
    finally:
        broker.close()


def test_a_garbage_file_fails_to_open_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "broker.sqlite"
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(BrokerStorageError) as info:
        Broker(db)
    assert str(db) in info.value.message and "not a database" in info.value.message


@pytest.mark.parametrize(
    "conninfo",
    [
        "user=hh dbname=hive host=/run/postgresql port=5432",
        "dbname=hive",
        " host=db.example password=s3cret dbname=hive",
    ],
)
def test_a_libpq_conninfo_is_refused_not_taken_for_a_file_name(
    conninfo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BrokerStorageError) as info:
        Broker(conninfo)
    assert "key=value connection string" in info.value.message
    assert "postgresql://" in info.value.message
    assert "s3cret" not in info.value.message
    assert list(tmp_path.iterdir()) == []  # no sqlite file named after it


def test_a_file_name_with_an_equals_sign_is_still_a_file(tmp_path: Path) -> None:
    broker = Broker(str(tmp_path / "a=b.sqlite"))
    try:
        assert broker.send("manager", "alice", "hi").id == 1
    finally:
        broker.close()
    assert (tmp_path / "a=b.sqlite").is_file()


def test_a_programming_error_is_not_a_storage_error(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker.sqlite")
    try:
        with pytest.raises(sqlite3.OperationalError), broker._store.write():
            _conn(broker).execute("SELECT no_such_column FROM messages")
        assert broker.send("manager", "alice", "still fine").id == 1
    finally:
        broker.close()


# ---------------------------------------------------------------------- PostgreSQL


def _pg_admin(url: str, *statements: str) -> None:
    """Run ``statements`` on the test's database server, past the broker."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt.encode())


def test_postgres_lost_connections_are_a_503_then_it_recovers(pg_url: str) -> None:
    broker = Broker(pg_url)
    try:
        broker.send("manager", "alice", "first")
        # the server ends every broker connection (a restart, a failover, an admin)
        _pg_admin(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        outcomes = []
        for i in range(1 + POOL_MAX):
            try:
                outcomes.append(broker.send("manager", "alice", f"after {i}").body)
                break
            except BrokerStorageError as exc:
                assert exc.status == 503 and "nothing was stored" in exc.message
                outcomes.append("503")
        # each pooled connection that died fails one request; the pool then reconnects
        assert outcomes[-1].startswith("after")
        bodies = [m.body for m in broker.recent("alice")]
        assert bodies == ["first", *(o for o in outcomes if o != "503")]
    finally:
        broker.close()


def test_postgres_read_only_database_is_a_503(pg_url: str) -> None:
    broker = Broker(pg_url)
    db = pg_url.split("/")[3].split("?")[0]
    admin = pg_url.replace(f"/{db}?", "/postgres?")
    end_sessions = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    try:
        broker.send("manager", "alice", "first")
        _pg_admin(
            admin, f"ALTER DATABASE {db} SET default_transaction_read_only = on", end_sessions
        )
        errors = []
        for _ in range(2 + POOL_MAX):  # ended pooled connections fail first
            with pytest.raises(BrokerStorageError) as info:
                broker.send("manager", "alice", "second")
            assert info.value.status == 503
            errors.append(info.value.message)
            if "read-only" in info.value.message:
                break
        assert "read-only" in errors[-1]
        _pg_admin(
            admin, f"ALTER DATABASE {db} SET default_transaction_read_only = off", end_sessions
        )
        for _ in range(1 + POOL_MAX):  # each ended pooled connection fails one request
            with contextlib.suppress(BrokerStorageError):
                broker.send("manager", "alice", "third")
                break
        assert [m.body for m in broker.recent("alice")] == ["first", "third"]
    finally:
        broker.close()


def test_postgres_newer_schema_is_refused(pg_url: str) -> None:
    Broker(pg_url).close()
    _pg_admin(
        pg_url,
        "INSERT INTO hyperhive_broker_schema (version, description, applied_at) "
        "VALUES (99, 'from the future', 0)",
    )
    with pytest.raises(BrokerStorageError) as info:
        Broker(pg_url)
    assert "schema version 99" in info.value.message
