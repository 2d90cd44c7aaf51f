"""The delivery job: outbox events to every configured sink, at least once.

One run gives each configured sink its own loop (`syncd.outbox.pacing`): fan its new
events out into deliveries, deliver its due deliveries until none is due, and again while
that found work; a sink with nothing to do keeps looking for new events every
`pause_seconds` while another sink of the run is still working, so it never waits for a
slow sink's batch to end the run. Sinks are independent: each has its own loop, its own
batches and its own timeout on every `deliver` call, so a slow, hanging or failing sink
never delays another. The run ends when every sink is idle at once, or after its time
budget (plus the batches then in flight). Within a sink a failing event is rescheduled
(`syncd.outbox.backoff`) and the events behind it go on: no head-of-line blocking, except
between the events of one patient when `keep_order_per_patient` asks for exactly that.

Lanes: each sink runs `batches_in_flight` copies of its claim -> deliver -> record loop,
so while one batch is being claimed or recorded (or is down to its last few events)
another keeps the sink busy. The lanes share the worker id and the sink object: claims
are leases, so two lanes never hold one delivery; the sink bounds its own concurrency
(the webhook sink's semaphore counts every lane's requests; the AMQP sink publishes one
batch at a time; the NDJSON sink writes one batch at a time under a thread lock). Order
per patient holds across lanes because `claim` refuses an event while an earlier event of
its patient is still pending at the sink, claimed by any lane or not. When a lane's batch
disables the sink, or a lane fails, the other lanes stop claiming; a lane whose claim
returns after the sink was disabled gives its batch back unsent.

Outcomes (see `syncd.sinks.base`): `Delivered` is recorded with an audit entry; `Retry`
waits `max(Retry-After, backoff)` until `max_attempts` or `max_age`, then the delivery is
dead; `DeadLetter` is dead at once; `DisableSink` disables the sink (its deliveries stay
pending until an operator runs `syncd outbox retry --sink NAME`). A sink reports each
event's outcome as its answer arrives (`answered`), so a batch cut off by the deliver
timeout (or a sink that raises) keeps what was answered: only the unanswered events are
retried, and an event the receiver took is never sent again for that timeout.

At least once, with a stable id: a crash (or a lost lease) between a sink's answer and its
record means the event goes out again once the lease expires, with the same `event_id`
(webhook-id, AMQP message-id, NDJSON `id`); receivers deduplicate on it. A run first frees
the claims of workers of this host whose process is gone (killed -9), so a restart delivers
them at once instead of after the lease (`claims.release_dead_claims`).

With `retention`, a run also deletes delivered events older than that (`retention.prune`), at
most once per `prune_every`; the backlog metrics (configured sinks only) are refreshed at
the end of every run. Sinks the outbox holds state for that the configuration no longer
names are reported once, at the first run (`outbox.sinks_removed`): their cursor holds
retention back no more, and `syncd outbox forget-sink` drops what they left.

Crash points (`syncd.testing_hooks.step`): `delivery.after_claim`,
`delivery.after_http_before_mark`, `delivery.after_mark`.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine

from syncd import metrics
from syncd.outbox import claims, fanout, queries, recording, retention
from syncd.outbox.backoff import BackoffPolicy, GiveUp, after_failure
from syncd.outbox.claims import ClaimedDelivery
from syncd.outbox.counts import DeliveryCounts as DeliveryCounts
from syncd.outbox.pacing import RunBoard, next_step
from syncd.outbox.recording import Again, Dead, Decision, Done, Recorded, Release
from syncd.outbox.routing import Route
from syncd.sinks.base import (
    DeadLetter,
    Delivered,
    DeliveryOutcome,
    DisableSink,
    EventEnvelope,
    Retry,
    Sink,
)
from syncd.testing_hooks import step
from syncd.workers import host_name, owner_id, process_alive

log = structlog.get_logger(__name__)

DEFAULT_NAME = "deliver_outbox"
MAX_BATCHES_IN_FLIGHT = 8


def _utcnow() -> datetime:
    return datetime.now(UTC)


def decide(
    claimed: ClaimedDelivery,
    outcome: DeliveryOutcome,
    *,
    now: datetime,
    max_attempts: int,
    max_age: timedelta,
    policy: BackoffPolicy,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to record for one delivery given the sink's outcome (pure)."""
    attempts = claimed.attempts + 1
    match outcome:
        case Delivered():
            return Done(claimed.seq, claimed.event_id, attempts)
        case DeadLetter(reason=reason):
            return Dead(claimed.seq, claimed.event_id, attempts, reason)
        case DisableSink(reason=reason):
            return Release(claimed.seq, f"sink disabled: {reason}")
        case Retry(reason=reason, after_seconds=after):
            plan = after_failure(
                attempts=attempts,
                reason=reason,
                retry_after=after,
                queued_at=claimed.queued_at,
                now=now,
                max_attempts=max_attempts,
                max_age=max_age,
                policy=policy,
                rand=rand,
            )
            if isinstance(plan, GiveUp):
                return Dead(claimed.seq, claimed.event_id, attempts, plan.reason)
            return Again(claimed.seq, attempts, plan.at, reason)
    raise TypeError(f"not a delivery outcome: {type(outcome).__name__}")


def envelope_for(route: Route, claimed: ClaimedDelivery) -> EventEnvelope:
    """The envelope a sink gets; raises ValueError/TypeError when the payload cannot be
    rendered in the sink's format (field names only in the message, never values)."""
    payload = json.loads(claimed.payload)
    if not isinstance(payload, dict):
        raise TypeError("the stored payload is not a JSON object")
    return EventEnvelope(
        event_id=claimed.event_id,
        event_type=claimed.event_type,
        created_at=claimed.event_created_at,
        payload=route.render(claimed.event_type, payload),
    )


class OutboxDeliveryJob:
    """Fans out and delivers outbox events to every configured sink; see the module doc.

    `sinks` and `routes` name the same sinks; the caller owns the sinks (and closes them).
    `lease_seconds` must outlast a whole sink call: each `deliver` call is cut off after
    `deliver_timeout_seconds` (default: half the lease) and the events it had not answered
    are retried (those it answered keep their outcome), so size the lease for a batch's
    worst case, when it shares the sink with the other lanes (for a webhook sink, about
    `ceil(batches_in_flight * batch_size / max_concurrency) * (connect_timeout +
    read_timeout)`, doubled). `batches_in_flight` (1..8) is the number
    of lanes per sink (see the module doc).
    `time_budget_seconds` bounds one run; `pause_seconds` is how often a sink with nothing to
    do looks for new events while another sink is still working; `backoff`, `clock` and
    `rand` are for tuning and tests; `stall_warning` is how long events may wait behind an
    open transaction before fan-out warns (see `syncd.outbox.fanout`).
    """

    def __init__(
        self,
        engine: Engine,
        sinks: Mapping[str, Sink],
        routes: Mapping[str, Route],
        *,
        batch_size: int = 100,
        batches_in_flight: int = 2,
        max_attempts: int = 12,
        max_age: timedelta = timedelta(hours=72),
        lease_seconds: float = 120.0,
        keep_order_per_patient: bool = False,
        name: str = DEFAULT_NAME,
        backoff: BackoffPolicy | None = None,
        time_budget_seconds: float = 60.0,
        pause_seconds: float = 1.0,
        deliver_timeout_seconds: float | None = None,
        stall_warning: timedelta = fanout.DEFAULT_STALL_WARNING,
        worker_id: str | None = None,
        retention: timedelta | None = None,
        prune_every: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = _utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if set(sinks) != set(routes):
            raise ValueError(
                "sinks and routes must name the same sinks: "
                f"{sorted(set(sinks) ^ set(routes))} differ"
            )
        if batch_size < 1 or max_attempts < 1 or lease_seconds <= 0:
            raise ValueError("batch_size, max_attempts and lease_seconds must be positive")
        if not 1 <= batches_in_flight <= MAX_BATCHES_IN_FLIGHT:
            raise ValueError(f"batches_in_flight must be 1..{MAX_BATCHES_IN_FLIGHT}")
        timeout = lease_seconds / 2 if deliver_timeout_seconds is None else deliver_timeout_seconds
        if not 0 < timeout < lease_seconds:
            # A sink call outliving its lease would let another worker deliver the same
            # events at the same time.
            raise ValueError("deliver_timeout_seconds must be positive and below lease_seconds")
        self.name = name
        self._engine = engine
        self._sinks = dict(sinks)
        self._routes = dict(routes)
        self._batch_size = batch_size
        self._lanes = batches_in_flight
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._lease = timedelta(seconds=lease_seconds)
        self._keep_order = keep_order_per_patient
        self._policy = backoff or BackoffPolicy()
        self._budget = time_budget_seconds
        self._pause = pause_seconds
        self._deliver_timeout = timeout
        self._stall_warning = stall_warning
        self._clock = clock
        self._rand = rand
        self._retention = retention
        self._prune_every = prune_every
        self._pruned_at: datetime | None = None
        self._removed_reported = False
        self.worker_id = worker_id or (owner_id(uuid.uuid4().hex[:8]))

    def __repr__(self) -> str:
        return f"OutboxDeliveryJob(name={self.name!r}, sinks={sorted(self._sinks)!r})"

    async def run(self, run_id: int | None = None) -> DeliveryCounts:
        """Run every sink's loop (see `syncd.outbox.pacing`) until all are idle or the budget
        is spent; then prune if due and refresh the backlog metrics. A sink's failure (e.g.
        the database) does not stop the others; the first such error is raised once every
        sink is done."""
        board = RunBoard(self._budget)
        counts = DeliveryCounts()
        freed = await asyncio.to_thread(
            claims.release_dead_claims,
            self._engine,
            host=host_name(),
            is_alive=process_alive,
            now=self._clock(),
        )
        if freed:
            log.warning("outbox.dead_worker_claims_released", deliveries=freed)
        if not self._removed_reported:
            await asyncio.to_thread(self._report_removed_sinks)
        states = await asyncio.to_thread(queries.sink_states, self._engine)
        active = []
        for name in sorted(self._sinks):
            state = states.get(name)
            if state is not None and state.disabled_reason is not None:
                # Its events still become (pending) deliveries, sent once it is re-enabled.
                counts.fanned_out += (await self._fan_out(name)).queued
                counts.sinks_skipped += 1
                log.warning("outbox.sink_skipped_disabled", sink=name)
                continue
            active.append(name)
        results = await asyncio.gather(
            *(self._serve_sink(name, run_id, board) for name in active),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for name, result in zip(active, results, strict=True):
            if isinstance(result, DeliveryCounts):
                counts.add(result)
            else:
                log.error("outbox.sink_failed", sink=name, error=type(result).__name__)
                failure = failure or result
        if failure is None:
            counts.pruned = await asyncio.to_thread(self._prune_if_due, run_id)
        await asyncio.to_thread(self._publish_backlog)
        if failure is not None:
            raise failure
        return counts

    async def _fan_out(self, name: str) -> fanout.FanOut:
        return await asyncio.to_thread(
            fanout.fan_out,
            self._engine,
            self._routes[name],
            now=self._clock(),
            stall_warning=self._stall_warning,
        )

    async def _serve_sink(self, name: str, run_id: int | None, board: RunBoard) -> DeliveryCounts:
        """One sink's loop: passes of fan-out then delivery, until `pacing.next_step` says
        stop or the sink is stopped (disabled, or a lane failed: then raised)."""
        shared = _SinkRun(name)
        counts = DeliveryCounts()
        while True:
            with board.working(name):
                fanned = await self._fan_out(name)
                delivered = await self._deliver_sink(shared, run_id, board)
            counts.fanned_out += fanned.queued
            counts.add(delivered)
            if shared.stop:
                return counts
            step_ = next_step(
                did_work=fanned.queued > 0 or delivered.claimed > 0,
                waiting=fanned.waiting > 0,
                may_claim=board.may_claim(name),
                before_deadline=board.before_deadline(),
                others_working=board.others_working(name),
            )
            if step_ == "stop":
                return counts
            if step_ == "pause":
                await board.pause(self._pause)

    async def _deliver_sink(
        self, shared: _SinkRun, run_id: int | None, board: RunBoard
    ) -> DeliveryCounts:
        """One sink's lanes, run together until none has a due delivery; their counters
        summed. A lane's error is raised once every lane has finished its batch (the others
        stop claiming at once)."""
        results = await asyncio.gather(
            *(self._lane(shared, lane, run_id, board) for lane in range(self._lanes)),
            return_exceptions=True,
        )
        counts = DeliveryCounts()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            counts.add(result)
        return counts

    async def _lane(
        self, shared: _SinkRun, lane: int, run_id: int | None, board: RunBoard
    ) -> DeliveryCounts:
        """One lane of a sink: claim a batch, deliver it, record it; until none is due, the
        board forbids another claim or another lane stopped the sink."""
        try:
            return await self._lane_loop(shared, lane, run_id, board)
        except BaseException:
            shared.stop = True  # a failed lane (or a crash hook) stops its siblings' claims
            raise

    async def _lane_loop(
        self, shared: _SinkRun, lane: int, run_id: int | None, board: RunBoard
    ) -> DeliveryCounts:
        name = shared.sink
        counts = DeliveryCounts()
        while not shared.stop and board.may_claim(name):
            with board.batch(name):
                batch = await asyncio.to_thread(
                    claims.claim,
                    self._engine,
                    name,
                    worker=self.worker_id,
                    limit=self._batch_size,
                    lease=self._lease,
                    keep_order_per_patient=self._keep_order,
                    now=self._clock(),
                )
                if not batch:
                    break
                counts.add(await self._handle_batch(shared, lane, run_id, batch))
        return counts

    async def _handle_batch(
        self, shared: _SinkRun, lane: int, run_id: int | None, batch: list[ClaimedDelivery]
    ) -> DeliveryCounts:
        """Deliver one claimed batch and record its outcomes."""
        name = shared.sink
        step("delivery.after_claim")
        disable_reason: str | None = None
        if shared.disabled is not None:
            # Another lane's batch disabled the sink while this claim ran: not sent.
            reason = f"sink disabled: {shared.disabled}"
            decisions: list[Decision] = [Release(claimed.seq, reason) for claimed in batch]
        else:
            decisions, disable_reason = await self._deliver_batch(name, batch)
        if disable_reason is not None:
            shared.stop = True
            if shared.disabled is None:
                shared.disabled = disable_reason
            else:
                disable_reason = None  # the lane that saw it first records and counts it
        recorded = await asyncio.to_thread(
            recording.record,
            self._engine,
            name,
            worker=self.worker_id,
            decisions=decisions,
            disable_reason=disable_reason,
            actor=self.name,
            run_id=run_id,
            now=self._clock(),
        )
        step("delivery.after_mark")
        applied = set(recorded.applied)
        for decision in decisions:
            if isinstance(decision, Dead) and decision.seq in applied:
                log.warning(
                    "outbox.dead_lettered",
                    sink=name,
                    seq=decision.seq,
                    event_id=decision.event_id,
                    reason=decision.reason,
                )
        counts = _count(decisions, recorded)
        counts.claimed = len(batch)
        metrics.EVENTS_DELIVERED.labels(name).inc(counts.delivered)
        log.info(
            "outbox.batch",
            sink=name,
            lane=lane,
            claimed=len(batch),
            delivered=counts.delivered,
            retried=counts.retried,
            dead=counts.dead,
            released=counts.released,
            lease_lost=len(recorded.lease_lost),
        )
        if recorded.lease_lost:
            # Another worker re-claimed them after our lease expired: it records them.
            log.warning("outbox.lease_lost", sink=name, seqs=list(recorded.lease_lost))
        if disable_reason is not None:
            counts.sinks_disabled += 1
            log.error("outbox.sink_disabled", sink=name, reason=disable_reason)
        return counts

    async def _deliver_batch(
        self, name: str, batch: Sequence[ClaimedDelivery]
    ) -> tuple[list[Decision], str | None]:
        """Render, call the sink once for the batch, and decide each delivery's fate."""
        route = self._routes[name]
        decisions: dict[int, Decision] = {}
        sendable: list[tuple[ClaimedDelivery, EventEnvelope]] = []
        for claimed in batch:
            try:
                sendable.append((claimed, envelope_for(route, claimed)))
            except (ValueError, TypeError) as exc:
                reason = f"cannot render as {route.format} ({type(exc).__name__})"
                decisions[claimed.seq] = Dead(
                    claimed.seq, claimed.event_id, claimed.attempts + 1, reason
                )
        outcomes = await self._call_sink(name, sendable) if sendable else []
        step("delivery.after_http_before_mark")
        now = self._clock()
        disable_reason: str | None = None
        for (claimed, _), outcome in zip(sendable, outcomes, strict=True):
            if isinstance(outcome, DisableSink) and disable_reason is None:
                disable_reason = outcome.reason
            decisions[claimed.seq] = decide(
                claimed,
                outcome,
                now=now,
                max_attempts=self._max_attempts,
                max_age=self._max_age,
                policy=self._policy,
                rand=self._rand,
            )
        return [decisions[claimed.seq] for claimed in batch], disable_reason

    async def _call_sink(
        self, name: str, sendable: Sequence[tuple[ClaimedDelivery, EventEnvelope]]
    ) -> list[DeliveryOutcome]:
        """The sink's outcomes, bounded by the deliver timeout. A sink that times out, raises
        or answers the wrong number of outcomes gets retried only the events it had not
        answered yet (`answered`): what it reported as taken is recorded as taken, never
        sent again."""
        sink = self._sinks[name]
        envelopes = [envelope for _, envelope in sendable]
        attempts = [claimed.attempts + 1 for claimed, _ in sendable]
        answers: dict[int, DeliveryOutcome] = {}

        def answered(position: int, outcome: DeliveryOutcome) -> None:
            if 0 <= position < len(sendable):
                answers[position] = outcome

        try:
            async with asyncio.timeout(self._deliver_timeout):
                outcomes = await sink.deliver(envelopes, attempts=attempts, answered=answered)
        except TimeoutError:
            log.warning(
                "outbox.sink_timed_out",
                sink=name,
                seconds=self._deliver_timeout,
                answered=len(answers),
                unanswered=len(sendable) - len(answers),
            )
            return _answered_or(
                answers, len(sendable), f"sink timed out after {self._deliver_timeout:g}s"
            )
        except Exception as exc:  # a sink bug must not strand the claimed batch
            log.error("outbox.sink_raised", sink=name, error=type(exc).__name__)
            return _answered_or(answers, len(sendable), f"sink raised {type(exc).__name__}")
        if len(outcomes) != len(sendable):
            log.error("outbox.sink_miscounted", sink=name, events=len(sendable))
            return _answered_or(answers, len(sendable), "sink answered a wrong number of outcomes")
        return outcomes

    def _report_removed_sinks(self) -> None:
        """Once per job (at start-up): name the sinks the outbox holds state for that are
        no longer configured. They hold retention back no more, but their undelivered
        events stay until an operator runs `syncd outbox forget-sink NAME`."""
        removed = queries.removed_sinks(self._engine, self._sinks)
        if removed:
            log.warning(
                "outbox.sinks_removed",
                sinks=removed,
                hint="not configured any more: `syncd outbox forget-sink NAME` drops their "
                "cursor and undelivered deliveries",
            )
        self._removed_reported = True

    def _prune_if_due(self, run_id: int | None) -> int:
        """Apply retention at most once per `prune_every` (the first run prunes)."""
        now = self._clock()
        if self._retention is None or (
            self._pruned_at is not None and now - self._pruned_at < self._prune_every
        ):
            return 0
        pruned = retention.prune(
            self._engine,
            self._retention.total_seconds() / 86_400,
            actor=self.name,
            run_id=run_id,
            now=now,
            configured=self._sinks,
        )
        self._pruned_at = now
        if pruned:
            log.info("outbox.pruned", events=pruned)
        return pruned

    def _publish_backlog(self) -> None:
        """The backlog gauges of the configured sinks (a removed sink's backlog is not work
        to do: `syncd status` shows it as removed)."""
        for name, (pending, oldest, dead) in queries.backlog(
            self._engine, now=self._clock()
        ).items():
            if name not in self._sinks:
                continue
            metrics.OUTBOX_BACKLOG.labels(name).set(pending)
            metrics.OUTBOX_OLDEST_AGE.labels(name).set(oldest)
            metrics.DEAD_LETTERS.labels(name).set(dead)


@dataclass(slots=True)
class _SinkRun:
    """What the lanes of one sink share during one run (one event loop: no lock needed)."""

    sink: str
    stop: bool = False  # no lane claims another batch
    disabled: str | None = None  # why a lane's batch disabled the sink, first seen


def _answered_or(
    answers: Mapping[int, DeliveryOutcome], size: int, reason: str
) -> list[DeliveryOutcome]:
    """The outcomes of a batch cut short: each answered event's own, a Retry for the rest."""
    return [answers.get(position, Retry(reason)) for position in range(size)]


def _count(decisions: Sequence[Decision], recorded: Recorded) -> DeliveryCounts:
    """Counters for the decisions that applied (a lost lease's decision did not)."""
    applied = set(recorded.applied)
    counts = DeliveryCounts(lease_lost=len(recorded.lease_lost))
    for decision in decisions:
        if decision.seq not in applied:
            continue
        match decision:
            case Done():
                counts.delivered += 1
            case Again():
                counts.retried += 1
            case Dead():
                counts.dead += 1
            case Release():
                counts.released += 1
    return counts
