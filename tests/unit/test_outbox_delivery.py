"""The delivery job's pure parts: outcome -> decision, envelope rendering, construction checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.outbox.backoff import BackoffPolicy
from syncd.outbox.claims import ClaimedDelivery
from syncd.outbox.delivery import OutboxDeliveryJob, decide, envelope_for
from syncd.outbox.recording import Again, Dead, Done, Release
from syncd.outbox.routing import Route
from syncd.sinks.base import DeadLetter, Delivered, DisableSink, Retry

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = BackoffPolicy(initial_seconds=10, max_seconds=60)


def _claimed(attempts: int = 0, payload: Any = None, **kw: Any) -> ClaimedDelivery:
    options: dict[str, Any] = {
        "seq": 7,
        "event_id": "evt-7",
        "event_type": "message.sent",
        "event_created_at": NOW - timedelta(minutes=1),
        "attempts": attempts,
        "queued_at": NOW - timedelta(minutes=1),
        "payload": json.dumps({"n": 1} if payload is None else payload),
    }
    options.update(kw)
    return ClaimedDelivery(**options)


def _decide(outcome: Any, attempts: int = 0, **kw: Any) -> Any:
    return decide(
        _claimed(attempts, **kw),
        outcome,
        now=NOW,
        max_attempts=3,
        max_age=timedelta(hours=1),
        policy=POLICY,
        rand=lambda: 1.0,
    )


def test_delivered_is_done_counting_this_attempt() -> None:
    """Delivered becomes Done with the attempt counted."""
    assert _decide(Delivered(), attempts=1) == Done(7, "evt-7", 2)


def test_retry_is_rescheduled_by_backoff_or_retry_after() -> None:
    """Retry waits the larger of the backoff and the receiver's Retry-After."""
    assert _decide(Retry("HTTP 503")) == Again(7, 1, NOW + timedelta(seconds=10), "HTTP 503")
    assert _decide(Retry("HTTP 429", 45.0)) == Again(7, 1, NOW + timedelta(seconds=45), "HTTP 429")


def test_retry_gives_up_at_max_attempts_or_max_age() -> None:
    """The last allowed attempt, or an old enough delivery, becomes Dead with the reason."""
    assert _decide(Retry("HTTP 500"), attempts=2) == Dead(
        7, "evt-7", 3, "HTTP 500; gave up after 3 attempts"
    )
    old = _decide(Retry("ReadTimeout"), queued_at=NOW - timedelta(hours=1))
    assert old == Dead(7, "evt-7", 1, "ReadTimeout; gave up after 1 attempts in 1 hours")


def test_dead_letter_is_dead_at_once() -> None:
    """DeadLetter is Dead whatever the attempt count."""
    assert _decide(DeadLetter("HTTP 400 after 1 attempts")) == Dead(
        7, "evt-7", 1, "HTTP 400 after 1 attempts"
    )


def test_disable_sink_releases_without_counting_an_attempt() -> None:
    """DisableSink leaves the delivery pending: released, the attempt not counted."""
    assert _decide(DisableSink("HTTP 410 Gone"), attempts=1) == Release(
        7, "sink disabled: HTTP 410 Gone"
    )


def test_envelope_carries_the_event_and_the_rendered_payload() -> None:
    """The envelope has the event's id, type, time and the route's rendering of the payload."""
    envelope = envelope_for(Route("s"), _claimed())
    assert (envelope.event_id, envelope.event_type) == ("evt-7", "message.sent")
    assert envelope.created_at == NOW - timedelta(minutes=1)
    assert envelope.payload == {"n": 1}


@pytest.mark.parametrize("payload", [[1, 2], "text"])
def test_envelope_refuses_a_payload_that_is_not_an_object(payload: Any) -> None:
    """A stored payload that is not a JSON object cannot become an envelope."""
    with pytest.raises(TypeError):
        envelope_for(Route("s"), _claimed(payload=payload))


def test_envelope_refuses_what_fhir_cannot_express() -> None:
    """A fhir sink's submission without a valid status raises ValueError (dead-lettered)."""
    claimed = _claimed(event_type="form_submission.updated", payload={"submission": {"id": "x"}})
    with pytest.raises(ValueError, match="submission"):
        envelope_for(Route("s", format="fhir"), claimed)


class _NoSink:
    name = "s"

    async def deliver(
        self, events: Any, *, attempts: Any = None, answered: Any = None
    ) -> list[Any]:
        return []

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("routes", "kwargs", "match"),
    [
        ({"other": Route("other")}, {}, "same sinks"),
        ({"s": Route("s")}, {"batch_size": 0}, "positive"),
        ({"s": Route("s")}, {"lease_seconds": 10, "deliver_timeout_seconds": 10}, "below"),
    ],
)
def test_job_rejects_inconsistent_settings(
    routes: dict[str, Route], kwargs: dict[str, Any], match: str
) -> None:
    """Sinks without routes, a zero batch, or a sink timeout outliving the lease are refused."""
    with pytest.raises(ValueError, match=match):
        OutboxDeliveryJob(None, {"s": _NoSink()}, routes, **kwargs)  # type: ignore[arg-type]
