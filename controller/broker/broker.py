"""``Broker``: the broker's semantics (its parts, one module each) over a store.

``Broker(path)`` opens the sqlite store on that file (the embedded default);
``Broker("postgresql://…")`` the PostgreSQL store (``controller.broker.postgres``), which
several controller processes may share. Either way the same code decides what every verb
does; the store only finds and changes rows (``controller.broker.store``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from controller.broker.errors import BrokerStorageError
from controller.broker.limits import MAX_DELIVERIES
from controller.broker.questions import Questions
from controller.broker.reading import Reading
from controller.broker.receiving import Receiving
from controller.broker.retention import Retention
from controller.broker.sending import Sending
from controller.broker.sqlite import SqliteStore
from controller.broker.statuscache import StatusCache
from controller.broker.store import Store
from controller.broker.threads import Threads
from controller.broker.wakeups import LocalWakeups
from schemas.names import MANAGER

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""A broker location starting with one of these is a PostgreSQL connection URL."""

NEEDS_PSYCOPG = (
    "needs psycopg and psycopg_pool (pip install 'hyperhive[postgres]'), which are not installed"
)


# a libpq key=value connection string: ``user=hh dbname=hive host=/run/postgresql``
_CONNINFO = re.compile(
    r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|"
    r"application_name|connect_timeout|target_session_attrs)\s*=",
    re.IGNORECASE,
)


def is_postgres_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL database rather than a sqlite file."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def is_conninfo(location: str | Path) -> bool:
    """True when ``location`` is a string that is plainly a libpq ``key=value`` connection
    string (it starts with a libpq keyword and ``=``), not a file name."""
    return isinstance(location, str) and _CONNINFO.match(location) is not None


class Broker(Sending, Receiving, Retention, Reading, Threads, Questions):
    """Messages, threads, reminders and operator questions, in a sqlite file or PostgreSQL.

    ``location`` is the sqlite database file (created with its parent directory) or a
    ``postgresql://`` URL (a libpq ``key=value`` string is refused with
    ``BrokerStorageError`` rather than taken for a file name); ``clock`` returns unix
    seconds and stamps every row (tests may pass a fake one; parked waits still use real
    time). ``durable`` (sqlite) fsyncs every
    commit. ``max_deliveries`` is how often a leased message is delivered before it becomes
    a dead letter; ``dead_letter_to`` gets the ``DeadLetter`` events (None: nobody).
    Thread-safe. Raises ``controller.errors.Invalid`` / ``NotFound`` / ``Forbidden`` /
    ``Conflict`` as documented per method, ``BrokerClosed`` after ``close()``,
    ``BrokerStorageError`` when the database cannot be opened, read or written.
    """

    def __init__(
        self,
        location: Path | str,
        clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
        max_deliveries: int = MAX_DELIVERIES,
        dead_letter_to: str | None = MANAGER,
    ) -> None:
        if isinstance(max_deliveries, bool) or not 1 <= int(max_deliveries) <= 1000:
            raise ValueError("max_deliveries must be between 1 and 1000")
        if is_conninfo(location):
            # taken for a path, it would silently open a sqlite file named after it in the cwd
            raise BrokerStorageError(
                f"the broker location {str(location).split('=', 1)[0].strip()}=… is a libpq "
                "key=value connection string; give the PostgreSQL database as a URL "
                "(postgresql://user@host/db, postgresql:///db?host=/run/postgresql)"
            )
        self._clock = clock
        self.max_deliveries = int(max_deliveries)
        self.dead_letter_to = dead_letter_to
        self._wake = LocalWakeups()
        self._status_cache = None
        self._blocking = is_postgres_url(location)
        store: Store
        self.path: Path | None = None
        if is_postgres_url(location):
            # imported here: psycopg is only needed (and installed) for this store
            try:
                from controller.broker.postgres import PostgresStore
            except ImportError as exc:
                raise BrokerStorageError(f"the PostgreSQL broker store {NEEDS_PSYCOPG}") from exc
            store = PostgresStore(str(location), self._on_change)
        else:
            self.path = Path(location)
            # one process writes this file: status readings can be kept between writes
            self._status_cache = cache = StatusCache()
            store = SqliteStore(self.path, self._on_change, durable=durable, on_commit=cache.forget)
        self._store = store
        with store.read() as tx:
            self._wake.notify((), tx.last_id())

    @property
    def blocking(self) -> bool:
        """True when a call waits on a database server's round trips (PostgreSQL): an event
        loop should make it from a worker thread so that it does not hold every other
        request (``recv_async``'s claim stays on the loop: a parked receive holds no thread).
        False for sqlite: a few short local statements."""
        return self._blocking

    @property
    def location(self) -> str:
        """Where the messages are: the sqlite file, or the PostgreSQL URL without password."""
        return self._store.location

    def close(self) -> None:
        """Close the database; every parked ``recv`` / ``wait_for_new`` returns empty."""
        self._wake.close()
        self._store.close()

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._wake.closed
