"""Crash hooks (`syncd.testing_hooks`) that the poller's crash tests rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from syncd import testing_hooks

SCRIPT = """
from syncd import testing_hooks
for _ in range(3):
    testing_hooks.step("poller.after_page")
    print("passed", flush=True)
"""


def run_with(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != testing_hooks.ENV_VAR}
    if spec is not None:
        env[testing_hooks.ENV_VAR] = spec
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.fixture(autouse=True)
def no_callback() -> Iterator[None]:
    yield
    testing_hooks.set_callback(None)


def test_steps_do_nothing_when_unset() -> None:
    """Without SYNCD_CRASH_AT every step passes."""
    done = run_with(None)
    assert done.returncode == 0
    assert done.stdout.count("passed") == 3


def test_nth_reach_of_the_named_step_kills_the_process() -> None:
    """SYNCD_CRASH_AT=name:2 SIGKILLs the process the second time the step is reached."""
    done = run_with("poller.after_page:2")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.count("passed") == 1


def test_name_alone_means_the_first_reach_and_other_steps_pass() -> None:
    """A bare name crashes at its first reach; another step name never crashes."""
    assert run_with("poller.after_page").returncode == -signal.SIGKILL
    assert run_with("poller.after_watermark").returncode == 0


def test_callback_sees_every_step_in_process() -> None:
    """An installed callback is called with each step's name, and can raise to stop work."""
    seen: list[str] = []
    testing_hooks.set_callback(seen.append)
    testing_hooks.step("a")
    testing_hooks.step("b")
    assert seen == ["a", "b"]

    def boom(name: str) -> None:
        raise RuntimeError(name)

    testing_hooks.set_callback(boom)
    with pytest.raises(RuntimeError, match="c"):
        testing_hooks.step("c")
    testing_hooks.set_callback(None)
    testing_hooks.step("d")
