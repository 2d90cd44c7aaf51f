"""What a failed upsert means for the run (pure): abort, quarantine the row, or retry later.

- 401/403: the API key (or its scope) is wrong; every other row would fail the same way, so
  the run stops with that error.
- 400/422: Voxares refused this row's content; the row is quarantined with the API's reason,
  naming the field when the message names one. The message is scrubbed of the row's own
  values first: an API that echoes what it refused must not put patient data in the state
  database or the logs.
- Anything else (5xx or transport failure after the client's retries, 404, 409, a malformed
  answer): the row failed this time; its mirror row stays as it was, so the next run
  pushes it again. 5xx and transport failures are marked `outage`: enough of them in a row
  stop the run (`syncd.patients.outage`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from syncd.exceptions import (
    Forbidden,
    Invalid,
    ServerError,
    Unauthorized,
    VoxaresError,
    VoxaresTransportError,
)
from syncd.voxares.contract import PATIENT_FIELDS

REASON_MAX: Final = 512
REDACTED: Final = "<redacted>"
# Field names as words: `mobileNumber` in "mobileNumber must be a valid phone number".
_FIELD_PATTERN: Final = re.compile(r"\b(" + "|".join(map(re.escape, PATIENT_FIELDS)) + r")\b")


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop the run: the key is wrong or lacks the scope (re-raise `error`)."""

    error: VoxaresError


@dataclass(frozen=True, slots=True)
class RejectedByApi:
    """Quarantine the row with this field (or None) and reason (no values in it)."""

    field: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The push failed for now; `error` is an id-only description for the log. `outage`:
    the kind of failure an unreachable or failing API gives (5xx, connect error, timeout)."""

    error: str
    outage: bool = False


@dataclass(frozen=True, slots=True)
class NotPushed:
    """The run stopped before this push had an answer; the row is pushed again next run."""


Outcome = Abort | RejectedByApi | Failed | NotPushed


def classify(error: VoxaresError, payload: Mapping[str, Any]) -> Outcome:
    """What the run does about `error`, raised while pushing `payload`."""
    if isinstance(error, Unauthorized | Forbidden):
        return Abort(error)
    if isinstance(error, Invalid):
        message = scrub(error.api_message or "", payload)
        field = field_named_in(message)
        reason = f"rejected by Voxares ({error.status}): {message or 'no reason given'}"
        return RejectedByApi(field, reason[:REASON_MAX])
    status = f" status={error.status}" if error.status is not None else ""
    outage = isinstance(error, ServerError | VoxaresTransportError)
    return Failed(f"{type(error).__name__}{status}", outage=outage)


def field_named_in(message: str) -> str | None:
    """The first contract field (`mobileNumber`, ...) the API's message names, if any."""
    match = _FIELD_PATTERN.search(message)
    return match.group(1) if match else None


def scrub(message: str, payload: Mapping[str, Any]) -> str:
    """`message` with every value of `payload` replaced by a placeholder, longest first.

    Very short values (one or two characters) are left alone: they would hit ordinary words
    and cannot identify anyone.
    """
    values = sorted(
        {str(v) for v in payload.values() if v is not None and len(str(v)) > 2},
        key=len,
        reverse=True,
    )
    for value in values:
        message = message.replace(value, REDACTED)
    return message
