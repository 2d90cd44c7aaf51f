"""The sandbox served by uvicorn in a subprocess, over real TCP on a loopback port."""

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.freedoms import LateVisibility
from syncd.sandbox.server import ServedSandbox
from syncd.sandbox.state import DEMO_API_KEY
from tests.waiting import wait_until

AUTH = {"Authorization": f"Bearer {DEMO_API_KEY}"}
PATIENT = {
    "providerId": "E-1",
    "firstName": "Ana",
    "lastName": "Horvat",
    "mobileNumber": "+385991234567",
}


@pytest.fixture(scope="module")
def served() -> Iterator[ServedSandbox]:
    """One served sandbox for the module (starting a process costs about a second)."""
    with ServedSandbox(seed=3) as sandbox:
        yield sandbox


@pytest.fixture
def fresh(served: ServedSandbox) -> ServedSandbox:
    """The served sandbox, reset to its seed data with faults off."""
    served.admin.reset()
    return served


def test_serves_the_contract_over_tcp(fresh: ServedSandbox) -> None:
    """Upsert, read back and list over a real socket, with the Date header set."""
    assert fresh.base_url.endswith("/api/v1/integration")
    assert fresh.base_url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=fresh.base_url, headers=AUTH, timeout=30) as api:
        created = api.post("/patients", json=PATIENT)
        assert created.status_code == 201
        assert "date" in created.headers
        assert "server" not in created.headers
        assert api.get("/patients/syncd-demo/E-1").json()["id"] == created.json()["id"]
        assert api.get("/openapi.json").json()["openapi"].startswith("3.")
    assert fresh.admin.stats()["requests"]["POST /patients 201"] == 1


def test_dropped_connection_over_tcp_is_a_transport_error(fresh: ServedSandbox) -> None:
    """A drop after processing closes the socket mid-answer; the SMS was still accepted."""
    rule = FaultRule(method="POST", path_prefix="/messages/send", drop_rate=1.0, drop_phase="after")
    fresh.admin.set_faults(FaultConfig(rules=[rule]))
    with httpx.Client(base_url=fresh.base_url, headers=AUTH, timeout=30) as api:
        with pytest.raises(httpx.RemoteProtocolError):
            api.post("/messages/send", json={**PATIENT, "content": "Hi"})
        assert api.get("/patients/syncd-demo/E-1").status_code == 200
    stats = fresh.admin.stats()
    assert stats["sendsAccepted"] == 1
    assert stats["requests"]["POST /messages/send dropped"] == 1


def test_hang_after_processing_times_the_client_out(fresh: ServedSandbox) -> None:
    """A hang after processing: the client's read timeout fires, the upsert happened."""
    fresh.admin.set_faults(FaultConfig(hang_rate=1.0, hang_seconds=60, hang_phase="after"))
    with (
        httpx.Client(base_url=fresh.base_url, headers=AUTH, timeout=0.3) as api,
        pytest.raises(httpx.ReadTimeout),
    ):
        api.post("/patients", json=PATIENT)
    # The client may give up before a starved sandbox process has even processed it.
    wait_until(lambda: fresh.admin.stats()["patients"], "the upsert")
    assert fresh.admin.stats()["patients"] == 1


def test_admin_helper_seeds_and_ticks(fresh: ServedSandbox) -> None:
    """The admin client seeds data, runs the simulator and reads versions."""
    fresh.admin.seed_patients(10)
    ids = fresh.admin.seed_submissions(5)
    fresh.admin.transition(ids[0], "Completed")
    assert fresh.admin.tick(20) == 20
    versions = fresh.admin.submission_versions()
    assert {"Pending", "Completed"} <= {v["status"] for v in versions}
    assert fresh.admin.faults() == FaultConfig()


def test_admin_helper_sets_freedoms_and_reads_the_ground_truth(fresh: ServedSandbox) -> None:
    """Over TCP: freedoms set by the admin client hide late writes from the list; the ground
    truth lists them with the time they will show; publish_pending shows them now."""
    late = LateVisibility(rate=1.0, distribution="fixed", mean_seconds=3600)
    fresh.admin.set_faults(FaultConfig(updated_at_precision="us", late_visibility=late))
    assert fresh.admin.faults().late_visibility == late
    fresh.admin.seed_patients(3)
    ids = fresh.admin.seed_submissions(4)
    with httpx.Client(base_url=fresh.base_url, headers=AUTH, timeout=30) as api:
        assert api.get("/form-submissions").json()["count"] == 0
        truth = fresh.admin.final_versions()
        assert truth["pendingWrites"] == 4
        assert truth["allVisibleAt"] > truth["now"]
        assert {row["id"] for row in truth["data"]} == set(ids)
        assert "data" not in truth["data"][0]
        assert fresh.admin.final_versions(include_data=True)["data"][0]["data"] is None
        assert fresh.admin.publish_pending() == 4
        listed = api.get("/form-submissions").json()["data"]
    assert {(i["id"], i["updatedAt"]) for i in listed} == {
        (row["id"], row["updatedAt"]) for row in truth["data"]
    }


def test_activity_simulator_runs_in_the_background(fresh: ServedSandbox) -> None:
    """Switched on, the simulator creates and moves submissions without being asked."""
    fresh.admin.seed_patients(5)
    fresh.admin.set_activity(True, rate=200)
    try:
        wait_until(lambda: fresh.admin.stats()["submissions"] >= 20, "20 submissions")
    finally:
        fresh.admin.set_activity(False)
    assert fresh.admin.stats()["submissions"] >= 20


def test_faults_given_at_start_apply() -> None:
    """Faults passed on the command line are active from the first request."""
    faults = FaultConfig(error_rates={503: 1.0}, retry_after_seconds=2)
    with (
        ServedSandbox(faults=faults) as sandbox,
        httpx.Client(base_url=sandbox.base_url, headers=AUTH, timeout=30) as api,
    ):
        response = api.get("/forms")
        assert (response.status_code, response.headers["retry-after"]) == (503, "2")
        assert sandbox.admin.faults() == faults


def test_state_survives_a_restart_with_a_persist_path(tmp_path: Path) -> None:
    """With persist_path, a patient created before a restart is there after it."""
    path = tmp_path / "sandbox.db"
    with ServedSandbox(persist_path=path) as sandbox:
        with httpx.Client(base_url=sandbox.base_url, headers=AUTH, timeout=30) as api:
            patient_id = api.post("/patients", json=PATIENT).json()["id"]
        port = sandbox.port
        # SIGTERM: uvicorn shuts down gracefully (snapshot), then re-raises the signal.
        assert sandbox.stop() in (0, -signal.SIGTERM)
        sandbox.start()
        assert sandbox.port == port
        with httpx.Client(base_url=sandbox.base_url, headers=AUTH, timeout=30) as api:
            assert api.get("/patients/syncd-demo/E-1").json()["id"] == patient_id
