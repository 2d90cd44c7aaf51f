"""Which events go to which sink, and in what shape (pure, no I/O).

Each sink subscribes to event types by glob patterns (`events = ["form_submission.*"]`,
matched case-sensitively with `fnmatch`, where `*` also spans dots). A sink's `format` is
`json` (the payload as recorded) or `fhir`: a form-submission event's data then becomes the
FHIR R4 QuestionnaireResponse; other event types have no FHIR form and go out as recorded.

`start` says where a sink with no cursor yet begins: `now` (the default: only events
recorded from now on; `outbox replay --since` sends history on request) or `beginning`
(every event still in the outbox).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from syncd.formats.fhir import questionnaire_response

if TYPE_CHECKING:
    from syncd.config import OutboxSettings

Format = Literal["json", "fhir"]
Start = Literal["now", "beginning"]
FORMATS: Final = ("json", "fhir")
STARTS: Final = ("now", "beginning")
# Event types that have a FHIR form (a QuestionnaireResponse).
FORM_SUBMISSION_PREFIX: Final = "form_submission."


@dataclass(frozen=True, slots=True)
class Route:
    """One sink's subscription: the event types it takes and the format it wants."""

    sink: str
    patterns: tuple[str, ...] = ("*",)
    format: Format = "json"
    start: Start = "now"

    def __post_init__(self) -> None:
        if not self.patterns or any(not pattern for pattern in self.patterns):
            raise ValueError(f"sink {self.sink}: events needs at least one non-empty pattern")
        if self.format not in FORMATS:
            raise ValueError(f"sink {self.sink}: format must be one of {', '.join(FORMATS)}")
        if self.start not in STARTS:
            raise ValueError(f"sink {self.sink}: start must be one of {', '.join(STARTS)}")

    def subscribes(self, event_type: str) -> bool:
        """True when one of the sink's patterns matches `event_type`."""
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.patterns)

    def render(self, event_type: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """The envelope's `data` for this sink.

        Raises ValueError (naming a field, never a value) when a form submission cannot be
        expressed in FHIR; retrying cannot fix that, so the caller dead-letters it.
        """
        if self.format == "fhir" and event_type.startswith(FORM_SUBMISSION_PREFIX):
            return questionnaire_response(payload)
        return payload


def routes_from_settings(outbox: OutboxSettings) -> dict[str, Route]:
    """One route per configured sink (`[outbox.sinks.<name>]`: `events`, `format`)."""
    return {
        name: Route(sink=name, patterns=tuple(sink.events), format=sink.format, start=sink.start)
        for name, sink in outbox.sinks.items()
    }
