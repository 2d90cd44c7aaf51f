"""HL7 v2 decoding, header reading, ACKs (pure) and the mapping of ADT messages to rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.hl7.files import split_messages
from syncd.hl7.mapping import Hl7Mapping, Merge, PatientData, birth_date, map_message
from syncd.hl7.message import MessageRejected, ack, decode, parse_timestamp
from syncd.hl7.mllp import ack_code, peer_allowed
from tests.hl7_messages import EXAMPLE_A01, EXAMPLE_A40, adt


def test_header_of_the_published_example() -> None:
    """MSH of HL7's ADT^A01 example: sender, control id, type, event, time."""
    header = decode(EXAMPLE_A01).header
    assert header.sender == "ADT1^GOOD HEALTH HOSPITAL"
    assert header.control_id == "MSG00001"
    assert (header.message_type, header.trigger_event) == ("ADT", "A01")
    assert header.sent_at == datetime(1988, 8, 18, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"PID|1||X", "AR", "no MSH"),
        (b"MSH|^~\\&|A|B|||2026||ADT^A08||P|2.5", "AR", "MSH-10"),
        (b"MSH|^~\\&|A|B|||2026|||c1|P|2.5", "AR", "MSH-9"),
        (b"MSH|^~\\&|A|B|||2026||ADT^A08|c1|P|2.5||||||KOI8", "AE", "MSH-18"),
        (b"MSH|^~\\&|A|B|||2026||ADT^A08|c1|P|2.5\rPID|||\xff\xfe", "AE", "character set"),
    ],
)
def test_unusable_messages_are_refused_with_a_reason(raw: bytes, code: str, words: str) -> None:
    """Each broken message gets its ACK code and a reason naming what is wrong."""
    with pytest.raises(MessageRejected) as caught:
        decode(raw)
    assert caught.value.code == code
    assert words in caught.value.reason


def test_charset_from_msh18() -> None:
    """MSH-18 8859/2 decodes Latin-2 bytes (š is 0xB9 there)."""
    raw = adt("c1", "P1", family="Ša", charset="8859/2").encode("iso8859-2")
    mapped = map_message(decode(raw), Hl7Mapping())
    (action,) = mapped.actions
    assert isinstance(action, PatientData)
    assert action.row.fields["lastName"] == "Ša"


def test_ack_echoes_control_id_and_escapes_the_reason() -> None:
    """The ACK swaps sender and receiver, names the control id, escapes delimiters."""
    raw = adt("abc-1", "P1").encode()
    answer = ack(raw, "AE", reason="bad | thing", now=datetime(2026, 1, 1, tzinfo=UTC))
    text = answer.decode()
    msh, msa = text.strip("\r").split("\r")
    assert msh.split("|")[2:6] == ["SYNCD", "VOXARES", "EHR", "CLINIC"]
    assert msa == "MSA|AE|abc-1|bad \\F\\ thing"
    assert ack_code(answer) == "AE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
        ("202612041230+0100", datetime(2026, 12, 4, 11, 30, tzinfo=UTC)),
        ("20261204123045.1234", datetime(2026, 12, 4, 12, 30, 45, tzinfo=UTC)),
        ("2026130", None),
        ("", None),
    ],
)
def test_parse_timestamp(text: str, expected: datetime | None) -> None:
    """HL7 DTM at any precision, with an offset; junk is None."""
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("text", "iso", "problem"),
    [
        ("19610615", "1961-06-15", None),
        ("196106151230", "1961-06-15", None),
        ("196106", None, "no day"),
        ("1961", None, "no day"),
        ("", None, None),
        ("15.06.1961", None, "not an HL7 date"),
    ],
)
def test_birth_date_precision(text: str, iso: str | None, problem: str | None) -> None:
    """PID-7 needs a day; less is a problem naming dateOfBirth, never the value."""
    got, why = birth_date(text)
    assert got == iso
    assert (why is None) == (problem is None)
    if problem is not None:
        assert why is not None
        assert problem in why
        assert text not in why


def test_mapping_of_the_published_example() -> None:
    """Adam Everyman: the MR identifier, the first name (no type code), his birth date."""
    (action,) = map_message(decode(EXAMPLE_A01), Hl7Mapping()).actions
    assert isinstance(action, PatientData)
    assert dict(action.row.fields) == {
        "providerId": "PATID1234",
        "firstName": "ADAM",
        "lastName": "EVERYMAN",
        "mobileNumber": None,
        "email": None,
        "dateOfBirth": "1961-06-15",
    }


def test_identifier_by_authority_and_type() -> None:
    """The mapping picks the PID-3 repetition by assigning authority and type code."""
    ssn = Hl7Mapping(identifier_authority="USSSA", identifier_type="SS")
    (action,) = map_message(decode(EXAMPLE_A01), ssn).actions
    assert isinstance(action, PatientData)
    assert action.row.fields["providerId"] == "123456789"
    none = Hl7Mapping(identifier_type="PI")
    (action,) = map_message(decode(EXAMPLE_A01), none).actions
    assert isinstance(action, PatientData)
    assert action.row.problem_field == "providerId"
    assert "PATID1234" not in (action.row.problem or "")


def test_legal_name_and_contacts_by_code() -> None:
    """PID-5 by name type L; PID-13 CP is the mobile, NET the email, PRN PH is not."""
    text = (
        "MSH|^~\\&|E|C|||2026||ADT^A08|c1|P|2.5.1\r"
        "PID|1||P1^^^C^MR||Nick^Alias^^^^^A~Legal^Name^^^^^L||20000101||||||"
        "^PRN^PH^^^^^^^^^+38512345678~^PRN^CP^^385^91^2345678~^NET^X.400^a\\T\\b@example.com"
    )
    (action,) = map_message(decode(text.encode()), Hl7Mapping()).actions
    assert isinstance(action, PatientData)
    fields = action.row.fields
    assert (fields["firstName"], fields["lastName"]) == ("Name", "Legal")
    assert fields["mobileNumber"] == "+385912345678"
    assert fields["email"] == "a&b@example.com"


def test_merge_example() -> None:
    """A40: the surviving patient from PID, the merged id from MRG-1."""
    (action,) = map_message(decode(EXAMPLE_A40), Hl7Mapping()).actions
    assert isinstance(action, Merge)
    assert action.surviving.fields["providerId"] == "MR1"
    assert action.merged_id == "MR2"


@pytest.mark.parametrize(
    ("message", "ignored"),
    [
        ("MSH|^~\\&|L|C|||2026||ORU^R01|c1|P|2.5\rPID|1||P1^^^C^MR||A^B", "ORU"),
        ("MSH|^~\\&|L|C|||2026||ADT^A03|c1|P|2.5\rPID|1||P1^^^C^MR||A^B", "A03"),
        ("MSH|^~\\&|L|C|||2026||ADT^A08|c1|P|2.5\rEVN|A08", "without"),
    ],
)
def test_other_messages_are_ignored_with_a_reason(message: str, ignored: str) -> None:
    """Messages the feed does not apply say why (their type), and carry no actions."""
    mapped = map_message(decode(message.encode()), Hl7Mapping())
    assert mapped.actions == ()
    assert mapped.ignored is not None
    assert ignored in mapped.ignored.reason


def test_event_from_evn_when_msh9_has_none() -> None:
    """An old sender with MSH-9 = ADT only: the event comes from EVN-1."""
    text = "MSH|^~\\&|E|C|||2026||ADT|c1|P|2.3\rEVN|A04\rPID|1||P1^^^C^MR||A^B"
    (action,) = map_message(decode(text.encode()), Hl7Mapping()).actions
    assert isinstance(action, PatientData)


def test_split_messages_drops_batch_envelopes() -> None:
    """FHS/BHS/BTS/FTS are dropped; each MSH starts a message; LF and CRLF both work."""
    data = (
        b"FHS|^~\\&\r\nBHS|^~\\&\r\n"
        + adt("a", "P1").replace("\r", "\r\n").encode()
        + adt("b", "P2").replace("\r", "\n").encode()
        + b"BTS|2\nFTS|1\n"
    )
    messages = list(split_messages(data))
    assert [decode(m).header.control_id for m in messages] == ["a", "b"]


def test_peer_allowed() -> None:
    """Allowed networks by CIDR; IPv4-mapped IPv6 counts as IPv4; empty allows all."""
    import ipaddress

    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert peer_allowed("10.1.2.3", nets)
    assert peer_allowed("::ffff:10.1.2.3", nets)
    assert not peer_allowed("192.168.1.1", nets)
    assert not peer_allowed("not-an-ip", nets)
    assert peer_allowed("192.168.1.1", [])


# --- generated messages -----------------------------------------------------------------

# Delimiter sets senders use: the standard one and rarer but legal ones.
_DELIMITERS = st.sampled_from(["|^~\\&", "#^~\\&", "|:~\\&", "|^!\\&", "|^~/&", "|^~\\*"])
_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x24F, exclude_characters="\x7f"),
    min_size=1,
    max_size=20,
).filter(lambda v: v.strip() == v and v != '""')


def _escape(value: str, delims: str) -> str:
    field, comp, rep, esc, sub = delims
    out = value.replace(esc, f"{esc}E{esc}")
    for char, code in ((field, "F"), (comp, "S"), (rep, "R"), (sub, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out


@settings(max_examples=150, deadline=None)
@given(
    delims=_DELIMITERS,
    family=_VALUE,
    given_name=_VALUE,
    ident=_VALUE,
    charset=st.sampled_from(["", "UNICODE UTF-8", "8859/2"]),
)
def test_generated_pid_round_trips_through_escapes(
    delims: str, family: str, given_name: str, ident: str, charset: str
) -> None:
    """Any name and id, escaped under any delimiter set and encoded in any declared charset,
    maps back to exactly the value sent."""
    codec = {"": "utf-8", "UNICODE UTF-8": "utf-8", "8859/2": "iso8859-2"}[charset]
    try:
        for value in (family, given_name, ident):
            value.encode(codec)
    except UnicodeEncodeError:
        return  # not representable in that charset: nothing to send
    f, c = delims[0], delims[1]
    enc = delims[1:]
    msh18 = f"{f * 6}{charset}" if charset else ""
    text = (
        f"MSH{f}{enc}{f}E{f}C{f}{f}{f}2026{f}{f}ADT{c}A08{f}ctl{f}P{f}2.5.1{msh18}\r"
        f"PID{f}1{f}{f}{_escape(ident, delims)}{c}{c}{c}CL{c}MR{f}{f}"
        f"{_escape(family, delims)}{c}{_escape(given_name, delims)}{f}{f}19700101"
    )
    (action,) = map_message(decode(text.encode(codec)), Hl7Mapping()).actions
    assert isinstance(action, PatientData)
    fields = action.row.fields
    assert fields["providerId"] == ident
    assert fields["lastName"] == family
    assert fields["firstName"] == given_name
