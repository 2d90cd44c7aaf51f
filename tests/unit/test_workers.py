"""Owner ids and the liveness probe behind taking back a dead worker's lease."""

import os
import subprocess
import sys

from syncd.workers import host_name, owner_id, process_alive


def test_owner_id_names_host_pid_and_tag() -> None:
    """An owner id is host:pid, with the tag appended when given."""
    assert owner_id() == f"{host_name()}:{os.getpid()}"
    assert owner_id("ab12") == f"{host_name()}:{os.getpid()}:ab12"


def test_a_live_process_is_alive_and_a_reaped_one_is_not() -> None:
    """Our own pid is alive; the pid of a child that exited and was reaped is not."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert process_alive(os.getpid())
    assert not process_alive(int(child.stdout))
