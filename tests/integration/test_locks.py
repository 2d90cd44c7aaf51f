"""Job locks: one holder per job per database, on SQLite (lease rows) and PostgreSQL
(advisory locks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from syncd.exceptions import JobLocked, StateError
from syncd.state.locks import JobLockHandle, acquire_job_lock, advisory_key
from syncd.state.models import JobLock
from tests.conftest import migrated_engine


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite state database (the lease-row tests are SQLite's mechanism)."""
    with migrated_engine(sqlite_url) as engine:
        yield engine


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL state database (advisory locks are PostgreSQL's mechanism)."""
    with migrated_engine(postgres_url) as engine:
        yield engine


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    """A migrated state database on each backend."""
    return state_engine


class FakeClock:
    """A settable clock, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2025, 5, 20, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- both backends ---------------------------------------------------------------------------


def test_second_holder_is_refused(engine: Engine) -> None:
    """While one process holds a job's lock, another gets JobLocked."""
    with (
        acquire_job_lock(engine, "patients", "host-a:1", 60),
        pytest.raises(JobLocked, match="job patients is locked"),
    ):
        acquire_job_lock(engine, "patients", "host-b:2", 60)


def test_same_owner_cannot_take_it_twice(engine: Engine) -> None:
    """The lock is not re-entrant: a second run in the same process is refused too."""
    with acquire_job_lock(engine, "patients", "host-a:1", 60), pytest.raises(JobLocked):
        acquire_job_lock(engine, "patients", "host-a:1", 60)


def test_released_lock_can_be_taken(engine: Engine) -> None:
    """After release (context exit, even by an exception) the next holder gets it."""
    with pytest.raises(RuntimeError), acquire_job_lock(engine, "patients", "a", 60):
        raise RuntimeError("job failed")
    handle = acquire_job_lock(engine, "patients", "b", 60)
    handle.release()
    handle.release()  # idempotent
    acquire_job_lock(engine, "patients", "c", 60).release()


def test_jobs_lock_independently(engine: Engine) -> None:
    """Holding one job's lock does not block another job."""
    with (
        acquire_job_lock(engine, "patients", "a", 60),
        acquire_job_lock(engine, "submissions", "a", 60) as other,
    ):
        other.renew()


def test_renew_keeps_a_held_lock(engine: Engine) -> None:
    """renew() succeeds while the lock is held and fails once it was released."""
    handle = acquire_job_lock(engine, "content", "a", 60)
    handle.renew()
    handle.release()
    with pytest.raises(StateError, match="already released"):
        handle.renew()


def test_racing_holders_get_one_winner(engine: Engine) -> None:
    """Eight threads racing for one job: exactly one gets it."""
    barrier = threading.Barrier(8)
    won: list[JobLockHandle] = []
    refused: list[int] = []

    def race(index: int) -> None:
        barrier.wait()
        try:
            won.append(acquire_job_lock(engine, "outbox", f"t{index}", 60))
        except JobLocked:
            refused.append(index)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert len(refused) == 7
    won[0].release()


def test_lease_must_be_positive(engine: Engine) -> None:
    """A zero lease is a programming error."""
    with pytest.raises(ValueError, match="lease_seconds"):
        acquire_job_lock(engine, "patients", "a", 0)


# --- SQLite leases -----------------------------------------------------------------------------


def test_expired_lease_is_taken_over(sqlite_engine: Engine) -> None:
    """A holder that stopped renewing (crashed) loses the job once its lease expires."""
    clock = FakeClock()
    crashed = acquire_job_lock(sqlite_engine, "patients", "dead:1", 30, clock=clock)
    clock.advance(29)
    with pytest.raises(JobLocked):
        acquire_job_lock(sqlite_engine, "patients", "live:2", 30, clock=clock)
    clock.advance(2)
    successor = acquire_job_lock(sqlite_engine, "patients", "live:2", 30, clock=clock)
    with pytest.raises(JobLocked, match="expired or was taken over"):
        crashed.renew()
    crashed.release()  # must not delete the successor's lease
    with sqlite_engine.connect() as conn:
        owner = conn.execute(select(JobLock.owner).where(JobLock.job == "patients")).scalar()
    assert owner == "live:2"
    successor.release()


def test_renew_extends_the_lease(sqlite_engine: Engine) -> None:
    """A renewed lease lasts lease_seconds from the renewal, not from acquisition."""
    clock = FakeClock()
    holder = acquire_job_lock(sqlite_engine, "patients", "a", 30, clock=clock)
    clock.advance(20)
    holder.renew()
    assert holder.expires_at == clock.now + timedelta(seconds=30)
    clock.advance(20)  # 40 s after acquisition, 20 s after renewal
    with pytest.raises(JobLocked):
        acquire_job_lock(sqlite_engine, "patients", "b", 30, clock=clock)
    holder.release()


def test_release_deletes_the_lease_row(sqlite_engine: Engine) -> None:
    """A released lease leaves no row behind."""
    acquire_job_lock(sqlite_engine, "patients", "a", 30).release()
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(JobLock)).all() == []


# --- PostgreSQL advisory locks -----------------------------------------------------------------


@pytest.mark.postgres
def test_advisory_lock_dies_with_its_connection(postgres_engine: Engine) -> None:
    """If the holder's connection is killed, the lock is free and renew() reports the loss."""
    holder = acquire_job_lock(postgres_engine, "patients", "a", 60)
    with postgres_engine.connect() as conn:
        pid = conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
                " AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"key": advisory_key("patients")},
        ).scalar_one()
        # With a timeout, pg_terminate_backend waits until the backend has exited.
        conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    try:
        successor = acquire_job_lock(postgres_engine, "patients", "b", 60)
        with pytest.raises(JobLocked, match="lost"):
            holder.renew()
        successor.renew()
        successor.release()
    finally:
        holder.release()  # a dead connection: no error


@pytest.mark.postgres
def test_advisory_lock_holds_no_transaction_open(postgres_engine: Engine) -> None:
    """The lock's connection is idle, not 'idle in transaction', for the whole run."""
    with acquire_job_lock(postgres_engine, "patients", "a", 60), postgres_engine.connect() as conn:
        states = conn.execute(
            text(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        ).scalars()
        assert "idle in transaction" not in set(states)


def test_advisory_key_is_stable_and_distinct() -> None:
    """Keys are 63-bit, the same across runs, different between jobs."""
    assert advisory_key("patients") == advisory_key("patients")
    assert advisory_key("patients") != advisory_key("submissions")
    assert 0 <= advisory_key("patients") < 2**63
