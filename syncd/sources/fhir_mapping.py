"""A FHIR R4 `Patient` resource as a source row (pure: a JSON object in, a `SourceRow` out).

Mapping (the same for a FHIR search and a Bulk Data export):

* `providerId`: the `value` of the first `identifier` whose `system` is the configured one
  (an identifier with `use = old` or an ended `period` is skipped). A Patient without one
  is a problem row ("no identifier with system ..."), quarantined.
* `firstName`/`lastName`: the first `given` and the `family` of one `name`, chosen by `use`:
  official, then usual, then one without a use, then any other but `old`/`maiden`; a name
  whose `period` has ended is skipped.
* `mobileNumber`: a `telecom` with `system = phone` and `use = mobile`; failing that, a
  phone without a `use` (the normaliser's landline policy decides on its type). Lower `rank`
  first. `email`: a `telecom` with `system = email` (not `use = old`).
* `dateOfBirth`: `birthDate` when it is a full date. FHIR allows `YYYY` and `YYYY-MM`, which
  the Voxares contract cannot carry: the patient is pushed without a date of birth and the
  row says so (`PatientRow.partial_birth_date`), so that the read can count them.
* `active = false`: the row is inactive (`SourceRow.active` False; absent means active, as
  the FHIR specification says).

The resource is validated with `fhir.resources` (R4B, whose `Patient` is R4's) before it is
mapped; a resource that does not validate becomes a row with a `problem` naming the element
and the kind of error, never the value (pydantic's messages may quote the input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from syncd.hashing import row_hash
from syncd.sources.base import SourceRow

# Best first; a name with another use comes after these, `old` and `maiden` never.
_NAME_USE_ORDER: Final = ("official", "usual", None)
_NAME_USES_SKIPPED: Final = frozenset({"old", "maiden"})
# The quarantine table's `field` column length.
_FIELD_MAX: Final = 64
_FULL_DATE_LENGTH: Final = len("YYYY-MM-DD")


@dataclass(frozen=True, slots=True)
class PatientRow:
    """A mapped Patient: the row, and whether its `birthDate` was a partial date."""

    row: SourceRow
    partial_birth_date: bool = False


Validator = Callable[[Mapping[str, Any]], tuple[str, str] | None]


def patient_validator() -> Validator:
    """A function saying why a resource is not a valid FHIR R4 Patient: (element, kind of
    error), or None when it is valid.

    Imports `fhir.resources` lazily: it is the `fhir` extra, and slow to import.
    """
    from fhir.resources.R4B.patient import Patient
    from pydantic import ValidationError

    def invalid(resource: Mapping[str, Any]) -> tuple[str, str] | None:
        try:
            Patient.model_validate(resource)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            path = ".".join(str(part) for part in first["loc"])
            element = f"Patient.{path}" if path else "Patient"
            return element[:_FIELD_MAX], first["type"]
        return None

    return invalid


def map_patient(
    resource: Mapping[str, Any],
    *,
    identifier_system: str,
    line: int,
    origin: str | None = None,
    invalid: Validator | None = None,
) -> PatientRow:
    """Map one resource (already parsed JSON) to a `SourceRow` (see the module docstring).

    `line` and `origin` say where the resource was (the NDJSON line and file, or the ordinal
    in a search read and the resource's `Patient/<id>`). `invalid` is the validator from
    `patient_validator()`; without it the resource is mapped unvalidated.
    """
    if resource.get("resourceType") != "Patient":
        return _problem(line, origin, "resourceType", "not a Patient resource")
    if invalid is not None:
        found = invalid(resource)
        if found is not None:
            element, kind = found
            return _problem(line, origin, element, f"not valid FHIR R4 ({kind})")
    provider_id = _identifier(resource.get("identifier"), identifier_system)
    if provider_id is None:
        return _problem(
            line, origin, "providerId", f"no identifier with system {identifier_system[:200]}"
        )
    first, last = _name(resource.get("name"))
    birth = _text(resource.get("birthDate"))
    partial = birth is not None and len(birth) < _FULL_DATE_LENGTH
    fields: dict[str, str | None] = {
        "providerId": provider_id,
        "firstName": first,
        "lastName": last,
        "mobileNumber": _mobile(resource.get("telecom")),
        "email": _telecom(resource.get("telecom"), "email", uses=(None, "home", "work", "mobile")),
        "dateOfBirth": None if partial else birth,
    }
    active = resource.get("active") is not False
    # The active flag is part of the raw row: a patient made inactive is a changed row.
    hashed = {**fields, "active": "true" if active else "false"}
    return PatientRow(
        SourceRow(line, fields, row_hash(hashed), origin=origin, active=active),
        partial_birth_date=partial,
    )


def _problem(line: int, origin: str | None, field: str, reason: str) -> PatientRow:
    # The hash of the reason only: a resource that stays broken the same way stays "known".
    return PatientRow(
        SourceRow(line, {}, row_hash({"problem": f"{field}: {reason}"}), reason, field, origin)
    )


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _ended(element: Mapping[str, Any]) -> bool:
    """Whether an element's `period` has an end (it is no longer in use).

    The end is not compared with today: a name or number with an end date is on its way
    out, and a pure mapping does not read the clock.
    """
    period = element.get("period")
    return isinstance(period, Mapping) and _text(period.get("end")) is not None


def _identifier(identifiers: Any, system: str) -> str | None:
    for identifier in _dicts(identifiers):
        if identifier.get("system") != system or identifier.get("use") == "old":
            continue
        if _ended(identifier):
            continue
        value = _text(identifier.get("value"))
        if value is not None:
            return value
    return None


def _name(names: Any) -> tuple[str | None, str | None]:
    """(first given, family) of the best name by use."""
    candidates = [
        n for n in _dicts(names) if n.get("use") not in _NAME_USES_SKIPPED and not _ended(n)
    ]

    def order(name: Mapping[str, Any]) -> int:
        use = name.get("use")
        return _NAME_USE_ORDER.index(use) if use in _NAME_USE_ORDER else len(_NAME_USE_ORDER)

    for name in sorted(candidates, key=order):  # sorted() is stable: document order in a use
        given = name.get("given")
        first = (
            next(
                (t for t in (_text(g) for g in given) if t is not None),
                None,
            )
            if isinstance(given, list)
            else None
        )
        family = _text(name.get("family"))
        if first is not None or family is not None:
            return first, family
    return None, None


def _ranked(telecoms: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def rank(telecom: Mapping[str, Any]) -> int:
        value = telecom.get("rank")
        return value if isinstance(value, int) and value > 0 else 2**31

    return sorted(telecoms, key=rank)


def _telecom(telecoms: Any, system: str, *, uses: tuple[str | None, ...]) -> str | None:
    for telecom in _ranked(_dicts(telecoms)):
        if telecom.get("system") != system or telecom.get("use") not in uses:
            continue
        if _ended(telecom):
            continue
        value = _text(telecom.get("value"))
        if value is not None:
            return value
    return None


def _mobile(telecoms: Any) -> str | None:
    """A mobile phone; failing that, a phone whose use is not given."""
    return _telecom(telecoms, "phone", uses=("mobile",)) or _telecom(
        telecoms, "phone", uses=(None,)
    )
