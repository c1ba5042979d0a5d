"""JSON Schema validation at the boundary, with errors that name the field.

Schemas live in ``schemas/json/<name>.schema.json``; a body is checked against
one schema or one ``$defs`` entry of it (``"wire#SendRequest"``). Draft 2020-12.

Speed: every ``$ref`` is resolved through a ``referencing.Registry`` on every
call, which cost ~90 µs for a ``SendRequest`` (3 lookups). So each ref is
compiled once into a self-contained schema with every ``{"$ref": ...}``
replaced by its target (``_inline``) and one validator is cached per ref:
~20 µs. The errors are the same (the instance paths, keywords and their
order do not change; ``tests/unit/test_validate.py`` compares both on a
corpus). A schema that cannot be inlined (a recursive ``$ref``, or ``$ref``
beside other keywords) keeps the registry.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from referencing import Registry, Resource


class ValidationFailed(ValueError):
    """A document does not match its schema.

    ``field`` is the JSON path of the offending value (``"body"``, ``"spec.model"``,
    ``"(root)"``) and ``reason`` is what is wrong with it; ``str()`` joins both.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


SCHEMA_NAMES = ("agent", "config", "wire", "events", "admin")


@cache
def _registry() -> Registry:
    resources_: list[tuple[str, Resource[Any]]] = []
    for name in SCHEMA_NAMES:
        doc = json.loads(
            resources.files("schemas").joinpath(f"json/{name}.schema.json").read_text()
        )
        resources_.append((f"{name}.schema.json", Resource.from_contents(doc)))
    return Registry().with_resources(resources_)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed schema document ``schemas/json/<name>.schema.json``."""
    doc: dict[str, Any] = json.loads(
        resources.files("schemas").joinpath(f"json/{name}.schema.json").read_text()
    )
    return doc


class _NotInlinable(Exception):
    pass


_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})


def _target(uri: str, doc_name: str) -> tuple[str, Any]:
    """``(doc, node)`` a ``$ref`` points at: ``#/$defs/X`` or ``other.schema.json#/$defs/X``."""
    base, _, pointer = uri.partition("#")
    doc = base.removesuffix(".schema.json") if base else doc_name
    if doc not in SCHEMA_NAMES or (pointer and not pointer.startswith("/")):
        raise _NotInlinable(uri)
    node: Any = load_schema(doc)
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise _NotInlinable(uri)
        node = node[part]
    return doc, node


def _inline(node: Any, doc_name: str, seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``$ref`` replaced by a copy of its (inlined) target."""
    if isinstance(node, list):
        return [_inline(v, doc_name, seen) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        uri = node["$ref"]
        if not isinstance(uri, str) or set(node) - {"$ref"} - _ANNOTATIONS:
            raise _NotInlinable(str(uri))
        doc, target = _target(uri, doc_name)
        key = f"{doc}#{uri.partition('#')[2]}"
        if key in seen:  # recursive: needs the registry
            raise _NotInlinable(uri)
        return _inline(target, doc, (*seen, key))
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$defs":
            continue  # every use was inlined
        if k in ("properties", "patternProperties", "dependentSchemas") and isinstance(v, dict):
            out[k] = {pk: _inline(pv, doc_name, seen) for pk, pv in v.items()}
        elif k in ("const", "enum", "default", "examples"):
            out[k] = v  # values, not schemas
        else:
            out[k] = _inline(v, doc_name, seen)
    return out


@cache
def _validator(ref: str) -> Draft202012Validator:
    name, _, definition = ref.partition("#")
    pointer = f"#/$defs/{definition}" if definition else "#"
    try:
        schema = _inline({"$ref": f"{name}.schema.json{pointer}"}, name)
        return Draft202012Validator(schema)
    except _NotInlinable:
        return Draft202012Validator(
            {"$ref": f"{name}.schema.json{pointer if definition else ''}"}, registry=_registry()
        )


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    required = error.validator_value
    if (
        error.validator == "required"
        and isinstance(error.instance, dict)
        and isinstance(required, list)
    ):
        missing = [r for r in required if r not in error.instance]
        if missing:
            parts.append(str(missing[0]))
    schema = error.schema
    if (
        error.validator == "additionalProperties"
        and isinstance(error.instance, dict)
        and isinstance(schema, dict)
    ):
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(str(extra[0]))
    return ".".join(parts) or "(root)"


def _reason(error: jsonschema.ValidationError) -> str:
    if error.validator == "required":
        return "is required"
    if error.validator == "additionalProperties":
        return "is not an allowed field"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "pattern":
        return f"does not match {error.validator_value}"
    if error.validator in ("minimum", "maximum"):
        word = "at least" if error.validator == "minimum" else "at most"
        return f"must be {word} {error.validator_value}"
    if error.validator == "enum":
        return f"must be one of {error.validator_value}"
    msg = error.message
    return msg if len(msg) <= 200 else msg[:200] + "…"


def validate(instance: Any, ref: str) -> None:
    """Check ``instance`` against schema ``ref`` (``"agent"`` or ``"wire#SendRequest"``).

    Raises ``ValidationFailed`` naming the first offending field (the deepest,
    most specific error jsonschema reports).
    """
    error = jsonschema.exceptions.best_match(_validator(ref).iter_errors(instance))
    if error is not None:
        raise ValidationFailed(_path(error), _reason(error))
