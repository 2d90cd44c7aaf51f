"""Submission soak, CI-sized: the real daemon, killed with SIGKILL again and again, against a
served sandbox storing microseconds, with ties, shuffled lists, paging updates, a skewed
clock, a lagging detail replica, deletions and late commits; nothing lost, nothing twice.

The harness is `scripts/submission_soak.py` (the longer soak behind RELIABILITY.md's figures);
this test runs one short seed and asserts on what it measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.scripts import load_script

soak = load_script("submission_soak")


@pytest.mark.slow
def test_killed_daemon_against_every_server_freedom_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """Every live submission's final version is in the outbox once, none reordered; late
    versions were found by the sweep."""
    args = argparse.Namespace(seconds=12.0, kills=4, max_late=120.0)
    outcome = soak.soak_seed(3, args, tmp_path)
    print(outcome)  # the figures, shown with -s or on failure
    assert outcome.kills > 0
    assert outcome.final_versions > 50
    assert outcome.lost == []
    assert outcome.duplicates == 0
    assert outcome.out_of_order == 0
    assert outcome.sweep_found > 0  # late commits happened, and only the sweep saw them
