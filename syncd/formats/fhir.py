"""Form submissions as FHIR R4 `QuestionnaireResponse` resources (plain JSON dicts).

Pure: a form-submission event payload in, a resource out, no I/O and no FHIR library at
run time (tests validate the output with `fhir.resources`). The payload shape is the
poller's:

    {"submission": {"id", "status", "createdAt", "updatedAt", "receivedAt", "requestedBy"},
     "form": {"id", "displayName"},
     "patient": {"voxaresId", "providerId", "provider"},
     "answers": {...the form's own JSON...}}

Answers map to items by JSON type: a string is `valueString` (a `data:` URL becomes a
`valueAttachment`), an integer `valueInteger` (`valueDecimal` beyond FHIR's 32 bits), a
float `valueDecimal`, a boolean `valueBoolean`, a list several answers of one item (its
objects repeat the item as a group, which is how FHIR repeats groups), an object a group
item with nested items. Null, empty strings, empty lists and empty objects are left out:
FHIR has no empty answer. `linkId` is the dotted path of keys, `text` the key itself.

A missing form id or patient leaves `questionnaire` or `subject` out (the poller sends
null for a submission whose form or patient the API did not include). Errors are
ValueError naming the field, never its value.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote, unquote_to_bytes

from syncd.voxares.contract import format_timestamp, parse_timestamp

# Our own naming choices (not FHIR's, not Voxares'): identifier systems and the canonical
# of a form. Downstream systems match on these, so they change only deliberately.
SUBMISSION_SYSTEM: Final = "urn:voxares:form-submission"
VOXARES_PATIENT_SYSTEM: Final = "urn:voxares:patient"
PROVIDER_PATIENT_SYSTEM_PREFIX: Final = "urn:voxares:provider:"
FORM_CANONICAL_PREFIX: Final = "urn:voxares:form:"

STATUS_BY_SUBMISSION_STATUS: Final = {
    "Completed": "completed",
    "Opened": "in-progress",
    "Pending": "in-progress",
    "Rejected": "stopped",
}
# RFC 2397: a data URL without a media type is US-ASCII text.
DEFAULT_DATA_URL_TYPE: Final = "text/plain;charset=US-ASCII"
FHIR_INTEGER_MIN: Final = -(2**31)
FHIR_INTEGER_MAX: Final = 2**31 - 1
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_WHITESPACE = re.compile(r"\s+")
# FHIR's string pattern: a string made only of other whitespace (form feed, NBSP, ...)
# is not a valid FHIR string, like the empty one.
_FHIR_STRING = re.compile(r"[ \r\n\t\S]")


def questionnaire_response(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The FHIR R4 QuestionnaireResponse for one form-submission event payload."""
    submission = _section(payload, "submission")
    form = _section(payload, "form")
    patient = _section(payload, "patient")

    submission_id = _required_text(submission, "submission", "id")
    status = submission.get("status")
    if not isinstance(status, str) or status not in STATUS_BY_SUBMISSION_STATUS:
        # A status is an API enum value, not patient data: naming it helps the operator.
        raise ValueError(f"submission.status {status!r} has no FHIR status")

    resource: dict[str, Any] = {"resourceType": "QuestionnaireResponse"}
    if _FHIR_ID.fullmatch(submission_id):
        resource["id"] = submission_id
    resource["identifier"] = {"system": SUBMISSION_SYSTEM, "value": submission_id}
    form_id = _optional_text(form, "form", "id")
    if form_id is not None:
        resource["questionnaire"] = FORM_CANONICAL_PREFIX + quote(form_id, safe="")
    resource["status"] = STATUS_BY_SUBMISSION_STATUS[status]
    identifier = _patient_identifier(patient)
    if identifier is not None:
        resource["subject"] = {"identifier": identifier}
    authored = _authored(submission)
    if authored is not None:
        resource["authored"] = authored

    answers = payload.get("answers")
    if answers is None:
        answers = {}
    if not isinstance(answers, Mapping):
        raise ValueError("answers must be a JSON object")
    items = _items(answers, prefix="")
    if items:
        resource["item"] = items
    return resource


def _section(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = payload.get(key)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{key} must be a JSON object")
    return section


def _optional_text(section: Mapping[str, Any], where: str, key: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string")
    return value


def _required_text(section: Mapping[str, Any], where: str, key: str) -> str:
    value = _optional_text(section, where, key)
    if value is None:
        raise ValueError(f"{where}.{key} is required")
    return value


def _patient_identifier(patient: Mapping[str, Any]) -> dict[str, str] | None:
    """The EHR's identifier when the patient is mirrored, else the Voxares one, else None."""
    provider_id = _optional_text(patient, "patient", "providerId")
    provider = _optional_text(patient, "patient", "provider")
    if provider_id is not None and provider is not None:
        system = PROVIDER_PATIENT_SYSTEM_PREFIX + quote(provider, safe="")
        return {"system": system, "value": provider_id}
    voxares_id = _optional_text(patient, "patient", "voxaresId")
    if voxares_id is not None:
        return {"system": VOXARES_PATIENT_SYSTEM, "value": voxares_id}
    return None


def _authored(submission: Mapping[str, Any]) -> str | None:
    """When the answers last changed: updatedAt, else receivedAt, normalised to UTC."""
    for key in ("updatedAt", "receivedAt"):
        text = submission.get(key)
        if text is None:
            continue
        try:
            if not isinstance(text, str):
                raise TypeError(key)
            return format_timestamp(parse_timestamp(text))
        except (TypeError, ValueError):
            raise ValueError(f"submission.{key} is not an ISO 8601 timestamp") from None
    return None


def _items(answers: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for position, (key, value) in enumerate(answers.items()):
        text = str(key) if _FHIR_STRING.search(str(key)) else ""
        # FHIR strings cannot be empty: an empty key is named by its position instead.
        segment = text or f"#{position}"
        items.extend(_items_for(f"{prefix}.{segment}" if prefix else segment, text, value))
    return items


def _item(link_id: str, text: str) -> dict[str, Any]:
    return {"linkId": link_id, "text": text} if text else {"linkId": link_id}


def _items_for(link_id: str, text: str, value: Any) -> list[dict[str, Any]]:
    """The item(s) for one answer; several when a list repeats a group."""
    if isinstance(value, Mapping):
        group = _group(link_id, text, value)
        return [group] if group else []
    if isinstance(value, list):
        answers: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        for element in _flatten(value):
            if isinstance(element, Mapping):
                group = _group(link_id, text, element)
                if group:
                    groups.append(group)
            else:
                answer = _answer(element)
                if answer:
                    answers.append(answer)
        head = [{**_item(link_id, text), "answer": answers}] if answers else []
        return head + groups
    answer = _answer(value)
    return [{**_item(link_id, text), "answer": [answer]}] if answer else []


def _group(link_id: str, text: str, value: Mapping[str, Any]) -> dict[str, Any] | None:
    children = _items(value, prefix=link_id)
    return {**_item(link_id, text), "item": children} if children else None


def _flatten(values: Sequence[Any]) -> list[Any]:
    """A list's elements with nested lists spliced in ([[1, 2], [3]] answers 1, 2, 3)."""
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def _answer(value: Any) -> dict[str, Any] | None:
    """One `answer` element for a scalar, or None when there is nothing to say."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int in Python
        return {"valueBoolean": value}
    if isinstance(value, int):
        if FHIR_INTEGER_MIN <= value <= FHIR_INTEGER_MAX:
            return {"valueInteger": value}
        return {"valueDecimal": value}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"valueDecimal": value}
        return {"valueString": str(value)}  # NaN/Infinity: not FHIR numbers
    text = value if isinstance(value, str) else str(value)
    if not _FHIR_STRING.search(text):
        return None  # empty, or only whitespace FHIR does not accept
    if text[:5].lower() == "data:":
        attachment = attachment_from_data_url(text)
        if attachment is not None:
            return {"valueAttachment": attachment}
    return {"valueString": text}


def attachment_from_data_url(url: str) -> dict[str, Any] | None:
    """A FHIR Attachment (contentType, base64 data, size) from an RFC 2397 `data:` URL.

    Base64 is re-encoded canonically (whitespace, URL-safe letters and missing padding
    are tolerated); percent-encoded data is decoded. None when the URL is malformed, so
    the caller keeps it as text.
    """
    header, comma, data = url[5:].partition(",")
    if not comma:
        return None
    # Media types hold no whitespace; dropping it keeps contentType a valid FHIR code.
    params = [_WHITESPACE.sub("", part) for part in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    media, extra = params[0], [part for part in params[1:] if part]
    if media:
        content_type = ";".join([media, *extra])
    else:
        content_type = ";".join(["text/plain", *extra]) if extra else DEFAULT_DATA_URL_TYPE
    if is_base64:
        raw = _decode_base64(unquote(data))
        if raw is None:
            return None
    else:
        raw = unquote_to_bytes(data)
    attachment: dict[str, Any] = {"contentType": content_type}
    if raw:
        attachment["data"] = base64.b64encode(raw).decode("ascii")
    attachment["size"] = len(raw)
    return attachment


def _decode_base64(text: str) -> bytes | None:
    compact = _WHITESPACE.sub("", text).translate(str.maketrans("-_", "+/"))
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
