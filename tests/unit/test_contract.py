"""The wire-format helpers of the contract module."""

from datetime import UTC, datetime, timedelta, timezone

from syncd.voxares.contract import format_timestamp, parse_timestamp


def test_format_timestamp_is_utc_with_milliseconds() -> None:
    """A local time is rendered in UTC with exactly three fractional digits and Z."""
    moment = datetime(2025, 5, 20, 11, 15, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2025-05-20T09:15:00.123Z"


def test_parse_timestamp_round_trips() -> None:
    """Parsing a formatted timestamp gives back the same instant to the millisecond."""
    text = "2025-05-20T09:15:00.000Z"
    assert parse_timestamp(text) == datetime(2025, 5, 20, 9, 15, tzinfo=UTC)
    assert format_timestamp(parse_timestamp(text)) == text
