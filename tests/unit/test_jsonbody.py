"""``hivehttp.parse_json_object``: what every JSON body on every surface must survive."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from hivehttp import BadJson, parse_json_object
from hivehttp.jsonbody import parse_with_stdlib


def test_plain_object_and_empty_body() -> None:
    assert parse_json_object(b'{"to": "alice", "n": [1, 2.5, true, null]}') == {
        "to": "alice",
        "n": [1, 2.5, True, None],
    }
    assert parse_json_object(b"") == {}
    assert parse_json_object(b"  \n") == {}


def test_valid_surrogate_pairs_and_non_ascii_pass() -> None:
    doc = parse_json_object('{"body": "\\ud83d\\ude00 é ✓"}'.encode())
    assert doc["body"] == "😀 é ✓"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"body": "\\ud800"}', "body"),
        (b'{"a": {"b": ["ok", "x\\udfff"]}}', "a.b.1"),
        (b'{"\\udc00key": 1}', "\\udc00key"),
        (b'{"body": "\\ude00\\ud83d"}', "body"),  # a pair in the wrong order
    ],
)
def test_lone_surrogates_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(BadJson) as err:
        parse_json_object(raw)
    assert err.value.field == field
    assert "surrogate" in err.value.message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(BadJson) as err:
        parse_json_object(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert "nested" in err.value.message
    with pytest.raises(BadJson) as err:
        parse_json_object(b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", max_depth=64)
    assert "deeper than 64" in err.value.message
    assert parse_json_object(b'{"a": ' + b"[" * 10 + b"]" * 10 + b"}")["a"] == [[[[[[[[[[]]]]]]]]]]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "not an array"),
        (b'"text"', "not a string"),
        (b"3", "not a number"),
        (b'{"x": NaN}', "x: NaN is not a valid JSON number"),
        (b'{"x": 1e999}', "x: number 1e999 is out of range"),
        (b'{"x": 9223372036854775808}', "out of range"),
    ],
)
def test_refusals_say_what_is_wrong(raw: bytes, words: str) -> None:
    with pytest.raises(BadJson) as err:
        parse_json_object(raw)
    assert words in err.value.message


def test_non_numbers_are_refused_naming_their_field() -> None:
    for raw, field in (
        (b'{"a": {"cost": NaN}}', "a.cost"),
        (b'{"x": [1, -Infinity]}', "x.1"),
        (b'{"c": 1e999}', "c"),
    ):
        with pytest.raises(BadJson) as err:
            parse_json_object(raw)
        assert err.value.field == field


def test_int_bounds_are_inclusive() -> None:
    assert parse_json_object(b'{"x": 9223372036854775807}')["x"] == 2**63 - 1
    assert parse_json_object(b'{"x": -9223372036854775808}')["x"] == -(2**63)
    with pytest.raises(BadJson) as err:
        parse_json_object(b'{"x": [-9223372036854775809]}')
    assert err.value.field == "x.0"


def _typed(value: Any) -> Any:
    """``value`` with every scalar's exact type beside it and dicts as key-ordered lists:
    ``1 == 1.0 == True`` and ``{"a": 1, "b": 2} == {"b": 2, "a": 1}`` hide differences."""
    if isinstance(value, dict):
        return ("dict", [(type(k).__name__, k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _outcome(parse: Callable[[bytes], dict[str, Any]], raw: bytes) -> Any:
    try:
        return _typed(parse(raw))
    except BadJson as exc:
        return ("BadJson", exc.message, exc.field)


def _corpus(rng: random.Random) -> list[bytes]:
    deep = [b'{"a": ' + b"[" * n + b"]" * n + b"}" for n in (62, 63, 64, 65, 999, 5000)]
    deep += [b'{"a": ' + b'{"b": ' * n + b"1" + b"}" * n + b"}" for n in (62, 63, 64, 65)]
    raw = [
        *deep,
        b"",
        b" \t\r\n",
        b"\x0c",
        b"\x0b{}",
        b"{}\x0c",
        b"{}",
        b" {} ",
        b"\xef\xbb\xbf{}",
        b"{} x",
        b"{}{}",
        b"[]",
        b"null",
        b"true",
        b'"x"',
        b"-0",
        b"1e999",
        b'{"a": 1, "a": 2, "b": 3, "a": 4}',
        b'{"b": 1, "a": {"c": 1, "c": [2]}}',
        b'{"to": "bob", "body": "hi"}',
        b'{"wait_seconds": 30}',
        b'{"wait_seconds": 30.0, "lease_seconds": 60}',
        b'{"a": -0, "b": -0.0, "c": 1E2, "d": 1e-400, "e": 0.1, "f": 1.5e308, "g": 1e309}',
        b'{"a": -1e309}',
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b'{"a": Infinity}',
        b'{"a": nan}',
        b'{"a": 01}',
        b'{"a": 1.}',
        b'{"a": .5}',
        b'{"a": +1}',
        b'{"a": 0x10}',
        b'{"a": 9223372036854775807, "b": -9223372036854775808}',
        b'{"a": 9223372036854775808}',
        b'{"a": -9223372036854775809}',
        b'{"a": 18446744073709551616}',
        b'{"a": [' + b"9" * 5000 + b"]}",
        b'{"a": 1' + b"0" * 400 + b"}",
        b'{"a": 1' + b"0" * 400 + b".5}",
        b'{"a": "\\ud800"}',
        b'{"a": "\\udc00x"}',
        b'{"\\ud800": 1}',
        b'{"a": "\\ud83d\\ude00"}',
        b'{"a": "\\ude00\\ud83d"}',
        b'{"a": "\\u0000 \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9"}',
        b'{"a": "\\x"}',
        b'{"a": "\\u12"}',
        b'{"a": "tab\there"}',
        b'{"a": "nl\nhere"}',
        b'{"a": "del\x7fhere"}',
        '{"a": "é ✓ 😀 \ufffe \uffff"}'.encode(),
        b'{"a": "\xed\xa0\x80"}',
        b'{"a": "\xc3"}',
        b'{"a": "\xff"}',
        b'{"a": "\xf4\x90\x80\x80"}',
        b'{"a": 1,}',
        b'{"a" 1}',
        b"{'a': 1}",
        b'{"a": [1, 2,]}',
        b'{"a": tru}',
        b'{"a": True}',
        b"{a: 1}",
        b'{"a": 1}\x00',
        b'\x00{"a": 1}',
    ]
    for _ in range(300):  # random floats: both decoders must round them alike
        value = rng.choice(
            [rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-320, 308), rng.random()]
        )
        raw.append(json.dumps({"x": value, "y": [value, -value]}).encode())
        raw.append(f'{{"x": {value:.17e}}}'.encode())
        raw.append(f'{{"x": {repr(value).upper()}}}'.encode())
    return raw


def test_msgspec_and_the_stdlib_answer_alike() -> None:
    """``parse_json_object`` decodes with msgspec first and falls back to the stdlib
    (``parse_with_stdlib``): same document (types and key order too) or same refusal."""
    for raw in _corpus(random.Random(10)):
        got, want = _outcome(parse_json_object, raw), _outcome(parse_with_stdlib, raw)
        assert got == want, raw[:120]
