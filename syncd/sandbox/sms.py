"""SMS text: template rendering and segment counting (GSM-7 or UCS-2), pure functions.

Segment rules (3GPP TS 23.038 / 23.040): a text made only of GSM-7 characters is one segment up
to 160 septets, otherwise 153 septets per part; characters of the extension table (`^{}\\[~]|€`
and form feed) take two septets and are never split across parts. Any other character makes the
whole text UCS-2: 70 UTF-16 code units in one segment, otherwise 67 per part, never splitting a
surrogate pair.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def is_gsm7(text: str) -> bool:
    """Whether every character of `text` is in the GSM-7 basic or extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def _pack(units: Iterable[int], single: int, part: int) -> int:
    """Segments needed for characters of the given unit widths, never splitting one."""
    widths = list(units)
    if sum(widths) <= single:
        return 1
    segments, used = 1, 0
    for width in widths:
        if used + width > part:
            segments += 1
            used = 0
        used += width
    return segments


def segment_count(text: str) -> int:
    """The number of SMS segments `text` is sent as (at least 1)."""
    if is_gsm7(text):
        return _pack((2 if ch in GSM7_EXTENDED else 1 for ch in text), GSM7_SINGLE, GSM7_PART)
    return _pack((2 if ord(ch) > 0xFFFF else 1 for ch in text), UCS2_SINGLE, UCS2_PART)


def render(template: str, variables: Mapping[str, str]) -> str:
    """Fill `{{name}}` variables from `variables`; unknown variables stay as written."""

    def fill(match: re.Match[str]) -> str:
        return variables.get(match.group(1), match.group(0))

    return _VARIABLE.sub(fill, template)
