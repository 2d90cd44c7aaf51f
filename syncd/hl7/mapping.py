"""Pure: an ADT message → what it asks of the mirror (a patient's current data, a merge).

The mapping is configurable (`Hl7Mapping`): which PID-3 identifier is the providerId (by
assigning authority and identifier type code), which PID-5 name is used (by name type
code), which PID-13/PID-14 repetitions are the mobile number and the email (by use and
equipment type code). Values leave here as raw text in a `SourceRow`, exactly like a CSV
cell: `syncd.normalize` validates them, and a bad one quarantines the patient naming the
field. A problem only HL7 can have (no identifier matching the mapping, a birth date
without a day) is the row's `problem`, also naming the field, never the value.

Events: A01/A04 (register), A08 (update), A28/A31 (person information) carry the patient;
A40 (merge) carries the surviving patient in PID and the merged one in MRG-1. Everything
else is ignored: `Ignored` says why (the message is acknowledged and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from syncd.hashing import row_hash
from syncd.hl7.message import Decoded
from syncd.sources.base import SourceRow

PATIENT_EVENTS: Final = frozenset({"A01", "A04", "A08", "A28", "A31"})
MERGE_EVENTS: Final = frozenset({"A40"})


@dataclass(frozen=True, slots=True)
class Hl7Mapping:
    """Which HL7 repetitions feed which contract field ("" / empty = any)."""

    # PID-3: the identifier whose CX.4 (assigning authority, first part) and CX.5
    # (identifier type code) match is the providerId.
    identifier_authority: str = ""
    identifier_type: str = "MR"
    # PID-5: the name whose XPN.7 (name type code) is this one; else the first name.
    name_type: str = "L"
    # PID-13 then PID-14: the first repetition whose XTN.3 (equipment type) is one of these
    # (and, when `mobile_use` is set, whose XTN.2 use code is one of those) is the mobile.
    mobile_equipment: tuple[str, ...] = ("CP",)
    mobile_use: tuple[str, ...] = ()
    # The first repetition whose XTN.2 is one of these or XTN.3 is "Internet" is the email.
    email_use: tuple[str, ...] = ("NET",)


@dataclass(frozen=True, slots=True)
class PatientData:
    """A message's patient, as a source row (contract field names, raw text)."""

    row: SourceRow


@dataclass(frozen=True, slots=True)
class Merge:
    """A40: `merged_id` is now `surviving` (whose data the message also carries)."""

    surviving: SourceRow
    merged_id: str | None  # None: MRG-1 has no identifier matching the mapping

    def __repr__(self) -> str:
        return f"Merge(merged_id={self.merged_id!r})"


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message the feed does not apply; `reason` names the type, never data."""

    reason: str


Action = PatientData | Merge


@dataclass(frozen=True, slots=True)
class Mapped:
    """What one message asks for: actions in message order, or why it is ignored."""

    actions: tuple[Action, ...] = ()
    ignored: Ignored | None = None


@dataclass(slots=True)
class _Separators:
    field_separator: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    decoded: Decoded = field(repr=False)

    def unescape(self, text: str) -> str:
        if self.escape and self.escape in text:
            return str(self.decoded.message.unescape(text))
        return text


def _separators(decoded: Decoded) -> _Separators:
    text = decoded.text
    enc = text[4:].split(text[3], 1)[0]
    padded = (enc + "^~\\&")[:4] if len(enc) < 4 else enc
    return _Separators(text[3], padded[0], padded[1], padded[2], padded[3], decoded)


def _segments(decoded: Decoded) -> list[tuple[str, list[str]]]:
    """Each segment as (id, fields by HL7 number: index 1 = field 1)."""
    sep = decoded.text[3]
    out = []
    for line in decoded.text.split("\r"):
        parts = line.split(sep)
        out.append((parts[0].strip().upper(), parts))
    return out


def _field(parts: list[str], number: int) -> str:
    return parts[number] if len(parts) > number else ""


def _repetitions(value: str, seps: _Separators) -> list[list[str]]:
    """A field's repetitions, each a list of components (1-based: [0] is component 1)."""
    if not value:
        return []
    return [rep.split(seps.component) for rep in value.split(seps.repetition)]


def _component(components: list[str], number: int, seps: _Separators) -> str:
    """Component `number` (1-based), its first subcomponent, unescaped and trimmed."""
    if len(components) < number:
        return ""
    first = components[number - 1].split(seps.subcomponent, 1)[0]
    return seps.unescape(first).strip()


def _identifier(value: str, mapping: Hl7Mapping, seps: _Separators) -> str | None:
    """The CX repetition of `value` the mapping picks (its CX.1), or None."""
    for rep in _repetitions(value, seps):
        ident = _component(rep, 1, seps)
        if not ident or ident == '""':
            continue
        authority = _component(rep, 4, seps)
        id_type = _component(rep, 5, seps)
        if mapping.identifier_authority and authority != mapping.identifier_authority:
            continue
        if mapping.identifier_type and id_type != mapping.identifier_type:
            continue
        return ident
    return None


def _name(value: str, mapping: Hl7Mapping, seps: _Separators) -> tuple[str, str]:
    """(family, given) of the PID-5 repetition with the mapping's name type, else the first."""
    reps = _repetitions(value, seps)
    chosen = next((r for r in reps if _component(r, 7, seps) == mapping.name_type), None)
    if chosen is None and reps:
        chosen = reps[0]
    if chosen is None:
        return "", ""
    return _component(chosen, 1, seps), _component(chosen, 2, seps)


def _phone_text(rep: list[str], seps: _Separators) -> str:
    """An XTN's number: XTN.12 (unformatted), else XTN.1, else +country area local."""
    unformatted = _component(rep, 12, seps)
    if unformatted:
        return unformatted
    formatted = _component(rep, 1, seps)
    if formatted:
        return formatted
    country, area, local = (_component(rep, n, seps) for n in (5, 6, 7))
    if not local:
        return ""
    return (f"+{country.lstrip('+')}" if country else "") + area + local


def _contacts(values: Sequence[str], mapping: Hl7Mapping, seps: _Separators) -> tuple[str, str]:
    """(mobile, email) from PID-13 then PID-14 repetitions ("" when none matches)."""
    mobile = email = ""
    for value in values:
        for rep in _repetitions(value, seps):
            use, equipment = _component(rep, 2, seps), _component(rep, 3, seps)
            if not email and (use in mapping.email_use or equipment.lower() == "internet"):
                email = _component(rep, 4, seps)
                continue
            if (
                not mobile
                and equipment in mapping.mobile_equipment
                and (not mapping.mobile_use or use in mapping.mobile_use)
            ):
                mobile = _phone_text(rep, seps)
    return mobile, email


def birth_date(text: str) -> tuple[str | None, str | None]:
    """PID-7 (DTM) → (ISO date or None, problem or None). A day is required."""
    digits = text.strip()
    if not digits or digits == '""':
        return None, None
    head = digits[:8]
    if not head.isdigit():
        return None, "dateOfBirth: not an HL7 date (YYYYMMDD...)"
    if len(head) < 8:
        return None, "dateOfBirth: HL7 date has no day (precision below a day)"
    return f"{head[:4]}-{head[4:6]}-{head[6:8]}", None


def patient_row(pid: list[str], mapping: Hl7Mapping, seps: _Separators, line: int) -> SourceRow:
    """The PID segment as a source row (contract field names, raw values)."""
    provider_id = _identifier(_field(pid, 3), mapping, seps)
    family, given = _name(_field(pid, 5), mapping, seps)
    mobile, email = _contacts((_field(pid, 13), _field(pid, 14)), mapping, seps)
    born, date_problem = birth_date(_field(pid, 7).split(seps.component, 1)[0])
    fields: dict[str, str | None] = {
        "providerId": provider_id,
        "firstName": given or None,
        "lastName": family or None,
        "mobileNumber": mobile or None,
        "email": email or None,
        "dateOfBirth": born,
    }
    problem: str | None = None
    problem_field: str | None = None
    if provider_id is None:
        problem, problem_field = (
            "providerId: no PID-3 identifier matches the mapping",
            ("providerId"),
        )
    elif date_problem is not None:
        problem, problem_field = date_problem, "dateOfBirth"
    return SourceRow(
        line=line,
        fields=fields,
        raw_hash=row_hash(fields),
        problem=problem,
        problem_field=problem_field,
    )


def map_message(decoded: Decoded, mapping: Hl7Mapping, *, line: int = 0) -> Mapped:
    """What `decoded` asks of the mirror (see the module docstring).

    `line` is the message's inbound id: quarantine entries name it as the row's line.
    """
    header = decoded.header
    if header.message_type != "ADT":
        return Mapped(ignored=Ignored(f"message type {header.message_type[:8]} not applied"))
    event = header.trigger_event
    segments = _segments(decoded)
    if not event:
        event = next((_field(p, 1).strip().upper() for s, p in segments if s == "EVN"), "")
    if event not in PATIENT_EVENTS and event not in MERGE_EVENTS:
        return Mapped(ignored=Ignored(f"ADT event {event[:8] or '(none)'} not applied"))
    seps = _separators(decoded)
    actions: list[Action] = []
    current: SourceRow | None = None
    for seg_id, parts in segments:
        if seg_id == "PID":
            current = patient_row(parts, mapping, seps, line)
            if event in PATIENT_EVENTS:
                actions.append(PatientData(current))
        elif seg_id == "MRG" and event in MERGE_EVENTS and current is not None:
            merged = _identifier(_field(parts, 1), mapping, seps)
            actions.append(Merge(current, merged))
            current = None
    if not actions:
        return Mapped(ignored=Ignored(f"ADT {event} without the segments it needs (PID/MRG)"))
    return Mapped(actions=tuple(actions))
