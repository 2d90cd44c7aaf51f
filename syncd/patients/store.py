"""The push job's state database work for one run: lookups per batch, one write per batch.

Synchronous SQLAlchemy Core on ONE connection held for the whole run and used from one
worker thread only. That connection also holds the run's temporary table `push_run_keys`:
every row key this run has read so far, with the run ordinal and line of its first row.
It is how a repeated providerId is recognised among 1,000,000 rows while the process's
memory stays flat (the keys live in the database, not in a Python set), and, at the end
of a complete run, how the mirror learns which patients the source still has.

Only SQLite and PostgreSQL are supported (their `INSERT ... ON CONFLICT`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from typing import cast as typing_cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import StateError
from syncd.patients.lookup import (
    ANALYZE_RUN_KEYS,
    RUN_KEYS,
    KeyState,
    int_array,
    key_states,
    lookup_statements,
    text_array,
)
from syncd.patients.plan import QuarantineEntry, Unchanged
from syncd.state.models import PatientMirror, QuarantinedRow
from syncd.state.runs import AuditRecord, audit_many

ACTOR: Final = "push_patients"
_MIRROR = typing_cast(Table, PatientMirror.__table__)
_QUARANTINE = typing_cast(Table, QuarantinedRow.__table__)


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PushedRow:
    """A successful upsert, to be recorded in the mirror and the audit log."""

    key: str
    voxares_patient_id: str
    payload_hash: str
    row_hash: str
    payload_json: str
    created: bool

    def __repr__(self) -> str:
        return f"PushedRow(key={self.key!r}, voxares_patient_id={self.voxares_patient_id!r})"


@dataclass(frozen=True, slots=True)
class QuarantineWrite:
    """A quarantine entry to create or refresh (no field values in `reason`)."""

    key: str
    line: int
    field: str | None
    reason: str
    row_hash: str


@dataclass(slots=True)
class BatchWrites:
    """Everything one batch changes, written in one transaction by `PushStore.commit`."""

    pushed: list[PushedRow] = field(default_factory=list)
    # (key, raw row hash): the row normalises to what Voxares holds; only the hash moves.
    refreshed: list[tuple[str, str]] = field(default_factory=list)
    # Quarantine keys whose entry no longer applies (pushed or found unchanged).
    cleared: list[str] = field(default_factory=list)
    quarantined: list[QuarantineWrite] = field(default_factory=list)
    # Keys the source says are inactive (FHIR `active = false`): inactive in the mirror,
    # written after `pushed` and `refreshed`, which make a row active.
    inactive: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.pushed or self.refreshed or self.cleared or self.quarantined or self.inactive
        )

    def keep_unchanged(self, key: str, raw_hash: str, decision: Unchanged) -> None:
        """What a row found unchanged still writes: its new raw hash, its quarantine cleared."""
        if decision.refresh_row_hash:
            self.refreshed.append((key, raw_hash))
        if decision.clear_quarantine:
            self.cleared.append(key)


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT construct, the one with `on_conflict_do_*`."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StateError(f"the patient push supports SQLite and PostgreSQL, not {name}")


class PushStore:
    """One run's reads and writes; open with `PushStore.open`, always `close`."""

    def __init__(
        self, conn: Connection, *, provider: str, source: str, run_id: int, started: datetime
    ) -> None:
        self._conn = conn
        self.provider = provider
        self.source = source
        self.run_id = run_id
        self.started = started
        self._postgres = conn.dialect.name == "postgresql"
        self._claim, self._lookup, self._lookup_unsettled = lookup_statements(
            self._postgres, provider, source
        )
        # PostgreSQL runs `lookup_unsettled` on the driver's cursor (pipelined): its SQL and
        # the values of its constant parameters (provider, source, limits), compiled once.
        compiled = self._lookup_unsettled.compile(dialect=conn.dialect)
        self._lookup_unsettled_sql = (str(compiled), dict(compiled.params))

    @classmethod
    def open(cls, engine: Engine, *, provider: str, source: str, run_id: int) -> PushStore:
        """Connect and create the run's key table."""
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot connect to the state database ({type(exc).__name__})"
            ) from None
        try:
            with conn.begin():
                RUN_KEYS.create(conn)
            return cls(conn, provider=provider, source=source, run_id=run_id, started=utcnow())
        except Exception:
            conn.invalidate()
            conn.close()
            raise

    def close(self) -> None:
        """Drop the key table and give the connection back.

        A connection in an unknown state (an error mid-transaction) is discarded instead, so
        that no later user of the pool inherits the temporary table.
        """
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
            with self._conn.begin():
                RUN_KEYS.drop(self._conn)
        except SQLAlchemyError:
            self._conn.invalidate()
        finally:
            self._conn.close()

    def now(self) -> datetime:
        """Now, but never before the run started: "seen in this run" is `>= started`."""
        return max(utcnow(), self.started)

    def lookup(self, firsts: Sequence[tuple[str, int, int]]) -> dict[str, KeyState]:
        """Claim the batch's keys for this run and load their state in one query.

        `firsts` holds (key, run ordinal, line) for the first row of each distinct key of
        the batch. A key claimed by an earlier row of the run keeps that row's ordinal,
        which is how the caller tells a duplicate.
        """
        if not firsts:
            return {}
        keys = [key for key, _, _ in firsts]
        try:
            with self._conn.begin():
                if self._postgres:
                    seqs = [seq for _, seq, _ in firsts]
                    lines = [line for _, _, line in firsts]
                    params = {"keys": keys, "seqs": seqs, "lines": lines}
                    result = self._conn.execute(self._lookup, params).all()
                else:
                    self._conn.execute(self._claim, {"claims": json.dumps(firsts)})
                    result = self._conn.execute(self._lookup, {"keys": json.dumps(keys)}).all()
        except SQLAlchemyError as exc:
            raise _state_error("look up a batch", exc) from None
        return key_states(result)

    def lookup_unsettled(
        self,
        firsts: Sequence[tuple[str, int, int, str]],
        while_waiting: Callable[[], None] | None = None,
    ) -> dict[str, KeyState]:
        """`lookup` of (key, run ordinal, line, raw row hash), returning only the keys that
        need a decision: a key missing from the answer was claimed by this batch (its first
        row in the run is the given one), has no quarantine entry, and its mirror row holds
        this very raw hash, i.e. its row is unchanged and nothing is written for it.

        What a re-sync of an unchanged export costs per row is mostly this lookup: the
        comparison made by the database spares fetching and decoding 1,000 rows of state
        per batch (BENCHMARKS.md, B3, item 25). `while_waiting` is called once, on
        PostgreSQL while the server runs the lookup (item 26), on SQLite after it.
        """
        if not firsts:
            if while_waiting is not None:
                while_waiting()
            return {}
        try:
            with self._conn.begin():
                if self._postgres:
                    # Array literals as text: psycopg's array dumper, in Python, cost more
                    # than the lookup's other client work (py-spy, item 26).
                    params = {
                        "keys": text_array(key for key, _, _, _ in firsts),
                        "seqs": int_array(seq for _, seq, _, _ in firsts),
                        "lines": int_array(line for _, _, line, _ in firsts),
                        "hashes": text_array(raw_hash for _, _, _, raw_hash in firsts),
                    }
                    result = self._pipelined(params, while_waiting)
                else:
                    claims = json.dumps(firsts)
                    self._conn.execute(self._claim, {"claims": claims})
                    first_seq = min(seq for _, seq, _, _ in firsts)
                    result = self._conn.execute(
                        self._lookup_unsettled, {"claims": claims, "first_seq": first_seq}
                    ).all()
        except SQLAlchemyError as exc:
            raise _state_error("look up a batch", exc) from None
        if while_waiting is not None and not self._postgres:
            while_waiting()  # SQLite looks up in this thread: nothing to overlap
        return key_states(result)

    def _pipelined(
        self, params: dict[str, Any], while_waiting: Callable[[], None] | None
    ) -> Sequence[Any]:
        """PostgreSQL: send the lookup, run `while_waiting` while the server works on it,
        then read the answer (psycopg's pipeline mode, in the caller's transaction).

        The server spends ~11 ms on a batch of 1,000 keys (the claim and three index probes
        per key), during which the daemon used to wait: py-spy had that wait at about half
        of a PostgreSQL re-sync's wall time. `while_waiting` (reading the next batch of the
        source) must not use this connection, and must not raise.
        """
        import psycopg  # the PostgreSQL extra, present whenever this runs

        sql, defaults = self._lookup_unsettled_sql
        raw = typing_cast(psycopg.Connection[Any], self._conn.connection.driver_connection)
        try:
            with raw.pipeline(), raw.cursor() as cursor:
                cursor.execute(sql, {**defaults, **params})
                if while_waiting is not None:
                    while_waiting()
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise _state_error("look up a batch", exc) from None

    def quarantine_entries(self, keys: Iterable[str]) -> dict[str, QuarantineEntry]:
        """The quarantine entries of `keys` (used for duplicates' own keys, which are rare)."""
        wanted = list(keys)
        if not wanted:
            return {}
        q = _QUARANTINE.c
        query = select(q.row_key, q.row_hash, q.field, q.reason).where(
            q.source == self.source, q.row_key.in_(wanted)
        )
        try:
            with self._conn.begin():
                result = self._conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise _state_error("look up quarantine entries", exc) from None
        return {key: QuarantineEntry(h, f, r) for key, h, f, r in result}

    def commit(
        self, writes: BatchWrites, *, also: Callable[[Connection], None] | None = None
    ) -> None:
        """Write one batch's outcome in one transaction.

        Each pushed patient's mirror row and its audit entry are committed together; a
        crash before this commit loses only the record, and the next run pushes the row
        again (POST /patients is an upsert, so that is harmless). `also` writes what the
        caller records with the batch (the HL7 feed: its inbound rows, merges, events) in
        the same transaction, after the mirror.
        """
        if not writes and also is None:
            return
        now = self.now()
        try:
            with self._conn.begin():
                self._write_pushed(writes.pushed, now)
                self._write_refreshed(writes.refreshed)
                self._write_inactive(writes.inactive)
                self._write_cleared(writes.cleared)
                self._write_quarantined(writes.quarantined, now)
                if also is not None:
                    also(self._conn)
        except SQLAlchemyError as exc:
            raise _state_error("record a batch", exc) from None

    def _write_pushed(self, pushed: Sequence[PushedRow], now: datetime) -> None:
        if not pushed:
            return
        stmt = _insert(self._conn, _MIRROR)
        stmt = stmt.on_conflict_do_update(
            index_elements=["provider", "provider_id"],
            set_={
                "voxares_patient_id": stmt.excluded.voxares_patient_id,
                "payload_hash": stmt.excluded.payload_hash,
                "source_row_hash": stmt.excluded.source_row_hash,
                "payload": stmt.excluded.payload,
                "state": "active",
                "last_pushed_at": stmt.excluded.last_pushed_at,
                "last_seen_at": stmt.excluded.last_seen_at,
                "last_seen_run_id": stmt.excluded.last_seen_run_id,
            },
        )
        self._conn.execute(
            stmt,
            [
                {
                    "provider": self.provider,
                    "provider_id": row.key,
                    "voxares_patient_id": row.voxares_patient_id,
                    "payload_hash": row.payload_hash,
                    "source_row_hash": row.row_hash,
                    "payload": row.payload_json,
                    "state": "active",
                    "first_pushed_at": now,
                    "last_pushed_at": now,
                    "last_seen_at": now,
                    "last_seen_run_id": self.run_id,
                }
                for row in pushed
            ],
        )
        audit_many(
            self._conn,
            ACTOR,
            self.run_id,
            (
                AuditRecord(
                    "patient.pushed",
                    "patient",
                    row.key,
                    f"voxares_id={row.voxares_patient_id} "
                    f"{'created' if row.created else 'updated'}",
                )
                for row in pushed
            ),
            at=now,
        )

    def _write_refreshed(self, refreshed: Sequence[tuple[str, str]]) -> None:
        if not refreshed:
            return
        m = _MIRROR.c
        stmt = (
            update(_MIRROR)
            .where(m.provider == bindparam("p"), m.provider_id == bindparam("k"))
            # A row read again is active, unless the source says otherwise (`_write_inactive`).
            .values(source_row_hash=bindparam("h"), state="active")
        )
        self._conn.execute(stmt, [{"p": self.provider, "k": k, "h": h} for k, h in refreshed])

    def _write_inactive(self, keys: Sequence[str]) -> None:
        """Mark rows the source says are inactive, stamped with this run so that a complete
        run's reactivation of the rows it read (`finish_complete_run`) leaves them alone."""
        if not keys:
            return
        m = _MIRROR.c
        stmt = (
            update(_MIRROR)
            .where(m.provider == bindparam("p"), m.provider_id == bindparam("k"))
            .values(state="inactive", last_seen_run_id=self.run_id)
        )
        self._conn.execute(stmt, [{"p": self.provider, "k": k} for k in keys])

    def _write_cleared(self, cleared: Sequence[str]) -> None:
        if not cleared:
            return
        q = _QUARANTINE.c
        self._conn.execute(
            delete(_QUARANTINE).where(q.source == self.source, q.row_key.in_(list(cleared)))
        )

    def _write_quarantined(self, entries: Sequence[QuarantineWrite], now: datetime) -> None:
        if not entries:
            return
        # One row per key: PostgreSQL refuses an upsert that touches a row twice.
        entries = list({e.key: e for e in entries}.values())
        stmt = _insert(self._conn, _QUARANTINE)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "row_key"],
            set_={
                "line_number": stmt.excluded.line_number,
                "field": stmt.excluded.field,
                "reason": stmt.excluded.reason,
                "row_hash": stmt.excluded.row_hash,
                "last_seen_at": stmt.excluded.last_seen_at,
                "seen_count": _QUARANTINE.c.seen_count + 1,
            },
        )
        self._conn.execute(
            stmt,
            [
                {
                    "source": self.source,
                    "row_key": e.key,
                    "line_number": e.line,
                    "field": e.field,
                    "reason": e.reason,
                    "row_hash": e.row_hash,
                    "first_seen_at": now,
                    "last_seen_at": now,
                    "seen_count": 1,
                }
                for e in entries
            ],
        )

    def finish_complete_run(self, *, mark_inactive: bool) -> int:
        """After a run that read the whole source: reconcile the mirror, tidy quarantine.

        Mirror rows of this provider that were inactive and whose key the run read are
        active again; with `mark_inactive`, active ones whose key it did not read become
        inactive. Reactivated rows get this run's `last_seen_*`. Rows the run read and
        left alone are not rewritten: an unchanged re-sync writes nothing (rewriting
        100,000 rows would cost more than the whole rest of the run). Quarantine entries
        of this source that the run did not touch are dropped: their rows are gone or
        fixed. Returns the number of rows made inactive.
        """
        m, q = _MIRROR.c, _QUARANTINE.c
        now = self.now()
        read = exists().where(RUN_KEYS.c.row_key == m.provider_id)
        try:
            with self._conn.begin():
                if self._postgres:
                    # Temporary tables are never auto-analysed; without statistics the
                    # planner may probe the whole key table once per mirror row.
                    self._conn.execute(ANALYZE_RUN_KEYS)
                self._conn.execute(
                    update(_MIRROR)
                    .where(
                        m.provider == self.provider,
                        m.state == "inactive",
                        read,
                        # Made inactive by the source itself in this run (`_write_inactive`).
                        m.last_seen_run_id.is_distinct_from(self.run_id),
                    )
                    .values(state="active", last_seen_run_id=self.run_id, last_seen_at=now)
                )
                inactivated = 0
                if mark_inactive:
                    result = self._conn.execute(
                        update(_MIRROR)
                        .where(m.provider == self.provider, m.state == "active", ~read)
                        .values(state="inactive")
                    )
                    inactivated = result.rowcount
                self._conn.execute(
                    delete(_QUARANTINE).where(
                        q.source == self.source, q.last_seen_at < self.started
                    )
                )
        except SQLAlchemyError as exc:
            raise _state_error("finish the run", exc) from None
        return inactivated


def _state_error(doing: str, exc: Exception) -> StateError:
    """A `StateError` naming the step and the driver's error class (its text may hold data)."""
    return StateError(f"patient push: cannot {doing} ({type(exc).__name__})")
