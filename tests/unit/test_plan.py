"""Change detection of the patient push: what happens to one row (syncd.patients.plan)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from syncd.hashing import row_hash
from syncd.normalize import NormalizePolicy, Rejection, normalize_row
from syncd.patients.plan import (
    MirrorEntry,
    Normalized,
    Push,
    Quarantine,
    QuarantineEntry,
    Rejected,
    Unchanged,
    duplicate_key,
    plan_duplicate,
    plan_row,
    row_key,
)
from syncd.sources.base import SourceRow

PAYLOAD = {"providerId": "P1", "firstName": "Ana", "lastName": "Horvat"}


def make_row(line: int = 2, origin: str | None = None, **fields: str | None) -> SourceRow:
    values = {"providerId": "P1", "firstName": "Ana", "lastName": "Horvat", **fields}
    return SourceRow(line, values, row_hash(values), origin=origin)


def accept(payload_hash: str = "h-new") -> Callable[[SourceRow], Normalized]:
    def normalise(row: SourceRow) -> Normalized:
        return Normalized(PAYLOAD, payload_hash)

    return normalise


def must_not_normalise(row: SourceRow) -> Normalized:
    raise AssertionError("the row was normalised")


def real_normaliser(row: SourceRow) -> Normalized | Rejected:
    result = normalize_row(row, NormalizePolicy(invalid_phone="reject"))
    if isinstance(result, Rejection):
        return Rejected(result.field, result.reason)
    return Normalized(result.payload(), result.payload_hash())


def test_row_key_is_the_trimmed_provider_id() -> None:
    """A row with a providerId is keyed by it, surrounding blanks removed."""
    assert row_key(make_row(providerId="  A-17 ")) == "A-17"


@pytest.mark.parametrize("char", ["\ufeff", "\u200b", "\u200d", "\u202e", "\u00ad"])
def test_row_key_trims_invisible_characters_like_the_normaliser(char: str) -> None:
    """An id with a format character at an end keys as the id itself (one patient, so a
    second row is a duplicate); one inside the id makes it no key (keyed by line)."""
    assert row_key(make_row(providerId=f"{char}A-17")) == "A-17"
    assert row_key(make_row(providerId=f"A-17{char} ")) == "A-17"
    assert row_key(make_row(line=5, providerId=f"A-{char}17")) == "line:5"


def test_row_key_without_provider_id_is_the_line() -> None:
    """A row without providerId is keyed `line:<n>`."""
    assert row_key(make_row(line=9, providerId=None)) == "line:9"
    assert row_key(make_row(line=9, providerId="   ")) == "line:9"


def test_row_key_names_the_file_when_the_source_has_several() -> None:
    """Line keys of a multi-file source carry the file name, since lines repeat per file."""
    row = make_row(line=4, origin="/exports/2025/b.csv", providerId=None)
    assert row_key(row) == "line:4@b.csv"


@pytest.mark.parametrize("bad", ["X" * 129, "A\x00B", "A\nB", "A\udc80"])
def test_row_key_refuses_provider_ids_that_cannot_be_stored(bad: str) -> None:
    """An overlong providerId or one with controls/surrogates falls back to the line key."""
    assert row_key(make_row(line=3, providerId=bad)) == "line:3"


def test_unchanged_raw_row_is_skipped_without_normalising() -> None:
    """A raw hash equal to the mirror's source_row_hash means Unchanged, no normalisation."""
    row = make_row()
    decision = plan_row(row, MirrorEntry("h-old", row.raw_hash), None, must_not_normalise)
    assert decision == Unchanged()


def test_unchanged_raw_row_clears_a_stale_quarantine_entry() -> None:
    """A row back to what was pushed leaves quarantine (the entry is stale)."""
    row = make_row()
    entry = QuarantineEntry("other-hash", "email", "email: not a valid address")
    decision = plan_row(row, MirrorEntry("h", row.raw_hash), entry, must_not_normalise)
    assert decision == Unchanged(clear_quarantine=True)


def test_same_quarantined_row_is_counted_not_normalised_again() -> None:
    """A row whose raw hash is already quarantined is quarantined again as `known`."""
    row = make_row()
    entry = QuarantineEntry(row.raw_hash, "email", "email: not a valid address")
    decision = plan_row(row, None, entry, must_not_normalise)
    assert decision == Quarantine("email", "email: not a valid address", row.raw_hash, known=True)


def test_changed_quarantined_row_is_tried_again() -> None:
    """A quarantined row whose content changed is normalised and pushed when now valid."""
    row = make_row()
    entry = QuarantineEntry("hash-of-the-broken-row", "email", "email: not a valid address")
    decision = plan_row(row, None, entry, accept())
    assert isinstance(decision, Push)
    assert decision.is_new


def test_structural_problem_is_quarantined_with_its_field() -> None:
    """A row the source flagged (e.g. wrong column count) is quarantined as flagged."""
    row = SourceRow(5, {}, "raw", problem="row has 3 columns, the header has 5")
    decision = plan_row(row, None, None, must_not_normalise)
    assert decision == Quarantine(None, "row has 3 columns, the header has 5", "raw")


def test_rejected_row_is_quarantined_with_field_and_reason() -> None:
    """A rejection by the normaliser becomes a new quarantine naming the field."""
    row = make_row(mobileNumber="12")
    decision = plan_row(row, None, None, real_normaliser)
    assert isinstance(decision, Quarantine)
    assert decision.field == "mobileNumber"
    assert decision.row_hash == row.raw_hash
    assert not decision.known
    assert "12" not in decision.reason


def test_reason_is_cut_to_the_column_length() -> None:
    """A very long reason is truncated to the 512 characters the column holds."""

    def reject(row: SourceRow) -> Rejected:
        return Rejected("email", "x" * 2000)

    decision = plan_row(make_row(), None, None, reject)
    assert isinstance(decision, Quarantine)
    assert len(decision.reason) == 512


def test_new_patient_is_pushed_as_new() -> None:
    """A valid row with no mirror row is a Push with is_new=True."""
    decision = plan_row(make_row(), None, None, accept("h1"))
    assert decision == Push(PAYLOAD, "h1", is_new=True)


def test_changed_patient_is_pushed_as_update() -> None:
    """A valid row whose payload hash differs from the mirror's is a Push with is_new=False."""
    decision = plan_row(make_row(), MirrorEntry("h-old", "raw-old"), None, accept("h-new"))
    assert decision == Push(PAYLOAD, "h-new", is_new=False)


def test_cosmetic_change_only_refreshes_the_row_hash() -> None:
    """A changed raw row with an equal payload hash is Unchanged and refreshes the row hash."""
    before = make_row(mobileNumber="+385 91 234 5678")
    after = make_row(mobileNumber="091 234 5678")
    normalised = real_normaliser(before)
    assert isinstance(normalised, Normalized)
    mirror = MirrorEntry(normalised.payload_hash, before.raw_hash)
    assert plan_row(after, mirror, None, real_normaliser) == Unchanged(refresh_row_hash=True)


def test_duplicate_is_quarantined_naming_the_first_line() -> None:
    """A repeated providerId is quarantined on the providerId field, naming the first line."""
    row = make_row(line=40)
    decision = plan_duplicate(row, 7, None)
    assert decision == Quarantine(
        "providerId", "duplicate providerId in source (first at line 7)", row.raw_hash
    )
    assert duplicate_key("P1", row) == "P1@line:40"


def test_duplicate_key_names_the_file_of_a_multi_file_source() -> None:
    """Repeats at the same line of two files get distinct quarantine keys."""
    first = make_row(line=5, origin="/in/a.csv")
    second = make_row(line=5, origin="/in/b.csv")
    assert duplicate_key("P1", first) == "P1@line:5@a.csv"
    assert duplicate_key("P1", first) != duplicate_key("P1", second)


def test_duplicate_reported_the_same_way_before_is_known() -> None:
    """The same duplicate row as last run is `known` (counted, not logged again)."""
    row = make_row(line=40)
    reason = "duplicate providerId in source (first at line 7)"
    assert plan_duplicate(row, 7, QuarantineEntry(row.raw_hash, "providerId", reason)).known
    assert not plan_duplicate(row, 8, QuarantineEntry(row.raw_hash, "providerId", reason)).known
    assert not plan_duplicate(row, 7, QuarantineEntry("changed", "providerId", reason)).known


def test_reprs_hold_no_patient_data() -> None:
    """Decisions and normalised rows never show names in their repr."""
    push = Push(PAYLOAD, "h1", is_new=True)
    assert "Ana" not in repr(push)
    assert "Horvat" not in repr(Normalized(PAYLOAD, "h1"))
    assert "Ana" not in repr(make_row())
