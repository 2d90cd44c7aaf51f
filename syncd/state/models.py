"""The state database: what voxares-syncd remembers between runs.

One SQLAlchemy 2.0 declarative model per table. Alembic migrations in `migrations/` must
produce exactly this schema (a test compares them). Timestamps are timezone-aware UTC.
Rows that hold patient data (the mirror's `payload`, message content, outbox payloads) stay
in this database, which is created mode 0600; nothing here is ever logged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no timezone type: plain `DateTime(timezone=True)` stores an aware value's
    local wall time without its offset and reads back a naive datetime. This type stores
    UTC and always reads back an aware UTC datetime; a naive datetime is refused rather
    than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the state database stores aware UTC timestamps")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite only autoincrements INTEGER PRIMARY KEY; BigInteger elsewhere.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PatientMirror(Base):
    """One patient as last pushed to Voxares, keyed by the EHR's (provider, provider_id)."""

    __tablename__ = "patient_mirror"
    __table_args__ = (UniqueConstraint("provider", "provider_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(128))
    provider_id: Mapped[str] = mapped_column(String(128))
    # Voxares patient UUID, known once a push succeeded.
    voxares_patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # sha256 of the normalised payload that Voxares holds now; decides "changed".
    payload_hash: Mapped[str] = mapped_column(String(64))
    # sha256 of the raw source row; lets an unchanged row skip normalisation.
    source_row_hash: Mapped[str | None] = mapped_column(String(64))
    # The normalised payload as pushed (JSON); the SMS path needs names and mobile from it.
    payload: Mapped[str] = mapped_column(Text)
    # active | inactive | merged (an HL7 A40 merged this id into `merged_into`)
    state: Mapped[str] = mapped_column(String(16), default="active")
    merged_into: Mapped[str | None] = mapped_column(String(128))
    first_pushed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_pushed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The run that last pushed or reactivated this row. Not stamped on every unchanged row
    # (that write would cost more than the whole re-sync budget); a complete run finds the
    # rows that disappeared against its own table of keys read (see patients/store.py).
    last_seen_run_id: Mapped[int | None] = mapped_column(BigInteger)


class QuarantinedRow(Base):
    """A source row that could not be pushed, with the row and field named."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("source", "row_key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(128))
    # The row's providerId when it has one, otherwise "line:<n>".
    row_key: Mapped[str] = mapped_column(String(256))
    line_number: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(512))  # never contains the field's value
    row_hash: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_count: Mapped[int] = mapped_column(Integer, default=1)


class JobRun(Base):
    """One run of one job: when, how it ended, and its counts."""

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job_started", "job", "started_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16))  # running, or an outcome of syncd.state.runs
    counts: Mapped[str] = mapped_column(Text, default="{}")  # JSON object of counters
    error: Mapped[str | None] = mapped_column(String(1024))  # exception class and id-only text


class JobLock(Base):
    """A lease that keeps two daemons on one SQLite database from running the same job.

    PostgreSQL uses advisory locks instead; the table exists on both for a uniform schema.
    """

    __tablename__ = "job_locks"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PollerState(Base):
    """Where a poller stands: its watermark, and the window it is working on."""

    __tablename__ = "poller_state"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The window saved before it is fetched, so a crash resumes the same window.
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PollerSweep(Base):
    """When each reconciliation sweep of a stream last completed (server time)."""

    __tablename__ = "poller_sweeps"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    sweep: Mapped[str] = mapped_column(String(32), primary_key=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxEvent(Base):
    """An event for downstream systems, written in the transaction that caused it."""

    __tablename__ = "outbox_events"
    # Fan-out reads events in (xid, seq) order past each sink's cursor.
    __table_args__ = (Index("ix_outbox_events_xid_seq", "xid", "seq"),)

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # The writing transaction's id: on PostgreSQL the database's default
    # `pg_current_xact_id()` (as bigint), which tells fan-out when no transaction that
    # could still commit an earlier event is open; on SQLite (one writer) always 0. Set by
    # the database only (the default differs per backend: see migration 0003).
    xid: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    # Stable public id (the Standard Webhooks `webhook-id`), a UUID string.
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    # Ordering key for per-patient order (the EHR providerId or the Voxares patient id);
    # indexed for the delivery claim's "no earlier undelivered event of this key" check.
    ordering_key: Mapped[str | None] = mapped_column(String(256), index=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SubmissionVersion(Base):
    """A form-submission version already turned into an outbox event (dedupe record)."""

    __tablename__ = "submission_versions"

    submission_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The API's updatedAt exactly as received (ISO text), part of the version identity.
    updated_at: Mapped[str] = mapped_column(String(40), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # `submissionStatus` of the version (NULL for rows recorded before it was kept, and for
    # removals): with it a listed version sharing a rendered millisecond with a recorded one,
    # but not its status, is still read.
    status: Mapped[str | None] = mapped_column(String(32))
    # The event this version became; NULL once retention pruned the event. The row stays:
    # it is what keeps the same version from being emitted again.
    event_seq: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("outbox_events.seq", ondelete="SET NULL")
    )
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxDelivery(Base):
    """Delivery state of one event to one sink; sinks never wait on each other."""

    __tablename__ = "outbox_deliveries"
    __table_args__ = (
        Index("ix_outbox_deliveries_due", "sink", "state", "next_attempt_at"),
        # The backlog (pending and dead per sink, the oldest pending) reads only these rows.
        Index("ix_outbox_deliveries_state", "state", "sink", "created_at"),
    )

    event_seq: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("outbox_events.seq", ondelete="CASCADE"), primary_key=True
    )
    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A claim is a lease: a worker that dies leaves it to expire.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(1024))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SinkCursor(Base):
    """How far the fan-out has turned events into deliveries for one sink."""

    __tablename__ = "sink_cursors"

    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The last event fanned out, as its (xid, seq): events are fanned out in that order.
    last_xid: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    disabled_reason: Mapped[str | None] = mapped_column(String(256))  # e.g. webhook 410
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SourceCursor(Base):
    """Where an incremental patient source (a FHIR `_lastUpdated` search) stands.

    Saved only after every row of the read it covers was pushed or recorded, so a crash or
    a failed push leaves it where it was and the next read asks again (hash-diffed, so the
    repeat costs no push).
    """

    __tablename__ = "source_cursors"

    source: Mapped[str] = mapped_column(String(128), primary_key=True)
    # What the cursor is a position in (the FHIR base URL): another endpoint starts afresh.
    endpoint: Mapped[str] = mapped_column(String(512))
    # The server's clock when the last fully pushed read began.
    position: Mapped[datetime] = mapped_column(UTCDateTime())
    # When the last full (non-incremental) read that was fully pushed began (server clock).
    full_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MessageRequest(Base):
    """One SMS request, keyed by its caller-chosen unique key; sent at most once."""

    __tablename__ = "message_requests"
    __table_args__ = (Index("ix_message_requests_state", "state"),)

    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    origin: Mapped[str] = mapped_column(String(64))  # cli | source:<name> | api
    provider: Mapped[str] = mapped_column(String(128))
    provider_id: Mapped[str] = mapped_column(String(128))
    content: Mapped[str | None] = mapped_column(Text)
    template_id: Mapped[str | None] = mapped_column(String(64))
    # pending | sending | sent | failed | unknown | cancelled
    state: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    delivery_status: Mapped[str | None] = mapped_column(String(16))  # Voxares status
    error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sending_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ContentItem(Base):
    """A practice template, form or document as last seen in Voxares."""

    __tablename__ = "content_items"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # template | form | document
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(512))
    content_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # JSON as received
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """An id-only trail of what was pushed, received and delivered: who, what, when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))  # the job name, or cli
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(64))  # patient.pushed, event.delivered, ...
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(256))
    detail: Mapped[str | None] = mapped_column(String(256))  # ids and counts only


class StatusSample(Base):
    """One minute's reading of a gauge the status page charts over days: the form polling
    lag, or one sink's outbox backlog. Written by the daemon's sampler, pruned by age."""

    __tablename__ = "status_samples"
    __table_args__ = (Index("ix_status_samples_taken", "taken_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # form_lag_seconds | outbox_pending | outbox_oldest_seconds
    metric: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64))  # the stream or the sink name
    value: Mapped[float] = mapped_column(Float)


class Hl7Inbound(Base):
    """One HL7 v2 message as received, committed before it is acknowledged.

    `(sender, control_id)` is unique: a message sent again (no ACK reached the sender) is
    acknowledged and not stored twice. `raw` is the message as received (patient data):
    kept while pending and for a rejected message (an operator reads it with the CLI),
    cleared once the message is applied or ignored. Rows apply in `id` (arrival) order.
    """

    __tablename__ = "hl7_inbound"
    __table_args__ = (
        UniqueConstraint("sender", "control_id"),
        Index("ix_hl7_inbound_status", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))  # the feed: "mllp" or a file source name
    sender: Mapped[str] = mapped_column(String(128))  # MSH-3^MSH-4
    control_id: Mapped[str | None] = mapped_column(String(199))  # MSH-10; None when unreadable
    message_type: Mapped[str | None] = mapped_column(String(16))  # e.g. ADT^A08
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # MSH-7
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # pending | applied | ignored | rejected | quarantined
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(512))  # id-only text, never a value
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
