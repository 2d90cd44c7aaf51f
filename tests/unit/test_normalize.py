"""normalize_row: each field rule, the phone policies, and the payload it produces."""

from __future__ import annotations

import sys
import unicodedata
from datetime import date

import pytest

from syncd.exceptions import ConfigError
from syncd.hashing import payload_hash
from syncd.normalize import (
    NormalizedPatient,
    NormalizePolicy,
    Rejection,
    normalize_row,
    provider_id_key,
)
from syncd.sources.base import SourceRow

TODAY = date(2025, 6, 1)
DEFAULT = NormalizePolicy()
STRICT = NormalizePolicy(landline="reject", invalid_phone="reject")
VALID = {
    "providerId": " P-100 ",
    "firstName": "Ana",
    "lastName": "Horvat",
    "mobileNumber": "092 123 4567",
    "email": "Ana.Horvat@Example.COM",
    "dateOfBirth": "1980-02-13",
}


def normalize(
    policy: NormalizePolicy = DEFAULT, **fields: str | None
) -> NormalizedPatient | Rejection:
    row = SourceRow(line=2, fields={**VALID, **fields}, raw_hash="0" * 64)
    return normalize_row(row, policy, today=TODAY)


def patient(policy: NormalizePolicy = DEFAULT, **fields: str | None) -> NormalizedPatient:
    result = normalize(policy, **fields)
    assert isinstance(result, NormalizedPatient), result
    return result


def test_valid_row_becomes_the_contract_payload() -> None:
    """A clean row yields trimmed, E.164, lower-cased, ISO values in camelCase."""
    result = patient()
    assert result.payload() == {
        "providerId": "P-100",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385921234567",
        "email": "ana.horvat@example.com",
        "dateOfBirth": "1980-02-13",
    }
    assert result.dropped == ()
    assert result.payload_hash() == payload_hash(result.payload())


def test_payload_leaves_out_absent_fields() -> None:
    """Optional fields that are None or blank are not in the payload at all."""
    result = patient(mobileNumber=None, email="  ", dateOfBirth="")
    assert result.payload() == {"providerId": "P-100", "firstName": "Ana", "lastName": "Horvat"}


def test_repr_shows_the_id_and_field_names_only() -> None:
    """The repr carries no name, phone, email or birth date."""
    text = repr(patient())
    assert "P-100" in text
    for value in ("Ana", "Horvat", "385921234567", "example.com", "1980"):
        assert value not in text


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"providerId": None}, "providerId", "providerId: required"),
        ({"providerId": "   "}, "providerId", "providerId: required"),
        ({"providerId": "x" * 129}, "providerId", "providerId: longer than 128 characters"),
        ({"providerId": "P\x001"}, "providerId", "providerId: contains control characters"),
        ({"firstName": None}, "firstName", "firstName: required"),
        ({"lastName": " \t\n "}, "lastName", "lastName: required"),
        ({"firstName": "A" * 101}, "firstName", "firstName: longer than 100 characters"),
        ({"lastName": "Hor\x07vat"}, "lastName", "lastName: contains control characters"),
        ({"lastName": "Hor\udc80vat"}, "lastName", "lastName: contains control characters"),
        ({"email": "ana"}, "email", "email: not a valid address"),
        ({"dateOfBirth": "13/02/1980"}, "dateOfBirth", "dateOfBirth: not a date"),
        ({"dateOfBirth": "2025-06-02"}, "dateOfBirth", "dateOfBirth: in the future"),
        ({"dateOfBirth": "1899-12-31"}, "dateOfBirth", "dateOfBirth: before 1900"),
        ({"dateOfBirth": "1980-02-30"}, "dateOfBirth", "dateOfBirth: not a real date"),
    ],
)
def test_rule_violations_reject_the_row_naming_the_field(
    fields: dict[str, str | None], field: str, reason: str
) -> None:
    """Each broken rule gives a Rejection with its field and a reason without the value."""
    result = normalize(**fields)
    assert isinstance(result, Rejection)
    assert result.field == field
    assert result.reason.startswith(reason)


def test_lengths_at_the_limit_are_accepted() -> None:
    """A 128-character providerId and 100-character names are still valid."""
    result = patient(providerId="x" * 128, firstName="A" * 100, lastName="B" * 100)
    assert len(result.provider_id) == 128


def test_names_are_nfc_and_whitespace_collapsed() -> None:
    """Decomposed accents are composed; tabs, newlines and runs of spaces become one space."""
    result = patient(firstName="  Ana \t Marija\r\n", lastName="Z\u030celjko\u00a0 Babic\u0301")
    assert result.first_name == "Ana Marija"
    assert result.last_name == "Željko Babić"


def test_provider_id_keeps_inner_spaces_and_form() -> None:
    """providerId is an identifier: trimmed only, never collapsed or re-composed."""
    assert patient(providerId=" A  1\u0301 ").provider_id == "A  1\u0301"


def test_unicode_names_in_any_script_are_fine() -> None:
    """Names in Cyrillic, Greek, Arabic or CJK pass unchanged."""
    for name in ("Јелена", "Ελένη", "فاطمة", "王秀英"):
        assert patient(firstName=name).first_name == name


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("092 123 4567", "+385921234567"),
        ("+385 92 123 4567", "+385921234567"),
        ("00385921234567", "+385921234567"),
        ("(201) 555-0123", None),  # a US number read as Croatian: invalid
        ("+1 201-555-0123", "+12015550123"),  # FIXED_LINE_OR_MOBILE is accepted
        ("+49 1512 3456789", "+4915123456789"),
    ],
)
def test_phone_numbers_become_e164(raw: str, e164: str | None) -> None:
    """National and international spellings of a mobile become E.164 with region HR."""
    assert patient(mobileNumber=raw).mobile_number == e164


def test_default_region_reads_national_numbers() -> None:
    """With region DE, a German national mobile number is understood."""
    policy = NormalizePolicy(default_region="DE")
    assert patient(policy, mobileNumber="01512 3456789").mobile_number == "+4915123456789"


@pytest.mark.parametrize("raw", ["01 2345 678", "0800 123 456"])
def test_landline_is_dropped_by_default(raw: str) -> None:
    """A fixed line (or toll-free) number cannot take SMS: dropped, and said so."""
    result = patient(mobileNumber=raw)
    assert result.mobile_number is None
    assert result.dropped == ("mobileNumber",)
    assert result.dropped_phone == "landline"
    assert "mobileNumber" not in result.payload()


def test_dropped_phone_says_landline_or_invalid() -> None:
    """`dropped_phone` tells a dropped landline from a dropped invalid number."""
    assert patient(mobileNumber="01 2345 678").dropped_phone == "landline"
    assert patient(mobileNumber="12").dropped_phone == "invalid"
    assert patient(mobileNumber="092 123 4567").dropped_phone is None
    assert patient(mobileNumber=None).dropped_phone is None


@pytest.mark.parametrize("raw", ["091-CALL-NOW", "1-800-FLOWERS", "092 123 4567 ext 12", "n/a"])
def test_letters_are_not_a_phone_number(raw: str) -> None:
    """A number spelt with letters (vanity, extension, note) is not read as keypad digits:
    rejected with a reason saying so, or dropped as invalid under the drop policy."""
    assert normalize(STRICT, mobileNumber=raw) == Rejection(
        "mobileNumber", "mobileNumber: contains letters, not a phone number"
    )
    dropped = patient(mobileNumber=raw)
    assert (dropped.mobile_number, dropped.dropped_phone) == (None, "invalid")


@pytest.mark.parametrize("raw", ["1985-02-30", "19850230", "1985-13-01", "1985-00-10"])
def test_impossible_iso_date_is_not_a_real_date(raw: str) -> None:
    """A date in ISO shape naming no calendar day is "not a real date", not a format error."""
    assert normalize(dateOfBirth=raw) == Rejection(
        "dateOfBirth", "dateOfBirth: not a real date (no such day in the calendar)"
    )


def test_impossible_date_in_a_configured_format_is_not_a_real_date() -> None:
    """30.02.1985 under %d.%m.%Y is "not a real date"; 32.01.1985 is a format error."""
    policy = NormalizePolicy(date_formats=("%d.%m.%Y",))
    assert normalize(policy, dateOfBirth="30.02.1985") == Rejection(
        "dateOfBirth", "dateOfBirth: not a real date (no such day in the calendar)"
    )
    rejected = normalize(policy, dateOfBirth="32.01.1985")
    assert isinstance(rejected, Rejection)
    assert rejected.reason.startswith("dateOfBirth: not a date in an accepted format")


@pytest.mark.parametrize(
    ("raw", "kind"), [("01 2345 678", "FIXED_LINE"), ("0800 123 456", "TOLL_FREE")]
)
def test_landline_rejects_under_reject_policy(raw: str, kind: str) -> None:
    """With landline="reject" the row is rejected, naming the number type, not the number."""
    result = normalize(STRICT, mobileNumber=raw)
    assert result == Rejection("mobileNumber", f"mobileNumber: not a mobile number ({kind})")


@pytest.mark.parametrize("raw", ["12", "+385 92", "+999 123 456 789", "--"])
def test_invalid_number_is_dropped_or_rejected_per_policy(raw: str) -> None:
    """Text that is no valid number is dropped by default and rejected when asked."""
    assert patient(mobileNumber=raw).dropped == ("mobileNumber",)
    assert normalize(STRICT, mobileNumber=raw) == Rejection(
        "mobileNumber", "mobileNumber: not a valid number for region HR"
    )


def test_policies_are_independent() -> None:
    """Rejecting invalid numbers does not reject landlines, and the other way round."""
    assert patient(NormalizePolicy(invalid_phone="reject"), mobileNumber="01 2345 678").dropped
    assert patient(NormalizePolicy(landline="reject"), mobileNumber="12").dropped


@pytest.mark.parametrize(
    ("raw", "email"),
    [
        ("  Ana.Horvat@Example.COM ", "ana.horvat@example.com"),
        ("ana+tag@mail.example.co.uk", "ana+tag@mail.example.co.uk"),
        ("Željka@Primjer.HR", "željka@primjer.hr"),
        ("o'brien@x-y.io", "o'brien@x-y.io"),
    ],
)
def test_emails_are_lower_cased(raw: str, email: str) -> None:
    """A well-shaped address is trimmed and lower-cased."""
    assert patient(email=raw).email == email


@pytest.mark.parametrize(
    "raw",
    [
        "ana",
        "ana@",
        "@example.com",
        "ana@example",
        "ana horvat@example.com",
        "ana@@example.com",
        "ana@exa_mple.com",
        "ana@-example.com",
        "ana@example..com",
        ".ana@example.com",
        "ana.@example.com",
        "<ana@example.com>",
        "a" * 65 + "@example.com",
        "ana@" + "a" * 250 + ".com",
    ],
)
def test_badly_shaped_emails_reject_the_row(raw: str) -> None:
    """An address without the shape local@domain.tld rejects the row, naming email."""
    assert normalize(email=raw) == Rejection("email", "email: not a valid address")


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("1980-02-13", "1980-02-13"),
        ("19800213", "1980-02-13"),
        ("1980-02-13T00:00:00.000Z", "1980-02-13"),
        ("1980-02-13 00:00:00", "1980-02-13"),
        ("1900-01-01", "1900-01-01"),
        ("2025-06-01", "2025-06-01"),
    ],
)
def test_iso_dates_and_midnight_datetimes_are_accepted(raw: str, iso: str) -> None:
    """ISO dates, and ISO datetimes at midnight (a DATETIME column), give YYYY-MM-DD."""
    assert patient(dateOfBirth=raw).date_of_birth == iso


def test_datetime_with_a_time_of_day_is_not_a_birth_date() -> None:
    """A datetime that is not at midnight is ambiguous (a time zone shift?) and rejected."""
    result = normalize(dateOfBirth="1980-02-12T23:00:00")
    assert isinstance(result, Rejection)
    assert result.field == "dateOfBirth"


def test_configured_date_formats_are_tried_after_iso() -> None:
    """Croatian `13.02.1980.` is accepted once its format is configured, ISO still is."""
    policy = NormalizePolicy(date_formats=("%d.%m.%Y.", "%d.%m.%Y"))
    assert patient(policy, dateOfBirth="13.02.1980.").date_of_birth == "1980-02-13"
    assert patient(policy, dateOfBirth="13.02.1980").date_of_birth == "1980-02-13"
    assert patient(policy, dateOfBirth="1980-02-13").date_of_birth == "1980-02-13"
    assert isinstance(normalize(dateOfBirth="13.02.1980"), Rejection)


def test_source_problem_becomes_the_rejection() -> None:
    """A row the source flagged is rejected with the source's field and reason as is."""
    row = SourceRow(
        line=7, fields={}, raw_hash="0" * 64, problem="row has 3 columns", problem_field=None
    )
    assert normalize_row(row, DEFAULT) == Rejection(None, "row has 3 columns")
    row = SourceRow(7, dict(VALID), "0" * 64, "email: bytes that are not valid utf-8", "email")
    assert normalize_row(row, DEFAULT) == Rejection(
        "email", "email: bytes that are not valid utf-8"
    )


def test_unknown_fields_are_ignored() -> None:
    """Extra keys in a row (e.g. `provider`) do not reach the payload."""
    assert "provider" not in patient(provider="other").payload()


def test_rejections_never_carry_the_value() -> None:
    """The reason for each kind of bad value is free of that value."""
    secrets = {
        "providerId": "SECRET\x01",
        "firstName": "Secretname\x02",
        "mobileNumber": "0115550199",
        "email": "secret@nowhere",
        "dateOfBirth": "2999-01-01",
    }
    for field, value in secrets.items():
        result = normalize(STRICT, **{field: value})
        assert isinstance(result, Rejection)
        assert result.field == field
        assert value.strip("\x01\x02") not in result.reason
        assert value[:6] not in result.reason


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"default_region": "XX"}, "unknown region 'XX'"),
        ({"landline": "keep"}, "landline: must be 'drop' or 'reject'"),
        ({"invalid_phone": "maybe"}, "invalid_phone: must be 'drop' or 'reject'"),
        ({"date_formats": "%d.%m.%Y"}, "date_formats: must be a list"),
    ],
)
def test_bad_policy_is_a_config_error(kwargs: dict[str, object], problem: str) -> None:
    """An unknown region, policy word or a bare string of formats fails when built."""
    with pytest.raises(ConfigError, match=problem):
        NormalizePolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_accepts_a_list_of_formats_from_toml() -> None:
    """A TOML list of date formats becomes a tuple, keeping the policy hashable."""
    policy = NormalizePolicy(date_formats=["%d.%m.%Y"])  # type: ignore[arg-type]
    assert policy.date_formats == ("%d.%m.%Y",)
    assert hash(policy)


# One character of each class of Unicode format characters (category Cf).
INVISIBLE = {
    "byte order mark": "\ufeff",
    "zero width space": "\u200b",
    "zero width non-joiner": "\u200c",
    "zero width joiner": "\u200d",
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "arabic letter mark": "\u061c",
    "left-to-right embedding": "\u202a",
    "pop directional formatting": "\u202c",
    "right-to-left override": "\u202e",
    "first strong isolate": "\u2068",
    "pop directional isolate": "\u2069",
    "word joiner": "\u2060",
    "invisible times": "\u2062",
    "soft hyphen": "\u00ad",
    "mongolian vowel separator": "\u180e",
    "tag latin small letter a": "\U000e0061",
}
CLASSES = pytest.mark.parametrize("char", list(INVISIBLE.values()), ids=list(INVISIBLE))


@CLASSES
def test_invisible_characters_at_the_ends_of_a_provider_id_are_trimmed(char: str) -> None:
    """A format character before or after the id is trimmed, in the payload and the key."""
    for raw in (char + "P-100", "P-100" + char, f" {char} P-100 {char}{char} "):
        assert patient(providerId=raw).provider_id == "P-100"
        assert provider_id_key(raw) == "P-100"


@CLASSES
def test_invisible_character_inside_a_provider_id_rejects_the_row(char: str) -> None:
    """Inside an id a format character is refused (never silently dropped), and the row
    has no providerId key."""
    raw = f"P{char}100"
    assert normalize(providerId=raw) == Rejection(
        "providerId", "providerId: contains invisible formatting characters (Unicode Cf)"
    )
    assert provider_id_key(raw) is None


@CLASSES
def test_invisible_characters_in_names_are_removed(char: str) -> None:
    """A format character at the ends or between words of a name is removed."""
    assert patient(firstName=f"{char}Ana{char} {char}Marija{char}").first_name == "Ana Marija"


@CLASSES
def test_name_of_invisible_characters_only_is_missing(char: str) -> None:
    """A name that is nothing but format characters (and spaces) is rejected as missing."""
    assert normalize(lastName=f"{char} {char}") == Rejection(
        "lastName", "lastName: required (only invisible characters)"
    )


@pytest.mark.parametrize(
    "char", [c for c in INVISIBLE.values() if c not in "\u200c\u200d"], ids=str.__repr__
)
def test_invisible_characters_inside_a_name_word_are_removed(char: str) -> None:
    """Inside a word, every format character but the joiners is removed."""
    assert patient(lastName=f"Hor{char}vat").last_name == "Horvat"


def test_joiners_between_letters_are_kept_in_names() -> None:
    """ZWNJ/ZWJ between letters change how Persian or Indic letters join: kept there."""
    persian = "\u0645\u06cc\u200c\u0646\u0627"
    devanagari = "\u0915\u094d\u200d\u0937"
    assert patient(firstName=persian).first_name == persian
    assert patient(firstName=devanagari).first_name == devanagari
    assert patient(firstName="\u200dAna\u200c Marija").first_name == "Ana Marija"


def test_right_to_left_override_in_a_name_keeps_the_letters_as_typed() -> None:
    """An override that would display "Horvat" reversed is removed; the letters stay."""
    assert patient(lastName="\u202etavroH\u202c").last_name == "tavroH"


@CLASSES
def test_invisible_characters_in_email_and_date(char: str) -> None:
    """Email and birth date: trimmed at the ends; inside an email, refused."""
    result = patient(email=f"{char}ana@example.com{char}", dateOfBirth=f"{char}1980-02-13")
    assert (result.email, result.date_of_birth) == ("ana@example.com", "1980-02-13")
    assert normalize(email=f"an{char}a@example.com") == Rejection(
        "email", "email: contains invisible formatting characters (Unicode Cf)"
    )


@CLASSES
def test_invisible_characters_in_a_phone_number_are_ignored(char: str) -> None:
    """Among a phone number's digits a format character is ignored, like a space."""
    assert patient(mobileNumber=f"{char}092{char}123 4567").mobile_number == "+385921234567"


def test_format_characters_exist_only_in_the_planes_normalize_scans() -> None:
    """Every Cf code point of this Python's Unicode lies in planes 0, 1 or 14, which are
    the planes `syncd.normalize` scans at import to build its character class."""
    planes = {
        code >> 16 for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"
    }
    assert planes <= {0, 1, 14}
