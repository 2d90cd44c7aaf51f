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
from tests.config_files import SHORT_COLUMNS

COLUMNS = SHORT_COLUMNS
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
    read = src.rows()
    assert list(read) == []
    assert read.complete is True


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


def test_other_parser_errors_name_the_line(tmp_path: Path) -> None:
    """A csv error that is not about one cell (a header over the size limit) is a
    SourceError naming the line, never the text."""
    text = "id," + "Secret" + "x" * csv.field_size_limit() + "\nP1\n"
    with pytest.raises(SourceError) as caught:
        list(source(write(tmp_path / "p.csv", text)).rows())
    assert "unreadable CSV at line 1" in str(caught.value)
    assert "Secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        # The quote of line 3 is never closed: the file ends inside it.
        (
            'P1,Ana,Horvat,,,,\nP2,"Ivo,Kovač,,,,\n',
            "the quoted field opened at line 3 is never closed (end of file)",
        ),
        # The same on the last line, without a final line break (a cut-off export).
        ('P1,Ana,Horvat,,,,\nP2,Ivo,Kovač,,,,"Secret', "opened at line 3 is never closed"),
        # A huge unclosed field: found as unbalanced, not as one oversized cell.
        ('P2,"Secret' + "x" * 140_000, "opened at line 2 is never closed"),
        # Rows taken in up to the next quote, which is followed by text.
        (
            'P1,"Ana,Horvat,,,,\nP2 Ivo Kovač\nP3,"Luka",Marić,,,,\n',
            "opened at line 2 closes at line 4 with text after its closing quote",
        ),
        # A row taken in whole, the field closing at the end of a later line.
        (
            'P1,"Ana,Horvat,,,,\nP2,Ivo,Kovač,,,,\nP3,Luka,Marić,,,,note"\nP4,A,B,,,,\n',
            "opened at line 2 takes in line 3, which reads as a record of its own",
        ),
        # The taken-in row is the one the quote closes on (no line in between).
        (
            'P1,"Ana,Horvat,,,,\nP3,Luka,Marić,,,,note"\nP4,A,B,,,,\n',
            "opened at line 2 takes in line 3, which reads as a record of its own",
        ),
        # An empty quoted cell (`""`) inside the taken-in row does not hide it.
        (
            'P1,"Ana,Horvat,,,,\nP2,Ivo,Kovač,"",,,\nP4,A,B,,,,\n',
            "opened at line 2 takes in line 3",
        ),
    ],
)
def test_unbalanced_quote_fails_the_file_at_the_line_it_opened(
    tmp_path: Path, body: str, problem: str
) -> None:
    """A quoted field that runs over lines and is never closed, closes with text after
    it, or takes in a line that reads as a record, fails the file naming lines only."""
    read = source(write(tmp_path / "p.csv", HEADER + body)).rows()
    with pytest.raises(SourceError, match="unbalanced quote") as caught:
        list(read)
    message = str(caught.value)
    assert problem in message
    assert str(tmp_path / "p.csv") in message
    for data in ("Secret", "Ana", "Ivo", "Kovač", "Luka"):
        assert data not in message
    assert read.complete is False


def test_unbalanced_quote_fails_before_its_record_is_yielded(tmp_path: Path) -> None:
    """Rows before the broken quote are read; the record that swallowed rows never is."""
    text = HEADER + 'P1,Ana,Horvat,,,,\nP2,"Ivo,Kovač,,,,\nP3,Luka,Marić,,,,\nP4,"x",B,,,,\n'
    read = source(write(tmp_path / "p.csv", text)).rows()
    assert next(read).fields["providerId"] == "P1"
    with pytest.raises(SourceError, match="opened at line 3"):
        next(read)


@pytest.mark.parametrize(
    "body",
    [
        'P1,"Ana\nMarija",Horvat,,,,"line one, with a comma\nline two, too"\n',
        'P1,Ana,Horvat,,,,"a note\n""quoted"" on line two\n\nand after a blank line"\n',
        'P1,Ana,Horvat,,,,"ends with a line break\n"\r\n',
        'P1,Ana,Horvat,,,,"a, b, c, d, e, f, g, h on the first line\nshort"\n',
    ],
)
def test_legal_multiline_quoted_fields_are_read(tmp_path: Path, body: str) -> None:
    """Quoted fields spanning lines that close properly and take in no record-like line
    are ordinary CSV: read as one row, and the read is complete."""
    read = source(write(tmp_path / "p.csv", HEADER + body + "P2,Ivo,Kovač,,,,\n")).rows()
    rows = list(read)
    assert [(r.fields["providerId"], r.problem) for r in rows] == [("P1", None), ("P2", None)]
    assert read.complete is True


def test_read_is_complete_only_after_every_file(tmp_path: Path) -> None:
    """`complete` is False while rows remain, after closing early and after an error; True
    once every file of the glob was read to its end."""
    write(tmp_path / "a.csv", HEADER + "P1,Ana,Horvat,,,,\n")
    write(tmp_path / "b.csv", HEADER + "P2,Ivo,Kovač,,,,\n")
    read = source(tmp_path / "*.csv").rows()
    assert next(read).fields["providerId"] == "P1"
    assert read.complete is False
    read.close()
    assert read.complete is False
    read = source(tmp_path / "*.csv").rows()
    assert [r.fields["providerId"] for r in read] == ["P1", "P2"]
    assert read.complete is True
    write(tmp_path / "b.csv", "id,first\n")
    read = source(tmp_path / "*.csv").rows()
    with pytest.raises(SourceError):
        list(read)
    assert read.complete is False


LIMIT = csv.field_size_limit()


def test_oversized_cell_quarantines_its_row_and_the_rest_is_read(tmp_path: Path) -> None:
    """A cell over csv's size limit makes a problem row naming its line and field (or
    column), keyed by the row's providerId; the rows after it read normally."""
    text = (
        HEADER
        + "P1,Ana,Secret"
        + "x" * LIMIT
        + ",,,,\n"
        + "P2,Ivo,Kovač,,,,\n"
        + 'P3,Luka,Marić,,,,"Secret'
        + "y\n" * (LIMIT // 2 + 1)
        + '"\n'
        + "P4,Ena,Novak,,,,\n"
        + "Secret"
        + "z" * LIMIT
        + ",Tea,Jurić,,,,\n"
        + "P6,Iva,Babić,,,,\n"
    )
    read = source(write(tmp_path / "p.csv", text)).rows()
    rows = list(read)
    assert read.complete is True
    got = [(r.line, r.fields.get("providerId"), r.problem_field, r.problem) for r in rows]
    too_long = f"longer than {LIMIT} characters (the CSV field size limit)"
    last = 4 + LIMIT // 2 + 1
    assert got == [
        (2, "P1", "lastName", f"lastName: {too_long}"),
        (3, "P2", None, None),
        (4, "P3", None, f"column 'notes': {too_long}"),
        (last + 1, "P4", None, None),
        (last + 2, None, "providerId", f"providerId: {too_long}"),
        (last + 3, "P6", None, None),
    ]
    assert all("Secret" not in (r.problem or "") for r in rows)
    assert "Secret" not in repr(rows)
    assert rows[0].raw_hash != rows[2].raw_hash


def test_oversized_cell_row_hash_is_stable(tmp_path: Path) -> None:
    """The same oversized row read twice has the same raw hash (its quarantine is known)."""
    path = write(tmp_path / "p.csv", HEADER + "P1,Ana," + "x" * (LIMIT + 1) + ",,,,\n")
    [first] = source(path).rows()
    [again] = source(path).rows()
    assert first.problem is not None
    assert first.raw_hash == again.raw_hash


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
