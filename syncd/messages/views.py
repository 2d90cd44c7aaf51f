"""What `syncd messages list` shows: each SMS request without its text.

Ids, states, times and the failure reason recorded with the request (`message_requests.error`,
id-only by construction: see `syncd.messages.outcome.describe`), so that an operator sees
why a send failed without reading the logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.messages.states import STATES
from syncd.state.models import MessageRequest


@dataclass(frozen=True, slots=True)
class RequestView:
    """One SMS request as listed: never its content."""

    key: str
    provider_id: str
    state: str
    template_id: str | None
    message_id: str | None
    delivery_status: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


def list_requests(
    engine: Engine, *, state: str | None = None, limit: int = 50
) -> list[RequestView]:
    """SMS requests, most recently changed first; only those in `state` when given."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    query = select(MessageRequest).order_by(MessageRequest.updated_at.desc()).limit(limit)
    if state is not None:
        query = query.where(MessageRequest.state == state)
    try:
        with Session(engine) as session:
            return [
                RequestView(
                    key=r.key,
                    provider_id=r.provider_id,
                    state=r.state,
                    template_id=r.template_id,
                    message_id=r.message_id,
                    delivery_status=r.delivery_status,
                    error=r.error,
                    created_at=r.created_at,
                    updated_at=r.updated_at,
                )
                for r in session.scalars(query)
            ]
    except SQLAlchemyError as exc:
        raise StateError(f"cannot list SMS requests ({type(exc).__name__})") from exc
