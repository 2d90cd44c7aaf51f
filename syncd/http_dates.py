"""The HTTP `Date` header, read once for every client (Voxares, FHIR sources)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


# The `Date` of consecutive responses repeats within each second: parsing it (email.utils)
# was ~1 % of a call's CPU. The result is an immutable datetime, so sharing it is safe.
@functools.lru_cache(maxsize=8)
def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP `Date` header as an aware UTC datetime; None when absent, unreadable, or
    without a zone (not trusted)."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC)
