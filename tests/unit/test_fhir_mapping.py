"""FHIR R4 Patient resources mapped to source rows (syncd.sources.fhir_mapping)."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.sources.fhir_mapping import map_patient, patient_validator
from tests.fhir_examples import SYSTEM, example, synthetic

VALIDATE = patient_validator()


def _map(resource: dict[str, Any]) -> Any:
    return map_patient(resource, identifier_system=SYSTEM, line=1, invalid=VALIDATE)


def test_published_example_maps_official_name_mobile_and_birth_date() -> None:
    """`example`: identifier of the system, official name first given, mobile telecom."""
    mapped = _map(example("example"))
    assert mapped.row.problem is None
    assert dict(mapped.row.fields) == {
        "providerId": "12345",
        "firstName": "Peter",
        "lastName": "Chalmers",
        "mobileNumber": "0491 570 156",
        "email": None,
        "dateOfBirth": "1974-12-25",
    }
    assert mapped.row.active is True
    assert mapped.partial_birth_date is False


def test_year_only_birth_date_is_left_out_and_counted() -> None:
    """A partial birthDate (`1934`) is not sent and the row says it was partial."""
    mapped = _map(example("pat2"))
    assert mapped.row.fields["dateOfBirth"] is None
    assert mapped.partial_birth_date is True
    # pat2's phone has no use: passed on for the normaliser's landline policy to judge.
    assert mapped.row.fields["mobileNumber"] == "+61 491 570 110"


def test_email_only_patient() -> None:
    """pat1 has an email and no phone."""
    fields = _map(example("pat1")).row.fields
    assert (fields["email"], fields["mobileNumber"]) == ("duck@example.org", None)


def test_inactive_patient_is_an_inactive_row_with_another_hash() -> None:
    """`active: false` makes the row inactive, and flipping it changes the raw hash."""
    inactive = _map(example("pat3")).row
    assert inactive.active is False
    active = _map({**example("pat3"), "active": True}).row
    assert active.active is True
    assert active.raw_hash != inactive.raw_hash
    assert _map({k: v for k, v in example("pat3").items() if k != "active"}).row.active is True


def test_identifier_of_another_system_gives_no_provider_id() -> None:
    """xcda's only identifier is of another system: a problem naming providerId."""
    row = _map(example("xcda")).row
    assert (row.problem_field, row.problem) == ("providerId", f"no identifier with system {SYSTEM}")


def test_name_use_order_and_skipped_names() -> None:
    """official beats usual beats no-use; old/maiden and ended names are skipped."""
    resource = synthetic(1)
    resource["name"] = [
        {"use": "old", "family": "Old", "given": ["O"]},
        {"family": "Plain", "given": ["P"]},
        {"use": "usual", "family": "Usual", "given": ["U"]},
        {"use": "official", "family": "Ended", "given": ["E"], "period": {"end": "2001"}},
    ]
    fields = _map(resource).row.fields
    assert (fields["firstName"], fields["lastName"]) == ("U", "Usual")
    resource["name"].append({"use": "official", "family": "Official", "given": ["Ana", "Marie"]})
    fields = _map(resource).row.fields
    assert (fields["firstName"], fields["lastName"]) == ("Ana", "Official")


def test_mobile_by_rank_and_home_phone_ignored() -> None:
    """The lowest-ranked mobile wins; a home phone is never taken as the mobile."""
    resource = synthetic(2)
    resource["telecom"] = [
        {"system": "phone", "value": "+385 1 111 1111", "use": "home"},
        {"system": "phone", "value": "+385 91 000 0002", "use": "mobile", "rank": 2},
        {"system": "phone", "value": "+385 91 000 0001", "use": "mobile", "rank": 1},
    ]
    assert _map(resource).row.fields["mobileNumber"] == "+385 91 000 0001"
    resource["telecom"] = [{"system": "phone", "value": "+385 1 111 1111", "use": "home"}]
    assert _map(resource).row.fields["mobileNumber"] is None


def test_old_identifier_is_skipped() -> None:
    """An identifier with use=old is not the providerId."""
    resource = synthetic(3)
    resource["identifier"] = [
        {"system": SYSTEM, "value": "OLD-1", "use": "old"},
        {"system": SYSTEM, "value": "NEW-1"},
    ]
    assert _map(resource).row.fields["providerId"] == "NEW-1"


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"birthDate": "25/12/1974"}, "Patient.birthDate"),
        ({"birthDate": "1974-13-01"}, "Patient.birthDate"),
        ({"telecom": [{"system": "phone", "value": "x", "rank": "one"}]}, "Patient.telecom.0.rank"),
        ({"name": "Smith"}, "Patient.name"),
        ({"nickname": "Jim"}, "Patient.nickname"),
    ],
)
def test_invalid_resource_is_a_problem_naming_the_element_not_the_value(
    change: dict[str, Any], element: str
) -> None:
    """A resource fhir.resources rejects is a problem row; the value is never quoted."""
    row = _map({**synthetic(4), **change}).row
    assert row.problem is not None
    assert row.problem_field == element
    assert row.problem.startswith("not valid FHIR R4 (")
    for value in change.values():
        assert str(value) not in row.problem


def test_not_a_patient_is_a_problem() -> None:
    """Another resource type is a problem row naming resourceType."""
    row = _map({"resourceType": "Observation", "id": "o1", "status": "final"}).row
    assert (row.problem_field, row.problem) == ("resourceType", "not a Patient resource")


def test_repr_holds_no_patient_data() -> None:
    """The row's repr carries no name, phone or email."""
    text = repr(_map(example("example")).row)
    for value in ("Chalmers", "Peter", "0491", "1974"):
        assert value not in text
