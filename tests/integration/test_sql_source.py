"""SqlSource against real SQLite, PostgreSQL and MariaDB: mapping, text conversion,
streaming, read-only access and error translation."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import pytest
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from syncd.exceptions import ConfigError, SourceError
from syncd.hashing import row_hash
from syncd.sources import Source, SourceRow
from syncd.sources.sql import SqlSource
from tests.conftest import require_service

MARIADB_URL = os.environ.get(
    "SYNCD_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
)
COLUMNS = {
    "providerId": "id",
    "firstName": "first_name",
    "lastName": "last_name",
    "mobileNumber": "mobile",
    "email": "email",
    "dateOfBirth": "dob",
}
PATIENTS = [
    {
        "id": "P1",
        "first_name": " Ana ",
        "last_name": "Horvat",
        "mobile": "+385921234567",
        "email": "ana@example.com",
        "dob": date(1980, 2, 13),
        "updated": datetime(2024, 1, 2, 3, 4, 5),
        "ehr_no": 1000,
        "photo": "Željka".encode(),
    },
    {
        "id": "P2",
        "first_name": "Ivan",
        "last_name": "Babić",
        "mobile": None,
        "email": "",
        "dob": None,
        "updated": None,
        "ehr_no": 1001,
        "photo": b"\xff\xfe",
    },
]


@dataclass
class Database:
    url: str
    table: Table

    @property
    def name(self) -> str:
        return self.table.name

    def count(self) -> int:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())
        finally:
            engine.dispose()


def patients_table(metadata: MetaData) -> Table:
    return Table(
        f"patients_{uuid.uuid4().hex[:12]}",
        metadata,
        Column("id", String(20), primary_key=True),
        Column("first_name", String(100)),
        Column("last_name", String(100)),
        Column("mobile", String(32)),
        Column("email", String(254)),
        Column("dob", Date),
        Column("updated", DateTime),
        Column("ehr_no", Integer),
        Column("photo", LargeBinary),
    )


def create_patients(url: str) -> Database:
    metadata = MetaData()
    table = patients_table(metadata)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(insert(table), PATIENTS)
    finally:
        engine.dispose()
    return Database(url, table)


def drop_patients(db: Database) -> None:
    engine = create_engine(db.url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            db.table.drop(conn, checkfirst=True)
    finally:
        engine.dispose()


@pytest.fixture
def mariadb_url() -> str:
    """The local MariaDB's `test` database (skipped when absent, failed under CI)."""
    require_service("MariaDB", "127.0.0.1", 3306)
    return MARIADB_URL


@pytest.fixture(scope="module")
def postgres_module_url(postgres_server: str) -> Iterator[str]:
    """One fresh PostgreSQL database for this module (each test makes its own table in it):
    creating a database per test would double this module's run time."""
    name = f"syncd_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Database]:
    """A patients table with a unique name in each real database, dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ehr.db"
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_module_url")
    else:
        url = request.getfixturevalue("mariadb_url")
    database = create_patients(url)
    try:
        yield database
    finally:
        drop_patients(database)


def query_all(db: Database) -> str:
    return f"SELECT * FROM {db.name} ORDER BY id"


def test_rows_are_mapped_trimmed_and_null_is_none(db: Database) -> None:
    """Mapped columns become contract fields; trimming, '' and NULL -> None, dates ISO."""
    src: Source = SqlSource("ehr", db.url, query_all(db), columns=COLUMNS)
    rows = list(src.rows())
    assert [r.line for r in rows] == [1, 2]
    assert rows[0].fields == {
        "providerId": "P1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385921234567",
        "email": "ana@example.com",
        "dateOfBirth": "1980-02-13",
    }
    assert rows[1].fields == {
        "providerId": "P2",
        "firstName": "Ivan",
        "lastName": "Babić",
        "mobileNumber": None,
        "email": None,
        "dateOfBirth": None,
    }
    assert all(r.problem is None for r in rows)
    assert rows[0].raw_hash == row_hash(rows[0].fields)


def test_identity_mapping_is_case_insensitive(db: Database) -> None:
    """Without `columns`, aliases named like the contract fields are used, in any case."""
    query = (
        f"SELECT id AS providerid, first_name AS FIRSTNAME, last_name AS lastName, "
        f"mobile AS mobileNumber FROM {db.name} ORDER BY id"
    )
    rows = list(SqlSource("ehr", db.url, query).rows())
    assert rows[0].fields == {
        "providerId": "P1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385921234567",
    }


def test_non_text_values_become_text(db: Database) -> None:
    """Integers, datetimes and UTF-8 bytes read as text; a SQLAlchemy select works as query."""
    t = db.table
    query = select(
        t.c.ehr_no.label("providerId"),
        t.c.first_name.label("firstName"),
        t.c.photo.label("lastName"),
        t.c.updated.label("dateOfBirth"),
    ).where(t.c.id == "P1")
    [row] = SqlSource("ehr", db.url, query).rows()
    assert row.fields == {
        "providerId": "1000",
        "firstName": "Ana",
        "lastName": "Željka",
        "dateOfBirth": "2024-01-02T03:04:05",
    }


def test_binary_value_that_is_not_utf8_is_a_problem_row(db: Database) -> None:
    """A non-UTF-8 binary value quarantines its row, naming the field; others read on."""
    columns = {**COLUMNS, "lastName": "photo"}
    first, second = SqlSource("ehr", db.url, query_all(db), columns=columns).rows()
    assert first.problem is None
    assert (second.problem_field, second.problem) == (
        "lastName",
        "lastName: bytes that are not valid UTF-8",
    )
    assert second.fields["providerId"] == "P2"


def test_missing_mapped_column_names_it(db: Database) -> None:
    """A mapped column absent from the result is a SourceError naming that column."""
    columns = {**COLUMNS, "email": "e_mail"}
    with pytest.raises(SourceError, match="missing column\\(s\\) 'e_mail'"):
        list(SqlSource("ehr", db.url, query_all(db), columns=columns).rows())


def test_identity_mapping_needs_the_required_fields(db: Database) -> None:
    """Without `columns`, a result lacking providerId is a SourceError naming it."""
    query = f"SELECT first_name AS firstName, last_name AS lastName FROM {db.name}"
    with pytest.raises(SourceError, match="missing column\\(s\\) 'providerId'"):
        list(SqlSource("ehr", db.url, query).rows())


def test_database_error_names_class_and_code_but_no_data(db: Database) -> None:
    """A failing query is a SourceError without the SQL, its values or the driver text."""
    query = f"SELECT * FROM {db.name} WHERE no_such_column = 'Secret-Ana'"
    with pytest.raises(SourceError) as caught:
        list(SqlSource("ehr", db.url, query, columns=COLUMNS).rows())
    message = str(caught.value)
    assert message.startswith("source ehr: database error (")
    assert "Secret" not in message
    assert db.name not in message
    assert caught.value.__suppress_context__


# PostgreSQL refuses DELETE in a cursor's query anyway; it has its own nextval test below.
@pytest.mark.parametrize("db", ["sqlite", "mariadb"], indirect=True)
def test_source_never_writes(db: Database) -> None:
    """A query that would delete rows fails (read-only transaction) and the rows remain."""
    query = f"DELETE FROM {db.name} RETURNING id, first_name, last_name, mobile, email, dob"
    with pytest.raises(SourceError, match="database error"):
        list(SqlSource("ehr", db.url, query, columns=COLUMNS).rows())
    assert db.count() == len(PATIENTS)


@pytest.mark.postgres
def test_postgres_transaction_is_read_only(postgres_url: str) -> None:
    """nextval(), a write no rollback undoes, is refused: the transaction is read-only."""
    engine = create_engine(postgres_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE probe"))
    query = "SELECT nextval('probe')::text AS providerId, 'A' AS firstName, 'B' AS lastName"
    try:
        with pytest.raises(SourceError, match="code 25006"):  # read_only_sql_transaction
            list(SqlSource("ehr", postgres_url, query).rows())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT is_called FROM probe")).scalar_one() is False
    finally:
        engine.dispose()


def test_small_chunks_stream_every_row_in_order(db: Database) -> None:
    """With chunk_size smaller than the result, all rows still arrive once, in order."""
    engine = create_engine(db.url, poolclass=NullPool)
    extra = [{**PATIENTS[1], "id": f"Q{i:03d}", "photo": None} for i in range(45)]
    with engine.begin() as conn:
        conn.execute(insert(db.table), extra)
    engine.dispose()
    rows = list(SqlSource("ehr", db.url, query_all(db), columns=COLUMNS, chunk_size=7).rows())
    assert [r.fields["providerId"] for r in rows] == ["P1", "P2"] + [e["id"] for e in extra]
    assert [r.line for r in rows] == list(range(1, 48))


def test_read_is_complete_only_when_the_cursor_is_exhausted(db: Database) -> None:
    """`complete` is False while rows remain and after closing early; True at the end."""
    read = SqlSource("ehr", db.url, query_all(db), columns=COLUMNS, chunk_size=1).rows()
    try:
        assert next(read).fields["providerId"] == "P1"
        midway = getattr(read, "complete", None)
    finally:
        read.close()  # an open cursor would block the fixture's DROP TABLE
    assert midway is False
    assert read.complete is False
    read = SqlSource("ehr", db.url, query_all(db), columns=COLUMNS, chunk_size=1).rows()
    assert len(list(read)) == 2
    assert read.complete is True


@pytest.mark.postgres
def test_read_that_fails_midway_is_not_complete(postgres_url: str) -> None:
    """A query that fails after some rows leaves its read incomplete."""
    query = (
        "SELECT g::text AS providerId, 'A' AS firstName, 'B' AS lastName, "
        "(1 / (50 - g))::text AS email FROM generate_series(1, 100) AS g"
    )
    read = SqlSource("ehr", postgres_url, query, chunk_size=10).rows()
    with pytest.raises(SourceError):
        list(read)
    assert read.complete is False


@pytest.mark.postgres
def test_stopping_early_leaves_no_connection_open(postgres_url: str) -> None:
    """Closing the row iterator midway closes its connection (no pooled or idle session)."""
    query = "SELECT g::text AS providerId, 'A' AS firstName, 'B' AS lastName"
    query += " FROM generate_series(1, 1000) AS g"
    rows = SqlSource("ehr", postgres_url, query, chunk_size=10).rows()
    assert next(rows).fields["providerId"] == "1"
    rows.close()
    engine = create_engine(postgres_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            others = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert others == 0


@pytest.mark.postgres
def test_postgres_rows_arrive_before_the_query_finishes(postgres_url: str) -> None:
    """Server-side streaming: rows are yielded before a later row's error is even computed."""
    query = (
        "SELECT g::text AS providerId, 'A' AS firstName, 'B' AS lastName, "
        "(1 / (5000 - g))::text AS email FROM generate_series(1, 10000) AS g"
    )
    seen: list[SourceRow] = []
    rows = SqlSource("ehr", postgres_url, query, chunk_size=100).rows()
    with pytest.raises(SourceError, match="22012"):  # division_by_zero, at row 5000
        seen.extend(rows)
    assert 0 < len(seen) < 5000


def test_unreachable_database_hides_the_password() -> None:
    """A refused connection is a SourceError that does not contain the password."""
    src = SqlSource(
        "ehr", "postgresql+psycopg://u:hunter2@127.0.0.1:1/ehr", "SELECT 1", columns=COLUMNS
    )
    assert "hunter2" not in repr(src)
    with pytest.raises(SourceError) as caught:
        list(src.rows())
    assert "OperationalError" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_missing_driver_is_a_source_error() -> None:
    """A URL whose driver is not installed is a SourceError naming the module."""
    src = SqlSource("ehr", "mysql+mysqldb://u:pw@127.0.0.1/ehr", "SELECT 1", columns=COLUMNS)
    with pytest.raises(SourceError, match="driver not installed \\(MySQLdb\\)"):
        list(src.rows())


def test_unknown_dialect_is_a_source_error() -> None:
    """A URL naming no known database is a SourceError, not a SQLAlchemy exception."""
    with pytest.raises(SourceError, match="NoSuchModuleError"):
        list(SqlSource("ehr", "nosuchdb://u:pw@h/ehr", "SELECT 1", columns=COLUMNS).rows())


@pytest.mark.parametrize(
    ("url", "kwargs", "problem"),
    [
        ("not a url :s3cret@", {}, "url: not a valid SQLAlchemy URL"),
        ("sqlite://", {"columns": {"providerId": "id"}}, "'firstName' is not mapped"),
        ("sqlite://", {"columns": {**COLUMNS, "shoe": "s"}}, "unknown field 'shoe'"),
        ("sqlite://", {"chunk_size": 0}, "chunk_size: must be at least 1"),
    ],
)
def test_bad_settings_are_config_errors(url: str, kwargs: dict[str, object], problem: str) -> None:
    """Bad URL, mapping or chunk size fail at build time, without echoing the URL."""
    with pytest.raises(ConfigError, match=problem) as caught:
        SqlSource("ehr", url, "SELECT 1", **kwargs)  # type: ignore[arg-type]
    assert "s3cret" not in str(caught.value)
