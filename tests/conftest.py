"""Fixtures any test may take: ``pg_server`` / ``pg_url`` (a real PostgreSQL server per
session and a fresh database per test, ``tests/pg.py``) and ``where`` (the broker store
parameter: sqlite and PostgreSQL, ``tests/brokerstore.py``)."""

from __future__ import annotations

from tests.brokerstore import where
from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url", "where"]
