"""`syncd doctor` for a FHIR server source: reachable, a CapabilityStatement that lists
`Patient` search (and `_lastUpdated`), and a one-patient search that the credentials pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncd.exceptions import SourceError, SyncdError
from syncd.sources.fhir import FhirPatientSource
from syncd.sources.fhir_bundle import NotABundle, parse_page


def capability_problem(body: Any) -> str | None:
    """Why a `/metadata` answer does not promise a Patient search (None when it does)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "CapabilityStatement":
        return "GET [base]/metadata did not answer with a CapabilityStatement"
    rests = body.get("rest")
    for rest in rests if isinstance(rests, list) else []:
        resources = rest.get("resource") if isinstance(rest, Mapping) else None
        for resource in resources if isinstance(resources, list) else []:
            if not isinstance(resource, Mapping) or resource.get("type") != "Patient":
                continue
            interactions = resource.get("interaction")
            codes = {
                i.get("code")
                for i in (interactions if isinstance(interactions, list) else [])
                if isinstance(i, Mapping)
            }
            if "search-type" not in codes:
                return "the CapabilityStatement lists Patient without the search-type interaction"
            return None
    return "the CapabilityStatement does not list the Patient resource"


def check_fhir_server(source: FhirPatientSource) -> tuple[bool, str]:
    """(ok, what was found), quoting no patient data."""
    client = source.client()
    try:
        try:
            metadata = source.get(client, f"{source.base_url}/metadata")
        except SourceError as exc:
            return False, f"{exc} (GET [base]/metadata)"
        try:
            problem = capability_problem(metadata.json())
        except ValueError:
            problem = "GET [base]/metadata answered with a body that is not JSON"
        if problem is not None:
            return False, f"{source.base_url}: {problem}"
        try:
            answer = source.get(client, f"{source.base_url}/Patient", {"_count": "1"})
            parse_page(answer.json())
        except (SourceError, SyncdError) as exc:
            return False, str(exc)
        except (NotABundle, ValueError):
            return False, f"{source.base_url}: a Patient search did not answer with a Bundle"
    finally:
        if client is not getattr(source, "_http", None):
            client.close()
    return True, (
        f"{source.base_url} is reachable, its CapabilityStatement lists Patient search, "
        "and a Patient search with the configured credentials works"
    )
