"""HL7-style example Patient resources (tests/data/fhir) and synthetic ones, for FHIR tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "fhir"
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
EXAMPLE_IDS = ("example", "pat1", "pat2", "pat3", "pat4", "xcda")


def example(name: str) -> dict[str, Any]:
    """One example resource by id."""
    loaded: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def examples() -> list[dict[str, Any]]:
    """Every example resource."""
    return [example(name) for name in EXAMPLE_IDS]


def synthetic(number: int) -> dict[str, Any]:
    """A valid Patient with a mobile number, an email and a birth date, keyed MRN-<number>."""
    return {
        "resourceType": "Patient",
        "id": f"p{number}",
        "identifier": [{"system": SYSTEM, "value": f"MRN-{number}"}],
        "active": True,
        "name": [{"use": "official", "family": f"Family{number}", "given": ["Given"]}],
        "telecom": [
            {"system": "phone", "value": f"+3859{number % 10}{number:07d}"[:13], "use": "mobile"},
            {"system": "email", "value": f"p{number}@example.org"},
        ],
        "birthDate": f"19{50 + number % 50:02d}-0{1 + number % 9}-1{number % 10}",
    }
