"""What a failed upsert means for the push run (syncd.patients.api_errors)."""

from __future__ import annotations

from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    RateLimited,
    ServerError,
    Unauthorized,
    VoxaresTransportError,
)
from syncd.patients.api_errors import Abort, Failed, RejectedByApi, classify, field_named_in, scrub

PAYLOAD = {
    "providerId": "P-77",
    "firstName": "Ana",
    "lastName": "Horvat",
    "mobileNumber": "+385991234567",
}


def test_wrong_key_or_scope_aborts_the_run() -> None:
    """401 and 403 abort the run, carrying the original error."""
    for error in (Unauthorized(status=401), Forbidden(status=403)):
        assert classify(error, PAYLOAD) == Abort(error)


def test_validation_error_quarantines_naming_the_field() -> None:
    """A 422 whose message names a contract field quarantines the row on that field."""
    error = Invalid(status=422, api_message="mobileNumber must be a valid E.164 phone number")
    outcome = classify(error, PAYLOAD)
    assert outcome == RejectedByApi(
        "mobileNumber",
        "rejected by Voxares (422): mobileNumber must be a valid E.164 phone number",
    )


def test_validation_error_without_a_field_names_none() -> None:
    """A 400 whose message names no field quarantines with field None."""
    outcome = classify(Invalid(status=400, api_message="Validation failed"), PAYLOAD)
    assert isinstance(outcome, RejectedByApi)
    assert outcome.field is None
    assert "Validation failed" in outcome.reason


def test_echoed_values_are_scrubbed_from_the_reason() -> None:
    """An API message quoting the row's values keeps none of them in the reason."""
    message = "mobileNumber '+385991234567' of Horvat is invalid"
    outcome = classify(Invalid(status=422, api_message=message), PAYLOAD)
    assert isinstance(outcome, RejectedByApi)
    assert "+385991234567" not in outcome.reason
    assert "Horvat" not in outcome.reason
    assert outcome.field == "mobileNumber"


def test_server_and_transport_failures_are_failed_for_now() -> None:
    """5xx, transport errors and other statuses count as failed, with an id-only text;
    only 5xx and transport errors look like an outage."""
    assert classify(ServerError(status=503), PAYLOAD) == Failed(
        "ServerError status=503", outage=True
    )
    assert classify(VoxaresTransportError(reached_server=False), PAYLOAD) == Failed(
        "VoxaresTransportError", outage=True
    )
    assert classify(Conflict(status=409), PAYLOAD) == Failed("Conflict status=409")
    assert classify(RateLimited(status=429), PAYLOAD) == Failed("RateLimited status=429")


def test_field_named_in_finds_whole_words_only() -> None:
    """Field detection matches contract field names as words, the first one mentioned."""
    assert field_named_in("email must be an email; dateOfBirth must be a date") == "email"
    assert field_named_in("emailAddress is unknown") is None


def test_scrub_replaces_longest_values_first_and_keeps_short_ones() -> None:
    """Longer values are replaced before shorter ones they contain; 1-2 letter values stay."""
    payload = {"firstName": "Ana", "lastName": "Anabel", "email": "x"}
    assert scrub("Anabel and Ana and x", payload) == "<redacted> and <redacted> and x"
