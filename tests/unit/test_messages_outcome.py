"""What a send's answer means for its request (pure): at most once, never guessing."""

from __future__ import annotations

import pytest

from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    SendOutcomeUnknown,
    ServerError,
    Unauthorized,
    VoxaresHTTPError,
    VoxaresMalformedResponse,
    VoxaresTransportError,
)
from syncd.messages.outcome import classify_failure, describe, sent
from syncd.voxares.models import Message

WHERE = {"method": "POST", "path": "/messages/send"}


@pytest.mark.parametrize(
    "error",
    [
        Invalid(status=400, **WHERE),
        Invalid(status=422, **WHERE),
        NotFound(status=404, **WHERE),
        Conflict(status=409, **WHERE),
        Unauthorized(status=401, **WHERE),
        Forbidden(status=403, **WHERE),
    ],
    ids=["400", "422", "404", "409", "401", "403"],
)
def test_provable_rejections_fail_the_request(error: Exception) -> None:
    """400/401/403/404/409/422: Voxares refused it, nothing was sent: `failed`."""
    outcome = classify_failure(error)
    assert (outcome.kind, outcome.state) == ("failed", "failed")
    assert outcome.error is not None
    assert f"status={error.status}" in outcome.error  # type: ignore[attr-defined]
    assert outcome.stop_run == isinstance(error, Unauthorized | Forbidden)


@pytest.mark.parametrize(
    "error",
    [
        RateLimited(status=429, **WHERE),
        VoxaresTransportError(reached_server=False, **WHERE),
    ],
    ids=["429", "connect refused"],
)
def test_requests_that_never_arrived_go_back_to_pending(error: Exception) -> None:
    """429 and a refused connect prove nothing arrived: pending again, for the next run."""
    outcome = classify_failure(error)
    assert (outcome.kind, outcome.state, outcome.stop_run) == ("not_sent", "pending", False)


@pytest.mark.parametrize(
    "error",
    [
        SendOutcomeUnknown(**WHERE),
        VoxaresTransportError(reached_server=True, **WHERE),
        ServerError(status=502, **WHERE),
        VoxaresMalformedResponse(status=201, **WHERE),
        VoxaresHTTPError(status=418, **WHERE),
        RuntimeError("a bug with Ana Horvat in its text"),
    ],
    ids=["outcome unknown", "read timeout", "5xx", "malformed", "odd status", "bug"],
)
def test_anything_else_is_unknown(error: Exception) -> None:
    """Whatever may have reached Voxares is `unknown` (never resent automatically)."""
    outcome = classify_failure(error)
    assert (outcome.kind, outcome.state) == ("unknown", "unknown")
    assert outcome.message_id is None


def test_foreign_errors_are_described_by_class_only() -> None:
    """An exception that is not ours may quote data: only its class name is kept."""
    assert describe(RuntimeError("Ana Horvat +385991234567")) == "RuntimeError"
    assert describe(Invalid(status=400, api_message="bad", **WHERE)).startswith("Invalid: ")


def test_an_answer_is_sent_with_its_id_and_status() -> None:
    """A parsed answer: `sent`, with Voxares' message id and delivery status."""
    outcome = sent(Message(message_id="m-1", status="Pending"))
    assert (outcome.state, outcome.message_id, outcome.delivery_status) == (
        "sent",
        "m-1",
        "Pending",
    )
    assert outcome.error is None
