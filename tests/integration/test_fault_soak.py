"""Fault soak, CI-sized: the real jobs converge under faults to the fault-free state.

The harness is `scripts/fault_soak.py` (the longer soak behind RELIABILITY.md's figures);
this test runs it small and asserts on the two converged states it returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import load_script

soak = load_script("fault_soak")


@pytest.mark.slow
async def test_faulted_run_converges_to_the_fault_free_state(tmp_path: Path) -> None:
    """Under 5xx/429/hangs/malformed/shuffle/offset/paging updates nothing is lost or doubled."""
    # A hang 30x the read timeout ends as a timeout however the machine stalls; the deadline
    # only bounds a run that never converges (each stops as soon as it has converged).
    spec = soak.SoakSpec(
        patients=50, submissions=40, sms=30, seed=11, hang_seconds=10.0, deadline_seconds=150
    )

    fault_free, faulted = await soak.soak(spec, tmp_path)

    print(soak.report(spec, fault_free, faulted))  # the figures, shown with -s or on failure
    assert soak.compare(fault_free, faulted, spec) == []
    # The faults really happened, and cost extra calls (so the comparison proves something).
    statuses = {label.rsplit(" ", 1)[1] for label in faulted.requests}
    assert {"429", "500", "502", "503", "504"} <= statuses
    assert faulted.transport_failures > 0, "no hung request hit the read timeout"
    assert sum(faulted.requests.values()) > sum(fault_free.requests.values())
    assert len(faulted.latest_versions) > spec.submissions, "no insert during paging"
    # Ambiguous sends end `unknown` (never resent); the fault-free run sends everything.
    assert faulted.sms_states["unknown"] > 0
    assert fault_free.sms_states == {"sent": spec.sms}
    assert faulted.sms_states["sent"] + faulted.sms_states["unknown"] == spec.sms
