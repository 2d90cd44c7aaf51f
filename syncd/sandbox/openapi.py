"""The OpenAPI 3.0 document of the contract the sandbox serves, written by hand.

Only the integration API (paths relative to the server URL `/api/v1/integration`); the admin
routes under `/_sandbox` are deliberately absent. Schemas follow `docs/voxares-api.md` and
the ASSUMED choices in `syncd.voxares.contract`; a schemathesis test checks that the sandbox's
answers conform to this document.
"""

from __future__ import annotations

from typing import Any

from syncd.voxares import contract as c

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


_TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "example": "2025-05-20T09:15:00.000Z",
}
_UUID: Schema = {"type": "string", "format": "uuid"}
_TEXT: Schema = {"type": "string", "minLength": 1}
_MOBILE: Schema = {"type": "string", "pattern": c.E164_PATTERN, "example": "+385991234567"}
_EMAIL: Schema = {"type": "string", "format": "email"}
_DATE: Schema = {"type": "string", "format": "date", "example": "1990-01-15"}


def _object(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _list_of(item: str) -> Schema:
    return _object(
        {
            "data": {"type": "array", "items": _ref(item)},
            "count": {"type": "integer", "minimum": 0},
        },
        ["data", "count"],
    )


def _schemas() -> dict[str, Schema]:
    patient_input = {
        "providerId": _TEXT,
        "firstName": _TEXT,
        "lastName": _TEXT,
        "provider": {**_TEXT, "description": "defaults to the API key's name"},
        "mobileNumber": _nullable(_MOBILE),
        "email": _nullable(_EMAIL),
        "dateOfBirth": _nullable(_DATE),
    }
    patient_item = {
        "id": _UUID,
        "firstName": {"type": "string"},
        "lastName": {"type": "string"},
        "mobileNumber": _nullable({"type": "string"}),
    }
    submission = {
        "id": _UUID,
        "submissionStatus": {"type": "string", "enum": list(c.SUBMISSION_STATUSES)},
        "createdAt": _TIMESTAMP,
        "updatedAt": _TIMESTAMP,
        "receivedAt": _nullable(_TIMESTAMP),
        "requestedBy": _UUID,
        "patient": _object(patient_item, list(patient_item)),
        "form": _object({"id": _UUID, "displayName": {"type": "string"}}, ["id", "displayName"]),
    }
    message_input = {
        "providerId": _TEXT,
        "content": _TEXT,
        "practiceTemplateId": _TEXT,
        "provider": _TEXT,
        "firstName": _TEXT,
        "lastName": _TEXT,
        "mobileNumber": _nullable(_MOBILE),
        "email": _nullable(_EMAIL),
        "dateOfBirth": _nullable(_DATE),
    }
    patient = {
        "id": _UUID,
        "firstName": {"type": "string"},
        "lastName": {"type": "string"},
        "mobileNumber": _nullable({"type": "string"}),
        "email": _nullable({"type": "string"}),
        "dateOfBirth": _nullable(_TIMESTAMP),
        "createdAt": _TIMESTAMP,
        "updatedAt": _TIMESTAMP,
    }
    message = {
        "messageId": _UUID,
        "patientId": _UUID,
        "status": {"type": "string", "enum": list(c.MESSAGE_STATUSES)},
        "smsCount": {"type": "integer", "minimum": 1},
        "content": {"type": "string"},
        "sentOn": _nullable(_TIMESTAMP),
        "createdAt": _TIMESTAMP,
        "updatedAt": _TIMESTAMP,
    }
    template = {
        "id": _UUID,
        "name": {"type": "string"},
        "content": {"type": "string"},
        "createdAt": _TIMESTAMP,
        "updatedAt": _TIMESTAMP,
    }
    return {
        "Error": _object(
            {
                "statusCode": {"type": "integer"},
                "message": {
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                },
                "error": {"type": "string"},
            },
            ["statusCode", "message", "error"],
        ),
        "PatientUpsert": _object(
            patient_input,
            ["providerId", "firstName", "lastName"],
            additionalProperties=False,
        ),
        "PatientPatch": _object(
            {k: v for k, v in patient_input.items() if k in c.PATIENT_PATCH_FIELDS},
            additionalProperties=False,
        ),
        "Patient": _object(patient, list(patient)),
        "PatientList": _list_of("Patient"),
        "SendMessage": _object(
            message_input,
            ["providerId"],
            additionalProperties=False,
            description="Exactly one of content and practiceTemplateId. firstName, lastName "
            "and mobileNumber are needed when the patient does not exist yet.",
            oneOf=[
                {"required": ["content"], "not": {"required": ["practiceTemplateId"]}},
                {"required": ["practiceTemplateId"], "not": {"required": ["content"]}},
            ],
        ),
        "Message": _object(message, list(message)),
        "PracticeTemplate": _object(template, list(template)),
        "PracticeTemplateList": _list_of("PracticeTemplate"),
        "Form": _object({"id": _UUID, "displayName": {"type": "string"}}, ["id", "displayName"]),
        "FormList": _list_of("Form"),
        "Document": _object({"id": _UUID, "name": {"type": "string"}}, ["id", "name"]),
        "DocumentList": _list_of("Document"),
        "FormSubmission": _object(
            submission, list(submission), description="A list item: no answers."
        ),
        "FormSubmissionList": _list_of("FormSubmission"),
        "FormSubmissionDetail": {
            "allOf": [
                _ref("FormSubmission"),
                _object(
                    {
                        "data": _nullable(
                            {
                                "type": "object",
                                "additionalProperties": True,
                                "description": "the answers; may hold large base64 data URLs; "
                                "null until answered",
                            }
                        )
                    },
                    ["data"],
                ),
            ]
        },
    }


_ERROR_STATUSES = {
    "400": "Bad request: invalid body or query (message is a list for validation errors)",
    "401": "Missing or invalid API key",
    "403": "The API key lacks the scope this endpoint needs",
    "404": "Not found",
    "422": "Validation error",
    "429": "Too many requests (gateway); may carry Retry-After",
    "500": "Server error",
    "502": "Bad gateway",
    "503": "Service unavailable; may carry Retry-After",
    "504": "Gateway timeout",
}


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(status: str, schema: str, description: str) -> dict[str, Schema]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


def _errors(*statuses: str) -> dict[str, Schema]:
    wanted = ("400", "401", "403", *statuses, "429", "500", "502", "503", "504")
    return {s: _error(_ERROR_STATUSES[s]) for s in sorted(set(wanted))}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or _TEXT}


_PAGING = [
    _query("page", {"type": "integer", "minimum": 0, "default": 0}, "zero-based page"),
    _query(
        "pageSize",
        {
            "type": "integer",
            "minimum": 1,
            "maximum": c.MAX_PAGE_SIZE,
            "default": c.DEFAULT_PAGE_SIZE,
        },
        f"at most {c.MAX_PAGE_SIZE}; more is answered with {c.PAGE_SIZE_OVER_MAX_STATUS}",
    ),
    _query("searchTerm", {"type": "string"}, "full-text search"),
]


def _list_operation(
    operation_id: str, summary: str, schema: str, extra: list[Schema] | None = None
) -> Schema:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "description": "The sort order is not documented; do not depend on it.",
            "parameters": [*_PAGING, *(extra or [])],
            "responses": {**_ok("200", schema, "A page, with the total count"), **_errors()},
        }
    }


def _json_body(schema: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _paths() -> dict[str, Schema]:
    by_external_id = "/patients/{provider}/{providerId}"
    external_params = [_path("provider"), _path("providerId")]
    submission_filters = [
        _query("status", {"type": "string", "enum": list(c.SUBMISSION_STATUSES)}, "status"),
        _query(
            "updatedFrom",
            {"type": "string", "format": "date-time"},
            "updated at or after (inclusive)",
        ),
        _query(
            "updatedTo",
            {"type": "string", "format": "date-time"},
            "updated at or before (inclusive)",
        ),
        _query("patientId", _UUID, "Voxares patient id"),
        _query("formId", _UUID, "form id"),
    ]
    return {
        c.PATIENTS: {
            "post": {
                "operationId": "upsertPatient",
                "summary": "Create or update a patient by (provider, providerId)",
                "requestBody": _json_body("PatientUpsert"),
                "responses": {
                    **_ok(str(c.PATIENT_UPDATED_STATUS), "Patient", "Updated"),
                    **_ok(str(c.PATIENT_CREATED_STATUS), "Patient", "Created"),
                    **_errors(),
                },
            },
            **_list_operation("listPatients", "List patients", "PatientList"),
        },
        by_external_id: {
            "parameters": external_params,
            "get": {
                "operationId": "getPatient",
                "summary": "One patient by external id",
                "responses": {**_ok("200", "Patient", "The patient"), **_errors("404")},
            },
            "patch": {
                "operationId": "patchPatient",
                "summary": "Partial update: only the fields sent change",
                "requestBody": _json_body("PatientPatch"),
                "responses": {**_ok("200", "Patient", "The updated patient"), **_errors("404")},
            },
        },
        c.MESSAGES_SEND: {
            "post": {
                "operationId": "sendMessage",
                "summary": "Send one SMS, inline or from a practice template",
                "description": "No idempotency key: a request whose answer is lost may or may "
                "not have sent the SMS.",
                "requestBody": _json_body("SendMessage"),
                "responses": {
                    **_ok(str(c.MESSAGE_SENT_STATUS), "Message", "Accepted (status Pending)"),
                    **_errors("404", "422"),
                },
            }
        },
        "/messages/{messageId}": {
            "parameters": [_path("messageId")],
            "get": {
                "operationId": "getMessage",
                "summary": "One message and its delivery status",
                "responses": {**_ok("200", "Message", "The message"), **_errors("404")},
            },
        },
        c.PRACTICE_TEMPLATES: _list_operation(
            "listPracticeTemplates", "List practice templates", "PracticeTemplateList"
        ),
        c.FORMS: _list_operation("listForms", "List forms", "FormList"),
        c.DOCUMENTS: _list_operation("listDocuments", "List documents", "DocumentList"),
        c.FORM_SUBMISSIONS: _list_operation(
            "listFormSubmissions",
            "List form submissions (no answers); paged by offset",
            "FormSubmissionList",
            submission_filters,
        ),
        "/form-submissions/{submissionId}": {
            "parameters": [_path("submissionId")],
            "get": {
                "operationId": "getFormSubmission",
                "summary": "One form submission with its answers",
                "responses": {
                    **_ok("200", "FormSubmissionDetail", "The submission"),
                    **_errors("404"),
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the integration API (contract part only)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Voxares integration API (sandbox)",
            "version": "1",
            "description": "The contract voxares-syncd relies on, as served by its sandbox.",
        },
        "servers": [{"url": c.API_PREFIX}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, vox-<id>-<secret>",
                }
            },
            "schemas": _schemas(),
        },
    }
