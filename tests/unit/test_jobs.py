"""The pure parts of running a job: counting a result, describing a failure without data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from syncd.exceptions import ConfigError, JobLocked, SyncdError, Unauthorized
from syncd.jobs import RunResult, counts_of, describe_error, did_work, verdict


@dataclass
class _Counts:
    created: int = 3
    updated: int = 0
    skipped: bool = True
    note: str = "text is not a counter"
    ratio: float = 0.5


def test_counts_of_none_is_empty() -> None:
    """A job that returns nothing has no counters."""
    assert counts_of(None) == {}


def test_counts_of_dataclass_keeps_integers_and_booleans_only() -> None:
    """A dataclass result yields its int (and bool, as 0/1) fields, nothing else."""
    assert counts_of(_Counts()) == {"created": 3, "updated": 0, "skipped": 1}


def test_counts_of_mapping_keeps_integers_only() -> None:
    """A mapping result yields its integer values; strings, floats and None are dropped."""
    result = {"sent": 2, "failed": False, "name": "x", "seconds": 1.5, "none": None}
    assert counts_of(result) == {"sent": 2, "failed": 0}


def test_counts_of_a_dataclass_class_or_other_object_is_empty() -> None:
    """A dataclass type (not an instance) or an arbitrary object has no counters."""
    assert counts_of(_Counts) == {}
    assert counts_of(42) == {}
    assert counts_of([1, 2]) == {}


def test_counts_of_values_are_plain_ints() -> None:
    """Booleans become plain ints, so they serialise as numbers in the run record."""
    counts = counts_of({"flag": True})
    assert type(counts["flag"]) is int


@pytest.mark.parametrize(
    "exc",
    [
        JobLocked("job push_patients held by host:1"),
        ConfigError(["patients.source: required"]),
        Unauthorized("401 from GET /patients"),
        SyncdError("stream=form_submissions window failed"),
    ],
)
def test_describe_error_keeps_our_own_messages(exc: SyncdError) -> None:
    """Our own errors are described by class and message (they carry ids only)."""
    assert describe_error(exc) == f"{type(exc).__name__}: {exc}"


def test_describe_error_drops_the_text_of_foreign_exceptions() -> None:
    """A library exception is reduced to its class name: its text may quote patient data."""
    phi = "Ana Horvat +385991234567 ana.horvat@example.org"
    for exc in (ValueError(phi), KeyError(phi), RuntimeError(phi), OSError(2, phi)):
        described = describe_error(exc)
        assert described == type(exc).__name__
        assert "Horvat" not in described
        assert "385991234567" not in described


def test_describe_error_of_a_foreign_subclass_names_the_subclass() -> None:
    """The class name of a foreign exception subclass is kept, still without its text."""

    class RowDecodeError(UnicodeError):
        pass

    assert describe_error(RowDecodeError("Kovačević")) == "RowDecodeError"


def test_describe_error_is_bounded() -> None:
    """Even our own messages are cut to 1000 characters (the run record's column is 1024)."""
    described = describe_error(SyncdError("x" * 5000))
    assert len(described) == 1000
    assert described.startswith("SyncdError: x")


@dataclass
class _Reported:
    outcome: object = "ok"
    problem: object = None


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, ("ok", None)),
        ({"sent": 1}, ("ok", None)),
        (_Reported("ok", "ignored when ok"), ("ok", None)),
        (_Reported("partial", "2 rows failed"), ("partial", "2 rows failed")),
        (_Reported("failed", 42), ("failed", None)),
        (_Reported("interrupted"), ("failed", "the job reported an unknown outcome 'interrupted'")),
    ],
)
def test_verdict_reads_the_outcome_a_result_reports(
    result: object, expected: tuple[str, str | None]
) -> None:
    """A result's `outcome` (ok/partial/failed) and text `problem` decide the run's outcome;
    no outcome means ok, and anything else is a failed run naming what was reported."""
    assert verdict(result) == expected


def test_did_work_follows_idle_else_any_non_zero_counter() -> None:
    """An explicit `idle` wins; otherwise a run worked when any counter is non-zero."""
    assert not did_work(None, {})
    assert not did_work({"a": 0}, {"a": 0})
    assert did_work({"a": 2}, {"a": 2})

    @dataclass
    class Polled:
        pages: int = 1
        idle: bool = True

    assert not did_work(Polled(), {"pages": 1})
    assert did_work(Polled(idle=False), {"pages": 1})


@pytest.mark.parametrize(
    ("outcome", "code"),
    [("ok", 0), ("partial", 1), ("failed", 2), ("interrupted", 2), ("locked", 75)],
)
def test_exit_code_of_a_run(outcome: str, code: int) -> None:
    """`syncd sync` exits 0 ok, 1 partial, 2 failed or interrupted, 75 (EX_TEMPFAIL) locked."""
    assert RunResult("push_patients", 1, outcome, {}).exit_code == code


def test_the_cli_failure_code_matches_the_runner() -> None:
    """The CLI's code for a sync that could not start is the runner's `failed` code."""
    from syncd.cli import EXIT_SYNC_FAILED
    from syncd.jobs import EXIT_FAILED

    assert EXIT_SYNC_FAILED == EXIT_FAILED
