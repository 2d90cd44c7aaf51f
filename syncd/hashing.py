"""Stable content hashes: raw source rows and normalised payloads.

The push job compares hashes across runs and processes to skip unchanged rows, so the
encoding must not depend on dict order, `PYTHONHASHSEED` or the platform: canonical JSON
(sorted keys, no whitespace, UTF-8) hashed with SHA-256. `row_hash` runs once per source
row (a million rows per file is normal), so it stays one C-level encode plus one digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

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
