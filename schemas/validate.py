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

Faster still, for the hot request bodies (``SendRequest``, ``RecvRequest`` ...):
a compiled schema that uses only simple keywords (``type``, ``properties``,
``required``, ``additionalProperties: false``, bounds, lengths, ``pattern``,
``items``, string ``enum``) also gets a plain-Python acceptance check
(``_fast``, ~2 µs against ~20). It only ever says "valid"; anything it does not
accept (an invalid body, or one it is unsure of, such as a float for an
``integer``) goes through jsonschema as before, so verdicts and error messages
are unchanged.

Patterns (``pattern``, ``propertyNames``' ``pattern``) are ECMA-262 regular expressions, as
JSON Schema says, matched with ECMA's ``$``: the end of the string, never "before a final
newline" as Python's ``re`` has it (so ``"sonnet\\n"`` fails ``^[a-z]+$`` here, as it would in
a browser or in any ECMA engine). ``ecma_regex`` compiles a pattern that way (every ``$``
outside a character class becomes ``\\Z``); both the fast check and jsonschema's ``pattern``
keyword (``_Validator``) use it. Everything else is Python ``re`` syntax, which the schemas'
patterns keep to the subset both engines read alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sized
from functools import cache, partial
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.validators import extend
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


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled with ECMA-262's ``$`` (end of string only: Python's ``\\Z``).

    Every unescaped ``$`` outside a character class is rewritten; the rest is compiled as
    is. Raises ``re.error`` for a pattern Python cannot compile.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":  # `[]...]`: a literal ] first
                out.append("[]")
                i += 2
                continue
        elif c == "$":
            c = "\\Z"
        out.append(c)
        i += 1
    return re.compile("".join(out))


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """jsonschema's ``pattern`` keyword with ``ecma_regex`` (same error message)."""
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator: Any = extend(  # type: ignore[no-untyped-call]  # jsonschema ships no types for it
    Draft202012Validator, {"pattern": _ecma_pattern}
)
"""Draft 2020-12 with ECMA ``$`` in patterns (module docstring)."""


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
def _validator(ref: str) -> Any:
    name, _, definition = ref.partition("#")
    pointer = f"#/$defs/{definition}" if definition else "#"
    try:
        schema = _inline({"$ref": f"{name}.schema.json{pointer}"}, name)
        return _Validator(schema)
    except _NotInlinable:
        return _Validator(
            {"$ref": f"{name}.schema.json{pointer if definition else ''}"}, registry=_registry()
        )


Check = Callable[[Any], bool]

_TYPES: dict[str, Check] = {
    "string": lambda x: isinstance(x, str),
    # an integral float is an "integer" to jsonschema; not sure here, so not accepted
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "null": lambda x: x is None,
}


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# the checks below loop rather than call all() over a generator: they run for every
# request body on the broker's hot path, and the generator's frame costs more than the test


def _props(props: dict[str, Check]) -> Check:
    pairs = tuple(props.items())

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for k, c in pairs:  # noqa: SIM110 (see above)
            if k in x and not c(x[k]):
                return False
        return True

    return check


def _required(names: tuple[str, ...]) -> Check:
    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for k in names:  # noqa: SIM110 (see above)
            if k not in x:
                return False
        return True

    return check


def _closed(allowed: frozenset[str]) -> Check:
    def check(x: Any) -> bool:
        return not isinstance(x, dict) or allowed.issuperset(x)

    return check


def _bound(value: float, lower: bool) -> Check:
    def check(x: Any) -> bool:
        return not _is_num(x) or (x >= value if lower else x <= value)

    return check


def _length(kind: type[Sized], value: int, lower: bool) -> Check:
    def check(x: Any) -> bool:
        return not isinstance(x, kind) or (len(x) >= value if lower else len(x) <= value)

    return check


def _pattern(rx: re.Pattern[str]) -> Check:
    def check(x: Any) -> bool:
        return not isinstance(x, str) or rx.search(x) is not None  # as _ecma_pattern

    return check


def _items(item: Check) -> Check:
    def check(x: Any) -> bool:
        if not isinstance(x, list):
            return True
        for i in x:  # noqa: SIM110 (see above)
            if not item(i):
                return False
        return True

    return check


def _words(words: frozenset[str]) -> Check:
    def check(x: Any) -> bool:
        return isinstance(x, str) and x in words

    return check


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    every = tuple(checks)

    def check(x: Any) -> bool:
        for c in every:  # noqa: SIM110 (see above)
            if not c(x):
                return False
        return True

    return check


_OBJECT_KEYS = frozenset({"type", "properties", "required", "additionalProperties"})
_STRING_KEYS = frozenset({"type", "minLength", "maxLength", "pattern"})
_NUMBER_KEYS = frozenset({"type", "minimum", "maximum"})


def _object(node: dict[str, Any]) -> Check:
    """One check for ``{"type": "object", properties, required, additionalProperties:
    false}`` (each optional but the type): the same verdict as ``_all`` of the keywords'
    checks, in one call instead of one per keyword."""
    props = tuple((k, _compile_fast(v)) for k, v in node.get("properties", {}).items())
    required = tuple(node.get("required", ()))
    closed = frozenset(node.get("properties", {})) if "additionalProperties" in node else None

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return False
        for k in required:
            if k not in x:
                return False
        if closed is not None and not closed.issuperset(x):
            return False
        for k, c in props:  # noqa: SIM110 (see above)
            if k in x and not c(x[k]):
                return False
        return True

    return check


def _string(node: dict[str, Any]) -> Check:
    """One check for ``{"type": "string", minLength, maxLength, pattern}`` (each optional
    but the type), as ``_object`` is for objects."""
    lo = node.get("minLength", 0)
    hi = node.get("maxLength")
    rx = ecma_regex(node["pattern"]) if "pattern" in node else None

    def check(x: Any) -> bool:
        if not isinstance(x, str) or len(x) < lo or (hi is not None and len(x) > hi):
            return False
        return rx is None or rx.search(x) is not None

    return check


def _number(node: dict[str, Any]) -> Check:
    """One check for ``{"type": "number" | "integer", minimum, maximum}`` (each optional
    but the type); an integral float is no ``integer`` here, as in ``_TYPES``."""
    kinds: tuple[type, ...] = (int,) if node["type"] == "integer" else (int, float)
    lo = node.get("minimum")
    hi = node.get("maximum")

    def check(x: Any) -> bool:
        if not isinstance(x, kinds) or isinstance(x, bool):
            return False
        return (lo is None or x >= lo) and (hi is None or x <= hi)

    return check


def _shaped(node: dict[str, Any]) -> Check | None:
    """``_object``, ``_string`` or ``_number`` when ``node`` is one of their shapes, with
    well-formed keyword values; else None (the keyword-by-keyword compilation)."""
    keys = node.keys() - _ANNOTATIONS
    kind = node.get("type")
    if kind == "object" and keys <= _OBJECT_KEYS:
        props, required = node.get("properties", {}), node.get("required", [])
        if (
            isinstance(props, dict)
            and isinstance(required, list)
            and all(isinstance(k, str) for k in required)
            and node.get("additionalProperties", False) is False
        ):
            return _object(node)
    elif kind == "string" and keys <= _STRING_KEYS:
        bounds = [node[k] for k in ("minLength", "maxLength") if k in node]
        if all(type(b) is int for b in bounds) and isinstance(node.get("pattern", ""), str):
            return _string(node)
    elif (
        kind in ("number", "integer")
        and keys <= _NUMBER_KEYS
        and all(_is_num(node[k]) for k in ("minimum", "maximum") if k in node)
    ):
        return _number(node)
    return None


def _compile_fast(node: Any) -> Check:
    """A check that is True only when ``node`` (a ref-free schema) accepts the instance;
    ``_NotInlinable`` for a keyword it does not model exactly."""
    if not isinstance(node, dict):
        raise _NotInlinable("boolean schema")
    shaped = _shaped(node)
    if shaped is not None:
        return shaped
    checks: list[Check] = []
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key == "type" and isinstance(value, str) and value in _TYPES:
            checks.append(_TYPES[value])
        elif key == "properties" and isinstance(value, dict):
            checks.append(_props({k: _compile_fast(v) for k, v in value.items()}))
        elif key == "required" and isinstance(value, list):
            checks.append(_required(tuple(value)))
        elif key == "additionalProperties" and value is False:
            checks.append(_closed(frozenset(node.get("properties", {}))))
        elif key in ("minimum", "maximum") and _is_num(value):
            checks.append(_bound(value, key == "minimum"))
        elif key in ("minLength", "maxLength") and type(value) is int:
            checks.append(_length(str, value, key == "minLength"))
        elif key in ("minItems", "maxItems") and type(value) is int:
            checks.append(_length(list, value, key == "minItems"))
        elif key == "pattern" and isinstance(value, str):
            checks.append(_pattern(ecma_regex(value)))
        elif key == "items" and isinstance(value, dict):
            checks.append(_items(_compile_fast(value)))
        elif key == "enum" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            checks.append(_words(frozenset(value)))
        else:
            raise _NotInlinable(key)
    return _all(checks)


@cache
def _fast(ref: str) -> Check | None:
    """The plain-Python acceptance check for ``ref``, or None when its schema has a keyword
    the check does not model (then jsonschema alone decides)."""
    validator = _validator(ref)
    if validator.schema is not None and "$ref" in json.dumps(validator.schema):
        return None
    try:
        return _compile_fast(validator.schema)
    except (_NotInlinable, re.error):
        return None


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


def _judge(validator: Any, instance: Any) -> None:
    """jsonschema's verdict on ``instance``: ``ValidationFailed`` for its best error."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise ValidationFailed(_path(error), _reason(error))


def validate(instance: Any, ref: str) -> None:
    """Check ``instance`` against schema ``ref`` (``"agent"`` or ``"wire#SendRequest"``).

    Raises ``ValidationFailed`` naming the first offending field (the deepest,
    most specific error jsonschema reports).
    """
    checker(ref)(instance)


@cache
def checker(ref: str) -> Callable[[Any], None]:
    """``validate`` bound to ``ref``: ``check(instance)`` raises what ``validate(instance,
    ref)`` raises, without looking the schema up per call (a caller on a hot path keeps
    one per schema). The schema is compiled on the first call for ``ref``."""
    fast = _fast(ref)
    validator = _validator(ref)
    if fast is None:
        return partial(_judge, validator)

    def check(instance: Any) -> None:
        if not fast(instance):
            _judge(validator, instance)

    return check
