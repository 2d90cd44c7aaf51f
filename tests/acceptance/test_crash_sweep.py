"""kill -9 of the whole daemon at every named crash step, then a plain restart: nothing lost,
nothing duplicated, no SMS sent twice, a sound state file.

Each case runs `syncd run` (every job: push, poll, deliver to a signed webhook, send SMS,
SMS status) with `SYNCD_CRASH_AT=<step>` against a served sandbox practice with live
activity, waits for the process to kill itself there, restarts it without the variable,
lets it converge, stops it with SIGTERM and checks the invariants of `crash_harness`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import Practice
from tests.acceptance.crash_harness import (
    CRASH_STEPS,
    KILLED,
    CrashRig,
    WebhookReceiver,
    running,
)

pytestmark = pytest.mark.slow

# Small data, so that one case takes seconds (the sweep runs every step).
PATIENTS = 60
SUBMISSIONS = 40
SMS = 5
# Live activity goes on this long after the restart before the rig waits for convergence.
ACTIVE_AFTER_RESTART = 1.0


@pytest.fixture
def rig(tmp_path: Path, practice: Practice) -> Iterator[CrashRig]:
    """An installation with its own webhook receiver, prepared and with activity running."""
    with WebhookReceiver() as receiver:
        seed = random.randrange(1_000_000)
        crash_rig = CrashRig(
            tmp_path, practice.sandbox, practice.id, practice.key, receiver, seed=seed
        )
        try:
            crash_rig.prepare(patients=PATIENTS, submissions=SUBMISSIONS, sms=SMS)
            yield crash_rig
        finally:
            crash_rig.close()


def kill_at(rig: CrashRig, step: str) -> None:
    """Run the daemon with `SYNCD_CRASH_AT=step` until it kills itself there."""
    assert rig.activity is not None
    rig.activity.start()
    with running(rig, crash_at=step) as daemon:
        code = rig.wait_exit(daemon, 120)  # returns as soon as it killed itself
    assert code == KILLED, f"exit {code}, not killed at {step}: {rig.log_tail()}"
    rig.after_kill()
    assert rig.safety_violations() == []


def restart_and_converge(rig: CrashRig) -> None:
    """Restart without the variable, stop the activity, converge, stop with SIGTERM."""
    assert rig.activity is not None
    with running(rig) as daemon:
        time.sleep(ACTIVE_AFTER_RESTART)
        rig.activity.stop()
        left = rig.wait_converged(180)  # returns as soon as converged
        assert left == [], f"not converged: {left}; {rig.log_tail()}"
        code = rig.stop(daemon)
    assert code == 0, rig.log_tail()


@pytest.mark.parametrize("step", list(CRASH_STEPS))
def test_daemon_killed_at_a_step_then_restarted_loses_and_duplicates_nothing(
    rig: CrashRig, step: str
) -> None:
    """`syncd run` SIGKILLed at a named step, restarted: the end state holds every invariant."""
    kill_at(rig, step)
    sending = set(rig.ever_sending)
    restart_and_converge(rig)
    assert rig.final_violations() == []
    state = rig.read_state()
    sends = rig.sends()
    # A request the kill left sending is unknown, never resent; every other one was sent.
    assert {k for k, (s, _) in state.sms.items() if s != "sent"} == sending
    if step in {"messages.after_mark_sending", "messages.after_send"}:
        assert sending, "the kill left no request sending"
        accepted = [sends.get(rig.sms[key].fingerprint, 0) for key in sending]
        if step == "messages.after_mark_sending":
            # The first send to be committed `sending` died before its call (the others
            # in flight had not passed that point either): nothing was accepted.
            assert accepted == [0] * len(sending)
        else:
            # The first send to get its answer died before recording it: accepted once.
            assert 1 in accepted
    if step == "delivery.after_http_before_mark":
        # The receiver had the batch before the kill: it got the same ids again.
        assert max(rig.receiver.snapshot().values()) >= 2
