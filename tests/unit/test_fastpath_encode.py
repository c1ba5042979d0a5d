"""The agent socket's fast routes write their answers with a prebuilt C encoder: the same
bytes as ``json.JSONEncoder(ensure_ascii=False)`` (what falcon's JSON handler writes)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from controller.api.fastpath import _encode

_REFERENCE = json.JSONEncoder(ensure_ascii=False).encode


def _docs(rng: random.Random) -> list[dict[str, Any]]:
    status = {"unread": 3, "open_threads": 1, "pending_reminders": 0, "dead_letters": 0}
    message = {
        "id": 12,
        "from": "alice",
        "to": "bob",
        "body": 'é ✓ 😀 "quoted" \\ back\nslash\t\x00\x1f\x7f \u2028 \ufeff',
        "kind": "message",
        "thread": None,
        "event": {"type": "x", "n": [1, 2.5, -0.0, 1e16, 1e-7, True, False, None, []]},
        "sent_at": "2026-12-08T03:40:01.123456Z",
    }
    docs: list[dict[str, Any]] = [
        {},
        {"id": 7, "duplicate": False, "status": status},
        {"message": message, "status": status},
        {"message": None, "status": status, "held": "over budget"},
        {"error": {"code": "invalid", "message": "to: is required", "field": "to"}},
        {"big": 2**70, "neg": -(2**63), "keys": {"é": 1, "": 2, "\n": 3, 4: True}},
        {"nan": float("nan"), "inf": [float("inf"), float("-inf")]},  # as json writes them
    ]
    for _ in range(100):
        docs.append({"x": rng.random() * 10 ** rng.randint(-30, 30), "y": rng.randint(-9, 9)})
    return docs


def test_the_same_bytes_as_json_encoder() -> None:
    for doc in _docs(random.Random(10)):
        assert _encode(doc) == _REFERENCE(doc).encode(), doc


def test_what_json_refuses_is_refused() -> None:
    for bad in ({"x": object()}, {"y": {1, 2}}, {(1, 2): 3}):
        with pytest.raises((TypeError, ValueError)):
            _REFERENCE(bad)
        with pytest.raises((TypeError, ValueError)):
            _encode(bad)
