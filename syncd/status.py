"""`syncd status`: is it working? One read-only snapshot of the state database.

Ids, counts and times only: nothing here reads patient fields.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from syncd.state.db import reader
from syncd.state.models import (
    Hl7Inbound,
    MessageRequest,
    PatientMirror,
    PollerState,
    PollerSweep,
    QuarantinedRow,
)
from syncd.state.runs import RunSummary, last_runs, last_successes


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink's backlog; `removed`: the configuration no longer names it (its pending
    deliveries will never be sent: `syncd outbox forget-sink` drops them)."""

    sink: str
    pending: int
    oldest_age_seconds: float
    dead: int
    disabled_reason: str | None
    removed: bool = False


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything `syncd status` shows."""

    runs: list[RunSummary]
    last_success: dict[str, datetime]  # job -> end of its last ok or partial run
    patients_active: int
    patients_inactive: int
    quarantined: int
    watermark: datetime | None
    watermark_lag_seconds: float | None
    window_in_progress: bool
    # Where polling resumes: the start of what is left of a window a failed or killed run
    # was working on (progress kept across runs), None when no window is in progress.
    window_resume_from: datetime | None
    last_sweep: datetime | None  # server time the last reconciliation sweep completed
    sinks: list[SinkStatus]
    messages_by_state: dict[str, int]
    # HL7 v2 inbound messages by status (pending, applied, ignored, rejected, quarantined).
    hl7_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def messages_unknown(self) -> int:
        """SMS whose outcome is ambiguous and needs an operator (`syncd messages resolve`)."""
        return self.messages_by_state.get("unknown", 0)


def gather_status(
    engine: Engine, *, now: datetime | None = None, configured: Collection[str] | None = None
) -> StatusReport:
    """Read the status snapshot; with `configured` (the configured sink names), every other
    sink the outbox holds state for is marked removed."""
    from syncd.outbox.queries import backlog, sink_states

    moment = now or datetime.now(UTC)
    with Session(reader(engine)) as session:
        by_state = dict(
            session.execute(
                select(PatientMirror.state, func.count()).group_by(PatientMirror.state)
            ).all()
        )
        quarantined = session.scalar(select(func.count()).select_from(QuarantinedRow)) or 0
        poller = session.get(PollerState, "form_submissions")
        last_sweep = session.scalar(
            select(PollerSweep.done_at)
            .where(PollerSweep.stream == "form_submissions")
            .order_by(PollerSweep.done_at.desc())
            .limit(1)
        )
        messages = dict(
            session.execute(
                select(MessageRequest.state, func.count()).group_by(MessageRequest.state)
            ).all()
        )
        hl7 = dict(
            session.execute(
                select(Hl7Inbound.status, func.count()).group_by(Hl7Inbound.status)
            ).all()
        )
    states = sink_states(engine)
    sinks = [
        SinkStatus(
            name,
            b.pending,
            b.oldest_age_seconds,
            b.dead,
            states[name].disabled_reason if name in states else None,
            removed=configured is not None and name not in configured,
        )
        for name, b in backlog(engine, now=moment).items()
    ]
    watermark = poller.watermark if poller is not None else None
    lag = (moment - watermark).total_seconds() if watermark is not None else None
    return StatusReport(
        runs=last_runs(engine),
        last_success=last_successes(engine),
        patients_active=int(by_state.get("active", 0)),
        patients_inactive=int(by_state.get("inactive", 0)),
        quarantined=int(quarantined),
        watermark=watermark,
        watermark_lag_seconds=lag,
        window_in_progress=poller is not None and poller.window_end is not None,
        window_resume_from=poller.window_start if poller is not None else None,
        last_sweep=last_sweep,
        sinks=sinks,
        messages_by_state={str(k): int(v) for k, v in messages.items()},
        hl7_by_status={str(k): int(v) for k, v in hl7.items()},
    )


def quarantine_rows(
    engine: Engine, *, source: str | None = None, limit: int = 200
) -> list[QuarantinedRow]:
    """Quarantined rows, most recently seen first (row key, field, reason: no values)."""
    query = select(QuarantinedRow).order_by(QuarantinedRow.last_seen_at.desc()).limit(limit)
    if source is not None:
        query = query.where(QuarantinedRow.source == source)
    with Session(reader(engine), expire_on_commit=False) as session:
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows
