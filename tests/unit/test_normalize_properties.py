"""Properties of normalize_row over arbitrary and realistic input (hypothesis)."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date

import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from syncd.normalize import (
    NormalizedPatient,
    NormalizePolicy,
    Rejection,
    normalize_row,
    provider_id_key,
)
from syncd.sources import SOURCE_FIELDS
from syncd.sources.base import SourceRow
from syncd.voxares.contract import PATIENT_FIELDS

TODAY = date(2025, 6, 1)
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
SMS_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates included (undecodable CSV bytes), or a missing value.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
raw_value = st.one_of(st.none(), any_text)
arbitrary_fields = st.fixed_dictionaries({field: raw_value for field in SOURCE_FIELDS})
policies = st.builds(
    NormalizePolicy,
    default_region=st.sampled_from(["HR", "DE", "US", "GB"]),
    landline=st.sampled_from(["drop", "reject"]),
    invalid_phone=st.sampled_from(["drop", "reject"]),
    date_formats=st.sampled_from([("%Y-%m-%d",), ("%d.%m.%Y", "%d/%m/%y")]),
)


REGIONS = ["HR", "DE", "GB", "FR", "SI", "RS", "AT", "IT"]


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """A real mobile or fixed-line number of some region, spelt internationally or E.164."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]))
    number = phonenumbers.example_number_for_type(region, kind)
    style = draw(st.sampled_from([PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.E164]))
    return str(phonenumbers.format_number(number, style))


def is_mobile(text: str) -> bool:
    return phonenumbers.number_type(phonenumbers.parse(text)) in SMS_TYPES


@st.composite
def person_names(draw: st.DrawFn) -> str:
    """One to three words of letters and marks, separated and surrounded by any whitespace."""
    word = st.text(st.characters(categories=["L", "M"]), min_size=1, max_size=15)
    gap = st.text(st.sampled_from(" \t\n\r\u00a0\u2003"), min_size=1, max_size=3)
    words = draw(st.lists(word, min_size=1, max_size=3))
    text = "".join(draw(gap) + w for w in words) + draw(gap)
    return text if unicodedata.normalize("NFC", text).strip() else "X"


# Birth dates around the accepted range, in the ISO spellings every policy accepts.
birth_dates = st.builds(
    lambda day, spelling: spelling(day),
    st.dates(date(1850, 1, 1), date(2050, 12, 31)),
    st.sampled_from(
        [date.isoformat, lambda d: d.strftime("%Y%m%d"), lambda d: f"{d}T00:00:00.000Z"]
    ),
)

REALISTIC = {
    "providerId": st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True),
    "firstName": person_names(),
    "lastName": person_names(),
    "mobileNumber": st.one_of(st.none(), phone_numbers()),
    "email": st.one_of(st.none(), st.emails(domains=domains(max_length=60))),
    "dateOfBirth": st.one_of(st.none(), birth_dates),
}
realistic_fields = st.fixed_dictionaries(REALISTIC)

# Each field either arbitrary or realistic, so that rows get past the first fields and the
# later rules (phone, e-mail, date) meet arbitrary text too.
mixed_fields = st.fixed_dictionaries(
    {field: st.one_of(raw_value, strategy) for field, strategy in REALISTIC.items()}
)


# Unicode format characters (category Cf), and the joiners a name may keep between letters.
format_char = st.characters(categories=["Cf"])
JOINERS = "\u200c\u200d"


def has_format_char(text: str) -> bool:
    return any(unicodedata.category(char) == "Cf" for char in text)


def row(fields: dict[str, str | None]) -> SourceRow:
    return SourceRow(line=2, fields=fields, raw_hash="0" * 64)


def assert_satisfies_contract(patient: NormalizedPatient) -> None:
    """Every value obeys the rules of `docs/voxares-api.md` and normalize's own limits."""
    assert patient.provider_id == patient.provider_id.strip() != ""
    assert len(patient.provider_id) <= 128
    assert not CONTROL.search(patient.provider_id)
    assert not has_format_char(patient.provider_id)
    for name in (patient.first_name, patient.last_name):
        assert 0 < len(name) <= 100
        assert name == " ".join(name.split())
        assert unicodedata.is_normalized("NFC", name)
        assert not CONTROL.search(name)
        for at, char in enumerate(name):
            if unicodedata.category(char) == "Cf":  # only a joiner, inside a word
                assert char in JOINERS
                assert 0 < at < len(name) - 1
                assert not name[at - 1].isspace()
                assert not name[at + 1].isspace()
    if patient.mobile_number is not None:
        assert E164.fullmatch(patient.mobile_number)
        assert phonenumbers.is_valid_number(phonenumbers.parse(patient.mobile_number))
        assert is_mobile(patient.mobile_number)
    if patient.email is not None:
        assert not has_format_char(patient.email)
        assert patient.email == patient.email.lower()
        assert patient.email.count("@") == 1
        assert len(patient.email) <= 254
        assert not any(c.isspace() for c in patient.email)
    if patient.date_of_birth is not None:
        assert ISO_DATE.fullmatch(patient.date_of_birth)
        assert date(1900, 1, 1) <= date.fromisoformat(patient.date_of_birth) <= TODAY
    payload = patient.payload()
    assert set(payload) <= set(PATIENT_FIELDS)
    assert None not in payload.values()
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # strict: no lone surrogates


def assert_idempotent(patient: NormalizedPatient, policy: NormalizePolicy) -> None:
    """Normalising a normalised payload changes nothing."""
    again = normalize_row(row(dict(patient.payload())), policy, today=TODAY)
    assert isinstance(again, NormalizedPatient), again
    assert again.payload() == patient.payload()
    assert again.dropped == ()


@SETTINGS
@given(st.one_of(arbitrary_fields, mixed_fields), policies)
def test_arbitrary_text_gives_a_valid_patient_or_a_named_rejection(
    fields: dict[str, str | None], policy: NormalizePolicy
) -> None:
    """No input crashes: the result is a contract-valid, idempotent patient or a Rejection
    naming a source field whose reason does not contain the value."""
    result = normalize_row(row(fields), policy, today=TODAY)
    if isinstance(result, NormalizedPatient):
        assert_satisfies_contract(result)
        assert_idempotent(result, policy)
        assert set(result.dropped) <= {"mobileNumber"}
        return
    assert isinstance(result, Rejection)
    assert result.field in SOURCE_FIELDS
    assert result.reason.startswith(f"{result.field}: ")
    value = (fields[result.field] or "").strip()
    if len(value) >= 4:
        assert value not in result.reason


@SETTINGS
@given(st.one_of(arbitrary_fields, mixed_fields), policies)
def test_the_key_of_a_row_is_the_provider_id_it_pushes(
    fields: dict[str, str | None], policy: NormalizePolicy
) -> None:
    """`provider_id_key` (the plan's row key) is exactly the providerId of an accepted row,
    and None when the providerId is what the row is rejected for."""
    result = normalize_row(row(fields), policy, today=TODAY)
    key = provider_id_key(fields["providerId"])
    if isinstance(result, NormalizedPatient):
        assert key == result.provider_id
    elif result.field == "providerId":
        assert key is None


@SETTINGS
@given(
    realistic_fields,
    st.lists(format_char, max_size=3),
    st.lists(format_char, max_size=3),
    st.lists(format_char.filter(lambda c: c not in JOINERS), min_size=1, max_size=4),
    st.data(),
)
def test_invisible_characters_never_change_who_the_patient_is(
    fields: dict[str, str | None],
    before: list[str],
    after: list[str],
    in_names: list[str],
    data: st.DataObject,
) -> None:
    """Format characters around the providerId, email and date, and anywhere in the names
    (joiners aside), give the same payload as the clean row."""
    clean = normalize_row(row(fields), NormalizePolicy(), today=TODAY)
    if not isinstance(clean, NormalizedPatient):
        return

    def wrap(value: str | None) -> str | None:
        return None if value is None else "".join(before) + value + "".join(after)

    def sprinkle(name: str | None) -> str:
        text = list(name or "")
        for char in in_names:
            text.insert(data.draw(st.integers(0, len(text))), char)
        return "".join(text)

    dirty = {
        **fields,
        "providerId": wrap(fields["providerId"]),
        "email": wrap(fields["email"]),
        "dateOfBirth": wrap(fields["dateOfBirth"]),
        "firstName": sprinkle(fields["firstName"]),
        "lastName": sprinkle(fields["lastName"]),
    }
    result = normalize_row(row(dirty), NormalizePolicy(), today=TODAY)
    assert isinstance(result, NormalizedPatient), result
    assert result.payload() == clean.payload()
    assert provider_id_key(dirty["providerId"]) == clean.provider_id


@SETTINGS
@given(realistic_fields, format_char, st.data())
def test_an_invisible_character_inside_a_provider_id_is_refused(
    fields: dict[str, str | None], char: str, data: st.DataObject
) -> None:
    """A format character between two characters of a providerId rejects the row: two ids
    that differ only invisibly are never merged, nor pushed as two patients silently."""
    provider_id = fields["providerId"] or ""
    if len(provider_id) < 2:
        return
    at = data.draw(st.integers(1, len(provider_id) - 1))
    raw = provider_id[:at] + char + provider_id[at:]
    result = normalize_row(row({**fields, "providerId": raw}), NormalizePolicy(), today=TODAY)
    assert isinstance(result, Rejection)
    assert result.field == "providerId"
    assert provider_id_key(raw) is None


@SETTINGS
@given(realistic_fields, policies)
def test_realistic_rows_are_accepted_and_idempotent(
    fields: dict[str, str | None], policy: NormalizePolicy
) -> None:
    """Real names, phones, e-mails and dates give contract-valid patients, stable when re-run;
    only an out-of-range birth date or a landline under "reject" rejects them."""
    phone, born = fields["mobileNumber"], fields["dateOfBirth"]
    landline = phone is not None and not is_mobile(phone)
    in_range = born is None or date(1900, 1, 1) <= date.fromisoformat(born[:10]) <= TODAY
    result = normalize_row(row(fields), policy, today=TODAY)
    at_fault = {"dateOfBirth"} if not in_range else set()
    if landline and policy.landline == "reject":
        at_fault.add("mobileNumber")
    if at_fault:
        assert isinstance(result, Rejection), result
        assert result.field in at_fault
        return
    assert isinstance(result, NormalizedPatient), result
    assert_satisfies_contract(result)
    assert_idempotent(result, policy)
    assert result.dropped == (("mobileNumber",) if landline else ())
    assert (result.mobile_number is None) == (phone is None or landline)


@SETTINGS
@given(mixed_fields, policies)
def test_reject_policy_never_drops_and_drop_policy_never_rejects_the_phone(
    fields: dict[str, str | None], policy: NormalizePolicy
) -> None:
    """Under "reject" for both, nothing is dropped; under "drop" for both, the phone never
    rejects a row."""
    result = normalize_row(row(fields), policy, today=TODAY)
    both_reject = policy.landline == policy.invalid_phone == "reject"
    both_drop = policy.landline == policy.invalid_phone == "drop"
    if isinstance(result, NormalizedPatient) and both_reject:
        assert result.dropped == ()
    if isinstance(result, Rejection) and both_drop:
        assert result.field != "mobileNumber"
