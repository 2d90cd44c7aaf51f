"""Request validation of the sandbox: bodies, paging and query filters."""

from datetime import UTC, datetime

import pytest

from syncd.sandbox.errors import ApiError, error_body
from syncd.sandbox.validation import (
    parse_json_object,
    parse_paging,
    parse_timestamp_param,
    parse_uuid_param,
    validate_body,
)
from syncd.voxares.contract import PATIENT_FIELDS

REQUIRED = ("providerId", "firstName", "lastName")


def _problems(body: dict[str, object]) -> list[str]:
    with pytest.raises(ApiError) as caught:
        validate_body(body, allowed=PATIENT_FIELDS, required=REQUIRED)
    assert caught.value.status == 400
    assert isinstance(caught.value.message, list)
    return caught.value.message


def test_valid_patient_body_is_returned_clean() -> None:
    """A full valid body comes back with the fields as sent."""
    body = {
        "providerId": "E-1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385991234567",
        "email": "ana@example.org",
        "dateOfBirth": "1990-01-15",
    }
    assert validate_body(body, allowed=PATIENT_FIELDS, required=REQUIRED) == body


def test_every_problem_is_listed_by_field_name_without_values() -> None:
    """Missing, empty, badly shaped and unknown fields are all reported, naming no value."""
    problems = _problems(
        {
            "providerId": "E-1",
            "firstName": "",
            "mobileNumber": "0991234567",
            "email": "not-an-email",
            "dateOfBirth": "1990-02-30",
            "ssn": "secret-value",
        }
    )
    assert "firstName should not be empty" in problems
    assert "lastName should not be empty" in problems
    assert "mobileNumber must be a valid E.164 phone number" in problems
    assert "email must be an email" in problems
    assert "dateOfBirth must be a valid ISO 8601 date string" in problems
    assert "property ssn should not exist" in problems
    assert not any("0991234567" in p or "secret-value" in p for p in problems)


@pytest.mark.parametrize("mobile", ["+1234567", "+385991234567", "+123456789012345"])
def test_e164_numbers_are_accepted(mobile: str) -> None:
    """E.164: a plus, a non-zero digit, 7 to 15 digits in all."""
    body = {"providerId": "1", "firstName": "A", "lastName": "B", "mobileNumber": mobile}
    assert validate_body(body, allowed=PATIENT_FIELDS, required=REQUIRED)["mobileNumber"] == mobile


@pytest.mark.parametrize(
    "mobile",
    ["+123456", "+0123456789", "385991234567", "+1234567890123456", "+1234567\n", "+١٢٣٤٥٦٧٨"],
)
def test_non_e164_numbers_are_rejected(mobile: str) -> None:
    """Too short, leading zero, no plus, too long, trailing newline, non-ASCII digits: 400."""
    problems = _problems(
        {"providerId": "1", "firstName": "A", "lastName": "B", "mobileNumber": mobile}
    )
    assert problems == ["mobileNumber must be a valid E.164 phone number"]


def test_null_clears_nullable_fields_and_means_absent_elsewhere() -> None:
    """null is kept for mobileNumber/email/dateOfBirth (to clear) and dropped for others."""
    clean = validate_body(
        {"providerId": "1", "firstName": "A", "lastName": "B", "email": None, "provider": None},
        allowed=PATIENT_FIELDS,
        required=REQUIRED,
    )
    assert clean == {"providerId": "1", "firstName": "A", "lastName": "B", "email": None}


def test_wrong_types_are_reported() -> None:
    """A number where a string belongs is a validation error."""
    assert "firstName must be a string" in _problems(
        {"providerId": "1", "firstName": 5, "lastName": "B"}
    )


def test_json_body_must_be_an_object() -> None:
    """Invalid JSON and non-object JSON are both 400; an empty body reads as {}."""
    assert parse_json_object(b"") == {}
    with pytest.raises(ApiError) as caught:
        parse_json_object(b"{nope")
    assert caught.value.status == 400
    with pytest.raises(ApiError):
        parse_json_object(b"[1, 2]")


def test_paging_defaults_and_limits() -> None:
    """page defaults to 0, pageSize to 20; pageSize over 100 and bad numbers are 400."""
    assert parse_paging({}) == (0, 20)
    assert parse_paging({"page": "3", "pageSize": "100"}) == (3, 100)
    for bad in ({"pageSize": "101"}, {"pageSize": "0"}, {"page": "-1"}, {"page": "x"}):
        with pytest.raises(ApiError) as caught:
            parse_paging(bad)
        assert caught.value.status == 400


def test_timestamp_params_accept_z_offsets_and_an_unencoded_plus() -> None:
    """updatedFrom accepts Z, an offset, and an offset whose + arrived as a space."""
    problems: list[str] = []
    expected = datetime(2025, 5, 20, 7, 15, tzinfo=UTC)
    for text in (
        "2025-05-20T07:15:00.000Z",
        "2025-05-20T09:15:00+02:00",
        "2025-05-20T09:15:00 02:00",
    ):
        assert parse_timestamp_param({"updatedFrom": text}, "updatedFrom", problems) == expected
    assert problems == []
    assert parse_timestamp_param({"updatedFrom": "yesterday"}, "updatedFrom", problems) is None
    assert problems == ["updatedFrom must be a valid ISO 8601 date string"]


def test_uuid_params_must_be_uuids() -> None:
    """patientId must be a UUID (normalised to lower case)."""
    problems: list[str] = []
    upper = "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
    assert parse_uuid_param({"patientId": upper}, "patientId", problems) == upper.lower()
    assert parse_uuid_param({"patientId": "42"}, "patientId", problems) is None
    assert problems == ["patientId must be a UUID"]


def test_error_body_has_the_contract_shape() -> None:
    """Every error body carries statusCode, message and error (the reason phrase)."""
    assert error_body(404, "Patient not found") == {
        "statusCode": 404,
        "message": "Patient not found",
        "error": "Not Found",
    }
