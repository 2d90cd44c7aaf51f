"""Asking for an SMS: `submit_request` records one request, idempotently on its key.

This is the function to embed (the CLI, the message sources and other Python code call it).
Nothing is sent here: the `send_messages` job sends `pending` requests, at most once each.

A request names its patient by (provider, providerId) and carries either inline `content` or
a `template_id`. A template id is checked against the content mirror BEFORE anything is
recorded, so a typo fails at once, with the id named, instead of as a 404 at send time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.content.mirror import JOB_NAME as CONTENT_JOB
from syncd.content.mirror import TEMPLATE
from syncd.exceptions import MessageRequestError, StateError
from syncd.messages.states import PENDING
from syncd.state.db import session_factory
from syncd.state.models import ContentItem, JobRun, MessageRequest, PatientMirror

# Column sizes of `message_requests`.
KEY_MAX: Final = 256
PROVIDER_MAX: Final = 128
PROVIDER_ID_MAX: Final = 128
TEMPLATE_ID_MAX: Final = 64
ORIGIN_MAX: Final = 64


@dataclass(frozen=True, slots=True)
class RequestBody:
    """What a request asks for; two submissions with the same key must agree on it."""

    provider: str
    provider_id: str
    content: str | None
    template_id: str | None

    def __repr__(self) -> str:
        # The content is free text written for one patient: never shown.
        return (
            f"RequestBody(provider={self.provider!r}, provider_id={self.provider_id!r}, "
            f"template_id={self.template_id!r}, content={'<set>' if self.content else None})"
        )


def request_problems(
    *,
    key: str,
    provider: str,
    provider_id: str,
    content: str | None,
    template_id: str | None,
    origin: str,
) -> list[str]:
    """Why these arguments cannot make a request (empty when they can). Pure; no values."""
    problems: list[str] = []
    for name, value, limit in (
        ("key", key, KEY_MAX),
        ("provider", provider, PROVIDER_MAX),
        ("provider_id", provider_id, PROVIDER_ID_MAX),
        ("origin", origin, ORIGIN_MAX),
    ):
        if not value or not value.strip():
            problems.append(f"{name} must not be empty")
        elif len(value) > limit:
            problems.append(f"{name} is longer than {limit} characters")
    if (content is None) == (template_id is None):
        problems.append("exactly one of content and template_id must be given")
    elif content is not None and not content.strip():
        problems.append("content must not be empty")
    elif template_id is not None and not template_id.strip():
        problems.append("template_id must not be empty")
    elif template_id is not None and len(template_id) > TEMPLATE_ID_MAX:
        problems.append(f"template_id is longer than {TEMPLATE_ID_MAX} characters")
    return problems


def template_problem(conn: Connection | Session, template_id: str) -> str | None:
    """Why `template_id` cannot be sent according to the content mirror, or None if it can."""
    item = conn.execute(
        select(ContentItem.removed_at).where(
            ContentItem.kind == TEMPLATE, ContentItem.item_id == template_id
        )
    ).first()
    if item is None:
        if not _content_mirrored(conn):
            return (
                f"template {template_id} is unknown: the content mirror has never run "
                "(run content sync first)"
            )
        return f"template {template_id} is not a practice template of this Voxares practice"
    if item.removed_at is not None:
        return f"template {template_id} was removed from Voxares"
    return None


def _content_mirrored(conn: Connection | Session) -> bool:
    """Whether the content mirror ever ran: it left items, or a run of it succeeded."""
    has_items = conn.execute(select(exists().select_from(ContentItem))).scalar_one()
    if has_items:
        return True
    ran = select(exists().where(JobRun.job == CONTENT_JOB, JobRun.outcome == "ok"))
    return bool(conn.execute(ran).scalar_one())


def insert_ignoring_existing(conn: Connection | Session, rows: list[dict[str, Any]]) -> None:
    """INSERT the request rows; a row whose key exists already is left as it is."""
    if not rows:
        return
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(MessageRequest).on_conflict_do_nothing(
            index_elements=["key"]
        )
    elif dialect == "sqlite":
        statement = sqlite.insert(MessageRequest).on_conflict_do_nothing(index_elements=["key"])
    else:
        raise StateError(f"the state database backend {dialect} is not supported")
    conn.execute(statement, rows)


def new_row(key: str, body: RequestBody, origin: str, now: datetime) -> dict[str, Any]:
    """The `message_requests` row of a new pending request."""
    return {
        "key": key,
        "origin": origin,
        "provider": body.provider,
        "provider_id": body.provider_id,
        "content": body.content,
        "template_id": body.template_id,
        "state": PENDING,
        "created_at": now,
        "updated_at": now,
    }


def body_of(request: MessageRequest) -> RequestBody:
    """The body a stored request was made with."""
    return RequestBody(request.provider, request.provider_id, request.content, request.template_id)


def submit_request(
    engine: Engine,
    *,
    key: str,
    provider: str,
    provider_id: str,
    content: str | None = None,
    template_id: str | None = None,
    origin: str,
) -> MessageRequest:
    """Record an SMS request (state `pending`) and return it; nothing is sent here.

    Idempotent on `key`: submitting the same key again with the same body returns the request
    recorded first, whatever its state now (it is never sent twice). Raises
    `MessageRequestError` naming the key when the key is taken by a different body, when the
    arguments are invalid (exactly one of `content` and `template_id`), or when `template_id`
    is not a live template in the content mirror.
    """
    problems = request_problems(
        key=key,
        provider=provider,
        provider_id=provider_id,
        content=content,
        template_id=template_id,
        origin=origin,
    )
    if problems:
        raise MessageRequestError(f"SMS request {key!r}: {'; '.join(problems)}")
    body = RequestBody(provider, provider_id, content, template_id)
    with _translated(key), session_factory(engine).begin() as session:
        existing = session.get(MessageRequest, key)
        if existing is None:
            if template_id is not None:
                reason = template_problem(session, template_id)
                if reason is not None:
                    raise MessageRequestError(f"SMS request {key!r}: {reason}")
            insert_ignoring_existing(session, [new_row(key, body, origin, datetime.now(UTC))])
            # Another process may have inserted the same key meanwhile: read what won.
            existing = session.get(MessageRequest, key, populate_existing=True)
            assert existing is not None
        if body_of(existing) != body:
            raise MessageRequestError(
                f"SMS request {key!r}: the key is already used by a request with a different "
                "patient, text or template"
            )
        return existing


def patient_problem(engine: Engine, provider: str, provider_id: str) -> str | None:
    """Why an SMS to (provider, provider_id) would fail, according to the patient mirror, or
    None when the mirror knows the patient.

    Only meaningful where this daemon pushes the patients (the mirror holds every patient
    it pushed); the sender needs the mirror's names and mobile for a patient Voxares does
    not know yet.
    """
    query = select(PatientMirror.state).where(
        PatientMirror.provider == provider, PatientMirror.provider_id == provider_id
    )
    try:
        with engine.connect() as conn:
            state = conn.execute(query).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise StateError(f"cannot read the patient mirror ({type(exc).__name__})") from exc
    if state is None:
        return (
            f"no patient {provider_id!r} in the patient mirror: not pushed yet, or quarantined "
            "(see `syncd quarantine list`)"
        )
    return None


@contextmanager
def _translated(key: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"cannot record SMS request {key!r} ({type(exc).__name__})") from exc
