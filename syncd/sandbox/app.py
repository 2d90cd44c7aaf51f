"""The sandbox as a Starlette app: the contract routes, the admin routes, the OpenAPI document.

Handlers are thin: authenticate, check the key's scope, hand plain values to `Sandbox`, and
render what it returns. Errors raised as `ApiError` become the contract's error bodies; an
unknown route is answered like NestJS does (`404 Cannot GET /path`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from syncd.sandbox import admin
from syncd.sandbox.activity import run_activity
from syncd.sandbox.errors import ApiError, error_body
from syncd.sandbox.faults import FaultConfig, FaultInjector
from syncd.sandbox.middleware import (
    OPENAPI_PATH,
    SLASH_IN_SEGMENT,
    ContractMiddleware,
    DateHeaderMiddleware,
)
from syncd.sandbox.openapi import openapi_document
from syncd.sandbox.records import ApiKey
from syncd.sandbox.state import Sandbox, SubmissionQuery
from syncd.sandbox.validation import parse_json_object, parse_paging
from syncd.voxares import contract as c

Handler = Callable[[Request, ApiKey], Awaitable[Response]]


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def _injector(request: Request) -> FaultInjector:
    injector: FaultInjector = request.app.state.faults
    return injector


def scope_for(path: str) -> str:
    """The scope a contract path needs (longest matching prefix of `SCOPE_BY_PATH_PREFIX`)."""
    matches = [prefix for prefix in c.SCOPE_BY_PATH_PREFIX if path.startswith(prefix)]
    return c.SCOPE_BY_PATH_PREFIX[max(matches, key=len)]


def _authorize(request: Request, scope: str) -> ApiKey:
    """The request's API key (401 when missing or unknown, 403 when it lacks `scope`)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = _sandbox(request).authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        raise ApiError(401, "Invalid or missing API key")
    if scope not in key.scopes:
        raise ApiError(403, f"API key lacks the {scope} scope")
    return key


async def _json_body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


# ------------------------------------------------------------------ contract handlers


async def upsert_patient(request: Request, key: ApiKey) -> Response:
    """POST /patients."""
    created, patient = _sandbox(request).upsert_patient(key, await _json_body(request))
    status = c.PATIENT_CREATED_STATUS if created else c.PATIENT_UPDATED_STATUS
    return JSONResponse(patient.to_api(), status_code=status)


async def list_patients(request: Request, key: ApiKey) -> Response:
    """GET /patients."""
    options = _injector(request).list_options()
    return JSONResponse(_sandbox(request).list_patients(key, request.query_params, options))


def path_param(request: Request, name: str) -> str:
    """A path parameter, with slashes that arrived encoded (`%2F`) restored."""
    return str(request.path_params[name]).replace(SLASH_IN_SEGMENT, "/")


async def get_patient(request: Request, key: ApiKey) -> Response:
    """GET /patients/:provider/:providerId."""
    provider, provider_id = path_param(request, "provider"), path_param(request, "provider_id")
    patient = _sandbox(request).get_patient(key, provider, provider_id)
    return JSONResponse(patient.to_api())


async def patch_patient(request: Request, key: ApiKey) -> Response:
    """PATCH /patients/:provider/:providerId."""
    provider, provider_id = path_param(request, "provider"), path_param(request, "provider_id")
    body = await _json_body(request)
    patient = _sandbox(request).patch_patient(key, provider, provider_id, body)
    return JSONResponse(patient.to_api())


async def send_message(request: Request, key: ApiKey) -> Response:
    """POST /messages/send."""
    sandbox = _sandbox(request)
    message = sandbox.send_message(key, await _json_body(request))
    return JSONResponse(message.to_api(sandbox.now()), status_code=c.MESSAGE_SENT_STATUS)


async def get_message(request: Request, key: ApiKey) -> Response:
    """GET /messages/:messageId."""
    sandbox = _sandbox(request)
    message = sandbox.get_message(key, path_param(request, "message_id"))
    return JSONResponse(message.to_api(sandbox.now()))


async def list_templates(request: Request, key: ApiKey) -> Response:
    """GET /practice-templates."""
    options = _injector(request).list_options()
    return JSONResponse(_sandbox(request).list_templates(key, request.query_params, options))


async def list_forms(request: Request, key: ApiKey) -> Response:
    """GET /forms."""
    options = _injector(request).list_options()
    return JSONResponse(_sandbox(request).list_forms(key, request.query_params, options))


async def list_documents(request: Request, key: ApiKey) -> Response:
    """GET /documents."""
    options = _injector(request).list_options()
    return JSONResponse(_sandbox(request).list_documents(key, request.query_params, options))


async def list_submissions(request: Request, key: ApiKey) -> Response:
    """GET /form-submissions (optionally disturbed between pages, a fault)."""
    sandbox, injector = _sandbox(request), _injector(request)
    query = request.query_params
    page, _ = parse_paging(query)
    if page > 0 and injector.should_mutate():
        filters = SubmissionQuery.parse(query)
        sandbox.disturb_submissions(key, filters, injector.config.mutate_count, injector.rng)
    return JSONResponse(sandbox.list_submissions(key, query, injector.list_options()))


async def get_submission(request: Request, key: ApiKey) -> Response:
    """GET /form-submissions/:id."""
    detail = _sandbox(request).get_submission(key, path_param(request, "submission_id"))
    return JSONResponse(detail)


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of the contract part (no admin routes)."""
    return JSONResponse(request.app.state.openapi)


def _contract_route(path: str, handler: Handler, method: str) -> Route:
    """A route at `API_PREFIX + path` whose handler first checks the key and its scope."""
    scope = scope_for(path)

    async def endpoint(request: Request) -> Response:
        return await handler(request, _authorize(request, scope))

    endpoint.__doc__ = handler.__doc__
    # Starlette's {param} syntax is the contract's: /patients/{provider}/{provider_id}.
    return Route(c.API_PREFIX + path, endpoint, methods=[method], name=handler.__name__)


def contract_routes() -> list[BaseRoute]:
    """Every route of the contract, under the API prefix."""
    return [
        Route(OPENAPI_PATH, openapi_json, methods=["GET"]),
        _contract_route(c.PATIENTS, upsert_patient, "POST"),
        _contract_route(c.PATIENTS, list_patients, "GET"),
        _contract_route(c.PATIENT_BY_EXTERNAL_ID, get_patient, "GET"),
        _contract_route(c.PATIENT_BY_EXTERNAL_ID, patch_patient, "PATCH"),
        _contract_route(c.MESSAGES_SEND, send_message, "POST"),
        _contract_route(c.MESSAGE_BY_ID, get_message, "GET"),
        _contract_route(c.PRACTICE_TEMPLATES, list_templates, "GET"),
        _contract_route(c.FORMS, list_forms, "GET"),
        _contract_route(c.DOCUMENTS, list_documents, "GET"),
        _contract_route(c.FORM_SUBMISSIONS, list_submissions, "GET"),
        _contract_route(c.FORM_SUBMISSION_BY_ID, get_submission, "GET"),
    ]


# ------------------------------------------------------------------ errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        # NestJS answers an unknown route, whatever the method, with this 404.
        message = f"Cannot {request.method} {request.url.path}"
        return JSONResponse(error_body(404, message), status_code=404)
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)


# ------------------------------------------------------------------ the app


def create_app(
    sandbox: Sandbox | None = None,
    faults: FaultConfig | None = None,
    *,
    persist_path: str | Path | None = None,
    activity_interval: float = 0.25,
    snapshot_interval: float = 2.0,
    fault_clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The sandbox app; `app.state.sandbox` is the `Sandbox`, `app.state.faults` the injector.

    Served (with a lifespan), it runs the activity simulator in the background (idle until
    enabled) and, with `persist_path`, snapshots the state to SQLite every `snapshot_interval`
    seconds when something changed, and once more on shutdown. In-process tests through
    `httpx.ASGITransport` run no lifespan, so nothing happens behind their back.
    `fault_clock` (monotonic seconds) drives the rate limit's token buckets: a test passes
    a clock it moves itself, so refills never depend on the machine's speed.
    """
    sandbox = sandbox or Sandbox()
    injector = FaultInjector(faults or FaultConfig(), monotonic=fault_clock)
    admin.apply_faults(sandbox, injector.config)
    routes = contract_routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run_activity(sandbox, activity_interval))]
        if persist_path is not None:
            from syncd.sandbox.persist import run_snapshots, save

            tasks.append(
                asyncio.create_task(run_snapshots(sandbox, persist_path, snapshot_interval))
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if persist_path is not None:
                save(sandbox, persist_path)

    app = Starlette(
        routes=[*routes, *admin.admin_routes()],
        middleware=[
            Middleware(DateHeaderMiddleware, sandbox=sandbox),
            Middleware(ContractMiddleware, sandbox=sandbox, injector=injector, routes=routes),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.sandbox = sandbox
    app.state.faults = injector
    app.state.persist_path = None if persist_path is None else Path(persist_path)
    app.state.openapi = openapi_document()
    return app
