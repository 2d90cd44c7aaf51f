"""Raw source row -> a patient body the Voxares contract accepts, or a field-named rejection.

Pure: no I/O, no logging; the caller decides what to do with a rejection (quarantine it).
A rejection's reason names the field and the rule, never the value, because reasons are
stored and shown to operators. The rules follow `docs/voxares-api.md` (POST /patients):
providerId, firstName and lastName required; mobileNumber E.164; dateOfBirth an ISO date.

First syncs normalise every row (100,000 is usual), so regexes are compiled once and phone
parsing, the costly step, is memoised: families often share one number.

Invisible characters (Unicode category Cf: byte order mark, zero-width space and joiners,
word joiner, soft hyphen, bidirectional marks, embeddings, overrides and isolates) arrive
with exports and copy-paste. They make two spellings of one value differ while looking the
same, so each field decides what to do with them:

- every field: they are trimmed off both ends, like whitespace (a BOM in the middle of a
  concatenated export lands at the start of a cell);
- providerId: one left inside rejects the row. An id is an identity that Voxares compares
  exactly; dropping an inner character could silently merge two different ids, keeping it
  creates a second patient for one EHR id. `provider_id_key` trims the same way, so a row
  whose id differs from another's only at its ends is reported as a duplicate;
- names: they are removed, except a zero-width joiner or non-joiner between two visible
  characters, which changes how Indic and Persian letters join. A name is display text,
  not an identity: every Cf character is either invisible or changes only how the letters
  are displayed (a right-to-left override can make a name read as another), never which
  letters they are, so removing them keeps what was typed. A name with nothing left is
  rejected as missing;
- mobileNumber: they are removed, as the phone parser ignores spaces and punctuation: a
  number is its digits, and these characters carry none;
- email and dateOfBirth: one left inside rejects the value.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Final, Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

from syncd.exceptions import ConfigError
from syncd.hashing import payload_hash
from syncd.sources.base import SourceRow

MAX_PROVIDER_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 100
MAX_EMAIL_LENGTH: Final = 254
EARLIEST_BIRTH_DATE: Final = date(1900, 1, 1)

# C0 and C1 controls, line/paragraph separators, and lone surrogates (undecodable bytes,
# which cannot be sent as UTF-8).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Planes that hold format characters (a unit test checks that no other plane does).
_FORMAT_PLANES: Final = (0, 1, 14)


def _format_characters() -> str:
    """Every code point of Unicode category Cf, as the body of a regex character class."""
    found = (
        chr(code)
        for plane in _FORMAT_PLANES
        for code in range(plane << 16, min((plane + 1) << 16, sys.maxunicode + 1))
        if unicodedata.category(chr(code)) == "Cf"
    )
    return "".join(re.escape(char) for char in found)


_CF: Final = _format_characters()
_FORMAT: Final = re.compile(f"[{_CF}]")
# Whitespace and format characters at either end of a value.
_EDGES: Final = re.compile(f"^[\\s{_CF}]+|[\\s{_CF}]+$")
# ZERO WIDTH NON-JOINER and ZERO WIDTH JOINER: kept inside a name, between visible letters.
_JOINERS: Final = "\u200c\u200d"
_FORMAT_NOT_JOINER: Final = re.compile(
    "[" + "".join(char for char in _CF if char not in _JOINERS) + "]"
)
# A joiner with nothing visible on one side (at an end, or next to a space) joins nothing.
_LOOSE_JOINER: Final = re.compile(f"(?<!\\S)[{_JOINERS}]+|[{_JOINERS}]+(?!\\S)")
# The shape of an ISO date (YYYY-MM-DD or YYYYMMDD), real or not.
_ISO_DATE_SHAPE: Final = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}")
# A shape check, not RFC 5322: one @, a local part without spaces, controls or specials,
# a domain of two or more dot-separated labels of letters, digits and inner hyphens.
_DOMAIN_LABEL: Final = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
_EMAIL: Final = re.compile(
    r"(?!\.)[^\s@\"(),:;<>\[\\\]\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,64}(?<!\.)"
    rf"@(?:{_DOMAIN_LABEL}\.)+{_DOMAIN_LABEL}"
)
_ACCEPTED_PHONE_TYPES: Final = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
_PHONE_TYPE_NAMES: Final = {
    value: name for name, value in vars(PhoneNumberType).items() if name.isupper()
}

PhonePolicy = Literal["drop", "reject"]
DroppedPhone = Literal["landline", "invalid"]
RawFields = Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class NormalizePolicy:
    """How strict normalisation is; built once from the source's configuration.

    `landline` applies to valid numbers that cannot take an SMS (fixed line, and also VoIP,
    toll-free, pager and the like); `invalid_phone` to text that is no valid number.
    `drop` pushes the patient without a mobile number; `reject` quarantines the row.
    `date_formats` are `strptime` formats tried after ISO 8601.
    """

    default_region: str = "HR"
    landline: PhonePolicy = "drop"
    invalid_phone: PhonePolicy = "drop"
    date_formats: tuple[str, ...] = ("%Y-%m-%d",)

    def __post_init__(self) -> None:
        problems = []
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            problems.append(f"default_region: unknown region {self.default_region!r}")
        for key in ("landline", "invalid_phone"):
            if getattr(self, key) not in ("drop", "reject"):
                problems.append(f"{key}: must be 'drop' or 'reject'")
        if isinstance(self.date_formats, str):
            problems.append("date_formats: must be a list of formats")
        else:
            # A list from the TOML file becomes a tuple: the policy stays hashable.
            object.__setattr__(self, "date_formats", tuple(self.date_formats))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a row cannot be pushed: the field at fault (None for the whole row) and the rule.

    `reason` never contains the field's value.
    """

    field: str | None
    reason: str


@dataclass(frozen=True, slots=True, repr=False)
class NormalizedPatient:
    """A patient whose fields satisfy the contract, ready to be sent as a POST /patients body."""

    provider_id: str
    first_name: str
    last_name: str
    mobile_number: str | None = None  # E.164
    email: str | None = None  # lower-cased
    date_of_birth: str | None = None  # ISO YYYY-MM-DD
    # Fields present in the source but left out by policy (e.g. a landline mobileNumber).
    dropped: tuple[str, ...] = ()
    # Why a present mobileNumber was left out: "landline" (any valid number that cannot
    # take an SMS) or "invalid"; None when it was kept or absent.
    dropped_phone: DroppedPhone | None = None

    def payload(self) -> dict[str, str]:
        """The contract's camelCase body, without absent fields."""
        body = {
            "providerId": self.provider_id,
            "firstName": self.first_name,
            "lastName": self.last_name,
        }
        if self.mobile_number is not None:
            body["mobileNumber"] = self.mobile_number
        if self.email is not None:
            body["email"] = self.email
        if self.date_of_birth is not None:
            body["dateOfBirth"] = self.date_of_birth
        return body

    def payload_hash(self) -> str:
        """Hash of `payload()`: equal hashes mean Voxares already holds this body."""
        return payload_hash(self.payload())

    def __repr__(self) -> str:
        # Names, phone, email and birth date are patient data: only the id and field names.
        present = ",".join(self.payload())
        return (
            f"NormalizedPatient(provider_id={self.provider_id!r}, fields={present}, "
            f"dropped={self.dropped!r})"
        )


class _Rejected(Exception):
    """Internal: carries a Rejection out of a field rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(field)
        self.rejection = Rejection(field, f"{field}: {rule}")


def trim(text: str | None) -> str:
    """The text without whitespace or invisible format characters (Cf) at either end."""
    if not text:
        return ""
    if text.isascii():
        return text.strip()
    return _EDGES.sub("", text)


def _provider_id_rule(text: str) -> str | None:
    """The rule a trimmed providerId breaks, or None."""
    if not text:
        return "required"
    if len(text) > MAX_PROVIDER_ID_LENGTH:
        return f"longer than {MAX_PROVIDER_ID_LENGTH} characters"
    if _CONTROL.search(text):
        return "contains control characters"
    if not text.isascii() and _FORMAT.search(text):
        return "contains invisible formatting characters (Unicode Cf)"
    return None


def provider_id_problem(raw: str | None) -> str | None:
    """The rule the providerId `raw` breaks once trimmed (as `normalize_row` trims it), or
    None. Sources other than patient rows (SMS requests) check their ids with it, so a
    patient and a request for it agree on the id."""
    return _provider_id_rule(trim(raw))


def provider_id_key(raw: str | None) -> str | None:
    """The providerId a row is keyed by (trimmed as `normalize_row` trims it), or None when
    `normalize_row` would refuse it. Equal keys are the same patient."""
    text = trim(raw)
    return text if _provider_id_rule(text) is None else None


def _provider_id(fields: RawFields) -> str:
    text = trim(fields.get("providerId"))
    rule = _provider_id_rule(text)
    if rule is not None:
        raise _Rejected("providerId", rule)
    return text


def _visible(text: str) -> str:
    """A name without format characters, but for joiners between visible characters."""
    return _LOOSE_JOINER.sub("", _FORMAT_NOT_JOINER.sub("", text))


def _name(fields: RawFields, field: str) -> str:
    """Format characters removed (see the module docstring), NFC, whitespace runs (tabs and
    newlines included) collapsed to one space, trimmed."""
    raw = fields.get(field) or ""
    text = raw if raw.isascii() else _visible(raw)
    value = " ".join(unicodedata.normalize("NFC", text).split())
    if not value:
        raise _Rejected(
            field, "required (only invisible characters)" if raw.strip() else "required"
        )
    if _CONTROL.search(value):
        raise _Rejected(field, "contains control characters")
    if len(value) > MAX_NAME_LENGTH:
        raise _Rejected(field, f"longer than {MAX_NAME_LENGTH} characters")
    return value


@lru_cache(maxsize=65_536)
def _classify_phone(text: str, region: str) -> tuple[str | None, str | None]:
    """(E.164, None) for a number that can take an SMS, else (None, "invalid" | type name)."""
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None, "invalid"
    # number_type is UNKNOWN exactly when is_valid_number is False; one lookup, not two.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        return None, "invalid"
    if kind not in _ACCEPTED_PHONE_TYPES:
        return None, _PHONE_TYPE_NAMES.get(kind, "UNKNOWN")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


def _mobile(fields: RawFields, policy: NormalizePolicy) -> tuple[str | None, DroppedPhone | None]:
    """(E.164 or None, why a present value was dropped by policy, or None)."""
    text = fields.get("mobileNumber") or ""
    if not text.isascii():
        text = _FORMAT.sub("", text)
    text = text.strip()
    if not text:
        return None, None
    if any(char.isalpha() for char in text):
        # The phone parser reads letters as keypad digits (091-CALL-NOW); an EHR's
        # number field with letters in it holds something else (a note, an extension).
        if policy.invalid_phone == "reject":
            raise _Rejected("mobileNumber", "contains letters, not a phone number")
        return None, "invalid"
    e164, problem = _classify_phone(text, policy.default_region)
    if problem is None:
        return e164, None
    if problem == "invalid":
        if policy.invalid_phone == "reject":
            raise _Rejected(
                "mobileNumber", f"not a valid number for region {policy.default_region}"
            )
        return None, "invalid"
    if policy.landline == "reject":
        raise _Rejected("mobileNumber", f"not a mobile number ({problem})")
    return None, "landline"


def _email(fields: RawFields) -> str | None:
    text = trim(fields.get("email"))
    if not text:
        return None
    value = text.lower()
    if not value.isascii() and _FORMAT.search(value):
        raise _Rejected("email", "contains invisible formatting characters (Unicode Cf)")
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise _Rejected("email", "not a valid address")
    return value


class _NotARealDate(Exception):
    """Internal: text in a date's shape naming a day the calendar does not have."""


def _parse_date(text: str, formats: tuple[str, ...]) -> date | None:
    """The date `text` spells, None if it spells none; `_NotARealDate` when it has an
    accepted format's shape but no such day exists (30 February, month 13)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        if _ISO_DATE_SHAPE.fullmatch(text):
            raise _NotARealDate from None
    try:
        # An ISO datetime at midnight (as Voxares itself returns dates, or a DATETIME column).
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return moment.date() if moment.time() == datetime.min.time() else None
    impossible = False
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError as exc:
            # strptime checks the calendar only after the text matched the format.
            impossible = impossible or "out of range" in str(exc)
    if impossible:
        raise _NotARealDate
    return None


def _date_of_birth(fields: RawFields, policy: NormalizePolicy, today: date) -> str | None:
    text = trim(fields.get("dateOfBirth"))
    if not text:
        return None
    try:
        born = _parse_date(text, policy.date_formats)
    except _NotARealDate:
        raise _Rejected("dateOfBirth", "not a real date (no such day in the calendar)") from None
    if born is None:
        accepted = ", ".join(("ISO 8601", *policy.date_formats))
        raise _Rejected("dateOfBirth", f"not a date in an accepted format ({accepted})")
    if born > today:
        raise _Rejected("dateOfBirth", "in the future")
    if born < EARLIEST_BIRTH_DATE:
        raise _Rejected("dateOfBirth", "before 1900")
    return born.isoformat()


def normalize_row(
    row: SourceRow, policy: NormalizePolicy, *, today: date | None = None
) -> NormalizedPatient | Rejection:
    """Validate and normalise one source row; the first broken rule rejects it.

    `today` (default: the local date) bounds birth dates; tests pass a fixed one.
    """
    if row.problem is not None:
        return Rejection(row.problem_field, row.problem)
    fields = row.fields
    try:
        provider_id = _provider_id(fields)
        first_name = _name(fields, "firstName")
        last_name = _name(fields, "lastName")
        mobile, dropped_phone = _mobile(fields, policy)
        email = _email(fields)
        born = _date_of_birth(fields, policy, today or date.today())
    except _Rejected as rejected:
        return rejected.rejection
    return NormalizedPatient(
        provider_id,
        first_name,
        last_name,
        mobile,
        email,
        born,
        ("mobileNumber",) if dropped_phone else (),
        dropped_phone,
    )
