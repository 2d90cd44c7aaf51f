"""Per-job locks: two daemons (or a daemon and a one-shot CLI run) on one state database
never run the same job at the same time.

- PostgreSQL: a session-level `pg_try_advisory_lock` on a connection held for the whole
  run. If the process dies, PostgreSQL drops the connection and the lock with it.
- SQLite: a lease row in `job_locks`, inserted, or taken over once expired, by one atomic
  upsert. A holder keeps it with `renew()` (more often than `lease_seconds`) and deletes
  it on release; a crashed holder's lease simply expires.

`acquire_job_lock` takes the lock at once (raising `JobLocked`) and returns a handle that is
also a context manager releasing it. The handle may be renewed and released from threads
other than the one that acquired it (jobs call it through `asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import structlog
from sqlalchemy import ColumnElement, Connection, Engine, delete, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import JobLocked, StateError
from syncd.state.models import JobLock

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def advisory_key(job: str) -> int:
    """The PostgreSQL advisory-lock key of a job: 63 bits of sha256, stable across runs."""
    digest = hashlib.sha256(f"voxares-syncd:job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


class JobLockHandle:
    """A held job lock. Use as a context manager, or call `release()`; `renew()` keeps it."""

    def __init__(self, job: str, owner: str) -> None:
        self.job = job
        self.owner = owner
        self.released = False
        # When a SQLite lease runs out unless renewed; None for locks that do not expire.
        self.expires_at: datetime | None = None
        self._mutex = threading.Lock()

    def renew(self) -> None:
        """Keep the lock; raise `JobLocked` if it was lost (lease taken over, connection gone)."""
        with self._mutex:
            if self.released:
                raise StateError(f"lock for job {self.job} was already released")
            self._renew()

    def release(self) -> None:
        """Give the lock up. Idempotent; never raises for a lock that is already gone."""
        with self._mutex:
            if self.released:
                return
            self.released = True
            self._release()
        log.debug("job_lock.released", job=self.job)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _renew(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} job={self.job!r} owner={self.owner!r}>"


class _AdvisoryLock(JobLockHandle):
    """PostgreSQL: the lock lives as long as the dedicated connection holds it."""

    def __init__(self, job: str, owner: str, conn: Connection, key: int) -> None:
        super().__init__(job, owner)
        self._conn = conn
        self._key = key

    def _renew(self) -> None:
        # The lock is gone if the connection was dropped; ask the server whether we hold it.
        held_query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND objsubid = 1"
            " AND ((classid::bigint << 32) | objid::bigint) = :key"
        )
        try:
            held = self._conn.execute(held_query, {"key": self._key}).scalar_one()
        except SQLAlchemyError as exc:
            raise JobLocked(f"lock for job {self.job} lost: connection failed") from exc
        if not held:
            raise JobLocked(f"lock for job {self.job} lost")

    def _release(self) -> None:
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except SQLAlchemyError:
            # A dead connection has released the lock already; never pool it again.
            self._conn.invalidate()
        finally:
            self._conn.close()


class _LeaseLock(JobLockHandle):
    """SQLite: a row in `job_locks` that expires unless renewed."""

    def __init__(
        self,
        job: str,
        owner: str,
        engine: Engine,
        acquired_at: datetime,
        lease: timedelta,
        clock: Clock,
    ) -> None:
        super().__init__(job, owner)
        self._engine = engine
        self._acquired_at = acquired_at
        self._lease = lease
        self._clock = clock
        self.expires_at = acquired_at + lease

    def _mine(self) -> list[ColumnElement[bool]]:
        # acquired_at tells two acquisitions by the same owner apart.
        return [
            JobLock.job == self.job,
            JobLock.owner == self.owner,
            JobLock.acquired_at == self._acquired_at,
        ]

    def _renew(self) -> None:
        now = self._clock()
        expires_at = now + self._lease
        with self._engine.begin() as conn:
            renewed = conn.execute(
                update(JobLock)
                .where(*self._mine(), JobLock.expires_at > now)
                .values(expires_at=expires_at)
            ).rowcount
        if renewed != 1:
            raise JobLocked(f"lease for job {self.job} expired or was taken over")
        self.expires_at = expires_at

    def _release(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(JobLock).where(*self._mine()))


def acquire_job_lock(
    engine: Engine,
    job: str,
    owner: str,
    lease_seconds: float,
    *,
    clock: Clock = _utcnow,
) -> JobLockHandle:
    """Take the lock of `job` for `owner` now, or raise `JobLocked` if someone else holds it.

    `owner` names the holder in `job_locks` (e.g. "host:pid"); `lease_seconds` is how long a
    SQLite lease lasts without `renew()` (PostgreSQL locks do not expire). `clock` is for tests.
    """
    if lease_seconds <= 0:
        raise ValueError("lease_seconds must be positive")
    try:
        if engine.dialect.name == "postgresql":
            return _acquire_advisory(engine, job, owner)
        return _acquire_lease(engine, job, owner, timedelta(seconds=lease_seconds), clock)
    except SQLAlchemyError as exc:
        raise StateError(f"cannot take the lock of job {job} ({type(exc).__name__})") from exc


def _acquire_advisory(engine: Engine, job: str, owner: str) -> JobLockHandle:
    key = advisory_key(job)
    # Autocommit: the connection holds the lock for the run but never an open transaction.
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one()
    except BaseException:
        conn.close()
        raise
    if not got:
        conn.close()
        raise JobLocked(f"job {job} is locked by another process")
    log.debug("job_lock.acquired", job=job, backend="postgresql")
    return _AdvisoryLock(job, owner, conn, key)


def _acquire_lease(
    engine: Engine, job: str, owner: str, lease: timedelta, clock: Clock
) -> JobLockHandle:
    now = clock()
    row = {"job": job, "owner": owner, "acquired_at": now, "expires_at": now + lease}
    statement = sqlite_insert(JobLock).values(row)
    # Insert, or take over a lease that has expired: one statement, so atomic.
    statement = statement.on_conflict_do_update(
        index_elements=[JobLock.job],
        set_={
            "owner": statement.excluded.owner,
            "acquired_at": statement.excluded.acquired_at,
            "expires_at": statement.excluded.expires_at,
        },
        where=JobLock.expires_at <= now,
    )
    with engine.begin() as conn:
        taken = conn.execute(statement).rowcount
    if taken != 1:
        raise JobLocked(f"job {job} is locked by another process")
    log.debug("job_lock.acquired", job=job, backend="sqlite")
    return _LeaseLock(job, owner, engine, now, lease, clock)


def release_dead_local_lease(
    engine: Engine, job: str, host: str, is_alive: Callable[[int], bool]
) -> bool:
    """SQLite: delete `job`'s lease when its holder ("host:pid") ran on `host` and that
    process is gone (killed -9, it released nothing), so a restart need not wait for the
    lease to expire. True when a lease was released. PostgreSQL needs nothing: the server
    drops a dead session's advisory locks with its connection.
    """
    if engine.dialect.name == "postgresql":
        return False
    try:
        with engine.begin() as conn:
            owner = conn.execute(select(JobLock.owner).where(JobLock.job == job)).scalar()
            if owner is None:
                return False
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or is_alive(int(pid)):
                return False
            deleted = conn.execute(
                delete(JobLock).where(JobLock.job == job, JobLock.owner == owner)
            ).rowcount
    except SQLAlchemyError as exc:
        raise StateError(f"cannot check the lock of job {job} ({type(exc).__name__})") from exc
    if deleted:
        log.warning("job_lock.dead_holder_released", job=job, owner_pid=int(pid))
    return bool(deleted)
