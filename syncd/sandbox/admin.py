"""Admin endpoints under `/_sandbox/`: control and observe the sandbox (never in the OpenAPI).

| route | what |
|---|---|
| `GET  /_sandbox/health` | `{"ok": true}` once serving |
| `POST /_sandbox/reset` | back to the seed data, faults and activity off; `{"seed"}` |
| `GET  /_sandbox/practices` | practices with their key names and scopes (not the keys) |
| `POST /_sandbox/practices` | `{"name", "keys": [{"name", "scopes"}]}` → practice, keys |
| `POST /_sandbox/practices/{id}/keys` | `{"name", "scopes"}` → `{"key", ...}` |
| `GET/PUT /_sandbox/faults` | the `FaultConfig` |
| `POST /_sandbox/patients` | `{"count", "provider", "idPrefix", "at"}` or `{"patients"}` |
| `POST /_sandbox/submissions` | `{"count", "status", "at", "formId", "patientIds"}` |
| `POST /_sandbox/submissions/{id}/transition` | `{"status", "data", "at"}` |
| `GET/PUT /_sandbox/activity` | `{"enabled", "rate"}` (events per second) |
| `POST /_sandbox/tick` | `{"events"}`: run the activity simulator by hand |
| `GET  /_sandbox/stats` | `?practiceId=&fingerprints=false` |
| `GET  /_sandbox/submission-versions` | `?practiceId=`: every version of every submission |
| `GET  /_sandbox/final-versions` | `?practiceId=&data=true`: ground truth, see below |
| `POST /_sandbox/publish-pending` | `{"practiceId"}`: late writes visible now; `{"published"}` |
| `POST /_sandbox/snapshot` | write the SQLite snapshot now (when persisting) |

`practiceId` defaults to the demo practice where something is created; where something is
read (stats, versions) its absence means every practice.

`final-versions` (`Sandbox.final_versions`) is the ground truth a soak compares a client's
output with: for every submission, its final version as a reader sees it once every pending
(late) write has become visible: `id`, `updatedAt` (rendered), `status`, `receivedAt`,
`patientId`, `formId`, `dataSha256`, `deleted`, ...; plus `pendingWrites` and `allVisibleAt`
(the server time from which every write is visible; `publish-pending` makes that now).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from syncd.sandbox.errors import ApiError, invalid
from syncd.sandbox.faults import FaultConfig, FaultInjector
from syncd.sandbox.state import Sandbox
from syncd.sandbox.validation import parse_json_object
from syncd.voxares.contract import ALL_SCOPES, parse_timestamp

ADMIN_PREFIX = "/_sandbox"


def clock_offset(config: FaultConfig) -> timedelta:
    """The server clock offset a fault configuration asks for."""
    return timedelta(seconds=config.clock_offset_seconds)


def apply_faults(sandbox: Sandbox, config: FaultConfig) -> None:
    """Hand the sandbox's state the faults it carries out itself: clock offset, freedoms."""
    sandbox.clock_offset = clock_offset(config)
    sandbox.configure_freedoms(config, config.seed)


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def _injector(request: Request) -> FaultInjector:
    injector: FaultInjector = request.app.state.faults
    return injector


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def _int(body: dict[str, Any], name: str, default: int, low: int = 0, high: int = 10**7) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid([f"{name} must be an integer from {low} to {high}"])
    return value


def _str(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise invalid([f"{name} must be a string"])
    return value


def _moment(body: dict[str, Any], name: str) -> datetime | None:
    text = _str(body, name)
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise invalid([f"{name} must be an ISO 8601 timestamp"]) from None


def _practice_id(request: Request, body: dict[str, Any] | None = None) -> str:
    chosen = (body or {}).get("practiceId") or request.query_params.get("practiceId")
    if chosen is None:
        return _sandbox(request).demo_practice_id
    if not isinstance(chosen, str):
        raise invalid(["practiceId must be a string"])
    return chosen


def _scopes(value: object) -> list[str]:
    if value is None:
        return list(ALL_SCOPES)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid(["scopes must be a list of strings"])
    return value


async def health(request: Request) -> Response:
    """The sandbox is serving."""
    return JSONResponse({"ok": True})


async def reset(request: Request) -> Response:
    """Back to the seed data with faults and activity off."""
    body = await _body(request)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid(["seed must be an integer"])
    sandbox = _sandbox(request)
    sandbox.reset(seed)
    _injector(request).configure(FaultConfig())
    return JSONResponse({"ok": True, "seed": sandbox.seed})


async def list_practices(request: Request) -> Response:
    """Every practice with its keys' names and scopes (never the keys themselves)."""
    sandbox = _sandbox(request)
    keys: dict[str, list[dict[str, Any]]] = {}
    for key in sandbox.keys.values():
        keys.setdefault(key.practice_id, []).append(
            {"keyId": key.key_id, "name": key.name, "scopes": sorted(key.scopes)}
        )
    practices = [
        {"id": p.id, "name": p.name, "keys": keys.get(p.id, [])} for p in sandbox.practices.values()
    ]
    return JSONResponse({"data": practices, "demoPracticeId": sandbox.demo_practice_id})


async def create_practice(request: Request) -> Response:
    """A new practice with its keys (one all-scopes key named "syncd" unless told otherwise)."""
    body = await _body(request)
    name = _str(body, "name")
    if not name:
        raise invalid(["name should not be empty"])
    wanted = body.get("keys", [{"name": "syncd"}])
    if not isinstance(wanted, list) or not all(isinstance(k, dict) for k in wanted):
        raise invalid(["keys must be a list of objects"])
    sandbox = _sandbox(request)
    practice_id = sandbox.add_practice(name)
    keys = []
    for spec in wanted:
        key_name = _str(spec, "name") or "syncd"
        scopes = _scopes(spec.get("scopes"))
        token = sandbox.issue_key(practice_id, key_name, scopes)
        keys.append({"name": key_name, "key": token, "scopes": scopes})
    return JSONResponse({"id": practice_id, "name": name, "keys": keys}, status_code=201)


async def issue_key(request: Request) -> Response:
    """A new key for an existing practice."""
    body = await _body(request)
    name = _str(body, "name") or "syncd"
    scopes = _scopes(body.get("scopes"))
    token = _sandbox(request).issue_key(request.path_params["practice_id"], name, scopes)
    return JSONResponse({"name": name, "key": token, "scopes": scopes}, status_code=201)


async def get_faults(request: Request) -> Response:
    """The current fault configuration."""
    return JSONResponse(_injector(request).config.model_dump(mode="json"))


async def put_faults(request: Request) -> Response:
    """Replace the fault configuration (the fault RNG restarts from its seed)."""
    body = await _body(request)
    try:
        config = FaultConfig.model_validate(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise invalid(problems) from None
    _injector(request).configure(config)
    apply_faults(_sandbox(request), config)
    return JSONResponse(config.model_dump(mode="json"))


async def seed_patients(request: Request) -> Response:
    """Create patients directly: `count` synthetic ones, or the given `patients` bodies."""
    body = await _body(request)
    sandbox = _sandbox(request)
    practice_id = _practice_id(request, body)
    provider = _str(body, "provider")
    at = _moment(body, "at")
    given = body.get("patients")
    if given is not None:
        if not isinstance(given, list) or not all(isinstance(p, dict) for p in given):
            raise invalid(["patients must be a list of objects"])
        ids = [sandbox.add_patient(practice_id, p, provider=provider, at=at) for p in given]
    else:
        count = _int(body, "count", 1)
        prefix = _str(body, "idPrefix", "seed-") or "seed-"
        ids = sandbox.seed_patients(practice_id, count, provider=provider, id_prefix=prefix, at=at)
    return JSONResponse({"created": len(ids), "ids": ids}, status_code=201)


async def seed_submissions(request: Request) -> Response:
    """Create submissions for random (or given) patients, all in one status."""
    body = await _body(request)
    patient_ids = body.get("patientIds")
    if patient_ids is not None and (
        not isinstance(patient_ids, list) or not all(isinstance(i, str) for i in patient_ids)
    ):
        raise invalid(["patientIds must be a list of strings"])
    ids = _sandbox(request).seed_submissions(
        _practice_id(request, body),
        _int(body, "count", 1),
        status=_str(body, "status", "Pending") or "Pending",
        at=_moment(body, "at"),
        form_id=_str(body, "formId"),
        patient_ids=patient_ids,
    )
    return JSONResponse({"created": len(ids), "ids": ids}, status_code=201)


async def transition_submission(request: Request) -> Response:
    """Move one submission to a status (with optional answers and timestamp)."""
    body = await _body(request)
    status = _str(body, "status")
    if status is None:
        raise invalid(["status should not be empty"])
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise invalid(["data must be an object"])
    sandbox = _sandbox(request)
    submission_id = request.path_params["submission_id"]
    sandbox.set_submission_status(submission_id, status, data, at=_moment(body, "at"))
    submission = sandbox.submissions[submission_id]
    practice = sandbox.practices[submission.practice_id]
    return JSONResponse(sandbox.submission_item(practice, submission))


async def get_activity(request: Request) -> Response:
    """Whether the activity simulator runs, and its rate (events per second)."""
    sandbox = _sandbox(request)
    return JSONResponse({"enabled": sandbox.activity_enabled, "rate": sandbox.activity_rate})


async def put_activity(request: Request) -> Response:
    """Switch the activity simulator on or off, and set its rate."""
    body = await _body(request)
    sandbox = _sandbox(request)
    enabled = body.get("enabled", sandbox.activity_enabled)
    rate = body.get("rate", sandbox.activity_rate)
    if not isinstance(enabled, bool):
        raise invalid(["enabled must be a boolean"])
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 10_000:
        raise invalid(["rate must be a number from 0 to 10000"])
    sandbox.activity_enabled, sandbox.activity_rate = enabled, float(rate)
    return JSONResponse({"enabled": enabled, "rate": float(rate)})


async def tick(request: Request) -> Response:
    """Run the activity simulator by hand."""
    body = await _body(request)
    changed = _sandbox(request).tick(_int(body, "events", 1, high=100_000))
    return JSONResponse({"changed": changed})


async def stats(request: Request) -> Response:
    """Counts: patients per practice, messages, sends per fingerprint, requests by template."""
    practice_id = request.query_params.get("practiceId")
    fingerprints = request.query_params.get("fingerprints", "true").lower() != "false"
    result = _sandbox(request).stats(practice_id, include_fingerprints=fingerprints)
    return JSONResponse(result)


async def submission_versions(request: Request) -> Response:
    """Every version every submission went through."""
    versions = _sandbox(request).submission_versions(request.query_params.get("practiceId"))
    return JSONResponse({"data": versions, "count": len(versions)})


async def final_versions(request: Request) -> Response:
    """Ground truth: each submission's final version once every pending write is visible."""
    include_data = request.query_params.get("data", "false").lower() == "true"
    truth = _sandbox(request).final_versions(
        request.query_params.get("practiceId"), include_data=include_data
    )
    return JSONResponse(truth)


async def publish_pending(request: Request) -> Response:
    """Make every write that is not visible yet visible now."""
    body = await _body(request)
    practice_id = _str(body, "practiceId")
    return JSONResponse({"published": _sandbox(request).publish_pending(practice_id)})


async def snapshot(request: Request) -> Response:
    """Write the SQLite snapshot now (409 when the sandbox does not persist)."""
    path = request.app.state.persist_path
    if path is None:
        raise ApiError(409, "the sandbox was started without a persist path")
    from syncd.sandbox.persist import save

    save(_sandbox(request), path)
    return JSONResponse({"ok": True})


def admin_routes() -> list[BaseRoute]:
    """Every admin route, under `/_sandbox`."""
    p = ADMIN_PREFIX
    return [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/reset", reset, methods=["POST"]),
        Route(f"{p}/practices", list_practices, methods=["GET"]),
        Route(f"{p}/practices", create_practice, methods=["POST"]),
        Route(f"{p}/practices/{{practice_id}}/keys", issue_key, methods=["POST"]),
        Route(f"{p}/faults", get_faults, methods=["GET"]),
        Route(f"{p}/faults", put_faults, methods=["PUT"]),
        Route(f"{p}/patients", seed_patients, methods=["POST"]),
        Route(f"{p}/submissions", seed_submissions, methods=["POST"]),
        Route(
            f"{p}/submissions/{{submission_id}}/transition", transition_submission, methods=["POST"]
        ),
        Route(f"{p}/activity", get_activity, methods=["GET"]),
        Route(f"{p}/activity", put_activity, methods=["PUT"]),
        Route(f"{p}/tick", tick, methods=["POST"]),
        Route(f"{p}/stats", stats, methods=["GET"]),
        Route(f"{p}/submission-versions", submission_versions, methods=["GET"]),
        Route(f"{p}/final-versions", final_versions, methods=["GET"]),
        Route(f"{p}/publish-pending", publish_pending, methods=["POST"]),
        Route(f"{p}/snapshot", snapshot, methods=["POST"]),
    ]
