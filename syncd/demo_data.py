"""A generated sample EHR export for the demo: realistic shape, some rows wrong on purpose.

Deterministic for a seed, so the demo prints the same counts every time. The names and
numbers are made up; the deliberately bad rows show what quarantine looks like.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

FIRST_NAMES = (
    "Ana",
    "Ivan",
    "Marija",
    "Luka",
    "Petra",
    "Marko",
    "Iva",
    "Josip",
    "Lucija",
    "Tomislav",
    "Katarina",
    "Filip",
    "Sara",
    "Nikola",
    "Ema",
    "Matej",
    "Lana",
    "Karlo",
    "Mia",
    "Dario",
)
LAST_NAMES = (
    "Horvat",
    "Kovačević",
    "Babić",
    "Marić",
    "Jurić",
    "Novak",
    "Kovačić",
    "Knežević",
    "Vuković",
    "Marković",
    "Petrović",
    "Matić",
    "Tomić",
    "Pavlović",
    "Božić",
    "Blažević",
)
HEADER = ("PatientID", "FirstName", "LastName", "MobilePhone", "Email", "BirthDate")
# One of each kind of mistake an EHR export really contains.
BROKEN_ROWS: tuple[tuple[str, dict[str, str]], ...] = (
    ("lastName", {"LastName": ""}),
    ("dateOfBirth", {"BirthDate": "31.02.1980"}),
    ("email", {"Email": "ana.horvat@"}),
    ("mobileNumber", {"MobilePhone": "12345"}),
    ("dateOfBirth", {"BirthDate": "2091-01-01"}),
    ("providerId", {"PatientID": ""}),
)


@dataclass(frozen=True, slots=True)
class SampleExport:
    """What was written: rows in all, and how many are broken on purpose."""

    path: Path
    rows: int
    broken: int


def _row(rng: random.Random, n: int) -> dict[str, str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    # Local formats, as EHRs store them; normalisation turns them into E.164.
    mobile = f"09{rng.choice('12589')} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    born = f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1935, 2015)}"
    if n % 3 == 0:
        born = f"{rng.randint(1935, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    email = f"{first}.{last}{n}@example.org".lower() if n % 4 else ""
    return {
        "PatientID": f"EHR-{n:06d}",
        "FirstName": f" {first} " if n % 7 == 0 else first,  # stray spaces get trimmed
        "LastName": last,
        "MobilePhone": mobile if n % 10 else "01 4567 890",  # a landline: dropped, not pushed
        "Email": email,
        "BirthDate": born,
    }


def write_sample_export(path: Path, patients: int, *, seed: int = 7) -> SampleExport:
    """Write `patients` rows (a few broken on purpose) to `path`."""
    rng = random.Random(seed)
    broken_at = {
        (i + 1) * patients // (len(BROKEN_ROWS) + 1): fix for i, (_, fix) in enumerate(BROKEN_ROWS)
    }
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        for n in range(1, patients + 1):
            row = _row(rng, n)
            if n in broken_at:
                row = row | broken_at[n]
            writer.writerow(row)
    return SampleExport(path, patients, len(broken_at))


def change_some_rows(path: Path, every: int = 25) -> int:
    """Edit the export as the EHR would overnight: new mobile numbers for every n-th patient,
    and the row with the impossible birth date corrected. Returns rows changed."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    changed = 0
    for n, row in enumerate(rows, start=1):
        if row["BirthDate"] == "31.02.1980":
            row["BirthDate"] = "28.02.1980"
            changed += 1
        elif n % every == 0 and row["PatientID"]:
            row["MobilePhone"] = f"098 {n % 1000:03d} {n % 10000:04d}"
            changed += 1
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return changed
