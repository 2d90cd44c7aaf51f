"""How the sink loops of one delivery run share it (`syncd.outbox.pacing`), on a
controllable clock."""

from __future__ import annotations

import asyncio

import pytest

from syncd.outbox.pacing import RunBoard, next_step


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("did_work", "waiting", "may_claim", "before_deadline", "others_working", "expected"),
    [
        (True, False, True, True, False, "again"),  # more may be due at once
        (True, False, False, False, True, "stop"),  # budget spent, no straggler
        (False, False, True, True, True, "pause"),  # idle while another sink works
        (False, False, True, True, False, "stop"),  # everyone idle: the run ends
        (False, True, True, True, False, "pause"),  # events wait behind a transaction
        (False, True, False, False, False, "stop"),  # ... but not past the budget
        (False, False, True, False, True, "pause"),  # past the budget, helping a straggler
    ],
)
def test_next_step(
    did_work: bool,
    waiting: bool,
    may_claim: bool,
    before_deadline: bool,
    others_working: bool,
    expected: str,
) -> None:
    """Again after work, pause while idle beside a working sink or waiting events, else stop."""
    step = next_step(
        did_work=did_work,
        waiting=waiting,
        may_claim=may_claim,
        before_deadline=before_deadline,
        others_working=others_working,
    )
    assert step == expected


def test_only_a_batch_claimed_within_the_budget_keeps_the_other_sinks_claiming() -> None:
    """Past the budget a sink may claim only while another finishes a batch claimed before
    it; a batch claimed past the budget keeps no one going (the run ends)."""
    clock = Clock()
    board = RunBoard(60, clock=clock)
    assert board.may_claim("a")
    assert board.may_claim("b")
    with board.batch("slow"):
        clock.now += 61
        assert board.may_claim("a")  # "slow" is a straggler
        assert not board.may_claim("slow")  # but its own next batch waits for the next run
        with board.batch("a"):
            assert not board.may_claim("slow")  # "a" claimed late: not a straggler
    assert not board.may_claim("a")


def test_others_working_counts_other_sinks_in_a_pass() -> None:
    """A sink sees the others' passes, not its own."""
    board = RunBoard(60, clock=Clock())
    with board.working("a"):
        assert board.others_working("b")
        assert not board.others_working("a")
    assert not board.others_working("b")


async def test_a_pause_ends_when_no_sink_works_any_more() -> None:
    """A pausing sink wakes as soon as the last working sink ends its pass (so the run can
    end), not when one of several does (idle sinks would wake each other in a loop)."""
    board = RunBoard(60)
    pause = asyncio.create_task(board.pause(3600))
    with board.working("slow"):
        with board.working("quick"):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert not pause.done()  # "slow" still works
    await asyncio.wait_for(pause, 5)
