"""The life of an SMS request, as states and the moves a human may make between them.

    pending ──mark──► sending ──► sent      (Voxares accepted it: message_id known)
       ▲                 │    ├─► failed    (Voxares provably refused it: nothing was sent)
       │                 │    ├─► unknown   (it may or may not have been sent)
       └──not sent───────┘    └ (a crash leaves `sending`; the next run makes it `unknown`)

    unknown ──resolve──► pending (resend) | sent (mark-sent) | cancelled (cancel)
    failed  ──resolve──► pending (resend)

`unknown` is never left automatically: only a human (`resolve`) decides whether to resend.
This module is pure, apart from `counts_by_state` and `refresh_metrics` that read the table.
"""

from __future__ import annotations

from typing import Final, Literal

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from syncd import metrics
from syncd.exceptions import StateError
from syncd.state.models import MessageRequest

PENDING: Final = "pending"
SENDING: Final = "sending"
SENT: Final = "sent"
FAILED: Final = "failed"
UNKNOWN: Final = "unknown"
CANCELLED: Final = "cancelled"
STATES: Final = (PENDING, SENDING, SENT, FAILED, UNKNOWN, CANCELLED)

Action = Literal["resend", "mark-sent", "cancel"]
ACTIONS: Final = ("resend", "mark-sent", "cancel")

# action -> (states it may start from, state it leads to)
TRANSITIONS: Final[dict[str, tuple[frozenset[str], str]]] = {
    "resend": (frozenset({UNKNOWN, FAILED}), PENDING),
    "mark-sent": (frozenset({UNKNOWN}), SENT),
    "cancel": (frozenset({UNKNOWN}), CANCELLED),
}


def resolution_target(action: str, state: str) -> str | None:
    """The state `action` leads to from `state`, or None when it is not allowed from there."""
    try:
        allowed, target = TRANSITIONS[action]
    except KeyError:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}") from None
    return target if state in allowed else None


def counts_by_state(engine: Engine) -> dict[str, int]:
    """How many SMS requests are in each state (every state present, zeros included)."""
    query = select(MessageRequest.state, func.count()).group_by(MessageRequest.state)
    try:
        with engine.connect() as conn:
            found = {str(state): int(n) for state, n in conn.execute(query)}
    except SQLAlchemyError as exc:
        raise StateError(f"cannot count SMS requests ({type(exc).__name__})") from exc
    counts = dict.fromkeys(STATES, 0)
    counts.update(found)
    return counts


def refresh_metrics(engine: Engine) -> dict[str, int]:
    """Set the `syncd_messages` gauge from the table; returns the counts it set."""
    counts = counts_by_state(engine)
    for state, count in counts.items():
        metrics.MESSAGES.labels(state).set(count)
    return counts
