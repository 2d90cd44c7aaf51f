"""Stable content hashes: raw source rows and normalised payloads.

The push job compares hashes across runs and processes to skip unchanged rows, so the
encoding must not depend on dict order, `PYTHONHASHSEED` or the platform: canonical JSON
(sorted keys, no whitespace, UTF-8) hashed with SHA-256. `row_hash` runs once per source
row (a million rows per file is normal), so it stays one C-level encode plus one digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

import orjson

# One encoder built once: `json.dumps(...)` would build a new one on every call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: Any) -> bytes:
    """Encode `obj` as canonical JSON: sorted keys, no whitespace, UTF-8.

    A lone surrogate (what undecodable source bytes become) cannot be UTF-8; it is written
    as its JSON escape (`\\udc80`), so encoding never fails and the output stays valid JSON.
    NaN and infinities are refused (ValueError): they are not JSON.
    """
    return _ENCODER.encode(obj).encode("utf-8", "backslashreplace")


# The types `canonical_json_of_decoded` hands to orjson. Floats are not among them: orjson
# writes them in its own shortest form (`0.00001` where `repr` gives `1e-05`), which would
# change the bytes and so the meaning of a stored content hash.
_ORJSON_SAME_AS_CANONICAL: frozenset[type] = frozenset({str, int, bool, type(None)})


def canonical_json_of_decoded(value: Any) -> bytes:
    """`canonical_json(value)`, byte for byte, for a value decoded from JSON; much faster.

    A form submission's answers are tens of KB of text (data URLs): the standard encoder
    spends ~150 µs writing them, orjson ~3 µs. orjson's output equals `canonical_json`'s for
    strings (same escapes, UTF-8 unescaped), 64-bit integers, booleans, null, lists and
    objects with text keys (`OPT_SORT_KEYS` orders UTF-8 bytes, which is code point order).
    Anything else (a float, a lone surrogate, an integer beyond 64 bits, another type) goes
    to `canonical_json`, so the result never differs: content hashes keep their meaning.
    """
    if not _plain(value):
        return canonical_json(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate or an integer beyond 64 bits
        return canonical_json(value)


def _plain(value: Any) -> bool:
    """Whether `value` holds only the types orjson writes exactly as `canonical_json` does."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if any(type(key) is not str for key in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind not in _ORJSON_SAME_AS_CANONICAL:
            return False
    return True


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 of `data` (text is hashed as its UTF-8 bytes) as 64 lowercase hex digits."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def row_hash(fields: Mapping[str, str | None]) -> str:
    """Hash of one raw source row (field name -> text or None), independent of field order.

    Equal to `sha256_hex(canonical_json(fields))`; built by hand because the general encoder
    costs most of a CSV row's budget. `encode_basestring` is the very function the JSON
    encoder uses for strings when `ensure_ascii=False`, so the text is byte-identical.
    """
    body = ",".join(
        [
            f"{encode_basestring(key)}:{'null' if value is None else encode_basestring(value)}"
            for key, value in sorted(fields.items())
        ]
    )
    return hashlib.sha256(f"{{{body}}}".encode("utf-8", "backslashreplace")).hexdigest()


def row_hasher(names: Sequence[str]) -> Callable[[Sequence[str | None]], str]:
    """`row_hash` for rows whose fields are `names`, given their values in that order.

    `row_hasher(names)(values) == row_hash(dict(zip(names, values)))`, byte for byte (a test
    holds it to that): stored raw hashes keep their meaning. The sorted keys and the JSON
    around the values are written once per file instead of once per row, which halves the
    cost of the hash in a re-sync, where the hash is most of the work done per row.
    """
    order = sorted(range(len(names)), key=names.__getitem__)
    template = (
        "{" + ",".join(encode_basestring(names[i]).replace("%", "%%") + ":%s" for i in order) + "}"
    )
    digest = hashlib.sha256

    def hash_values(values: Sequence[str | None]) -> str:
        encoded = tuple(
            ["null" if (value := values[i]) is None else encode_basestring(value) for i in order]
        )
        return digest((template % encoded).encode("utf-8", "backslashreplace")).hexdigest()

    return hash_values


def canonical_object(parts: Mapping[str, bytes]) -> bytes:
    """Canonical JSON of an object whose member values are already canonical JSON.

    Byte-identical to `canonical_json` of the decoded object, so a large member (a form
    submission's answers) can be encoded once and shared by a content hash and an event
    payload. Keys are sorted as the encoder sorts them (by code point) and written by
    `encode_basestring`, the encoder's own string writer with `ensure_ascii=False`, then
    made UTF-8 with lone surrogates escaped, exactly as `canonical_json` does.
    """
    # One join of all the pieces: each large member is copied once, not once per `+`.
    pieces: list[bytes] = []
    for key in sorted(parts):
        key_json = encode_basestring(key).encode("utf-8", "backslashreplace")
        pieces += (b",", key_json, b":", parts[key])
    pieces[:1] = [b"{"]  # the first member's comma (or, for {}, nothing) becomes the brace
    pieces.append(b"}")
    return b"".join(pieces)


def payload_hash(payload: Mapping[str, Any]) -> str:
    """Hash of a normalised API payload; equal hashes mean Voxares already holds this body."""
    return sha256_hex(canonical_json(dict(payload)))
