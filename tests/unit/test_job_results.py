"""What each job's counters say about its run (`syncd.jobs.verdict`): a job that returns
normally is not necessarily `ok`. Pure values; the delivery job's outcomes are also checked
end to end in tests/integration/test_delivery_job.py."""

from __future__ import annotations

import pytest

from syncd.content.mirror import MirrorCounts
from syncd.jobs import verdict
from syncd.messages.status import StatusCounts
from syncd.outbox.delivery import DeliveryCounts


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (StatusCounts(checked=5, changed=2), ("ok", None)),
        (StatusCounts(checked=3, errors=2), ("partial", "2 of 5 status reads failed")),
        (StatusCounts(not_found=1, errors=1), ("partial", "1 of 2 status reads failed")),
        (StatusCounts(errors=4), ("failed", "4 of 4 status reads failed")),
    ],
)
def test_status_reads_that_fail_make_the_run_partial_or_failed(
    counts: StatusCounts, expected: tuple[str, str | None]
) -> None:
    outcome, problem = verdict(counts)
    assert outcome == expected[0]
    if expected[1] is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(expected[1])


def test_an_incomplete_content_listing_makes_the_run_partial() -> None:
    assert verdict(MirrorCounts(templates=3, added=3)) == ("ok", None)
    outcome, problem = verdict(MirrorCounts(templates=3, incomplete_listings=1))
    assert outcome == "partial"
    assert problem is not None
    assert "1 listing(s) incomplete" in problem


@pytest.mark.parametrize(
    ("counts", "outcome"),
    [
        (DeliveryCounts(), "ok"),
        (DeliveryCounts(claimed=4, delivered=4), "ok"),
        (DeliveryCounts(claimed=4, delivered=3, retried=1), "partial"),
        (DeliveryCounts(claimed=4, delivered=3, dead=1), "partial"),
        (DeliveryCounts(claimed=4, retried=4), "failed"),
        (DeliveryCounts(claimed=4, retried=2, dead=2), "failed"),
        # A sink disabled by a 410 is an operator's decision, not a failure of the run.
        (DeliveryCounts(claimed=2, released=2, sinks_disabled=1), "partial"),
        (DeliveryCounts(claimed=2, delivered=1, lease_lost=1), "partial"),
    ],
)
def test_delivery_counts_say_how_the_run_went(counts: DeliveryCounts, outcome: str) -> None:
    assert verdict(counts)[0] == outcome
    problem = verdict(counts)[1]
    assert (problem is None) == (outcome == "ok")


def test_the_delivery_problem_names_the_command_that_resolves_it() -> None:
    problem = verdict(DeliveryCounts(claimed=3, delivered=1, dead=1, sinks_disabled=1))[1]
    assert problem == (
        "of 3 claimed, 1 delivered; 1 dead-lettered (`syncd outbox list --state dead`), "
        "1 sink(s) disabled (`syncd outbox retry --sink NAME`)"
    )
