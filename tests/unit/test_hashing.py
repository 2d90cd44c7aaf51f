"""Canonical JSON and the row/payload hashes that decide "unchanged"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from syncd.hashing import (
    canonical_json,
    canonical_json_of_decoded,
    canonical_object,
    payload_hash,
    row_hash,
    row_hasher,
    sha256_hex,
)
from tests import strategies

ROW = {
    "providerId": "P-1",
    "firstName": "Željka",
    "lastName": "Horvat",
    "mobileNumber": None,
    "email": "z@example.com",
    "dateOfBirth": "1980-02-13",
}
# Pinned: if this changes, every mirror row looks changed after an upgrade.
ROW_HASH = "8eef7c9bfd636d4de6fc96637b4214c10d5c0bd46c7e7710b226484031003433"

# Any code point, lone surrogates included (what undecodable CSV bytes turn into).
any_text = st.text(st.characters(exclude_categories=()))
field_values = st.one_of(st.none(), any_text)
row_fields = st.dictionaries(st.text(max_size=20), field_values, max_size=8)
# Any JSON value canonical_json accepts (finite numbers), with any text in keys and strings.
json_values = strategies.json_values(any_text, max_size=4, max_leaves=20)
json_objects = st.dictionaries(any_text, json_values, max_size=6)


def test_canonical_json_sorts_keys_without_whitespace_in_utf8() -> None:
    """Keys are sorted at every level, separators carry no spaces, non-ASCII stays UTF-8."""
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "š"}}) == (
        '{"a":{"c":"š","d":[1,2]},"b":1}'.encode()
    )


def test_canonical_json_escapes_lone_surrogates_instead_of_failing() -> None:
    """Undecodable source bytes (lone surrogates) become JSON escapes, still valid UTF-8 JSON."""
    encoded = canonical_json({"a": "x\udc80"})
    assert encoded == b'{"a":"x\\udc80"}'
    assert json.loads(encoded) == {"a": "x\udc80"}


def test_sha256_hex_hashes_text_as_utf8() -> None:
    """Text and its UTF-8 bytes hash alike, to the well-known SHA-256 digest."""
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex("") == sha256_hex(b"") == empty
    assert sha256_hex("š") == sha256_hex("š".encode())


def test_row_hash_ignores_field_order() -> None:
    """The same fields in another insertion order hash the same."""
    assert row_hash(dict(reversed(list(ROW.items())))) == row_hash(ROW)


def test_row_hash_tells_none_from_empty_and_values_apart() -> None:
    """None, an empty string and a changed value give three different hashes."""
    hashes = {row_hash({"a": None}), row_hash({"a": ""}), row_hash({"a": "null"})}
    assert len(hashes) == 3
    assert row_hash({"a": "x", "b": "y"}) != row_hash({"a": "xb", "": "y"})


def test_row_hash_is_pinned() -> None:
    """The hash of a known row is a fixed constant (stable across releases)."""
    assert row_hash(ROW) == ROW_HASH


def test_row_hash_is_stable_across_processes() -> None:
    """Another interpreter with a different hash seed computes the same row hash."""
    code = f"from syncd.hashing import row_hash; print(row_hash({ROW!r}))"
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == row_hash(ROW)


def test_row_hasher_gives_the_pinned_hash_in_any_column_order() -> None:
    """The per-file hasher of the CSV source keeps stored raw hashes valid: same pinned hash,
    whatever order the file's columns come in."""
    names = list(ROW)
    assert row_hasher(names)([ROW[name] for name in names]) == ROW_HASH
    names.reverse()
    assert row_hasher(names)([ROW[name] for name in names]) == ROW_HASH


@given(row_fields.map(lambda fields: {k.replace("%", "%%") + "%s": v for k, v in fields.items()}))
@example({"%s": "x", "a%%": None, "": "%d"})
def test_row_hasher_equals_row_hash(fields: dict[str, str | None]) -> None:
    """For any names and values (`%` in names included, the hasher's template uses it):
    byte-identical to `row_hash`, so an upgrade does not make every row look changed."""
    assert row_hasher(list(fields))(list(fields.values())) == row_hash(fields)


@given(row_fields)
def test_row_hash_equals_hash_of_canonical_json(fields: dict[str, str | None]) -> None:
    """The hand-built row encoding is byte-identical to canonical JSON, for any text."""
    assert row_hash(fields) == sha256_hex(canonical_json(fields))


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=10), min_size=1))
def test_payload_hash_changes_with_any_value(payload: dict[str, str]) -> None:
    """Changing one value of a payload changes its hash; reordering keys does not."""
    key = next(iter(payload))
    changed = {**payload, key: payload[key] + "!"}
    assert payload_hash(changed) != payload_hash(payload)
    assert payload_hash(dict(reversed(list(payload.items())))) == payload_hash(payload)


@given(json_objects)
@example({"\udc80": "\ud800", "š": [1.5, None, True]})
def test_canonical_object_equals_canonical_json_of_the_decoded_object(obj: dict[str, Any]) -> None:
    """Joining canonically encoded members gives canonical_json's bytes, surrogates included."""
    parts = {key: canonical_json(value) for key, value in obj.items()}
    joined = canonical_object(parts)
    assert joined == canonical_json(obj)
    decoded = {key: json.loads(part) for key, part in parts.items()}
    assert joined == canonical_json(decoded)


@given(json_objects, json_objects)
def test_canonical_object_nests(inner: dict[str, Any], outer: dict[str, Any]) -> None:
    """A member that is itself a canonical_object joins like any canonical member."""
    member = canonical_object({key: canonical_json(value) for key, value in inner.items()})
    parts = {key: canonical_json(value) for key, value in outer.items()} | {"\udc80x": member}
    assert canonical_object(parts) == canonical_json({**outer, "\udc80x": inner})


def test_canonical_object_sorts_non_ascii_keys_by_code_point() -> None:
    """Keys sort by code point (ASCII before š before CJK) and stay UTF-8, not escaped."""
    parts = {"中": b"1", "š": b"2", "z": b"3", "": b"{}"}
    assert canonical_object(parts) == '{"":{},"z":3,"š":2,"中":1}'.encode()
    assert canonical_object({}) == b"{}"


# Text without lone surrogates: what a JSON parser hands back for a UTF-8 body.
decoded_text = st.text(st.characters(exclude_categories=("Cs",)))
decoded_values = strategies.json_values(decoded_text, max_size=4, max_leaves=20)


@given(json_values)
@example({"a": 1e-05, "b": 1e16, "c": -0.0})  # orjson would write 0.00001 and 1e16
@example({"big": 2**64, "small": -(2**63) - 1})  # beyond orjson's 64-bit integers
@example({"\udc80": "\ud800"})  # lone surrogates: orjson refuses them
@example({'\x00\x1f\x7f\u2028"\\': "\b\f\n\r\t", "z": [True, False, None]})
def test_canonical_json_of_decoded_equals_canonical_json(value: Any) -> None:
    """The fast encoder of decoded JSON writes exactly canonical_json's bytes, for any value."""
    assert canonical_json_of_decoded(value) == canonical_json(value)


@given(decoded_values)
def test_canonical_json_of_decoded_equals_canonical_json_without_surrogates(value: Any) -> None:
    """The same for the values a parsed body holds, which mostly take the orjson path."""
    assert canonical_json_of_decoded(value) == canonical_json(value)


def test_canonical_json_of_decoded_sorts_keys_by_code_point_like_canonical_json() -> None:
    """Non-ASCII keys, nested objects and 64-bit integers take the fast path unchanged."""
    value = {"中": [1, {"š": 2**63, "a": -(2**63)}], "z": "data:image/png;base64,AAAA", "": {}}
    assert canonical_json_of_decoded(value) == canonical_json(value)
    assert canonical_json_of_decoded(value) == (
        '{"":{},"z":"data:image/png;base64,AAAA",'
        '"中":[1,{"a":-9223372036854775808,"š":9223372036854775808}]}'.encode()
    )
