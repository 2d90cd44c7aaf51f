"""Reading FHIR search answers (pure): a `Bundle` page, an `OperationOutcome`, a clock.

A search page is a `Bundle` of type `searchset`: its `match` entries are the resources, an
`outcome` entry an `OperationOutcome` about the search itself, its `next` link the next
page, to be followed exactly as given (servers put opaque state in it). Its
`meta.lastUpdated` is the server's clock when it ran the search. Errors come back as an
`OperationOutcome` with a 4xx/5xx status; `outcome_summary` turns one into one line for the
operator (severity, code and the server's diagnostics, which describe the request, never a
patient: the request carries no patient data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

# The longest piece of server text an error message quotes.
_DIAGNOSTICS_MAX: Final = 200
_FAILING: Final = frozenset({"error", "fatal"})


class NotABundle(ValueError):
    """The answer is not a searchset `Bundle` (the message says what it is instead)."""


@dataclass(slots=True)
class Page:
    """One search page: its resources, its `next` link, the server's clock, its warnings."""

    resources: list[Mapping[str, Any]] = field(default_factory=list)
    next_url: str | None = None
    server_time: datetime | None = None
    # `Bundle.total`, when the server gives it: how many resources match the whole search.
    total: int | None = None
    # An OperationOutcome entry with severity error/fatal (the search failed), summarised.
    error: str | None = None
    warnings: int = 0


def parse_instant(value: Any) -> datetime | None:
    """A FHIR `instant` (or dateTime with a time zone) as an aware datetime, else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


def outcome_summary(body: Any) -> str | None:
    """One line for an `OperationOutcome`: each issue's severity, code and diagnostics."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return None
    parts = []
    issues = body.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, Mapping):
            continue
        text = issue.get("diagnostics")
        details = issue.get("details")
        if not isinstance(text, str) and isinstance(details, Mapping):
            text = details.get("text")
        part = f"{issue.get('severity', '?')} {issue.get('code', '?')}"
        if isinstance(text, str) and text.strip():
            part += f": {_short(text)}"
        parts.append(part)
    return "OperationOutcome " + ("; ".join(parts) if parts else "without issues")


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _DIAGNOSTICS_MAX else flat[: _DIAGNOSTICS_MAX - 1] + "…"


def parse_page(body: Any) -> Page:
    """The parts of a searchset `Bundle` a read needs; `NotABundle` if it is not one."""
    if not isinstance(body, Mapping):
        raise NotABundle("not a JSON object")
    kind = body.get("resourceType")
    if kind != "Bundle":
        raise NotABundle(
            f"a {kind} instead of a Bundle" if isinstance(kind, str) else "no resourceType"
        )
    if body.get("type") != "searchset":
        raise NotABundle("a Bundle that is not a searchset")
    page = Page()
    total = body.get("total")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        page.total = total
    meta = body.get("meta")
    if isinstance(meta, Mapping):
        page.server_time = parse_instant(meta.get("lastUpdated"))
    links = body.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            page.next_url = url if isinstance(url, str) and url else None
    entries = body.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, Mapping) else None
        if mode == "outcome" or resource.get("resourceType") == "OperationOutcome":
            issues = resource.get("issue")
            severities = {
                i.get("severity")
                for i in (issues if isinstance(issues, list) else [])
                if isinstance(i, Mapping)
            }
            if severities & _FAILING:
                page.error = outcome_summary(resource)
            else:
                page.warnings += 1
        elif mode in (None, "match"):
            page.resources.append(resource)
        # mode "include": another resource a search pulled in; not a patient of the source.
    return page


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` is on the base URL's scheme, host and port (credentials go nowhere else)."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)
