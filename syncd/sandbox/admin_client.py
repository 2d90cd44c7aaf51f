"""`SandboxAdmin`: a small synchronous client of the `/_sandbox` admin endpoints.

For tests, the demo and benchmarks that drive a served sandbox (another process): set
faults, seed data, read stats. Raises `httpx.HTTPStatusError` when the sandbox refuses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from syncd.sandbox.faults import FaultConfig
from syncd.voxares.contract import format_timestamp


class SandboxAdmin:
    """Calls the admin endpoints of the sandbox at `admin_url` (ending in `/_sandbox`)."""

    def __init__(self, admin_url: str, *, timeout: float = 30.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self._http = httpx.Client(base_url=self.admin_url, timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        """Whether the sandbox answers."""
        try:
            return bool(self._call("GET", "/health")["ok"])
        except httpx.HTTPError:
            return False

    def reset(self, seed: int | None = None) -> None:
        """Back to the seed data, faults and activity off."""
        self._call("POST", "/reset", json={} if seed is None else {"seed": seed})

    def faults(self) -> FaultConfig:
        """The current fault configuration."""
        return FaultConfig.model_validate(self._call("GET", "/faults"))

    def set_faults(self, faults: FaultConfig | dict[str, Any] | None = None) -> FaultConfig:
        """Replace the fault configuration (None: all faults off)."""
        config = FaultConfig.model_validate(faults or {})
        return FaultConfig.model_validate(
            self._call("PUT", "/faults", json=config.model_dump(mode="json"))
        )

    def practices(self) -> dict[str, Any]:
        """Practices with their key names (`demoPracticeId` names the demo one)."""
        result: dict[str, Any] = self._call("GET", "/practices")
        return result

    def create_practice(
        self, name: str, keys: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """A new practice; `keys` like `[{"name": "ehr", "scopes": ["patients"]}]`."""
        body: dict[str, Any] = {"name": name}
        if keys is not None:
            body["keys"] = keys
        result: dict[str, Any] = self._call("POST", "/practices", json=body)
        return result

    def issue_key(self, practice_id: str, name: str, scopes: list[str] | None = None) -> str:
        """A new API key for a practice."""
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        return str(self._call("POST", f"/practices/{practice_id}/keys", json=body)["key"])

    def seed_patients(
        self,
        count: int = 1,
        *,
        practice_id: str | None = None,
        provider: str | None = None,
        id_prefix: str | None = None,
        patients: list[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Create synthetic (or given) patients directly; their Voxares ids."""
        body = _drop_none(
            {
                "count": count,
                "practiceId": practice_id,
                "provider": provider,
                "idPrefix": id_prefix,
                "patients": patients,
            }
        )
        return list(self._call("POST", "/patients", json=body)["ids"])

    def seed_submissions(
        self,
        count: int = 1,
        *,
        practice_id: str | None = None,
        status: str = "Pending",
        at: datetime | None = None,
        form_id: str | None = None,
        patient_ids: list[str] | None = None,
    ) -> list[str]:
        """Create submissions in one status (all at `at` when given); their ids."""
        body = _drop_none(
            {
                "count": count,
                "practiceId": practice_id,
                "status": status,
                "at": None if at is None else format_timestamp(at),
                "formId": form_id,
                "patientIds": patient_ids,
            }
        )
        return list(self._call("POST", "/submissions", json=body)["ids"])

    def transition(
        self,
        submission_id: str,
        status: str,
        *,
        data: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Move a submission to `status`; the list item after the change."""
        body = _drop_none(
            {"status": status, "data": data, "at": None if at is None else format_timestamp(at)}
        )
        result: dict[str, Any] = self._call(
            "POST", f"/submissions/{submission_id}/transition", json=body
        )
        return result

    def set_activity(self, enabled: bool, rate: float | None = None) -> dict[str, Any]:
        """Switch the activity simulator on or off (rate in events per second)."""
        result: dict[str, Any] = self._call(
            "PUT", "/activity", json=_drop_none({"enabled": enabled, "rate": rate})
        )
        return result

    def tick(self, events: int = 1) -> int:
        """Run the activity simulator by hand; how many submissions changed."""
        return int(self._call("POST", "/tick", json={"events": events})["changed"])

    def stats(self, practice_id: str | None = None, *, fingerprints: bool = True) -> dict[str, Any]:
        """Counts: patients, messages, sends per fingerprint, requests by template and status."""
        params = _drop_none({"practiceId": practice_id, "fingerprints": str(fingerprints).lower()})
        result: dict[str, Any] = self._call("GET", "/stats", params=params)
        return result

    def submission_versions(self, practice_id: str | None = None) -> list[dict[str, str]]:
        """Every version of every submission: id, updatedAt, status."""
        params = _drop_none({"practiceId": practice_id})
        return list(self._call("GET", "/submission-versions", params=params)["data"])

    def final_versions(
        self, practice_id: str | None = None, *, include_data: bool = False
    ) -> dict[str, Any]:
        """Ground truth (`Sandbox.final_versions`): each submission's final version once every
        pending write is visible, with `pendingWrites` and `allVisibleAt`."""
        params = _drop_none({"practiceId": practice_id, "data": "true" if include_data else None})
        result: dict[str, Any] = self._call("GET", "/final-versions", params=params)
        return result

    def publish_pending(self, practice_id: str | None = None) -> int:
        """Make every write that is not visible yet visible now; how many there were."""
        body = _drop_none({"practiceId": practice_id})
        return int(self._call("POST", "/publish-pending", json=body)["published"])

    def snapshot(self) -> None:
        """Write the SQLite snapshot now (the sandbox must persist)."""
        self._call("POST", "/snapshot")


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
