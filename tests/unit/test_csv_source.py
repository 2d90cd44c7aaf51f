"""CsvSource: header checks, line numbers, problem rows and streaming."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import pytest

from syncd.exceptions import ConfigError, SourceError
from syncd.hashing import row_hash
from syncd.sources import Source
from syncd.sources.csv import CsvSource

COLUMNS = {
    "providerId": "id",
    "firstName": "first",
    "lastName": "last",
    "mobileNumber": "mobile",
    "email": "email",
    "dateOfBirth": "dob",
}
HEADER = "id,first,last,mobile,email,dob,notes\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def source(path: Path | str, **kw: object) -> CsvSource:
    return CsvSource("ehr", path, columns=kw.pop("columns", COLUMNS), **kw)  # type: ignore[arg-type]


def test_rows_are_mapped_trimmed_and_empty_becomes_none(tmp_path: Path) -> None:
    """Mapped columns become contract fields, values are trimmed and empty cells are None."""
    path = write(tmp_path / "p.csv", HEADER + " P1 , Ana ,Horvat,,  ,1980-02-13,note\n")
    [row] = source(path).rows()
    assert row.fields == {
        "providerId": "P1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": None,
        "email": None,
        "dateOfBirth": "1980-02-13",
    }
    assert (row.line, row.problem, row.origin) == (2, None, str(path))
    assert row.raw_hash == row_hash(row.fields)


def test_csv_source_satisfies_the_source_port(tmp_path: Path) -> None:
    """CsvSource is usable wherever the `Source` protocol is expected."""
    src: Source = source(write(tmp_path / "p.csv", HEADER))
    assert src.name == "ehr"
    assert list(src.rows()) == []


def test_header_names_match_trimmed_and_case_insensitively(tmp_path: Path) -> None:
    """A header ` ID , First ,...` matches the configured names id, first, ..."""
    path = write(tmp_path / "p.csv", " ID , First ,LAST,Mobile,EMAIL,Dob\nP1,Ana,Horvat,,,\n")
    [row] = source(path).rows()
    assert row.fields["providerId"] == "P1"
    assert row.fields["lastName"] == "Horvat"


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    """A UTF-8 BOM (Excel's export) does not hide the first column name."""
    path = write(tmp_path / "p.csv", "\ufeff" + HEADER + "P1,Ana,Horvat,,,,\n")
    [row] = source(path).rows()
    assert row.fields["providerId"] == "P1"


def test_line_is_where_a_record_starts_with_embedded_newlines(tmp_path: Path) -> None:
    """Quoted fields spanning lines (LF or CRLF) shift later line numbers correctly."""
    text = (
        HEADER.replace("\n", "\r\n")
        + 'P1,"Ana\r\nMarija",Horvat,,,,"a\r\nb\r\nc"\r\n'
        + "P2,Ivan,Babić,,,,\r\n"
        + '"P3",Luka,"Marić\nJr",,,,\r\n'
        + "P4,Petra,Kovač,,,,\r\n"
    )
    rows = list(source(write(tmp_path / "p.csv", text)).rows())
    assert [(r.line, r.fields["providerId"]) for r in rows] == [
        (2, "P1"),
        (6, "P2"),
        (7, "P3"),
        (9, "P4"),
    ]
    assert rows[0].fields["firstName"] == "Ana\r\nMarija"


def test_blank_lines_and_trailing_empty_rows_are_skipped(tmp_path: Path) -> None:
    """Blank lines and `,,,,` rows are not records; line numbers still count them."""
    text = HEADER + "\nP1,Ana,Horvat,,,,\n  \n,,,,,,\n,,\nP2,Ivan,Babić,,,,\n"
    rows = list(source(write(tmp_path / "p.csv", text)).rows())
    assert [(r.line, r.fields["providerId"], r.problem) for r in rows] == [
        (3, "P1", None),
        (7, "P2", None),
    ]


def test_row_with_only_unmapped_data_is_kept_for_rejection(tmp_path: Path) -> None:
    """A row whose mapped cells are empty but which has other data is yielded (not lost)."""
    rows = list(source(write(tmp_path / "p.csv", HEADER + ",,,,,,only a note\n")).rows())
    assert len(rows) == 1
    assert rows[0].fields["providerId"] is None


def test_wrong_column_count_is_a_problem_row_not_an_exception(tmp_path: Path) -> None:
    """A short or long row becomes a problem row without data; reading goes on."""
    text = HEADER + "P1,Ana,Horvat\nP2,Ivan,Babić,,,,,extra,Secret\nP3,Luka,Marić,,,,\n"
    rows = list(source(write(tmp_path / "p.csv", text)).rows())
    assert [(r.line, r.problem) for r in rows] == [
        (2, "row has 3 columns, the header has 7"),
        (3, "row has 9 columns, the header has 7"),
        (4, None),
    ]
    assert rows[0].fields == {}
    assert rows[0].problem_field is None
    assert rows[0].raw_hash != rows[1].raw_hash
    assert "Secret" not in repr(rows[1])


def test_undecodable_bytes_make_a_problem_row_naming_the_field(tmp_path: Path) -> None:
    """Bytes invalid in the encoding quarantine that row only, naming field and encoding."""
    path = tmp_path / "p.csv"
    path.write_bytes(
        HEADER.encode() + b"P1,Ana,Hor\xffvat,,,,\n" + "P2,Željka,Babić,,,,\n".encode()
    )
    bad, good = source(path).rows()
    assert (bad.line, bad.problem_field) == (2, "lastName")
    assert bad.problem == "lastName: bytes that are not valid utf-8-sig"
    assert bad.fields["lastName"] == "Hor\ufffdvat"
    assert bad.fields["providerId"] == "P1"
    assert (good.problem, good.fields["firstName"]) == (None, "Željka")


def test_undecodable_bytes_in_an_unmapped_column_do_not_matter(tmp_path: Path) -> None:
    """Only mapped values are checked: garbage in an ignored column is ignored."""
    path = tmp_path / "p.csv"
    path.write_bytes(HEADER.encode() + b"P1,Ana,Horvat,,,,\xff\xfe\n")
    [row] = source(path).rows()
    assert row.problem is None


def test_other_encoding_and_delimiter(tmp_path: Path) -> None:
    """A cp1250 file with `;` (a Croatian Excel export) reads with those settings."""
    text = "id;first;last;mobile;email;dob\nP1;Željka;Šimić;;;\n"
    path = write(tmp_path / "p.csv", text, encoding="cp1250")
    [row] = source(path, delimiter=";", encoding="cp1250").rows()
    assert (row.fields["firstName"], row.fields["lastName"]) == ("Željka", "Šimić")


def test_missing_column_names_column_and_file_but_no_data(tmp_path: Path) -> None:
    """A missing mapped column is a SourceError naming it and the file, never the cells."""
    path = write(tmp_path / "p.csv", "P1,Ana,Horvat,+385911234567,ana@example.com,1980-01-01\n")
    with pytest.raises(SourceError) as caught:
        list(source(path).rows())
    message = str(caught.value)
    for named in ("'id'", "'mobile'", str(path)):
        assert named in message
    for data in ("Ana", "385911234567", "ana@example.com"):
        assert data not in message


def test_column_appearing_twice_is_refused(tmp_path: Path) -> None:
    """A mapped column whose name appears twice in the header is ambiguous: SourceError."""
    path = write(tmp_path / "p.csv", "id,first,last,mobile,email,dob,ID\n")
    with pytest.raises(SourceError, match="appearing twice 'id'"):
        list(source(path).rows())


def test_header_is_checked_before_any_row(tmp_path: Path) -> None:
    """With two files, a bad header in the second fails only after the first file's rows."""
    write(tmp_path / "a.csv", HEADER + "P1,Ana,Horvat,,,,\n")
    write(tmp_path / "b.csv", "id,first\nP2,Ivan\n")
    rows = source(tmp_path / "*.csv").rows()
    assert next(rows).fields["providerId"] == "P1"
    with pytest.raises(SourceError, match=r"b\.csv: header has missing column"):
        next(rows)


def test_empty_file_is_a_source_error(tmp_path: Path) -> None:
    """A file without even a header line cannot be checked: SourceError."""
    with pytest.raises(SourceError, match="is empty"):
        list(source(write(tmp_path / "p.csv", "")).rows())


def test_no_matching_file_is_a_source_error(tmp_path: Path) -> None:
    """A path or glob that matches no file is a SourceError naming the pattern."""
    with pytest.raises(SourceError, match="no file matches"):
        list(source(tmp_path / "missing-*.csv").rows())


def test_glob_reads_files_in_sorted_order_with_origin(tmp_path: Path) -> None:
    """Every matching file is read, sorted by path, each row naming its file."""
    for name, pid in [("2024-02.csv", "P2"), ("2024-01.csv", "P1"), ("2024-10.csv", "P3")]:
        write(tmp_path / name, HEADER + f"{pid},Ana,Horvat,,,,\n")
    (tmp_path / "dir.csv").mkdir()
    rows = list(source(tmp_path / "2024-*.csv").rows())
    assert [(r.fields["providerId"], Path(r.origin or "").name, r.line) for r in rows] == [
        ("P1", "2024-01.csv", 2),
        ("P2", "2024-02.csv", 2),
        ("P3", "2024-10.csv", 2),
    ]


def test_parser_that_cannot_continue_names_the_line(tmp_path: Path) -> None:
    """A quoted field running past csv's size limit is a SourceError with the line number."""
    text = HEADER + "P1,Ana,Horvat,,,,\n" + 'P2,"Secret' + "x" * (csv.field_size_limit() + 1)
    with pytest.raises(SourceError) as caught:
        list(source(write(tmp_path / "p.csv", text)).rows())
    assert "unreadable CSV at line 3" in str(caught.value)
    assert "Secret" not in str(caught.value)


def test_raw_hash_follows_mapped_values_only(tmp_path: Path) -> None:
    """Changing a mapped value changes raw_hash; changing an unmapped column does not."""
    text = HEADER + "P1,Ana,Horvat,,,,a\nP1,Ana,Horvat,,,,b\nP1,Ana,Horvata,,,,a\n"
    first, unmapped_changed, mapped_changed = source(write(tmp_path / "p.csv", text)).rows()
    assert first.raw_hash == unmapped_changed.raw_hash
    assert first.raw_hash != mapped_changed.raw_hash


def test_rows_can_be_read_again(tmp_path: Path) -> None:
    """Each call to rows() reads the files afresh."""
    src = source(write(tmp_path / "p.csv", HEADER + "P1,Ana,Horvat,,,,\n"))
    assert len(list(src.rows())) == len(list(src.rows())) == 1


def test_rows_stream_with_flat_memory(tmp_path: Path) -> None:
    """Reading a ~4 MB file allocates far less than the file's size at any moment."""
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(HEADER)
        for i in range(50_000):
            handle.write(f"P{i:07d},Ana,Horvat,+38591{i:07d},ana{i}@example.com,1980-01-01,x\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in source(path).rows())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < size / 8


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"columns": {"providerId": "id", "firstName": "f"}}, "'lastName' is not mapped"),
        ({"columns": {**COLUMNS, "shoeSize": "s"}}, "unknown field 'shoeSize'"),
        ({"delimiter": ";;"}, "delimiter: must be one character"),
        ({"encoding": "klingon"}, "unknown encoding 'klingon'"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], problem: str) -> None:
    """Unmapped required fields, unknown fields, delimiters and encodings fail at build time."""
    with pytest.raises(ConfigError, match=problem):
        source("x.csv", **kwargs)
