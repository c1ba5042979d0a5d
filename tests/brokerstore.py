"""The broker tests' store parameter: every test that takes ``where`` runs once on sqlite
(a file in ``tmp_path``) and once on PostgreSQL (a fresh database on the session's server,
``tests.pg``). ``Broker(where)`` opens either; opening it again reopens the same data.

``tests/conftest.py`` makes ``where`` (and ``pg_url``), ``clock`` and ``broker`` available to
every test; a module's own ``broker`` fixture takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.broker import Broker

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


class FakeClock:
    """Settable unix-seconds clock: ``clock.now += 60`` moves the broker's time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A ``FakeClock`` at a fixed instant."""
    return FakeClock()


@pytest.fixture
def broker(where: Path | str, clock: FakeClock) -> Iterator[Broker]:
    """A ``Broker`` on ``where`` (both stores) driven by ``clock``; closed afterwards."""
    b = Broker(where, clock=clock)
    yield b
    b.close()
