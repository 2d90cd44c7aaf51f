"""SMS segment counting and template rendering of the sandbox."""

import pytest

from syncd.sandbox.sms import is_gsm7, render, segment_count


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_segments_are_160_single_then_153_per_part(length: int, segments: int) -> None:
    """Plain GSM-7 text is one SMS up to 160 characters, then 153 per part."""
    assert segment_count("a" * length) == segments


def test_gsm7_extended_characters_take_two_septets() -> None:
    """Characters of the extension table (e.g. €, {) count twice toward the limits."""
    assert is_gsm7("€{}[]~^|\\")
    assert segment_count("€" * 80) == 1
    assert segment_count("€" * 81) == 2
    assert segment_count("a" * 159 + "€") == 2


def test_gsm7_extended_character_is_not_split_across_parts() -> None:
    """An escape pair that would straddle a part boundary moves to the next part."""
    # 152 + 2 septets would be 154 > 153: the € opens part 2, which then overflows by one b.
    text = "a" * 152 + "€" + "b" * 152
    assert segment_count(text) == 3
    assert segment_count("a" * 151 + "€" + "b" * 153) == 2


@pytest.mark.parametrize(("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_segments_are_70_single_then_67_per_part(length: int, segments: int) -> None:
    """Any character outside GSM-7 makes the text UCS-2: 70 single, 67 per part."""
    text = "ć" + "a" * (length - 1)
    assert not is_gsm7(text)
    assert segment_count(text) == segments


def test_ucs2_counts_astral_characters_as_two_units_without_splitting() -> None:
    """An emoji is a surrogate pair: two UTF-16 units, never split across parts."""
    assert segment_count("😀" * 35) == 1
    assert segment_count("😀" * 36) == 2
    assert segment_count("a" * 66 + "😀" + "a" * 66) == 3


def test_render_fills_known_variables_and_keeps_unknown_ones() -> None:
    """{{firstName}} and {{ lastName }} are filled; an unknown variable stays as written."""
    text = render(
        "Hi {{firstName}} {{ lastName }}, see {{formLink}}",
        {"firstName": "Ana", "lastName": "Horvat"},
    )
    assert text == "Hi Ana Horvat, see {{formLink}}"
