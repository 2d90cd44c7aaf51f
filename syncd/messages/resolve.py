"""A human's decision about an SMS whose fate the daemon could not know: `resolve`.

`unknown` means the SMS may or may not have reached the patient. The daemon never guesses:
an operator checks (the Voxares dashboard, the patient) and then resends it, marks it sent
(optionally with the message id found, so its delivery status is followed), or cancels it.
A `failed` request (Voxares refused it) may be resent once its cause is fixed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import MessageRequestError, StateError
from syncd.messages.states import ACTIONS, PENDING, SENT, TRANSITIONS, resolution_target
from syncd.messages.store import rows_updated
from syncd.state.db import session_factory
from syncd.state.models import MessageRequest
from syncd.state.runs import audit

_MESSAGE_ID_MAX = 64


def resolve(
    engine: Engine,
    key: str,
    action: str,
    message_id: str | None = None,
    *,
    actor: str = "cli",
) -> MessageRequest:
    """Apply a human's decision to request `key`; returns the request as it is now.

    `action` is `resend` (from `unknown` or `failed`: back to `pending`, sent by the next
    run), `mark-sent` (from `unknown`, with the Voxares `message_id` when known) or `cancel`
    (from `unknown`). Raises `MessageRequestError` naming the key and its state otherwise.
    """
    if action not in ACTIONS:
        raise MessageRequestError(f"action must be one of {', '.join(ACTIONS)}")
    if message_id is not None and action != "mark-sent":
        raise MessageRequestError("a message id can only be given with mark-sent")
    if message_id is not None and not 0 < len(message_id.strip()) <= _MESSAGE_ID_MAX:
        raise MessageRequestError(f"a message id must be 1-{_MESSAGE_ID_MAX} characters")
    try:
        with session_factory(engine).begin() as session:
            request = session.get(MessageRequest, key)
            if request is None:
                raise MessageRequestError(f"no SMS request with key {key!r}")
            before = request.state
            target = resolution_target(action, before)
            if target is None:
                allowed = " or ".join(sorted(TRANSITIONS[action][0]))
                raise MessageRequestError(
                    f"SMS request {key!r} is {before}: {action} is only possible from {allowed}"
                )
            now = datetime.now(UTC)
            values: dict[str, Any] = {"state": target, "updated_at": now}
            if target == PENDING:
                values.update(
                    error=None,
                    sending_at=None,
                    sent_at=None,
                    message_id=None,
                    delivery_status=None,
                    status_checked_at=None,
                )
            elif target == SENT:
                values.update(
                    error=None,
                    message_id=message_id,
                    sent_at=request.sending_at or now,
                    delivery_status=None,
                )
            # Guarded on the state read above: a concurrent change makes this a no-op.
            moved = rows_updated(
                session,
                update(MessageRequest)
                .where(MessageRequest.key == key, MessageRequest.state == before)
                .values(**values),
            )
            if moved != 1:
                raise MessageRequestError(f"SMS request {key!r} changed meanwhile; try again")
            detail = f"from={before} to={target}"
            if message_id is not None:
                detail += f" message_id={message_id}"
            audit(session, actor, None, f"message.{action}", "message_request", key, detail)
        with session_factory(engine)() as session:
            resolved = session.get(MessageRequest, key)
            assert resolved is not None
            return resolved
    except SQLAlchemyError as exc:
        raise StateError(f"cannot resolve SMS request {key!r} ({type(exc).__name__})") from exc
