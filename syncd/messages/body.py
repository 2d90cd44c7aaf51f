"""The body of `POST /messages/send` for one request: a pure function.

Voxares creates a patient it does not know yet from the names and mobile number in the send,
so the body carries what the patient mirror last pushed for (provider, providerId): names,
mobile, email and birth date. Without a mirror entry only the id is sent, and Voxares sends
to the patient it already has (or refuses with 422, which fails the request: nothing sent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from syncd.voxares.models import SendMessage

# Mirror payload fields (contract names) copied into the send.
PATIENT_FIELDS: Final = ("firstName", "lastName", "mobileNumber", "email", "dateOfBirth")


def mirror_fields(payload_json: str | None) -> dict[str, str]:
    """The patient fields of a mirror payload (JSON text); {} when absent or unreadable."""
    if not payload_json:
        return {}
    try:
        payload = json.loads(payload_json)
    except ValueError:
        return {}
    if not isinstance(payload, dict):
        return {}
    return {
        name: value
        for name in PATIENT_FIELDS
        if isinstance(value := payload.get(name), str) and value
    }


def send_body(
    *,
    provider: str,
    provider_id: str,
    content: str | None,
    template_id: str | None,
    patient: Mapping[str, Any],
) -> SendMessage:
    """The send for one request; `patient` holds mirror fields in contract names.

    Raises pydantic's ValidationError (which hides values) when the request has both or
    neither of content and template.
    """
    return SendMessage.model_validate(
        {
            **{name: patient[name] for name in PATIENT_FIELDS if patient.get(name)},
            "providerId": provider_id,
            "provider": provider,
            "content": content,
            "practiceTemplateId": template_id,
        }
    )
