"""Pure: raw HL7 v2 bytes → a decoded message with its header, and the ACK to send back.

Character sets: MSH-18 names the message's character set. The header is read first
through Latin-1 (every byte maps to one character, and HL7 delimiters are ASCII), then the
whole message is decoded with the named set; with MSH-18 empty, the configured default.
A message whose bytes are not valid in its character set is refused (AE), never guessed.

Nothing here puts a field's value into a reason: reasons are stored and sent in ACKs.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final, Literal

import hl7

# MLLP frame content uses CR between segments; files often use LF or CRLF.
_SEGMENT_BREAK: Final = re.compile(r"\r\n|\n|\r")
# HL7 table 0211 (alternate character sets) → Python codec names.
_CHARSETS: Final = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}
MAX_CONTROL_ID: Final = 199  # MSH-10 is ST(199) in v2.7
MAX_REASON: Final = 200

AckCode = Literal["AA", "AE", "AR"]


class MessageRejected(Exception):
    """The message cannot be accepted: `code` (AE: content error, AR: refused) and a
    value-free `reason` for the ACK and the inbound row."""

    def __init__(self, code: AckCode, reason: str) -> None:
        super().__init__(reason)
        self.code: AckCode = code
        self.reason = reason[:MAX_REASON]


@dataclass(frozen=True, slots=True)
class Header:
    """What the receive path needs of MSH: who sent it, its id, type and time."""

    sender: str  # MSH-3^MSH-4 (sending application and facility)
    control_id: str  # MSH-10
    message_type: str  # MSH-9.1, e.g. ADT
    trigger_event: str  # MSH-9.2, e.g. A08
    sent_at: datetime | None  # MSH-7, UTC when it had an offset, else taken as UTC
    processing_id: str  # MSH-11 (P, T, D)
    version: str  # MSH-12


class Decoded:
    """A message decoded to text (segments separated by CR) and its header.

    `message` is the python-hl7 parse of the text, made only when asked for (the mapping
    needs it only to unescape a value that holds an escape sequence): the receive path
    reads MSH itself, and a full parse would be most of its CPU time.
    """

    __slots__ = ("__dict__", "header", "text")

    def __init__(self, text: str, header: Header) -> None:
        self.text = text
        self.header = header

    @cached_property
    def message(self) -> Any:
        """The parsed message (python-hl7 `Message`)."""
        try:
            return hl7.parse(self.text)
        except Exception as exc:  # python-hl7 raises several types on malformed text
            raise MessageRejected("AE", f"not parseable as HL7 v2 ({type(exc).__name__})") from None

    def __repr__(self) -> str:
        return f"Decoded(control_id={self.header.control_id!r})"


def codec_for(charset: str, default: str) -> str:
    """The Python codec for an MSH-18 value (first repetition), or `default` when empty."""
    name = charset.split("~", 1)[0].strip().upper()
    if not name:
        return default
    codec = _CHARSETS.get(name)
    if codec is None:
        raise MessageRejected("AE", "MSH-18: character set not supported")
    return codec


def _msh_fields(latin: str) -> list[str]:
    """MSH's fields by HL7 number (index 1 = MSH-1, the field separator)."""
    if not latin.startswith("MSH") or len(latin) < 8 or latin[3].isalnum():
        raise MessageRejected("AR", "no MSH segment at the start of the message")
    separator = latin[3]
    first = _SEGMENT_BREAK.split(latin, 1)[0]
    parts = first.split(separator)
    # parts[0] = "MSH", parts[1] = encoding characters (MSH-2); MSH-1 is the separator.
    return ["MSH", separator, *parts[1:]]


def decode(raw: bytes, *, default_charset: str = "utf-8") -> Decoded:
    """Decode and parse one message; raise `MessageRejected` when it cannot be used."""
    latin = raw.decode("latin-1").lstrip("\r\n")
    msh = _msh_fields(latin)
    codec = codec_for(msh[18] if len(msh) > 18 else "", default_charset)
    try:
        text = raw.decode(codec).lstrip("\r\n")
    except UnicodeDecodeError:
        raise MessageRejected("AE", f"bytes not valid in the character set ({codec})") from None
    text = "\r".join(s for s in _SEGMENT_BREAK.split(text) if s.strip())
    return Decoded(text, header_of(text))


def header_of(text: str) -> Header:
    """The `Header` of a decoded message (its first segment must be MSH)."""
    msh = _msh_fields(text)
    fields = [msh[i] if len(msh) > i else "" for i in range(20)]
    comp = fields[2][:1] or "^"
    control_id = fields[10].strip()
    if not control_id:
        raise MessageRejected("AR", "MSH-10: message control id is missing")
    if len(control_id) > MAX_CONTROL_ID:
        raise MessageRejected("AR", "MSH-10: message control id is too long")
    msg_type = fields[9].split(comp)
    if not msg_type[0].strip():
        raise MessageRejected("AR", "MSH-9: message type is missing")
    sender = f"{fields[3].split(comp)[0]}^{fields[4].split(comp)[0]}"[:128]
    return Header(
        sender=sender,
        control_id=control_id,
        message_type=msg_type[0].strip().upper(),
        trigger_event=(msg_type[1].strip().upper() if len(msg_type) > 1 else ""),
        sent_at=parse_timestamp(fields[7].split(comp)[0]),
        processing_id=fields[11].split(comp)[0],
        version=fields[12].split(comp)[0],
    )


_DTM: Final = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$"
)


def parse_timestamp(text: str) -> datetime | None:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]) as UTC; None if absent or bad.

    Missing parts take their lowest value; without an offset the time is taken as UTC
    (only its order against the same sender's other messages matters here).
    """
    match = _DTM.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        from datetime import timedelta

        moment -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return moment


def ack(
    raw: bytes,
    code: AckCode,
    *,
    reason: str | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK for `raw` (MSA-1 = `code`, MSA-2 = its control id, MSA-3 = `reason`).

    Built from the original MSH as far as it can be read (swapped sender and receiver,
    same version); a message too broken to read still gets an AR naming no id.
    """
    latin = raw.decode("latin-1").lstrip("\r\n")
    try:
        msh = _msh_fields(latin)
    except MessageRejected:
        msh = ["MSH", "|", "^~\\&"]
    sep = msh[1] if len(msh[1]) == 1 else "|"
    enc = msh[2] if len(msh) > 2 and 1 <= len(msh[2]) <= 5 else "^~\\&"

    def get(i: int) -> str:
        return msh[i] if len(msh) > i else ""

    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    original_id = control_id if control_id is not None else get(10)
    comp = enc[0]
    event = get(9).split(comp)[1] if comp in get(9) else ""
    ack_id = f"ACK{stamp}{original_id}"[:MAX_CONTROL_ID]
    fields = [
        "MSH",
        enc,
        get(5),
        get(6),
        get(3),
        get(4),
        stamp,
        "",
        f"ACK{comp}{event}{comp}ACK" if event else "ACK",
        ack_id,
        get(11) or "P",
        get(12) or "2.5.1",
    ]
    msa = ["MSA", code, original_id]
    if reason:
        msa.append(_escape(reason, sep, enc))
    return f"{sep.join(fields)}\r{sep.join(msa)}\r".encode("ascii", "replace")


def _escape(text: str, sep: str, enc: str) -> str:
    """Escape delimiters in free text (reasons are ours, but may name a separator)."""
    esc = enc[2] if len(enc) > 2 else "\\"
    out = text.replace(esc, f"{esc}E{esc}")
    codes = {sep: "F", enc[0]: "S"}
    if len(enc) > 1:
        codes[enc[1]] = "R"
    if len(enc) > 3:
        codes[enc[3]] = "T"
    for char, code in codes.items():
        out = out.replace(char, f"{esc}{code}{esc}")
    return out


def check_codec(name: str) -> str:
    """A configured default character set must be a known codec."""
    codecs.lookup(name)
    return name
