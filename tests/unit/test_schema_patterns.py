"""Every ``pattern`` of every schema matches the whole string: ``"value\\n"`` is refused.

Python's ``re.search`` lets ``$`` match before a final newline, so ``^[0-9]+%$`` took
``"50%\\n"`` (a cpuQuota that went on into a unit file) until ``schemas/validate.py``
matched patterns with ECMA-262's ``$`` (``ecma_regex``). The walk below finds every
pattern in ``schemas/json`` and feeds each patterned field a good value and the same value
with a newline, through the real validators (the compiled ones and the fast path); a new
pattern without a sample in ``SAMPLES`` fails the test until it gets one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from schemas.validate import (
    SCHEMA_NAMES,
    ValidationFailed,
    _validator,
    ecma_regex,
    load_schema,
    validate,
)

#: A value each pattern accepts.
SAMPLES = {
    "^[a-z]([a-z0-9-]{0,7}[a-z0-9])?$(?!\\n)": "alice",
    "^([a-z]([a-z0-9-]{0,7}[a-z0-9])?|manager)$(?!\\n)": "manager",
    "^[A-Z][A-Za-z0-9]*$": "Ready",
    "^[A-Za-z0-9._:\\[\\]-]+$": "claude-sonnet-4[1m]",
    "^([a-z]([a-z0-9-]{0,7}[a-z0-9])?|manager|operator)$(?!\\n)": "operator",
    "^[A-Za-z0-9_-]{1,64}$": "github",
    "^[A-Za-z0-9_*-]{1,128}$": "get_*",
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$": "app.js",
    "^[0-9]+[KMGT]?$|^infinity$": "512M",
    "^[0-9]+%$": "50%",
    "^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}$": "127.0.0.1:8080",
    "^[A-Za-z0-9.-]{1,253}$|^\\[[0-9A-Fa-f:.]+\\]$": "hive.example",
    "^(sqlite|postgres(ql)?://.+)$": "postgresql://h/db",
    "^[^\\u0000-\\u001f\\u007f]+$(?!\\n)": "they/them",
    "^https?://[^/\\s]+(/[^\\s]*)?$": "http://localhost:3000",
    "^https?://\\S+$": "http://127.0.0.1:4318",
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$": "hyperhive",
    "^[0-9A-Fa-f:.]+/[0-9]{1,3}$": "10.0.0.0/8",
    "^[0-9]+(Ki|Mi|Gi|Ti)$": "2Gi",
    "^[0-9]+(Ki|Mi|Gi)$": "512Mi",
    "^[0-9]+(m)?$": "100m",
    "^[A-Za-z0-9.-]{1,253}$": "hive.example",
    "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$": (
        "00-" + "4bf92f3577b34da6a3ce929d0e0e4736" + "-00f067aa0ba902b7-01"
    ),
    "^[A-Z][A-Z0-9_]{0,63}$(?!\\n)": "HOME",
    "^[0-9a-f]{4,64}$(?!\\n)": "deadbeef",
}


def _patterns(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield path, value
            else:
                yield from _patterns(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _patterns(value, (*path, str(i)))


def patterned_fields() -> Iterator[tuple[str, tuple[str, ...], str]]:
    """``(schema, path to the node holding the pattern, pattern)`` for every pattern."""
    for name in SCHEMA_NAMES:
        for path, pattern in _patterns(load_schema(name), ()):
            yield name, path, pattern


def instance_for(name: str, path: tuple[str, ...], value: str) -> tuple[str, Any]:
    """``(ref, instance)``: the smallest document that puts ``value`` where ``path`` says."""
    ref, parts = name, list(path)
    if parts[:1] == ["$defs"]:
        ref, parts = f"{name}#{parts[1]}", parts[2:]
    inner: Any = value
    i = len(parts)
    while i > 0:
        key = parts[i - 1]
        if i >= 2 and parts[i - 2] == "properties":
            inner, i = {key: inner}, i - 2
        elif key == "items":
            inner, i = [inner], i - 1
        elif key == "propertyNames":
            inner, i = {value: {}}, i - 1
        elif key == "additionalProperties":
            inner, i = {"k": inner}, i - 1
        elif key.isdigit() and i >= 2 and parts[i - 2] in ("anyOf", "oneOf", "allOf"):
            i -= 2
        else:
            raise AssertionError(f"{name}: cannot build an instance for {'/'.join(path)}")
    return ref, inner


def pattern_errors(ref: str, instance: Any) -> list[str]:
    return [
        e.message
        for e in _validator(ref).iter_errors(instance)
        for e in [e, *(e.context or [])]
        if e.validator == "pattern"
    ]


FIELDS = list(patterned_fields())


def test_every_pattern_has_a_sample() -> None:
    assert len(FIELDS) >= 25
    missing = {p for _, _, p in FIELDS} - set(SAMPLES)
    assert not missing, f"add a sample value for {missing}"


@pytest.mark.parametrize(
    ("name", "path", "pattern"), FIELDS, ids=[f"{n}:{'/'.join(p)}" for n, p, _ in FIELDS]
)
def test_a_trailing_newline_is_refused(name: str, path: tuple[str, ...], pattern: str) -> None:
    good = SAMPLES[pattern]
    assert ecma_regex(pattern).search(good)
    assert not ecma_regex(pattern).search(good + "\n")
    ref, instance = instance_for(name, path, good)
    assert pattern_errors(ref, instance) == []
    ref, instance = instance_for(name, path, good + "\n")
    assert pattern_errors(ref, instance), (ref, instance)


def manifest(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "hyperhive/v1", "kind": "Agent", "metadata": {"name": "alice"},
            "spec": spec}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": "sonnet\n"}, "spec.model"),
        ({"resources": {"memoryMax": "512M\n"}}, "spec.resources.memoryMax"),
        ({"resources": {"memoryMax": "infinity\n"}}, "spec.resources.memoryMax"),
        ({"resources": {"cpuQuota": "50%\n"}}, "spec.resources.cpuQuota"),
        ({"allowedRecipients": ["bob\n"]}, "spec.allowedRecipients"),
    ],
)
def test_manifests_with_a_trailing_newline_are_refused(spec: dict[str, Any], field: str) -> None:
    ok = {k: (v.strip() if isinstance(v, str) else v) for k, v in spec.items()}
    if "resources" in ok:
        ok["resources"] = {k: v.strip() for k, v in spec["resources"].items()}
    if "allowedRecipients" in ok:
        ok["allowedRecipients"] = ["bob"]
    validate(manifest(**ok), "agent")
    with pytest.raises(ValidationFailed) as info:
        validate(manifest(**spec), "agent")
    assert info.value.field.startswith(field), info.value
    assert "does not match" in info.value.reason


def test_the_fast_path_agrees() -> None:
    """Hot request bodies go through the plain-Python check first: it must refuse too."""
    validate({"to": "bob", "body": "hi"}, "wire#SendRequest")
    with pytest.raises(ValidationFailed) as info:
        validate({"to": "bob\n", "body": "hi"}, "wire#SendRequest")
    assert info.value.field == "to"
    validate({"commit": "deadbeef"}, "wire#ApplyCommitRequest")
    with pytest.raises(ValidationFailed) as info:
        validate({"commit": "deadbeef\n"}, "wire#ApplyCommitRequest")
    assert info.value.field == "commit"


def test_ecma_dollar_only_outside_classes_and_escapes() -> None:
    assert ecma_regex("^a$").pattern == "^a\\Z"
    assert ecma_regex("^[$]\\$$").pattern == "^[$]\\$\\Z"
    assert ecma_regex("^x$|^y$").fullmatch("y")
    assert not ecma_regex("^x$|^y$").search("y\n")
