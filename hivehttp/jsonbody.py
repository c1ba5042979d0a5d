"""Parse a request body as one JSON object, refusing what would hurt later layers.

Every JSON body on every hyperhive surface goes through ``parse_json_object``.
What it refuses, and why:

* not UTF-8 (RFC 8259 §8.1 requires it);
* nesting deeper than ``max_depth``: the stdlib decoder recurses and raises
  ``RecursionError`` near the interpreter's limit, and every later walk of
  the document would too;
* a lone UTF-16 surrogate written as an escape (``"\\ud800"``): the decoder
  accepts it (RFC 8259 §8.2 leaves it undefined) but the string cannot be
  encoded back to UTF-8, so sqlite and every writer fail on it later;
* ``NaN`` / ``Infinity`` and numbers that overflow a finite float, which
  are not JSON at all;
* integers outside signed 64 bits, which sqlite cannot store;
* anything but an object at the top.

Speed: a body is first decoded by msgspec's C decoder (~0.15 µs for a ``/send`` body
against ~0.9 µs for the stdlib's) and kept when ``_fine`` finds nothing to refuse and the
raw text holds no surrogate escape. Anything else, whatever msgspec thought of it (it
refuses NaN, over-range floats, bad UTF-8 and lone surrogates itself, and returns big
integers and deep nesting for ``_fine`` to refuse), is decoded again by the stdlib
decoder and walked as before, so every refusal and its message are the stdlib path's.
Both decoders give the same document for what both accept (``tests/unit/test_jsonbody.py``
compares them on a corpus).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import msgspec

MAX_DEPTH = 64
"""Deepest nesting of arrays/objects a body may have."""

INT_MAX = 2**63 - 1
INT_MIN = -(2**63)

# a \uD800-\uDFFF escape; only then can a decoded string hold a lone surrogate
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class BadJson(ValueError):
    """The body is not an acceptable JSON object.

    ``message`` says what is wrong in plain words; ``field`` is the dotted
    path of the offending value (``"(root)"`` for the whole body, ``None``
    when the text itself does not parse).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class _NotANumber:
    """Stands in for ``NaN``, ``Infinity`` or an overflowing float while decoding, so that
    the walk can refuse it naming its field."""

    text: str


def _reject_constant(name: str) -> Any:
    return _NotANumber(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> Any:
    value = float(text)
    if not math.isfinite(value):
        return _NotANumber(f"number {text[:40]} is out of range")
    return value


def _join(path: str, key: object) -> str:
    # a key may hold a lone surrogate; the path is echoed in errors, so keep it encodable
    text = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if path == "(root)" else f"{path}.{text}"


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadJson(
            f"{path}: holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}), "
            "which is not text",
            path,
        ) from None


def _walk(value: Any, path: str, depth: int, max_depth: int, surrogates: bool) -> None:
    if isinstance(value, dict):
        if depth >= max_depth:
            raise BadJson(f"{path}: nested deeper than {max_depth} levels", path)
        for key, item in value.items():
            child = _join(path, key)
            if surrogates:
                _check_text(key, child)
            _walk(item, child, depth + 1, max_depth, surrogates)
    elif isinstance(value, list):
        if depth >= max_depth:
            raise BadJson(f"{path}: nested deeper than {max_depth} levels", path)
        for i, item in enumerate(value):
            _walk(item, _join(path, i), depth + 1, max_depth, surrogates)
    elif isinstance(value, bool):
        return
    elif isinstance(value, _NotANumber):
        raise BadJson(f"{path}: {value.text}", path)
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise BadJson(f"{path}: integer is out of range (64-bit signed)", path)
    elif surrogates and isinstance(value, str):
        _check_text(value, path)


_FLOAT_MAX = sys.float_info.max


def _fine(value: Any, depth: int, max_depth: int) -> bool:
    """True when ``_walk`` (without the surrogate check) would find nothing to refuse; no
    paths are built on the way, so an acceptable body, nearly every one, costs no string
    formatting. On False the caller walks again with paths, to name the field.

    Exact types (a decoder makes no subclasses), scalars tested in the loop rather than
    in a call each, and a float must be finite (``_walk`` never sees a non-finite one from
    the stdlib decoder; from msgspec, neither, but that is msgspec's rule, not ours)."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return _fine_scalar(value)
    if depth >= max_depth:
        return False
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not INT_MIN <= item <= INT_MAX:
                return False
        elif kind is float:
            if not -_FLOAT_MAX <= item <= _FLOAT_MAX:  # False for NaN too
                return False
        elif not _fine(item, depth + 1, max_depth):
            return False
    return True


def _fine_scalar(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(INT_MIN <= value <= INT_MAX)
    if kind is float:
        return bool(-_FLOAT_MAX <= value <= _FLOAT_MAX)
    return False  # a _NotANumber


# one decoder for every body: ``json.loads`` with hooks builds a new one per call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_FAST_DECODE = msgspec.json.Decoder().decode


def parse_json_object(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Decode ``raw`` as one JSON object; an empty (or all-whitespace) body is ``{}``.

    Returns the object as a dict. Raises ``BadJson`` naming the problem and,
    where there is one, the dotted path of the field (see the module doc
    for what is refused). Cost, for an acceptable body: one msgspec decode
    plus one walk of the result; a body msgspec refuses, or that holds a
    surrogate escape or something to refuse, is decoded again by the stdlib
    (module doc).
    """
    if not raw.strip():
        return {}
    try:
        fast = _FAST_DECODE(raw)
    except Exception:  # whatever it is, the stdlib path names it
        return parse_with_stdlib(raw, max_depth=max_depth)
    if type(fast) is dict and _SURROGATE_ESCAPE.search(raw) is None and _fine(fast, 0, max_depth):
        return fast
    return parse_with_stdlib(raw, max_depth=max_depth)


def parse_with_stdlib(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """``parse_json_object`` with the stdlib decoder alone: what every body msgspec's
    decoder did not settle goes through, and the reference its answers are tested
    against. Same arguments, result and errors."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"body is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BadJson(
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadJson(f"body is nested deeper than {max_depth} levels", "(root)") from None
    except ValueError as exc:  # over-long integer literals (NaN and co. are walked below)
        raise BadJson(f"body has an invalid number: {exc}") from None
    if not isinstance(doc, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(doc), "a number"
        )
        raise BadJson(f"body must be a JSON object, not {kind}", "(root)")
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    if surrogates or not _fine(doc, 0, max_depth):
        _walk(doc, "(root)", 0, max_depth, surrogates)
    return doc
