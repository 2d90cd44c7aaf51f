"""The port every downstream sink implements, and the values that cross it.

A sink takes a batch of outbox events and answers one `DeliveryOutcome` per event, in the
same order; it also reports each event's outcome the moment it is known (`answered`), so a
caller that cuts a slow batch off still knows which events were taken and retries only the
others. It never raises for a failure of one event (a refused request, a full disk, a
lost connection): that is an outcome, and the delivery job decides what to do with it. The
sink knows nothing of the state database; attempt counting lives with the caller.

Reasons in outcomes name status codes and exception classes, never payload content, because
they are stored in `outbox_deliveries.last_error` and logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias

from syncd.voxares.contract import format_timestamp


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One outbox event as every sink sees it.

    `created_at` is when the event was recorded; a naive value is read as UTC (SQLite hands
    timezone-aware columns back naive). The payload may hold patient data, so it is kept
    out of the repr.
    """

    event_id: str
    event_type: str
    created_at: datetime
    payload: Mapping[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The wire form shared by all sinks: `{"id", "type", "createdAt", "data"}`."""
        moment = self.created_at
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return {
            "id": self.event_id,
            "type": self.event_type,
            "createdAt": format_timestamp(moment),
            "data": dict(self.payload),
        }


@dataclass(frozen=True, slots=True)
class Delivered:
    """The sink has durably taken the event (2xx, fsync done, broker confirm)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """The event was not taken this time; try again later.

    `after_seconds` is the receiver's own wish (e.g. `Retry-After`), or None to let the
    caller's backoff decide.
    """

    reason: str
    after_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The event will never be taken by this sink as it is; stop trying it."""

    reason: str


@dataclass(frozen=True, slots=True)
class DisableSink:
    """The sink's destination is gone for good (e.g. webhook 410): stop the whole sink."""

    reason: str


DeliveryOutcome: TypeAlias = Delivered | Retry | DeadLetter | DisableSink
# Called with (position in the batch, outcome) as soon as that event's outcome is known.
Answered: TypeAlias = Callable[[int, DeliveryOutcome], None]


class Sink(Protocol):
    """A downstream destination for outbox events."""

    @property
    def name(self) -> str:
        """The sink's configured name (the `sink` column of `outbox_deliveries`)."""
        ...

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        """Deliver a batch; answer one outcome per event, same order and length.

        `attempts[i]` is which try this is for `events[i]` at this sink, counting from 1
        (previous attempts + 1); None means every event is on its first try. Sinks whose
        decisions do not depend on it ignore it. `answered(i, outcome)`, when given, is
        called once per event as soon as its outcome is known (a webhook's answer, a
        broker's confirm, the fsync), before `deliver` returns: the caller keeps those
        outcomes even if it cuts the call off afterwards. Raises only for misuse (e.g.
        lengths that differ), never for a failed delivery.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files; the sink is not used afterwards."""
        ...


def encode_event(envelope: EventEnvelope) -> str:
    """The compact JSON text of `envelope.to_json()`, identical for every sink.

    Raises TypeError or ValueError when the payload is not JSON (e.g. NaN, a datetime);
    sinks turn that into a `DeadLetter`, since retrying cannot fix it.
    """
    return json.dumps(
        envelope.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def outcome_counts(outcomes: Sequence[DeliveryOutcome]) -> dict[str, int]:
    """Counts by outcome kind, for one `sink.batch` log line (ids and counts only)."""
    counts = {"delivered": 0, "retry": 0, "dead_letter": 0, "disable_sink": 0}
    for outcome in outcomes:
        match outcome:
            case Delivered():
                counts["delivered"] += 1
            case Retry():
                counts["retry"] += 1
            case DeadLetter():
                counts["dead_letter"] += 1
            case DisableSink():
                counts["disable_sink"] += 1
    return counts


def tell(answered: Answered | None, position: int, outcome: DeliveryOutcome) -> DeliveryOutcome:
    """Report `outcome` of the event at `position` to the caller's `answered`, if any;
    returns the outcome."""
    if answered is not None:
        answered(position, outcome)
    return outcome


def attempts_for(events: Sequence[EventEnvelope], attempts: Sequence[int] | None) -> list[int]:
    """The per-event attempt numbers, defaulting to 1; rejects a length mismatch."""
    if attempts is None:
        return [1] * len(events)
    if len(attempts) != len(events):
        raise ValueError(f"{len(attempts)} attempt numbers for {len(events)} events")
    return list(attempts)
