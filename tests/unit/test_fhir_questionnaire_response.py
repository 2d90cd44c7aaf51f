"""Form-submission payloads as FHIR R4 QuestionnaireResponse, validated by fhir.resources.

fhir.resources v8 ships R5 at its root and R4 as `fhir.resources.R4B` (4.3.0, whose
QuestionnaireResponse is the R4 one); every resource built here must validate there.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.formats.fhir import (
    DEFAULT_DATA_URL_TYPE,
    FORM_CANONICAL_PREFIX,
    SUBMISSION_SYSTEM,
    VOXARES_PATIENT_SYSTEM,
    attachment_from_data_url,
    questionnaire_response,
)

SIGNATURE_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
SIGNATURE_URL = "data:image/png;base64," + base64.b64encode(SIGNATURE_PNG).decode()
SUBMISSION_ID = "5f0c8a3e-1111-4222-8333-444455556666"


def _payload(answers: Any = None, **sections: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "submission": {
            "id": SUBMISSION_ID,
            "status": "Completed",
            "createdAt": "2025-05-20T09:00:00.000Z",
            "updatedAt": "2025-05-20T09:20:00.123Z",
            "receivedAt": "2025-05-20T09:19:59.000Z",
            "requestedBy": "0b7e2f4c-0000-4000-8000-000000000001",
        },
        "form": {"id": "f-intake-1", "displayName": "Intake"},
        "patient": {"voxaresId": "v-1", "providerId": "EHR-42", "provider": "Clinic EHR"},
        "answers": {"q": "yes"} if answers is None else answers,
    }
    payload.update(sections)
    return payload


def _valid(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate with fhir.resources (R4) and hand the plain dict back."""
    QuestionnaireResponse.model_validate(resource)
    return resource


def test_full_payload_builds_a_valid_resource() -> None:
    """The header fields map to id, identifier, questionnaire, status, subject and authored."""
    resource = _valid(questionnaire_response(_payload()))
    assert resource["resourceType"] == "QuestionnaireResponse"
    assert resource["id"] == SUBMISSION_ID
    assert resource["identifier"] == {"system": SUBMISSION_SYSTEM, "value": SUBMISSION_ID}
    assert resource["questionnaire"] == FORM_CANONICAL_PREFIX + "f-intake-1"
    assert resource["status"] == "completed"
    assert resource["subject"] == {
        "identifier": {"system": "urn:voxares:provider:Clinic%20EHR", "value": "EHR-42"}
    }
    assert resource["authored"] == "2025-05-20T09:20:00.123Z"
    assert resource["item"] == [{"linkId": "q", "text": "q", "answer": [{"valueString": "yes"}]}]


@pytest.mark.parametrize(
    ("status", "fhir_status"),
    [
        ("Completed", "completed"),
        ("Opened", "in-progress"),
        ("Pending", "in-progress"),
        ("Rejected", "stopped"),
    ],
)
def test_status_mapping(status: str, fhir_status: str) -> None:
    """Each Voxares submission status maps to its FHIR status."""
    payload = _payload()
    payload["submission"]["status"] = status
    assert _valid(questionnaire_response(payload))["status"] == fhir_status


@pytest.mark.parametrize("status", ["Archived", None, ["Completed"]])
def test_unknown_status_is_refused(status: Any) -> None:
    """A status with no FHIR mapping is a ValueError rather than a guess."""
    payload = _payload()
    payload["submission"]["status"] = status
    with pytest.raises(ValueError, match=r"submission\.status"):
        questionnaire_response(payload)


def test_subject_falls_back_to_the_voxares_id_without_an_ehr_id() -> None:
    """A patient not mirrored (providerId null) is identified by the Voxares id."""
    payload = _payload(patient={"voxaresId": "v-1", "providerId": None, "provider": None})
    resource = _valid(questionnaire_response(payload))
    assert resource["subject"] == {"identifier": {"system": VOXARES_PATIENT_SYSTEM, "value": "v-1"}}


def test_missing_form_and_patient_leave_their_elements_out() -> None:
    """Null form id and patient ids omit questionnaire and subject; the rest still validates."""
    payload = _payload(
        form={"id": None, "displayName": None},
        patient={"voxaresId": None, "providerId": None, "provider": None},
    )
    resource = _valid(questionnaire_response(payload))
    assert "questionnaire" not in resource
    assert "subject" not in resource


def test_provider_name_and_form_id_are_percent_encoded() -> None:
    """Characters that are not URI-safe in provider names and form ids are escaped."""
    payload = _payload(
        form={"id": "form/1 a", "displayName": "x"},
        patient={"voxaresId": "v", "providerId": "7", "provider": "Ordinacija Č/1"},
    )
    resource = _valid(questionnaire_response(payload))
    assert resource["questionnaire"] == "urn:voxares:form:form%2F1%20a"
    assert resource["subject"]["identifier"]["system"] == (
        "urn:voxares:provider:Ordinacija%20%C4%8C%2F1"
    )


def test_authored_falls_back_to_received_at_and_is_normalised() -> None:
    """Without updatedAt, authored is receivedAt, rendered in UTC with milliseconds."""
    payload = _payload()
    payload["submission"]["updatedAt"] = None
    payload["submission"]["receivedAt"] = "2025-05-20T11:19:59+02:00"
    assert _valid(questionnaire_response(payload))["authored"] == "2025-05-20T09:19:59.000Z"


def test_bad_timestamp_error_names_the_field_not_the_value() -> None:
    """An unreadable updatedAt is a ValueError naming the field only."""
    payload = _payload()
    payload["submission"]["updatedAt"] = "Ana Horvat"
    with pytest.raises(ValueError, match=r"submission\.updatedAt") as caught:
        questionnaire_response(payload)
    assert "Ana" not in str(caught.value)


def test_answers_that_are_not_an_object_are_refused_without_echo() -> None:
    """Answers must be a JSON object; the error does not repeat them."""
    with pytest.raises(ValueError, match="answers must be a JSON object") as caught:
        questionnaire_response(_payload(answers=["Ana Horvat"]))
    assert "Ana" not in str(caught.value)


def test_submission_id_that_is_not_a_fhir_id_stays_an_identifier_only() -> None:
    """An id FHIR would reject as Resource.id is kept only in identifier."""
    payload = _payload()
    payload["submission"]["id"] = "sub_01:x"
    resource = _valid(questionnaire_response(payload))
    assert "id" not in resource
    assert resource["identifier"]["value"] == "sub_01:x"


@pytest.mark.parametrize(
    ("answers", "items"),
    [
        ({"name": "Ana"}, [{"linkId": "name", "text": "name", "answer": [{"valueString": "Ana"}]}]),
        ({"age": 42}, [{"linkId": "age", "text": "age", "answer": [{"valueInteger": 42}]}]),
        ({"n": -(2**31)}, [{"linkId": "n", "text": "n", "answer": [{"valueInteger": -(2**31)}]}]),
        ({"n": 2**31}, [{"linkId": "n", "text": "n", "answer": [{"valueDecimal": 2**31}]}]),
        ({"kg": 71.5}, [{"linkId": "kg", "text": "kg", "answer": [{"valueDecimal": 71.5}]}]),
        ({"ok": True}, [{"linkId": "ok", "text": "ok", "answer": [{"valueBoolean": True}]}]),
        ({"ok": False}, [{"linkId": "ok", "text": "ok", "answer": [{"valueBoolean": False}]}]),
        (
            {"allergies": ["pollen", 3, True]},
            [
                {
                    "linkId": "allergies",
                    "text": "allergies",
                    "answer": [
                        {"valueString": "pollen"},
                        {"valueInteger": 3},
                        {"valueBoolean": True},
                    ],
                }
            ],
        ),
        (
            {"nested": [["a"], ["b", ["c"]]]},
            [
                {
                    "linkId": "nested",
                    "text": "nested",
                    "answer": [{"valueString": "a"}, {"valueString": "b"}, {"valueString": "c"}],
                }
            ],
        ),
        (
            {"address": {"city": "Zagreb", "zip": {"code": "10000"}}},
            [
                {
                    "linkId": "address",
                    "text": "address",
                    "item": [
                        {
                            "linkId": "address.city",
                            "text": "city",
                            "answer": [{"valueString": "Zagreb"}],
                        },
                        {
                            "linkId": "address.zip",
                            "text": "zip",
                            "item": [
                                {
                                    "linkId": "address.zip.code",
                                    "text": "code",
                                    "answer": [{"valueString": "10000"}],
                                }
                            ],
                        },
                    ],
                }
            ],
        ),
        (
            {"meds": [{"name": "a", "mg": 5}, {"name": "b"}]},
            [
                {
                    "linkId": "meds",
                    "text": "meds",
                    "item": [
                        {"linkId": "meds.name", "text": "name", "answer": [{"valueString": "a"}]},
                        {"linkId": "meds.mg", "text": "mg", "answer": [{"valueInteger": 5}]},
                    ],
                },
                {
                    "linkId": "meds",
                    "text": "meds",
                    "item": [
                        {"linkId": "meds.name", "text": "name", "answer": [{"valueString": "b"}]}
                    ],
                },
            ],
        ),
        ({"a": None, "b": "", "c": [], "d": {}, "e": [None, ""], "f": {"g": None}}, None),
        ({"": "x"}, [{"linkId": "#0", "answer": [{"valueString": "x"}]}]),
        ({"nbsp": "\xa0"}, None),
        ({"x": float("nan")}, [{"linkId": "x", "text": "x", "answer": [{"valueString": "nan"}]}]),
    ],
)
def test_answer_shapes(answers: dict[str, Any], items: list[dict[str, Any]] | None) -> None:
    """Each JSON shape becomes its FHIR item form, and the resource validates."""
    resource = _valid(questionnaire_response(_payload(answers=answers)))
    assert resource.get("item") == items


def test_signature_data_url_becomes_an_attachment_with_the_same_bytes() -> None:
    """A base64 PNG data URL is a valueAttachment whose data decodes to the original bytes."""
    resource = _valid(questionnaire_response(_payload(answers={"signature": SIGNATURE_URL})))
    (item,) = resource["item"]
    attachment = item["answer"][0]["valueAttachment"]
    assert attachment["contentType"] == "image/png"
    assert base64.b64decode(attachment["data"]) == SIGNATURE_PNG
    assert attachment["size"] == len(SIGNATURE_PNG)


@pytest.mark.parametrize(
    ("url", "content_type", "data"),
    [
        ("data:,hello%20world", DEFAULT_DATA_URL_TYPE, b"hello world"),
        ("data:;charset=utf-8,%C4%8Cakovec", "text/plain;charset=utf-8", "Čakovec".encode()),
        ("DATA:image/jpeg;BASE64,/9j/", "image/jpeg", b"\xff\xd8\xff"),
        ("data:image/png;base64,_9j_", "image/png", b"\xff\xd8\xff"),  # URL-safe alphabet
        ("data:image/png;base64,QUI", "image/png", b"AB"),  # padding missing
        ("data:image/png;base64,QU\nJD", "image/png", b"ABC"),  # wrapped lines
        ("data:image/png;base64,QUJD%3D", "image/png", b"ABC"),  # percent-encoded padding
        ("data: image/svg+xml ; a = b ;base64,QUJD", "image/svg+xml;a=b", b"ABC"),
    ],
)
def test_data_url_variants(url: str, content_type: str, data: bytes) -> None:
    """Data URLs in their real-world spellings decode to the right type and bytes."""
    attachment = attachment_from_data_url(url)
    assert attachment is not None
    assert attachment["contentType"] == content_type
    assert base64.b64decode(attachment["data"]) == data
    _valid(questionnaire_response(_payload(answers={"file": url})))


def test_empty_data_url_has_no_data_element() -> None:
    """An empty data URL gives an Attachment of size 0 without the (invalid) empty data."""
    assert attachment_from_data_url("data:image/png;base64,") == {
        "contentType": "image/png",
        "size": 0,
    }


@pytest.mark.parametrize("url", ["data:image/png;base64,Q", "data:no-comma", "data:x;base64,@@@@"])
def test_malformed_data_url_stays_a_string(url: str) -> None:
    """A string that only looks like a data URL is kept as valueString, not dropped."""
    assert attachment_from_data_url(url) is None
    resource = _valid(questionnaire_response(_payload(answers={"f": url})))
    assert resource["item"][0]["answer"] == [{"valueString": url}]


def test_payload_is_not_modified() -> None:
    """Building the resource leaves the event payload as it was."""
    payload = _payload(answers={"meds": [{"name": "a"}], "signature": SIGNATURE_URL})
    before = copy.deepcopy(payload)
    questionnaire_response(payload)
    assert payload == before


_DATA_URLS = st.builds(
    lambda raw, media: f"data:{media};base64,{base64.b64encode(raw).decode()}",
    st.binary(max_size=40),
    st.sampled_from(["image/png", "", "text/plain;charset=utf-8", " image/svg+xml ; a = b "]),
) | st.text().map(lambda text: "data:" + text)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | _DATA_URLS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(answers=st.dictionaries(st.text(), _JSON, max_size=6))
def test_any_json_answers_give_a_valid_resource(answers: dict[str, Any]) -> None:
    """Whatever JSON a form sends (odd keys, whitespace, huge numbers, data URLs), it validates."""
    _valid(questionnaire_response(_payload(answers=answers)))
