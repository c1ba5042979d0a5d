"""``hivehttp.parse_json_object``: what every JSON body on every surface must survive."""

from __future__ import annotations

import pytest

from hivehttp import BadJson, parse_json_object


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
