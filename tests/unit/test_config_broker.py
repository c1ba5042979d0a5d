"""The config's ``broker`` key: sqlite (the default) or a PostgreSQL URL."""

from __future__ import annotations

import pytest

from controller.config import config_from_dict
from schemas.validate import ValidationFailed


def test_broker_key_sqlite_or_a_postgresql_url() -> None:
    assert config_from_dict({}).broker is None
    assert config_from_dict({"broker": "sqlite"}).broker is None
    url = "postgresql://hive@db.example/hyperhive"
    assert config_from_dict({"broker": url}).broker == url
    assert config_from_dict({"broker": "postgres:///hive?host=/run/postgresql"}).broker


@pytest.mark.parametrize(
    "bad",
    [
        "mysql://x",
        "",
        "postgresql://",
        5,
        "/var/lib/broker.sqlite",
        "user=hh dbname=hive host=/run/postgresql",  # libpq conninfo: a URL is required
    ],
)
def test_anything_else_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        config_from_dict({"broker": bad})
    assert info.value.field == "broker"
