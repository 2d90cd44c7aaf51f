"""What the answer to one `POST /messages/send` means for its request: a pure decision.

The rule is at most once. Only two kinds of failure prove that no SMS went out: the API
refused the request (400/401/403/404/409/422: `failed`), or the request never reached it
(connect refused, 429 after the client's retries: back to `pending`). Everything else that
is not a parsed answer (`SendOutcomeUnknown`, any other status, anything unexpected) may
have sent an SMS, so the request becomes `unknown` and is never resent automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    SendOutcomeUnknown,
    Unauthorized,
    VoxaresError,
    VoxaresTransportError,
)
from syncd.messages.states import FAILED, PENDING, SENT, UNKNOWN
from syncd.voxares.models import Message

# Statuses after which Voxares provably did not send (it refused the request as a whole).
REJECTIONS: Final = (Invalid, NotFound, Conflict, Unauthorized, Forbidden)
# The key or its scope is wrong: every other send would be refused the same way.
KEY_REJECTIONS: Final = (Unauthorized, Forbidden)
_ERROR_MAX: Final = 1000

Kind = Literal["sent", "failed", "unknown", "not_sent"]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The state a request moves to after its send, and why.

    `state` is the new `message_requests.state`; `error` is id-only text for the row (None
    when sent). `stop_run` says that no further send of this run can succeed (bad key).
    """

    kind: Kind
    state: str
    message_id: str | None = None
    delivery_status: str | None = None
    error: str | None = None
    stop_run: bool = False


def describe(error: BaseException) -> str:
    """Id-only text for a failed send: our exceptions carry no patient data, others only
    their class name (their text could quote anything)."""
    if isinstance(error, VoxaresError):
        return f"{type(error).__name__}: {error}"[:_ERROR_MAX]
    return type(error).__name__


def sent(message: Message) -> SendOutcome:
    """Voxares accepted the SMS."""
    return SendOutcome("sent", SENT, message_id=message.message_id, delivery_status=message.status)


def classify_failure(error: BaseException) -> SendOutcome:
    """The outcome of a send that raised `error` (see the module docstring)."""
    if isinstance(error, SendOutcomeUnknown):
        return SendOutcome("unknown", UNKNOWN, error=describe(error))
    if isinstance(error, REJECTIONS):
        return SendOutcome(
            "failed",
            FAILED,
            error=describe(error),
            stop_run=isinstance(error, KEY_REJECTIONS),
        )
    if isinstance(error, RateLimited):
        return SendOutcome("not_sent", PENDING, error=describe(error))
    if isinstance(error, VoxaresTransportError) and not error.reached_server:
        return SendOutcome("not_sent", PENDING, error=describe(error))
    # Any other status, a transport error that may have reached the server, a malformed
    # answer the client did not already call unknown, or a bug: it may have been sent.
    return SendOutcome("unknown", UNKNOWN, error=describe(error))
