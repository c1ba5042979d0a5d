"""Fixtures any test may take: ``pg_server`` / ``pg_url`` (a real PostgreSQL server per
session and a fresh database per test, ``tests/pg.py``) and ``where`` (the broker store
parameter: sqlite and PostgreSQL, ``tests/brokerstore.py``), with ``clock`` (a settable clock)
and ``broker`` (a ``Broker`` on ``where`` driven by ``clock``)."""

from __future__ import annotations

from tests.brokerstore import broker, clock, where
from tests.pg import pg_server, pg_url

__all__ = ["broker", "clock", "pg_server", "pg_url", "where"]
