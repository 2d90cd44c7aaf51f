"""Bad input never crashes a push, never reaches Voxares, and never loses a good row.

Hypothesis builds patient exports mixing good rows (unicode names, odd but valid phones,
emails and dates, each with the value Voxares must end up holding) and bad rows (one
defect each, in a known field: missing, huge, control characters, invalid phone, email or
date), plus repeated providerIds. Each export is pushed, as a CSV file and as a SQLite
table, through the real job into a fresh in-process sandbox. The proof: the sandbox holds
exactly the good rows with the expected values, every bad row is quarantined under the
field at fault with a reason that names it (and not its value), every repeat is reported
once and pushed never, and a second run makes no call.

Malformed answers (the sandbox's malformed/truncated faults, and shapes only a
MockTransport can produce) raise `VoxaresMalformedResponse` in the client and leave the
row for the next run: not mirrored, not quarantined, pushed on the next healthy run.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import sqlite3
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from syncd.exceptions import VoxaresMalformedResponse, VoxaresTransportError
from syncd.normalize import NormalizePolicy
from syncd.patients.counts import PushCounts
from syncd.patients.push import PatientPush
from syncd.sandbox.app import create_app
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.sources.base import Source
from syncd.sources.csv import CsvSource
from syncd.sources.sql import SqlSource
from syncd.state.db import make_engine, upgrade
from syncd.state.models import PatientMirror, QuarantinedRow
from syncd.state.runs import start_run
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.models import PatientUpsert
from syncd.voxares.retry import RetryPolicy
from syncd.voxares.testing import json_response, truncated_response

PROVIDER = "ehr"
FIELDS = ("providerId", "firstName", "lastName", "mobileNumber", "email", "dateOfBirth")
POLICY = NormalizePolicy(invalid_phone="reject", date_formats=("%Y-%m-%d", "%d.%m.%Y"))
EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- what good and bad rows look like ----------------------------------------------------

# (raw, what Voxares must hold); None: absent.
GOOD_PHONES = [
    ("", None),
    ("091 234 5678", "+385912345678"),
    ("+385 98 765 4321", "+385987654321"),
    ("00385 95 111 2222", "+385951112222"),
    ("(099) 765-4321", "+385997654321"),
    ("+44 7911 123456", "+447911123456"),
    ("٠٩١٢٣٤٥٦٧٨", "+385912345678"),  # Arabic-Indic digits
    ("+385 1 234 5678", None),  # a landline: dropped by policy, the patient still pushed
]
GOOD_EMAILS = [
    ("", None),
    ("Ana.Horvat@Example.COM", "ana.horvat@example.com"),
    ("ivo+tag@mail.hr", "ivo+tag@mail.hr"),
    ("žana@primjer.hr", "žana@primjer.hr"),
]
GOOD_DATES = [
    ("", None),
    ("1985-03-02", "1985-03-02"),
    ("02.03.1985", "1985-03-02"),
    ("1985-03-02T00:00:00", "1985-03-02"),
    ("1900-01-01", "1900-01-01"),
]
# Controls that are not whitespace (a name's tab, newline or U+2028 is collapsed to a space).
CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\x9b"]

name_text = st.text(
    alphabet=st.characters(categories=["L", "M", "Nd", "Pd", "Zs", "So"]),
    min_size=1,
    max_size=30,
).filter(lambda s: 0 < len(" ".join(unicodedata.normalize("NFC", s).split())) <= 100)


# Invisible format characters a name may carry (a BOM, a zero-width space, a soft hyphen):
# Voxares holds the name without them.
INVISIBLE = "\ufeff\u200b\u00ad"


@st.composite
def good_name(draw: st.DrawFn) -> tuple[str, str]:
    """(raw name, the name Voxares holds): invisible characters gone, NFC, whitespace runs
    collapsed."""
    text = draw(name_text)
    template = draw(
        st.sampled_from(["{}", "  {}  ", "{}\n{}", "{}\t {}", "\ufeff{}\u200b", "{}\u00ad{}"])
    )
    raw = template.format(text, text)
    visible = "".join(char for char in raw if char not in INVISIBLE)
    return raw, " ".join(unicodedata.normalize("NFC", visible).split())


huge = st.integers(min_value=101, max_value=20_000).map(lambda n: "Ž" * n)
with_control = st.tuples(name_text, st.sampled_from(CONTROLS)).map(lambda t: t[0] + t[1] + "x")
# field -> values that break that field's rule (each bad row has exactly one of them).
DEFECTS: dict[str, st.SearchStrategy[str]] = {
    "providerId": st.one_of(
        st.just(""),
        st.just("   "),
        st.integers(129, 5000).map(lambda n: "P" * n),
        st.sampled_from([*CONTROLS, "\t", "\u2028", "\u200b", "\u202e", "\ufeff"]).map(
            lambda c: f"P{c}1"
        ),
    ),
    "firstName": st.one_of(
        st.just(""), st.just(" \t "), st.just("\u200b\ufeff \u2060"), huge, with_control
    ),
    "lastName": st.one_of(st.just(""), huge, with_control),
    "mobileNumber": st.sampled_from(["12", "abc", "+0 123", "0000000", "+385 91", "+1 555"]),
    "email": st.sampled_from(
        ["not-an-email", "a@b", "x y@z.com", "a@@b.com", ".a@b.com", "a" * 250 + "@x.com"]
    ),
    "dateOfBirth": st.sampled_from(
        ["2999-01-01", "1899-12-31", "31.02.2000", "yesterday", "1985-03-02T10:00:00", "9" * 5000]
    ),
}


@dataclass(frozen=True)
class Row:
    """One source row: its raw values, and what must become of it."""

    raw: dict[str, str]
    expected: dict[str, str | None] | None = None  # good: what Voxares holds
    defect: str | None = None  # bad: the field at fault
    duplicate_of: int | None = None  # a repeat of the row at this index


@st.composite
def good_row(draw: st.DrawFn, index: int) -> Row:
    first, last = draw(good_name()), draw(good_name())
    phone, email, born = (draw(st.sampled_from(v)) for v in (GOOD_PHONES, GOOD_EMAILS, GOOD_DATES))
    suffix = draw(st.sampled_from(["", "-ž", "/x", " #1", "?a=b"]))  # odd but usable ids
    raw = {
        "providerId": f"g{index}{suffix}",
        "firstName": first[0],
        "lastName": last[0],
        "mobileNumber": phone[0],
        "email": email[0],
        "dateOfBirth": born[0],
    }
    expected = {
        "firstName": first[1],
        "lastName": last[1],
        "mobileNumber": phone[1],
        "email": email[1],
        "dateOfBirth": born[1],
    }
    return Row(raw, expected=expected)


@st.composite
def bad_row(draw: st.DrawFn, index: int) -> Row:
    base = draw(good_row(index))
    field = draw(st.sampled_from(sorted(DEFECTS)))
    raw = {**base.raw, "providerId": f"b{index}", field: draw(DEFECTS[field])}
    return Row(raw, defect=field)


@st.composite
def exports(draw: st.DrawFn) -> list[Row]:
    """Good and bad rows in any order, then a few repeats of good providerIds."""
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=12))
    rows = [draw(good_row(i) if good else bad_row(i)) for i, good in enumerate(kinds)]
    goods = [i for i, row in enumerate(rows) if row.expected is not None]
    if goods:
        for index in draw(st.lists(st.sampled_from(goods), max_size=3)):
            original = rows[index]
            repeat = {**original.raw, "lastName": "Repeat"}
            rows.append(Row(repeat, duplicate_of=index))
    return rows


# --- the world of one example --------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite state database, copied for each example (migrating is slow)."""
    path = tmp_path_factory.mktemp("template") / "state.db"
    upgrade(f"sqlite:///{path}")
    return path


@contextmanager
def _fresh_db(template: Path) -> Iterator[tuple[Engine, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        shutil.copy(template, path)
        engine = make_engine(f"sqlite:///{path}")
        try:
            yield engine, Path(tmp)
        finally:
            engine.dispose()


class Counting(httpx.AsyncBaseTransport):
    """A transport in front of another, counting requests."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await self.inner.handle_async_request(request)


def client_for(transport: httpx.AsyncBaseTransport) -> VoxaresClient:
    return VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=transport,
        limits=ClientLimits(requests_per_second=None, max_concurrency=4),
        retry=RetryPolicy.no_wait(attempts=2),
    )


async def push(engine: Engine, source: Source, transport: httpx.AsyncBaseTransport) -> PushCounts:
    async with client_for(transport) as client:
        job = PatientPush(engine, client, source, POLICY, provider=PROVIDER, batch_size=4)
        return await job.run(start_run(engine, "push_patients"))


def held(sandbox: Sandbox) -> dict[str, dict[str, str | None]]:
    practice = sandbox.practices[sandbox.demo_practice_id]
    return {
        provider_id: {
            "firstName": p.first_name,
            "lastName": p.last_name,
            "mobileNumber": p.mobile_number,
            "email": p.email,
            "dateOfBirth": p.date_of_birth,
        }
        for (provider, provider_id), p in practice.by_external.items()
        if provider == PROVIDER
    }


def quarantine(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.row_key: row for row in conn.execute(select(QuarantinedRow))}


def mirrored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(PatientMirror.provider_id)).scalars())


def check_outcome(rows: list[Row], counts: PushCounts, sandbox: Sandbox, engine: Engine) -> None:
    """The proof described in the module docstring."""
    good = {row.raw["providerId"]: row.expected for row in rows if row.expected is not None}
    bad = [row for row in rows if row.defect is not None]
    repeats = [row for row in rows if row.duplicate_of is not None]
    assert counts.failed == 0
    assert held(sandbox) == good
    assert mirrored(engine) == set(good)
    entries = quarantine(engine)
    for row in bad:
        if row.defect == "providerId":
            continue  # keyed by line (checked below): the id itself is unusable
        entry = entries[row.raw["providerId"]]
        assert entry.field == row.defect
        assert entry.reason.startswith(f"{row.defect}:")
        value = row.raw[row.defect]
        if len(value.strip()) > 3:
            assert value.strip() not in entry.reason
    by_line = [e for key, e in entries.items() if key.startswith("line:")]
    assert len(by_line) == sum(1 for row in bad if row.defect == "providerId")
    assert {e.field for e in by_line} <= {"providerId"}
    duplicates = [e for key, e in entries.items() if "@line:" in key]
    assert len(duplicates) == len(repeats)
    assert all(e.field == "providerId" and "duplicate" in e.reason for e in duplicates)
    assert len(entries) == len(bad) + len(repeats)
    assert (counts.quarantined, counts.duplicates) == (len(bad), len(repeats))


def run_and_check(template: Path, rows: list[Row], make_source: Callable[[Path], Source]) -> None:
    with _fresh_db(template) as (engine, directory):
        source = make_source(directory)
        sandbox = Sandbox()
        transport = Counting(httpx.ASGITransport(app=create_app(sandbox)))
        counts = asyncio.run(push(engine, source, transport))
        check_outcome(rows, counts, sandbox, engine)
        calls = transport.calls
        again = asyncio.run(push(engine, source, transport))
        assert transport.calls == calls, "a second run of the same export called the API"
        assert (again.created, again.updated, again.failed) == (0, 0, 0)


# --- the tests ------------------------------------------------------------------------------


@EXAMPLES
@given(rows=exports())
def test_csv_export_of_bad_rows_quarantines_them_and_pushes_the_rest(
    template_db: Path, rows: list[Row]
) -> None:
    """A CSV of good, bad and repeated rows: bad ones quarantined by field, good ones pushed."""

    def source(directory: Path) -> Source:
        path = directory / "export.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            for row in rows:
                writer.writerow([row.raw[f] for f in FIELDS])
        return CsvSource("ehr-export", path, columns={f: f for f in FIELDS})

    run_and_check(template_db, rows, source)


@EXAMPLES
@given(rows=exports())
def test_sql_rows_of_bad_input_quarantine_them_and_push_the_rest(
    template_db: Path, rows: list[Row]
) -> None:
    """A SQLite table of the same kinds of rows (NULL for missing values) behaves the same."""

    def source(directory: Path) -> Source:
        path = directory / "ehr.sqlite"
        with sqlite3.connect(path) as conn:
            conn.execute(f"CREATE TABLE patients ({', '.join(f'{f} TEXT' for f in FIELDS)})")
            conn.executemany(
                f"INSERT INTO patients VALUES ({', '.join('?' for _ in FIELDS)})",
                [[row.raw[f] or None for f in FIELDS] for row in rows],
            )
        conn.close()
        return SqlSource("ehr-db", f"sqlite:///{path}", "SELECT * FROM patients ORDER BY rowid")

    run_and_check(template_db, rows, source)


# --- malformed answers -----------------------------------------------------------------------

VALID_CSV = "id,first,last\nm1,Ana,Horvat\nm2,Ivo,Kovač\n"
CSV_COLUMNS = {"providerId": "id", "firstName": "first", "lastName": "last"}
PATIENT = {"id": "7f6c1a4e-2b1d-4c3e-9f00-000000000001", "firstName": "Ana", "lastName": "Horvat"}

# 2xx answers to POST /patients that do not match the contract (no sandbox fault makes them).
BAD_SHAPES: dict[str, Callable[[], httpx.Response]] = {
    "empty body": lambda: httpx.Response(201),
    "a list": lambda: json_response(201, [PATIENT]),
    "no id": lambda: json_response(201, {k: v for k, v in PATIENT.items() if k != "id"}),
    "numeric id": lambda: json_response(201, {**PATIENT, "id": 17}),
    "bad date": lambda: json_response(200, {**PATIENT, "dateOfBirth": "15/01/1990"}),
    "html": lambda: httpx.Response(200, text="<html>gateway</html>"),
}


@pytest.mark.parametrize("shape", sorted(BAD_SHAPES))
async def test_client_raises_malformed_for_a_bad_2xx_shape(shape: str) -> None:
    """Each answer shape the contract does not allow becomes VoxaresMalformedResponse."""
    transport = httpx.MockTransport(lambda request: BAD_SHAPES[shape]())
    upsert = PatientUpsert(provider_id="m1", first_name="Ana", last_name="Horvat")
    async with client_for(transport) as client:
        with pytest.raises(VoxaresMalformedResponse) as caught:
            await client.upsert_patient(upsert)
    assert "Ana" not in str(caught.value)
    assert "Horvat" not in str(caught.value)


async def test_answer_cut_on_the_wire_is_a_transport_error_not_malformed() -> None:
    """A body that breaks off (connection dropped) is retryable, not a malformed answer."""
    transport = httpx.MockTransport(lambda request: truncated_response(201, PATIENT))
    upsert = PatientUpsert(provider_id="m1", first_name="Ana", last_name="Horvat")
    async with client_for(transport) as client:
        with pytest.raises(VoxaresTransportError) as caught:
            await client.upsert_patient(upsert)
    assert caught.value.reached_server


async def _push_csv(
    template: Path, transport_for: Callable[[Sandbox], httpx.AsyncBaseTransport]
) -> None:
    """Push two valid rows through a spoiling transport, then through a healthy one."""
    with _fresh_db(template) as (engine, directory):
        path = directory / "export.csv"
        path.write_text(VALID_CSV, encoding="utf-8")
        source = CsvSource("ehr-export", path, columns=CSV_COLUMNS)
        sandbox = Sandbox()
        counts = await push(engine, source, transport_for(sandbox))

        assert (counts.failed, counts.created, counts.quarantined) == (2, 0, 0)
        assert mirrored(engine) == set()  # never marked pushed
        assert quarantine(engine) == {}  # never dropped into quarantine either

        healthy = httpx.ASGITransport(app=create_app(sandbox))
        again = await push(engine, source, healthy)
        assert (again.created + again.updated, again.failed) == (2, 0)
        assert mirrored(engine) == {"m1", "m2"}
        assert set(held(sandbox)) == {"m1", "m2"}


@pytest.mark.parametrize("fault", ["malformed_json_rate", "truncated_body_rate"])
async def test_sandbox_malformed_answers_leave_rows_for_the_next_run(
    template_db: Path, fault: str
) -> None:
    """Malformed or truncated 2xx answers fail the row for now; the next run pushes it."""

    def spoiled(sandbox: Sandbox) -> httpx.AsyncBaseTransport:
        rule = FaultRule(method="POST", path_prefix="/patients", **{fault: 1.0})
        return httpx.ASGITransport(app=create_app(sandbox, FaultConfig(rules=[rule])))

    await _push_csv(template_db, spoiled)


@pytest.mark.parametrize("shape", ["no id", "a list", "empty body"])
async def test_bad_shapes_leave_rows_for_the_next_run(template_db: Path, shape: str) -> None:
    """A 2xx of the wrong shape is not taken as a push: the row stays for the next run."""
    await _push_csv(
        template_db, lambda _sandbox: httpx.MockTransport(lambda r: BAD_SHAPES[shape]())
    )
