"""Pure conversions of outbox event payloads into standard formats (FHIR, ...)."""
