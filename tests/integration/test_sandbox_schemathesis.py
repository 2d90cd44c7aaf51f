"""Property-based run of schemathesis against the sandbox's own OpenAPI document, in-process.

Every operation gets valid and invalid generated requests (with the demo key), plus the
coverage phase's boundary cases; the sandbox must never answer 5xx, and every answer must
match the document (status, content type, body schema). Few examples: the run takes seconds.
"""

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from syncd.sandbox.app import create_app
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import API_PREFIX

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 25, "mode": "all", "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "headers": {"Authorization": f"Bearer {DEMO_API_KEY}"},
    }
)


def _app() -> object:
    sandbox = Sandbox(seed=1)
    sandbox.seed_patients(sandbox.demo_practice_id, 20)
    sandbox.seed_submissions(sandbox.demo_practice_id, 10, status="Completed")
    sandbox.seed_submissions(sandbox.demo_practice_id, 10)
    return create_app(sandbox)


schema = schemathesis.openapi.from_asgi(API_PREFIX + "/openapi.json", _app(), config=CONFIG)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
def test_sandbox_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    """No generated request gets a 5xx, and every answer matches the OpenAPI document."""
    case.call_and_validate(checks=CHECKS)
