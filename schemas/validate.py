"""JSON Schema validation at the boundary, with errors that name the field.

Schemas live in ``schemas/json/<name>.schema.json``; a body is checked against
one schema or one ``$defs`` entry of it (``"wire#SendRequest"``). Draft 2020-12.
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


SCHEMA_NAMES = ("agent", "config", "wire", "events")


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


@cache
def _validator(ref: str) -> Draft202012Validator:
    name, _, definition = ref.partition("#")
    if definition:
        schema: dict[str, Any] = {"$ref": f"{name}.schema.json#/$defs/{definition}"}
    else:
        schema = {"$ref": f"{name}.schema.json"}
    return Draft202012Validator(schema, registry=_registry())


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
