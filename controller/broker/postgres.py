"""The PostgreSQL store: the broker's tables in a database that several controller processes
may share (``broker: postgresql://…`` in the controller config).

Connections: a ``psycopg_pool.ConnectionPool`` (autocommit connections; a write is an
explicit transaction) and one more connection that only ``LISTEN`` s.

Claims: ``UPDATE … WHERE id = (SELECT … ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)``: two
claims (threads or processes) never lock the same row, so a delivery is never handed out
twice; a row another claim holds is skipped, and ``next_due`` still sees it, so the skipped
receiver looks again a few milliseconds later. The SQL and its locks: ``postgres_tx``.

Wake-ups: a transaction that changed inboxes sends ``NOTIFY hyperhive_broker`` with
``{"o": origin, "r": [recipients] | null, "l": last_id}`` (delivered at commit); every other
store on the database (``o`` differs) hands it to its own wake-ups. The listener reconnects
after a lost connection and then wakes everyone, since notifications may have been missed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from controller.broker.errors import BrokerClosed, BrokerDiskFull, BrokerStorageError
from controller.broker.postgres_schema import SchemaTooNew, migrate
from controller.broker.postgres_tx import PgTx
from controller.broker.store import OnChange

log = logging.getLogger("controller.broker")

CHANNEL = "hyperhive_broker"
"""The ``LISTEN`` / ``NOTIFY`` channel of wake-ups."""

POOL_MAX = 8
"""Most connections one store opens for transactions (plus one listener)."""

POOL_TIMEOUT = 10.0
"""Seconds a transaction waits for a pooled connection before it is a storage error."""

LISTEN_IDLE_SECONDS = 30.0
"""Longest the listener waits for a notification before it looks at its stop flag."""

_NOTIFY_LIMIT = 7900
"""Payload bytes ``NOTIFY`` takes (8000 minus room); a longer recipient list becomes "anyone"."""

# --------------------------------------------------------------------- errors

# SQLSTATE classes that mean the database, not the request, is at fault
_STORAGE_CLASSES = {
    "08": "the connection to PostgreSQL failed",
    "53": "PostgreSQL is out of resources",
    "57": "PostgreSQL is shutting down or refused the operation",
    "58": "PostgreSQL had an I/O error",
    "XX": "PostgreSQL reported an internal error (damaged data?)",
}


def storage_error(exc: BaseException, where: str) -> BrokerStorageError | None:
    """The storage error ``exc`` (or what it was raised while handling) stands for, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.DiskFull):
            return BrokerDiskFull(
                f"the disk holding the broker database {where} is full; nothing was stored "
                "(free space, then retry)"
            )
        if isinstance(seen, PoolTimeout):
            return BrokerStorageError(
                f"the broker database {where} is unavailable: no connection within "
                f"{POOL_TIMEOUT:.0f} s ({seen}); nothing was stored"
            )
        if isinstance(seen, psycopg.Error):
            state = seen.sqlstate or ""
            why = _STORAGE_CLASSES.get(state[:2])
            if isinstance(seen, psycopg.errors.ReadOnlySqlTransaction):
                why = "the database is read-only"
            elif isinstance(seen, psycopg.OperationalError) and why is None:
                why = "the database cannot be reached"
            if why is not None:
                text = " ".join(str(seen).split())
                return BrokerStorageError(
                    f"the broker database {where} is unavailable: {why} ({text}); "
                    "nothing was stored"
                )
        seen = seen.__context__
    return None


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo("", **parts)


def _payload(origin: str, touched: Sequence[tuple[Sequence[str] | None, int | None]]) -> str:
    """The ``NOTIFY`` payload for a transaction's changes (one per transaction)."""
    names: set[str] | None = set()
    last: int | None = None
    for recipients, last_id in touched:
        if recipients is None or names is None:
            names = None
        else:
            names.update(recipients)
        if last_id is not None:
            last = last_id if last is None else max(last, last_id)
    doc: dict[str, Any] = {"o": origin, "r": None if names is None else sorted(names), "l": last}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > _NOTIFY_LIMIT:
        doc["r"] = None
        text = json.dumps(doc, separators=(",", ":"))
    return text


# --------------------------------------------------------------------- the store


class PostgresStore:
    """``Store`` on a PostgreSQL database (see the module docstring).

    ``url`` is a libpq connection URL or string (``postgresql://user@host/db``,
    ``postgresql:///db?host=/run/postgresql``). Migrates the schema on open. Raises
    ``BrokerStorageError`` when the database cannot be reached or was migrated by a newer
    hyperhive.
    """

    def __init__(self, url: str, on_change: OnChange) -> None:
        self._url = url
        self._where = redact(url)
        self._on_change = on_change
        self._origin = uuid.uuid4().hex
        self._closed = False
        self._stop = threading.Event()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
            self._listener = self._listen()
        except SchemaTooNew as exc:
            raise BrokerStorageError(f"the broker database {self._where}: {exc}") from exc
        except psycopg.Error as exc:
            raise BrokerStorageError(
                f"cannot open the broker database {self._where}: {' '.join(str(exc).split())}"
            ) from exc
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
            min_size=1,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT,
            open=False,
            name="hyperhive-broker",
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT)
        except PoolTimeout as exc:
            self._stop_listener()
            raise BrokerStorageError(
                f"cannot open the broker database {self._where}: {exc}"
            ) from exc
        self._thread = threading.Thread(target=self._listen_loop, name="broker-listen", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return self._where

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        if self._closed:
            raise BrokerClosed("broker is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolClosed as exc:
            raise BrokerClosed("broker is closed") from exc
        except (psycopg.Error, PoolTimeout) as exc:
            if (err := storage_error(exc, self._where)) is None:
                raise
            raise err from exc

    @contextmanager
    def read(self) -> Iterator[PgTx]:
        """A pooled connection; each statement sees what was committed when it started."""
        with self._conn() as conn:
            yield PgTx(conn, writing=False)

    @contextmanager
    def write(self) -> Iterator[PgTx]:
        """One transaction: ``BEGIN`` … (``NOTIFY`` of its changes and) ``COMMIT``; rolled
        back if the block raises."""
        with self._conn() as conn:
            tx = PgTx(conn, writing=True)
            conn.execute(b"BEGIN")
            try:
                yield tx
            except BaseException:
                # a broken connection cannot roll back: the pool discards it
                with contextlib.suppress(psycopg.Error):
                    conn.execute(b"ROLLBACK")
                raise
            if tx.touched:
                # one round trip for both (measured: a send's transaction 129 → 99 µs); a
                # simple query, so the payload goes in as a quoted literal
                end = sql.SQL("NOTIFY {}, {}; COMMIT").format(
                    sql.Identifier(CHANNEL), sql.Literal(_payload(self._origin, tx.touched))
                )
                conn.execute(end, prepare=False)
            else:
                conn.execute(b"COMMIT")
        for recipients, last_id in tx.touched:
            self._on_change(recipients, last_id)

    def compact(self) -> None:
        """Nothing: autovacuum gives the space of swept rows back."""

    # ---------------------------------------------------------------- wake-ups

    def _listen(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}".encode())
        return conn

    def _listen_loop(self) -> None:
        """Hand other processes' changes to ``on_change`` until closed; reconnect on loss."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                # close() ends the wait with a notification of its own, so the timeout only
                # bounds how long a stop goes unnoticed if that notification cannot be sent
                for note in self._listener.notifies(timeout=LISTEN_IDLE_SECONDS):
                    self._deliver(note.payload)
                    if self._stop.is_set():
                        break
                backoff = 0.1
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                log.warning("broker: lost the LISTEN connection to %s: %s", self._where, exc)
                with contextlib.suppress(psycopg.Error):
                    self._listener.close()
                while not self._stop.wait(backoff):
                    try:
                        self._listener = self._listen()
                    except psycopg.Error:
                        backoff = min(backoff * 2, 5.0)
                        continue
                    # notifications sent meanwhile are lost: wake everyone to look again
                    self._on_change(None, None)
                    break
        with contextlib.suppress(psycopg.Error):
            self._listener.close()

    def _deliver(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
            if doc.get("o") == self._origin:
                return  # our own change (woken at commit), or close() stopping the loop
            names = doc.get("r")
            last = doc.get("l")
            recipients = None if names is None else [str(n) for n in names]
            self._on_change(recipients, None if last is None else int(last))
        except (ValueError, TypeError, AttributeError):
            log.warning("broker: ignored a malformed notification %r", payload[:200])

    def _stop_listener(self) -> None:
        self._stop.set()
        with contextlib.suppress(psycopg.Error):
            self._listener.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # the listener waits in notifies(); a notification of our own ends the wait now
        with contextlib.suppress(psycopg.Error, PoolTimeout), self._pool.connection() as conn:
            conn.execute(b"SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps({"o": self._origin})))
        self._thread.join(timeout=5.0)
        self._pool.close(timeout=5.0)
