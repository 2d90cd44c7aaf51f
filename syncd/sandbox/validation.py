"""Validation of request bodies and query parameters, the way the Voxares API answers it.

Pure functions: they take parsed JSON or query values and either return clean values or raise
`ApiError` with a NestJS-style list of messages. Messages name fields, never the values sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from syncd.sandbox.errors import ApiError, invalid
from syncd.voxares.contract import (
    DEFAULT_PAGE_SIZE,
    E164_PATTERN,
    MAX_PAGE_SIZE,
    PAGE_SIZE_OVER_MAX_STATUS,
    VALIDATION_ERROR_STATUS,
    parse_timestamp,
)

# Patterns are matched with fullmatch and ASCII digits only (`\d` would accept any script's).
_E164 = re.compile(E164_PATTERN, re.ASCII)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGITS = re.compile(r"[0-9]{1,9}")
# An offset whose "+" arrived as a space because the client did not percent-encode it.
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")

# Fields that may be sent as null to clear them; any other null counts as "not sent".
NULLABLE_FIELDS = frozenset({"mobileNumber", "email", "dateOfBirth"})

Body = dict[str, str | None]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (400 otherwise)."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid(["body must be a JSON object"], VALIDATION_ERROR_STATUS)
    return value


def _field_problem(field: str, value: object) -> str | None:
    """What is wrong with one present, non-null field value, or None."""
    if not isinstance(value, str):
        return f"{field} must be a string"
    if field == "mobileNumber":
        return None if _E164.fullmatch(value) else f"{field} must be a valid E.164 phone number"
    if field == "email":
        return None if _EMAIL.fullmatch(value) else f"{field} must be an email"
    if field == "dateOfBirth":
        return None if _is_iso_date(value) else f"{field} must be a valid ISO 8601 date string"
    if not value.strip():
        return f"{field} should not be empty"
    return None


def _is_iso_date(text: str) -> bool:
    if not _ISO_DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def validate_body(
    body: Mapping[str, Any], *, allowed: Sequence[str], required: Sequence[str] = ()
) -> Body:
    """Check a body against the allowed and required field names; return the fields sent.

    Unknown properties, wrong types and bad shapes are all reported at once (400, list).
    Null is kept only for the nullable fields (it clears them); elsewhere it means "not sent".
    """
    problems: list[str] = []
    clean: Body = {}
    for key, value in body.items():
        if key not in allowed:
            problems.append(f"property {str(key)[:64]} should not exist")
            continue
        if value is None:
            if key in NULLABLE_FIELDS:
                clean[key] = None
            continue
        problem = _field_problem(key, value)
        if problem:
            problems.append(problem)
        else:
            clean[key] = value
    for field in required:
        if clean.get(field) is None and not any(p.startswith(field + " ") for p in problems):
            problems.append(f"{field} should not be empty")
    if problems:
        raise invalid(problems, VALIDATION_ERROR_STATUS)
    return clean


def parse_paging(query: Mapping[str, str]) -> tuple[int, int]:
    """The zero-based page and the page size of a list request (400 when out of range)."""
    page, size = 0, DEFAULT_PAGE_SIZE
    problems: list[str] = []
    raw_page = query.get("page")
    if raw_page is not None:
        if _DIGITS.fullmatch(raw_page):
            page = int(raw_page)
        else:
            problems.append("page must be an integer not less than 0")
    raw_size = query.get("pageSize")
    if raw_size is not None:
        if not _DIGITS.fullmatch(raw_size) or int(raw_size) < 1:
            problems.append("pageSize must be an integer not less than 1")
        elif int(raw_size) > MAX_PAGE_SIZE:
            raise invalid(
                [f"pageSize must not be greater than {MAX_PAGE_SIZE}"], PAGE_SIZE_OVER_MAX_STATUS
            )
        else:
            size = int(raw_size)
    if problems:
        raise invalid(problems)
    return page, size


def parse_search_term(query: Mapping[str, str]) -> str | None:
    """The lower-cased, stripped `searchTerm`, or None when absent or blank."""
    term = query.get("searchTerm")
    if term is None or not term.strip():
        return None
    return term.strip().casefold()


def parse_timestamp_param(
    query: Mapping[str, str], name: str, problems: list[str]
) -> datetime | None:
    """An ISO 8601 query parameter as an aware UTC datetime; a problem is appended when bad."""
    text = query.get(name)
    if text is None or text == "":
        return None
    text = _SPACED_OFFSET.sub(r"+\1", text)
    try:
        return parse_timestamp(text)
    except (ValueError, OverflowError):
        problems.append(f"{name} must be a valid ISO 8601 date string")
        return None


def parse_uuid_param(query: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    """A UUID query parameter, lower-cased; a problem is appended when it is not a UUID."""
    text = query.get(name)
    if text is None or text == "":
        return None
    if not _UUID.fullmatch(text):
        problems.append(f"{name} must be a UUID")
        return None
    return text.lower()


def parse_choice_param(
    query: Mapping[str, str], name: str, choices: Sequence[str], problems: list[str]
) -> str | None:
    """A query parameter that must be one of `choices`; a problem is appended otherwise."""
    text = query.get(name)
    if text is None or text == "":
        return None
    if text not in choices:
        problems.append(f"{name} must be one of the following values: {', '.join(choices)}")
        return None
    return text


def is_uuid(text: str) -> bool:
    """Whether `text` is a canonical UUID (any version)."""
    return bool(_UUID.fullmatch(text))
