"""Patient sources: the port (`base.py`) and its adapters (`csv.py`, `sql.py`, `fhir.py`,
`fhir_bulk.py`).

Adapters are imported from their own modules (`syncd.sources.csv.CsvSource`,
`syncd.sources.sql.SqlSource`, `syncd.sources.fhir.FhirPatientSource`) so that importing the
port pulls in no database driver and no FHIR library.
"""

from __future__ import annotations

from typing import Final

from syncd.sources.base import Source, SourceRead, SourceRow
from syncd.voxares.contract import PATIENT_FIELDS

# The contract fields (POST /patients) a source row may carry. `provider` is not among
# them: it is the source system's name, configured per source, not read per row.
SOURCE_FIELDS: Final[tuple[str, ...]] = tuple(f for f in PATIENT_FIELDS if f != "provider")
# The fields without which no row can be pushed; a source must map all of them.
REQUIRED_SOURCE_FIELDS: Final = ("providerId", "firstName", "lastName")

__all__ = ["REQUIRED_SOURCE_FIELDS", "SOURCE_FIELDS", "Source", "SourceRead", "SourceRow"]
