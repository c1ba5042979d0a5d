"""The broker tests' store parameter: every test that takes ``where`` runs once on sqlite
(a file in ``tmp_path``) and once on PostgreSQL (a fresh database on the session's server,
``tests.pg``). ``Broker(where)`` opens either; opening it again reopens the same data.

``tests/conftest.py`` makes ``where`` (and ``pg_url``) available to every test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

STORES = ("sqlite", "postgresql")


@pytest.fixture(params=STORES)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A broker location: a sqlite file path, or a ``postgresql://`` URL."""
    if request.param == "sqlite":
        return tmp_path / "broker.sqlite"
    url: str = request.getfixturevalue("pg_url")
    return url


def is_pg(where: Path | str) -> bool:
    """True for a PostgreSQL location."""
    return isinstance(where, str) and where.startswith("postgresql://")
