"""The broker database check at start (controller.dbcheck), on real sqlite files."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from controller.broker import Broker
from controller.dbcheck import (
    RESET_FLAG,
    BrokerDbRefused,
    DbState,
    agents_have_run,
    check_broker_db,
)
from controller.paths import Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "state", tmp_path / "run")
    lay.state.mkdir(parents=True)
    return lay


def fill(lay: Layout, n: int = 2000, body: str = "x" * 300) -> int:
    """A real broker database with ``n`` messages, closed (WAL checkpointed); the last id."""
    broker = Broker(lay.broker_db)
    try:
        last = 0
        for i in range(n):
            last = broker.send("manager", "alice", f"{i} {body}").id
    finally:
        broker.close()
    return last


def agents_ran(lay: Layout) -> None:
    lay.agent_state("alice").mkdir(parents=True)


def refused(lay: Layout, **kw: object) -> str:
    with pytest.raises(BrokerDbRefused) as info:
        check_broker_db(lay, **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and str(lay.broker_db) in msg
    assert info.value.exit_code == 2
    return msg


def test_a_fresh_state_dir_gets_a_new_database(layout: Layout) -> None:
    assert agents_have_run(layout) is None
    assert check_broker_db(layout).state is DbState.NEW
    fill(layout, 3)
    assert check_broker_db(layout).state is DbState.OK


def test_an_emptied_database_is_refused_when_agents_have_run(layout: Layout) -> None:
    fill(layout, 50)
    agents_ran(layout)
    os.truncate(layout.broker_db, 0)
    msg = refused(layout)
    assert "empty (0 bytes)" in msg and RESET_FLAG in msg and "backup" in msg
    assert "agents have run" in msg and "alice" in msg
    # the operator's explicit choice: start empty
    assert check_broker_db(layout, reset=True).state is DbState.RESET
    broker = Broker(layout.broker_db)
    try:
        assert broker.last_id() == 0
    finally:
        broker.close()


def test_a_missing_database_is_refused_when_agents_have_run(layout: Layout) -> None:
    agents_ran(layout)
    msg = refused(layout)
    assert "is missing" in msg and RESET_FLAG in msg
    assert check_broker_db(layout, reset=True).state is DbState.RESET


@pytest.mark.parametrize("evidence", ["status", "tombstone", "loose-tag", "packed-tag"])
def test_other_evidence_that_agents_have_run(layout: Layout, evidence: str) -> None:
    if evidence == "status":
        layout.status_file.write_text(
            json.dumps({"agents": {"bob": {"phase": "running"}, "x": {"phase": "absent"}}})
        )
    elif evidence == "tombstone":
        (layout.tombstones / "bob-1700000000").mkdir(parents=True)
    elif evidence == "loose-tag":
        (layout.meta_git / "refs" / "tags" / "deployed").mkdir(parents=True)
        (layout.meta_git / "refs" / "tags" / "deployed" / "3").write_text("0" * 40 + "\n")
    else:
        layout.meta_git.mkdir()
        (layout.meta_git / "packed-refs").write_text(f"{'0' * 40} refs/tags/deployed/3\n")
    assert agents_have_run(layout) is not None
    refused(layout)


def test_a_status_file_without_deployed_agents_is_no_evidence(layout: Layout) -> None:
    layout.status_file.write_text(json.dumps({"agents": {"bob": {"phase": "absent"}}}))
    assert agents_have_run(layout) is None


def test_a_garbage_header_is_refused_even_with_reset_it_is_only_moved(layout: Layout) -> None:
    fill(layout, 20)
    with open(layout.broker_db, "r+b") as fh:
        fh.write(b"this is not sqlite at all, just garbage")
    msg = refused(layout)
    assert "not a sqlite database" in msg and RESET_FLAG in msg
    got = check_broker_db(layout, reset=True, now=1234.0)
    assert got.state is DbState.RESET and got.moved_to is not None
    assert got.moved_to.name == "broker.sqlite.damaged-1234"
    assert got.moved_to.read_bytes().startswith(b"this is not sqlite")
    assert not layout.broker_db.exists()


def test_garbage_mid_file_fails_quick_check(layout: Layout) -> None:
    last = fill(layout)
    size = layout.broker_db.stat().st_size
    assert size > 64 * 4096
    with open(layout.broker_db, "r+b") as fh:
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(os.urandom(4096))
    # the file still opens: only a check finds it
    conn = sqlite3.connect(layout.broker_db)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    conn.close()
    msg = refused(layout)
    assert "damaged" in msg, msg
    got = check_broker_db(layout, reset=True, now=99.0)
    assert got.state is DbState.RESET
    assert got.moved_to is not None and got.moved_to.stat().st_size == size
    broker = Broker(layout.broker_db)
    try:
        assert broker.last_id() == 0 < last
    finally:
        broker.close()


def test_a_healthy_database_is_never_reset(layout: Layout) -> None:
    last = fill(layout, 10)
    agents_ran(layout)
    got = check_broker_db(layout, reset=True)
    assert got.state is DbState.OK and got.moved_to is None
    broker = Broker(layout.broker_db)
    try:
        assert broker.last_id() == last
    finally:
        broker.close()


def test_a_database_without_the_broker_tables_counts_as_emptied(layout: Layout) -> None:
    conn = sqlite3.connect(layout.broker_db)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    agents_ran(layout)
    assert "no messages table" in refused(layout)


def test_a_directory_in_place_of_the_database_is_refused(layout: Layout) -> None:
    layout.broker_db.mkdir()
    assert "not a regular file" in refused(layout)


# ---------------------------------------------------------------------- PostgreSQL


def test_postgres_new_ok_and_lost(layout: Layout, pg_url: str) -> None:
    assert check_broker_db(layout, location=pg_url).state is DbState.NEW
    agents_ran(layout)
    # agents have run, the database has no broker tables: another database, or data lost
    with pytest.raises(BrokerDbRefused) as info:
        check_broker_db(layout, location=pg_url)
    assert "no broker tables" in str(info.value) and RESET_FLAG in str(info.value)
    assert check_broker_db(layout, location=pg_url, reset=True).state is DbState.RESET
    Broker(pg_url).close()
    checked = check_broker_db(layout, location=pg_url)
    from controller.broker.postgres_schema import SCHEMA_VERSION

    assert checked.state is DbState.OK
    assert f"schema version {SCHEMA_VERSION}" in checked.detail
    assert not layout.broker_db.exists()  # the sqlite file is never made or touched


def test_postgres_unreachable_is_refused(layout: Layout, tmp_path: Path) -> None:
    url = f"postgresql://nobody:s3cret@/nowhere?host={tmp_path}&port=1"
    with pytest.raises(BrokerDbRefused) as info:
        check_broker_db(layout, location=url)
    msg = str(info.value)
    assert "cannot be reached" in msg and "s3cret" not in msg and "\n" not in msg
