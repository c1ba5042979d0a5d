"""``schemas.wire.rfc3339``: the cached formatter writes what ``datetime`` writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from schemas.wire import parse_rfc3339, rfc3339


def _by_datetime(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_the_same_text_as_datetime_on_edges_and_random_stamps() -> None:
    edges = [0.0, 1.0, 0.9999995, 0.9999994999, 1796690019.9999996, 1796690019.0004995]
    edges += [1796690019.0005, -0.5, -1.25, -0.0000004, 1e9 + 0.5, 4102444799.999]
    rng = random.Random(10)
    stamps = edges + [rng.uniform(0, 4.1e9) for _ in range(20000)]
    stamps += [1796690019 + rng.randrange(0, 1_000_000) / 1e6 for _ in range(20000)]
    for ts in stamps:
        assert rfc3339(ts) == _by_datetime(ts), ts


def test_it_parses_back_to_the_millisecond() -> None:
    assert rfc3339(1796690019.123456) == "2026-12-08T00:33:39.123Z"
    assert abs(parse_rfc3339(rfc3339(1796690019.123456)) - 1796690019.123) < 1e-6
