"""What a source row becomes on its way to Voxares: a payload, then a POST /patients body.

Both jobs that push patients use these two steps: the push job (`push.py`, for the CSV, SQL
and FHIR sources) and the HL7 apply job (`syncd.hl7.apply`). `normalise` puts
`syncd.normalize` in the plan's terms (`plan.plan_row` takes it as its normaliser);
`upsert_body` turns the payload of a `plan.Push` into the request body under the job's
provider name. Both are pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from syncd.normalize import NormalizePolicy, Rejection, normalize_row
from syncd.patients.plan import Normalized, Rejected
from syncd.sources.base import SourceRow
from syncd.voxares.models import PatientUpsert

# The optional fields of POST /patients (`provider` is set per job, not per row).
OPTIONAL_FIELDS: Final = ("mobileNumber", "email", "dateOfBirth")


def normalise(row: SourceRow, policy: NormalizePolicy) -> Normalized | Rejected:
    """`normalize_row` in the plan's terms."""
    result = normalize_row(row, policy)
    if isinstance(result, Rejection):
        return Rejected(result.field, result.reason)
    return Normalized(result.payload(), result.payload_hash(), result.dropped_phone)


def upsert_body(payload: Mapping[str, Any], provider: str) -> PatientUpsert:
    """The request body for a normalised payload, under the job's provider name.

    Optional fields the payload lacks are set to None explicitly: the contract keeps a
    stored value when an upsert omits its field (`UPSERT_KEEPS_ABSENT_FIELDS`), so a
    value removed in the source has to be sent as null to be removed in Voxares.
    """
    cleared = {name: None for name in OPTIONAL_FIELDS if name not in payload}
    return PatientUpsert.model_validate({**cleared, **payload, "provider": provider})
