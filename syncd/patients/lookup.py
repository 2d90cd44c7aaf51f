"""The push job's batch lookups: the statements that claim a batch's row keys in the run's
temporary table `push_run_keys` and read what the mirror and the quarantine hold for them,
per backend (a JSON array read with `json_each` on SQLite; arrays, `unnest` and a pipeline
on PostgreSQL), and the small encoders they need. `PushStore` (store.py) runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from typing import cast as typing_cast

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from syncd.patients.plan import MirrorEntry, QuarantineEntry
from syncd.state.models import PatientMirror, QuarantinedRow

# Per connection (temporary): gone when the connection closes, invisible to other sessions.
RUN_KEYS = Table(
    "push_run_keys",
    MetaData(),
    Column("row_key", String(256), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # ordinal of the first row with this key
    Column("line", Integer, nullable=False),  # its line, for the duplicate's reason
    prefixes=["TEMPORARY"],
)

ANALYZE_RUN_KEYS = text("ANALYZE push_run_keys")

_MIRROR = typing_cast(Table, PatientMirror.__table__)
_QUARANTINE = typing_cast(Table, QuarantinedRow.__table__)


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the database knows about one row key at the start of its batch."""

    first_seq: int
    first_line: int
    mirror: MirrorEntry | None
    quarantined: QuarantineEntry | None


def lookup_statements(postgres: bool, provider: str, source: str) -> tuple[Any, Any, Any]:
    """The statements that claim a batch's keys and load their state (see `lookup`), and
    the lookup of `lookup_unsettled`.

    They take the batch as one parameter, not 1,500: an array on PostgreSQL, a JSON array
    on SQLite (read with `json_each`), which makes a batch several times cheaper.
    """
    if postgres:
        return (None, *_postgres_lookup_statements(provider, source))
    rk, m, q = RUN_KEYS.c, _MIRROR.c, _QUARANTINE.c
    claims = func.json_each(bindparam("claims")).table_valued("value").alias("claims")
    claim = (
        sqlite.insert(RUN_KEYS)
        .from_select(
            ["row_key", "seq", "line"],
            # `WHERE true` is SQLite's required disambiguation of INSERT-SELECT-UPSERT.
            select(
                func.json_extract(claims.c.value, "$[0]"),
                func.json_extract(claims.c.value, "$[1]"),
                func.json_extract(claims.c.value, "$[2]"),
            ).where(true()),
        )
        .on_conflict_do_nothing(index_elements=["row_key"])
    )
    keys = func.json_each(bindparam("keys")).table_valued("value").alias("keys")
    # What a lookup returns per key, in the order `key_states` reads it.
    state_columns = [rk.row_key, rk.seq, rk.line, m.payload_hash, m.source_row_hash]
    state_columns += [q.row_hash, q.field, q.reason]
    # SQLite's planner probes the unique indexes here whatever the statistics say.
    lookup = (
        select(*state_columns)
        .select_from(
            RUN_KEYS.outerjoin(
                _MIRROR, and_(m.provider == provider, m.provider_id == rk.row_key)
            ).outerjoin(_QUARANTINE, and_(q.source == source, q.row_key == rk.row_key))
        )
        .where(rk.row_key.in_(select(keys.c.value)))
    )
    # The batch as the outer loop (the right side of a LEFT JOIN is never the outer one),
    # probing the unique indexes; only the rows `lookup_unsettled` returns.
    batch = func.json_each(bindparam("claims")).table_valued("value").alias("batch")
    batch_key = func.json_extract(batch.c.value, "$[0]")
    unsettled = (
        select(*state_columns)
        .select_from(
            batch.outerjoin(RUN_KEYS, rk.row_key == batch_key)
            .outerjoin(_MIRROR, and_(m.provider == provider, m.provider_id == batch_key))
            .outerjoin(_QUARANTINE, and_(q.source == source, q.row_key == batch_key))
        )
        .where(
            or_(
                rk.seq < bindparam("first_seq"),
                m.source_row_hash.is_distinct_from(func.json_extract(batch.c.value, "$[3]")),
                q.row_hash.is_not(None),
            )
        )
    )
    return claim, lookup, unsettled


def _postgres_lookup_statements(provider: str, source: str) -> tuple[Any, Any]:
    """PostgreSQL's claim and lookup in ONE statement: keys as arrays, index probes.

    Arrays make a batch three parameters instead of 1,500, sent once. The claim is a
    data-modifying CTE of the lookup, so a batch costs one round trip instead of two (and
    its 1,000 keys are encoded once, not twice): py-spy of a PostgreSQL re-sync had the
    lookup at ~45 % of the worker's samples, a quarter of that psycopg encoding the arrays
    (BENCHMARKS.md, B3). The lookup reads the statement's snapshot, from before the claim,
    so a key claimed by an earlier batch shows its first ordinal and line, and a key this
    batch claims shows none and takes the batch's own: the same answer as claiming first
    and looking up after.

    The LATERAL subqueries pin the plan to unique-index probes: the temporary table is
    never analysed and a freshly loaded mirror has no statistics yet, and with plain joins
    the planner then picks hash joins that read the whole mirror for every batch (quadratic
    in the run's size).
    """
    return _postgres_lookup(provider, source, unsettled=False), _postgres_lookup(
        provider, source, unsettled=True
    )


def _postgres_lookup(provider: str, source: str, *, unsettled: bool) -> Any:
    """One of `_postgres_lookup_statements`; `unsettled`: with the batch's raw hashes (a
    fourth array), returning only the rows `lookup_unsettled` returns."""
    rk, m, q = RUN_KEYS.c, _MIRROR.c, _QUARANTINE.c
    keys = cast(bindparam("keys"), postgresql.ARRAY(String))
    seqs = cast(bindparam("seqs"), postgresql.ARRAY(BigInteger))
    lines = cast(bindparam("lines"), postgresql.ARRAY(Integer))
    hashes = cast(bindparam("hashes"), postgresql.ARRAY(String))

    def batch_table(name: str) -> Any:
        if unsettled:
            return (
                func.unnest(keys, seqs, lines, hashes)
                .table_valued("row_key", "seq", "line", "raw_hash")
                .render_derived(name=name)
            )
        return (
            func.unnest(keys, seqs, lines)
            .table_valued("row_key", "seq", "line")
            .render_derived(name=name)
        )

    claims = batch_table("claims")
    claim = (
        postgresql.insert(RUN_KEYS)
        .from_select(
            ["row_key", "seq", "line"], select(claims.c.row_key, claims.c.seq, claims.c.line)
        )
        .on_conflict_do_nothing(index_elements=["row_key"])
        .cte("claim")
    )
    batch = batch_table("batch")
    # Each subquery matches at most one row (unique keys); LIMIT 1 is there to stop the
    # planner from flattening it into a join, which would bring back the hash joins.
    first = select(rk.seq, rk.line).where(rk.row_key == batch.c.row_key).limit(1).lateral("first")
    mirror = (
        select(m.payload_hash, m.source_row_hash)
        .where(m.provider == provider, m.provider_id == batch.c.row_key)
        .limit(1)
        .lateral("mirror")
    )
    quarantined = (
        select(q.row_hash, q.field, q.reason)
        .where(q.source == source, q.row_key == batch.c.row_key)
        .limit(1)
        .lateral("quarantined")
    )
    lookup = (
        select(
            batch.c.row_key,
            func.coalesce(first.c.seq, batch.c.seq),
            func.coalesce(first.c.line, batch.c.line),
            mirror.c.payload_hash,
            mirror.c.source_row_hash,
            quarantined.c.row_hash,
            quarantined.c.field,
            quarantined.c.reason,
        )
        .select_from(
            batch.outerjoin(first, true()).outerjoin(mirror, true()).outerjoin(quarantined, true())
        )
        .add_cte(claim)
    )
    if unsettled:
        lookup = lookup.where(
            or_(
                first.c.seq.is_not(None),
                mirror.c.source_row_hash.is_distinct_from(batch.c.raw_hash),
                quarantined.c.row_hash.is_not(None),
            )
        )
    return lookup


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of text values (each quoted, `\\` and `"` escaped)."""
    quoted = ['"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values]
    return "{" + ",".join(quoted) + "}"


def int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(map(str, values)) + "}"


def key_states(result: Iterable[Any]) -> dict[str, KeyState]:
    """The rows of a lookup as key -> `KeyState`."""
    states: dict[str, KeyState] = {}
    for key, seq, line, p_hash, r_hash, q_hash, q_field, q_reason in result:
        states[key] = KeyState(
            first_seq=seq,
            first_line=line,
            mirror=None if p_hash is None else MirrorEntry(p_hash, r_hash),
            quarantined=None if q_hash is None else QuarantineEntry(q_hash, q_field, q_reason),
        )
    return states
