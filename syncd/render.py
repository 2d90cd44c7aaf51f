"""How the CLI's list commands show their rows: a table for people, JSON for scripts.

Each list command turns its rows into records (plain dicts, one per row) and hands them here
with the columns to show. The JSON form is every record as it is (times in ISO 8601, UTC);
the table shows the same records, times as ages ("5m ago"), and keeps every id whole on one
line so it can be copied into the next command (`outbox show ID`). When the ids do not fit
the console's width as a table, each record is printed as a block of `header  value` lines
instead (as psql's expanded display does), rather than cutting an id or a column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

Record = Mapping[str, Any]
Kind = Literal["id", "text", "time"]


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: the record key it shows, its header, and how it is shown.

    `id`: never wrapped or shortened; `time`: an age; `text`: wrapped when space is short.
    """

    key: str
    header: str
    kind: Kind = "text"


def ago(moment: datetime | None, *, now: datetime | None = None) -> str:
    """`moment` as an age ("42s ago", "5m ago", "1.5h ago"), or "never"."""
    if moment is None:
        return "never"
    if moment.tzinfo is None:  # SQLite gives timezone-aware columns back naive, in UTC
        moment = moment.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# Below this, a text column is too narrow to read: the records are shown as blocks instead.
TEXT_MIN_WIDTH = 10


def print_records(
    console: Console, title: str, columns: Sequence[Column], records: Sequence[Record]
) -> None:
    """`records` as a table when their ids fit the console's width, else as blocks."""
    if _table_width(columns, records) <= console.width:
        console.print(table(title, columns, records))
        return
    console.print(title, style="bold", highlight=False)
    label_width = max(len(column.header) for column in columns)
    for record in records:
        console.print()
        for column in columns:
            console.print(
                f"{column.header:<{label_width}}  {_cell(column, record)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


def _table_width(columns: Sequence[Column], records: Sequence[Record]) -> int:
    """The narrowest a table of `records` can be with whole ids and readable text."""
    width = 1  # the left border
    for column in columns:
        widest = max([len(column.header), *(len(_cell(column, r)) for r in records)])
        cell = widest if column.kind == "id" else min(widest, TEXT_MIN_WIDTH)
        width += cell + 3  # padding on both sides, and a border
    return width


def table(title: str, columns: Sequence[Column], records: Sequence[Record]) -> Table:
    """A rich table of `records`: id columns are as wide as their longest value."""
    shown = Table(title=title)
    for column in columns:
        if column.kind == "id":
            widest = max((len(_cell(column, r)) for r in records), default=0)
            shown.add_column(
                column.header, no_wrap=True, overflow="ignore", min_width=max(widest, 1)
            )
        else:
            shown.add_column(column.header, overflow="fold")
    for record in records:
        shown.add_row(*(_cell(column, record) for column in columns))
    return shown


def _cell(column: Column, record: Record) -> str:
    value = record.get(column.key)
    if column.kind == "time":
        return ago(value) if value is not None else ""
    if value is None or value == "":
        return "-"
    return str(value)


def to_json(records: Sequence[Record]) -> str:
    """The records as a JSON array (times as ISO 8601 strings), for `--json`."""
    return json.dumps(list(records), indent=2, default=_jsonable, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
