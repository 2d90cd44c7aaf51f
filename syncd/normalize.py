"""Raw source row -> a patient body the Voxares contract accepts, or a field-named rejection.

Pure: no I/O, no logging; the caller decides what to do with a rejection (quarantine it).
A rejection's reason names the field and the rule, never the value, because reasons are
stored and shown to operators. The rules follow `docs/voxares-api.md` (POST /patients):
providerId, firstName and lastName required; mobileNumber E.164; dateOfBirth an ISO date.

First syncs normalise every row (100,000 is usual), so regexes are compiled once and phone
parsing, the costly step, is memoised: families often share one number.
"""

from __future__ import annotations

import re
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


def _provider_id(fields: RawFields) -> str:
    text = (fields.get("providerId") or "").strip()
    if not text:
        raise _Rejected("providerId", "required")
    if len(text) > MAX_PROVIDER_ID_LENGTH:
        raise _Rejected("providerId", f"longer than {MAX_PROVIDER_ID_LENGTH} characters")
    if _CONTROL.search(text):
        raise _Rejected("providerId", "contains control characters")
    return text


def _name(fields: RawFields, field: str) -> str:
    """NFC, whitespace runs (tabs and newlines included) collapsed to one space, trimmed."""
    text = fields.get(field)
    value = " ".join(unicodedata.normalize("NFC", text).split()) if text else ""
    if not value:
        raise _Rejected(field, "required")
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


def _mobile(fields: RawFields, policy: NormalizePolicy) -> tuple[str | None, bool]:
    """(E.164 or None, whether a present value was dropped by policy)."""
    text = (fields.get("mobileNumber") or "").strip()
    if not text:
        return None, False
    e164, problem = _classify_phone(text, policy.default_region)
    if problem is None:
        return e164, False
    if problem == "invalid":
        if policy.invalid_phone == "reject":
            raise _Rejected(
                "mobileNumber", f"not a valid number for region {policy.default_region}"
            )
    elif policy.landline == "reject":
        raise _Rejected("mobileNumber", f"not a mobile number ({problem})")
    return None, True


def _email(fields: RawFields) -> str | None:
    text = (fields.get("email") or "").strip()
    if not text:
        return None
    value = text.lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise _Rejected("email", "not a valid address")
    return value


def _parse_date(text: str, formats: tuple[str, ...]) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        # An ISO datetime at midnight (as Voxares itself returns dates, or a DATETIME column).
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return moment.date() if moment.time() == datetime.min.time() else None
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _date_of_birth(fields: RawFields, policy: NormalizePolicy, today: date) -> str | None:
    text = (fields.get("dateOfBirth") or "").strip()
    if not text:
        return None
    born = _parse_date(text, policy.date_formats)
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
        mobile, mobile_dropped = _mobile(fields, policy)
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
        ("mobileNumber",) if mobile_dropped else (),
    )
