"""What to do with one source row: skip it, quarantine it, or push it (pure, no I/O).

Change detection is two-staged so that a re-sync of an unchanged export costs one hash
comparison per row: the raw row hash is compared with the mirror's `source_row_hash` before
any normalisation; only a row whose raw text changed is normalised, and it is pushed only if
its normalised payload differs from what Voxares already holds (`payload_hash`). A row that
is quarantined with the same raw hash as before is not normalised again either: it can only
fail the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from syncd.normalize import provider_id_key
from syncd.sources.base import SourceRow

# Lengths of the `quarantine.row_key` and `quarantine.reason` columns.
ROW_KEY_MAX: Final = 256
REASON_MAX: Final = 512
# Controls, separators and lone surrogates: replaced in a file name used in a key
# (PostgreSQL cannot even store NUL or a lone surrogate).
_UNSTORABLE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class MirrorEntry:
    """What change detection needs of a patient's mirror row."""

    payload_hash: str
    source_row_hash: str | None


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """What change detection needs of a row's quarantine entry."""

    row_hash: str
    field: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Normalized:
    """A row the normaliser accepted: the API payload (camelCase) and its hash, and why a
    mobileNumber present in the source was left out ("landline" or "invalid"), if it was."""

    payload: Mapping[str, Any]
    payload_hash: str
    dropped_phone: str | None = None

    def __repr__(self) -> str:
        # The payload is patient data.
        return f"Normalized(payload_hash={self.payload_hash!r})"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row the normaliser refused, with the field (when one is at fault) and why."""

    field: str | None
    reason: str


Normaliser = Callable[[SourceRow], Normalized | Rejected]


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Voxares already holds this row: push nothing.

    refresh_row_hash: the raw row changed but normalises to the payload Voxares holds (e.g.
    only whitespace or phone formatting differs), so only the mirror's `source_row_hash` is
    updated, letting the next run skip normalising it.
    clear_quarantine: the row had a quarantine entry that no longer applies.
    """

    refresh_row_hash: bool = False
    clear_quarantine: bool = False


@dataclass(frozen=True, slots=True)
class Quarantine:
    """The row cannot be pushed; `reason` never contains a field's value.

    known: the same raw row is already quarantined for this reason, so it is counted (and
    its entry's last-seen time and count move) but not logged again.
    """

    field: str | None
    reason: str
    row_hash: str
    known: bool = False


@dataclass(frozen=True, slots=True)
class Push:
    """Send this payload to Voxares; `is_new` when the mirror has no row for the patient;
    `dropped_phone` as in `Normalized` (the push job counts it)."""

    payload: Mapping[str, Any]
    payload_hash: str
    is_new: bool
    dropped_phone: str | None = None

    def __repr__(self) -> str:
        # The payload is patient data.
        return f"Push(payload_hash={self.payload_hash!r}, is_new={self.is_new!r})"


Decision = Unchanged | Quarantine | Push


def row_key(row: SourceRow) -> str:
    """The row's identity across runs: its providerId, or `line:<n>` when it has none.

    The providerId is trimmed exactly as the normaliser trims it (whitespace and invisible
    format characters at the ends), so the key is the id that is pushed, and two rows whose
    ids differ only there are one patient (the second is reported as a duplicate). A
    providerId the normaliser would refuse (too long, control or inner format characters)
    is no key either: such a row is quarantined, and its key must fit the database.

    A row from a named part of the source (a CSV file of a glob) names the file too,
    `line:<n>@<file name>`, since line numbers repeat between files.
    """
    key = provider_id_key(row.fields.get("providerId"))
    return key if key is not None else _where(row)


def duplicate_key(key: str, row: SourceRow) -> str:
    """The quarantine key of a repeated providerId: its own, since the first row owns `key`."""
    return f"{key}@{_where(row)}"[-ROW_KEY_MAX:]


def _where(row: SourceRow) -> str:
    """`line:<n>`, or `line:<n>@<file name>` for a row from one file of several."""
    if row.origin is None:
        return f"line:{row.line}"
    name = _UNSTORABLE.sub("?", os.path.basename(row.origin))
    return f"line:{row.line}@{name}"[:ROW_KEY_MAX]


def plan_duplicate(
    row: SourceRow, first_line: int, quarantined: QuarantineEntry | None
) -> Quarantine:
    """Quarantine a row whose providerId an earlier row of this run already had.

    The first row is the one pushed; this one is reported, under its own key
    (`duplicate_key`), and is `known` when last run reported the same row the same way.
    """
    reason = f"duplicate providerId in source (first at line {first_line})"
    known = (
        quarantined is not None
        and quarantined.row_hash == row.raw_hash
        and quarantined.reason == reason
    )
    return Quarantine("providerId", reason, row.raw_hash, known=known)


def plan_row(
    row: SourceRow,
    mirror: MirrorEntry | None,
    quarantined: QuarantineEntry | None,
    normalise: Normaliser,
) -> Decision:
    """Decide what to do with `row`, given its mirror and quarantine entries (or None).

    Order matters: a raw row equal to the one last pushed is unchanged whatever its
    quarantine says (the entry is stale and cleared); a raw row equal to the one last
    quarantined is quarantined again without normalising; anything else is normalised.
    """
    stale_quarantine = quarantined is not None
    if mirror is not None and mirror.source_row_hash == row.raw_hash:
        return Unchanged(clear_quarantine=stale_quarantine)
    if quarantined is not None and quarantined.row_hash == row.raw_hash:
        return Quarantine(quarantined.field, quarantined.reason, row.raw_hash, known=True)
    if row.problem is not None:
        return Quarantine(row.problem_field, row.problem[:REASON_MAX], row.raw_hash)
    result = normalise(row)
    if isinstance(result, Rejected):
        return Quarantine(result.field, result.reason[:REASON_MAX], row.raw_hash)
    if mirror is not None and mirror.payload_hash == result.payload_hash:
        return Unchanged(refresh_row_hash=True, clear_quarantine=stale_quarantine)
    return Push(
        result.payload,
        result.payload_hash,
        is_new=mirror is None,
        dropped_phone=result.dropped_phone,
    )
