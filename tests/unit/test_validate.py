"""``schemas.validate`` compiles each ref into a self-contained validator; its verdicts and
error messages must equal the plain registry-based validation on a corpus of bodies."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator

from schemas.validate import (
    SCHEMA_NAMES,
    ValidationFailed,
    _path,
    _reason,
    _registry,
    _validator,
    checker,
    load_schema,
    validate,
)

HOSTILE: list[Any] = [
    None,
    "",
    "x",
    "Bob",
    "alice\n",
    "a" * 70000,
    0,
    -1,
    1,
    1.5,
    -0.5,
    30.0,
    180.5,
    86401,
    2**40,
    True,
    False,
    [],
    [1, "a"],
    {},
    {"type": "x"},
]


def _reference(instance: Any, ref: str) -> tuple[str, str] | None:
    """What the validation said before compilation: every ``$ref`` through the registry."""
    name, _, definition = ref.partition("#")
    schema = {"$ref": f"{name}.schema.json" + (f"#/$defs/{definition}" if definition else "")}
    v = Draft202012Validator(schema, registry=_registry())
    error = jsonschema.exceptions.best_match(v.iter_errors(instance))
    return None if error is None else (_path(error), _reason(error))


def _ours(instance: Any, ref: str) -> tuple[str, str] | None:
    try:
        validate(instance, ref)
    except ValidationFailed as exc:
        return exc.field, exc.reason
    return None


def _refs() -> list[str]:
    out = []
    for name in SCHEMA_NAMES:
        out.append(name)
        out += [f"{name}#{d}" for d in load_schema(name).get("$defs", {})]
    return out


def _bases(ref: str) -> list[dict[str, Any]]:
    """Plausible objects for ``ref``: every declared property set to a sample value."""
    name, _, definition = ref.partition("#")
    schema = load_schema(name)
    node = schema["$defs"][definition] if definition else schema
    samples: dict[str, Any] = {
        "to": "bob",
        "body": "hi",
        "question": "q?",
        "thread": 3,
        "ids": [1, 2],
        "after_seconds": 60,
        "wait_seconds": 1,
        "lease_seconds": 30,
        "limit": 5,
        "from": "cron",
        "name": "alice",
        "commit": "abcdef1",
        "note": "n",
        "options": ["a", "b"],
        "multi": True,
        "ttl_seconds": 60,
        "answer": "a",
        "type": "ContainerCrash",
        "agent": "alice",
        "idempotency_key": "k-1",
    }
    props = node.get("properties", {}) if isinstance(node, dict) else {}
    full = {k: samples.get(k, "x") for k in props}
    return [full, {k: v for k, v in full.items() if k in node.get("required", [])}]


def _corpus(ref: str, rng: random.Random) -> list[Any]:
    out: list[Any] = list(HOSTILE)
    for base in _bases(ref):
        out.append(base)
        for key in base:
            drop = dict(base)
            del drop[key]
            out.append(drop)
            for value in HOSTILE:
                out.append({**base, key: value})
        out.append({**base, "zzz": 1, "aaa": 2})
    for _ in range(40):  # random junk objects
        out.append({rng.choice(["to", "body", "type", "id", "x"]): rng.choice(HOSTILE)})
    return out


@pytest.mark.parametrize("ref", _refs())
def test_same_verdicts_and_errors_as_the_registry(ref: str) -> None:
    rng = random.Random(ref)
    for instance in _corpus(ref, rng):
        assert _ours(instance, ref) == _reference(instance, ref), json.dumps(instance)[:200]


@pytest.mark.parametrize("ref", _refs())
def test_a_bound_checker_says_what_validate_says(ref: str) -> None:
    check = checker(ref)
    for instance in _corpus(ref, random.Random(ref)):
        try:
            check(instance)
            got = None
        except ValidationFailed as exc:
            got = (exc.field, exc.reason)
        assert got == _ours(instance, ref), json.dumps(instance)[:200]


def test_compiled_validators_carry_no_refs() -> None:
    for ref in ("wire#SendRequest", "wire#RecvResponse", "events", "agent", "config"):
        text = json.dumps(_validator(ref).schema)
        assert "$ref" not in text, ref


def test_event_errors_name_the_field() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate({"type": "ContainerCrash"}, "events")
    assert exc.value.field


def test_hot_request_bodies_have_the_fast_check() -> None:
    """The fast check covers the bodies of every request a harness sends on each turn, and
    never accepts what jsonschema refuses (the corpus test above runs through it too)."""
    from schemas.validate import _fast

    for name in ("SendRequest", "RecvRequest", "AckRequest", "WakeRequest", "ReleaseRequest"):
        check = _fast(f"wire#{name}")
        assert check is not None, name
        for base in _bases(f"wire#{name}"):  # and it does accept what is valid
            assert check(base) == (_reference(base, f"wire#{name}") is None), (name, base)
        rng = random.Random(name)
        for instance in _corpus(f"wire#{name}", rng):
            if check(instance):
                assert _reference(instance, f"wire#{name}") is None, json.dumps(instance)[:200]
