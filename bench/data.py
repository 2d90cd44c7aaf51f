"""Synthetic EHR exports: deterministic CSV files of valid patients (fake data only)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

COLUMNS: Final = {
    "providerId": "PatientID",
    "firstName": "FirstName",
    "lastName": "LastName",
    "mobileNumber": "Mobile",
    "email": "Email",
    "dateOfBirth": "DOB",
}
_FIRST: Final = ("Ana", "Ivan", "Marija", "Luka", "Petra", "Marko", "Iva", "Josip", "Ema", "Ante")
_LAST: Final = ("Horvat", "Kovac", "Babic", "Maric", "Juric", "Novak", "Vukovic", "Knezevic")


def patient_line(n: int, *, changed: bool = False) -> str:
    """One CSV line of patient `n` (`changed`: the same patient with a new first name)."""
    first = _FIRST[n % len(_FIRST)] + ("-Nova" if changed else "")
    last = _LAST[(n // 10) % len(_LAST)]
    mobile = f"+385 91 {n % 1000:03d} {n // 1000 % 10000:04d}"
    year, month, day = 1940 + n % 70, 1 + n % 12, 1 + n % 28
    return f"P{n:07d},{first},{last},{mobile},p{n}@example.org,{year}-{month:02d}-{day:02d}\n"


def write_patients(path: Path, rows: int, *, change_every: int = 0) -> Path:
    """Write `rows` patients to `path`; with `change_every` = k, every k-th row changed."""
    header = ",".join(COLUMNS.values()) + "\n"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(header)
        chunk: list[str] = []
        for n in range(rows):
            changed = change_every > 0 and n % change_every == change_every - 1
            chunk.append(patient_line(n, changed=changed))
            if len(chunk) >= 10_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
    return path


def changed_count(rows: int, change_every: int) -> int:
    """How many rows `write_patients(rows, change_every=...)` changes."""
    return rows // change_every if change_every else 0
