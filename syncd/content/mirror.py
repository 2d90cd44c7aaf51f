"""The content mirror: Voxares' practice templates, forms and documents, kept locally.

Job `mirror_content` lists each kind page by page and records every item in
`content_items` (its JSON as received and a hash of it), emitting `content.added`,
`content.changed` and `content.removed` outbox events (`{kind, id, name}`) in the same
transaction. SMS requests check template ids against this mirror before anything is sent.

Removal needs proof. A listing is complete only when every page reported the same `count`
and that many distinct items arrived (offset pages shift when content changes meanwhile, and
the sort order is undocumented). Only complete listings may remove, and an item about to be
removed is looked for once more in a second complete listing first. A failed page aborts the
whole run before anything is written; an incomplete listing (after retries) still records
what it saw but removes nothing. An item that comes back after removal is `added` again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import structlog
from pydantic import BaseModel
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.content.diff import ContentChanges, KnownItem, ListedItem, compare
from syncd.exceptions import StateError
from syncd.outbox.events import emit
from syncd.state.db import session_factory
from syncd.state.models import ContentItem
from syncd.state.runs import audit
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import MAX_PAGE_SIZE
from syncd.voxares.models import Document, Form, PracticeTemplate

log = structlog.get_logger(__name__)

JOB_NAME: Final = "mirror_content"
TEMPLATE: Final = "template"
FORM: Final = "form"
DOCUMENT: Final = "document"
KINDS: Final = (TEMPLATE, FORM, DOCUMENT)

EVENT_ADDED: Final = "content.added"
EVENT_CHANGED: Final = "content.changed"
EVENT_REMOVED: Final = "content.removed"
_IN_CHUNK: Final = 500  # ids per IN (...) clause


@dataclass(slots=True)
class MirrorCounts:
    """What one run did: items listed per kind, and what changed."""

    templates: int = 0
    forms: int = 0
    documents: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    incomplete_listings: int = 0

    @property
    def outcome(self) -> Literal["ok", "partial"]:
        """`partial` when a kind's listing never came back whole: what it listed is
        mirrored, but nothing of that kind is taken as removed until a whole listing."""
        return "partial" if self.incomplete_listings else "ok"

    @property
    def problem(self) -> str | None:
        """Id-only text for the run record when a listing was incomplete."""
        if not self.incomplete_listings:
            return None
        return (
            f"{self.incomplete_listings} listing(s) incomplete after every attempt "
            "(removals of those kinds wait for a whole listing)"
        )


@dataclass(frozen=True, slots=True)
class Listing:
    """One walk through a kind's pages: its distinct items (in order) and whether it is whole."""

    kind: str
    items: dict[str, ListedItem]
    complete: bool


@dataclass(frozen=True, slots=True)
class ContentEntry:
    """One mirrored item, for `syncd content list`."""

    kind: str
    id: str
    name: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    removed_at: datetime | None


def _name_of(item: BaseModel) -> str | None:
    if isinstance(item, Form):
        return item.display_name
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else None


def _item(kind: str, entry: PracticeTemplate | Form | Document) -> ListedItem:
    payload = entry.model_dump(mode="json", by_alias=True)
    return ListedItem.of(kind, entry.id, _name_of(entry), payload)


def listing_complete(page_counts: Sequence[int], distinct_items: int) -> bool:
    """Whether a walk saw the whole list: one `count` on every page, and that many items."""
    return len(set(page_counts)) == 1 and distinct_items == page_counts[0]


class ContentMirror:
    """The `mirror_content` job (see the module docstring)."""

    name = JOB_NAME

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        *,
        page_size: int = MAX_PAGE_SIZE,
        listing_attempts: int = 3,
    ) -> None:
        if listing_attempts < 1:
            raise ValueError("listing_attempts must be at least 1")
        self._engine = engine
        self._client = client
        self._page_size = page_size
        self._attempts = listing_attempts
        self._store = ContentStore(engine)

    async def run(self, run_id: int | None) -> MirrorCounts:
        """List every kind, then record the differences and their events in one transaction."""
        counts = MirrorCounts()
        listings = {kind: await self._listing(kind, counts) for kind in KINDS}
        known = await asyncio.to_thread(self._store.known)
        proposed = compare(known, _all_items(listings.values()), _complete(listings.values()))
        for kind in sorted({item.kind for item in proposed.removed}):
            # Look again before removing: merge a second walk into the first (the second's
            # version of an item wins); only what both complete walks lack is removed.
            again = await self._listing(kind, counts)
            merged = {**listings[kind].items, **again.items}
            listings[kind] = Listing(kind, merged, listings[kind].complete and again.complete)
        changes = await asyncio.to_thread(self._store.apply, listings.values(), run_id)
        counts.templates = len(listings[TEMPLATE].items)
        counts.forms = len(listings[FORM].items)
        counts.documents = len(listings[DOCUMENT].items)
        counts.added = len(changes.added) + len(changes.restored)
        counts.changed = len(changes.changed)
        counts.removed = len(changes.removed)
        counts.unchanged = len(changes.unchanged)
        log.info("content.mirrored", **asdict(counts))
        return counts

    async def _listing(self, kind: str, counts: MirrorCounts) -> Listing:
        """A complete walk of `kind` if one of `listing_attempts` gives one, else the last."""
        listing = await self._walk(kind)
        for _ in range(self._attempts - 1):
            if listing.complete:
                break
            listing = await self._walk(kind)
        if not listing.complete:
            counts.incomplete_listings += 1
            log.warning("content.listing_incomplete", kind=kind, items=len(listing.items))
        return listing

    async def _walk(self, kind: str) -> Listing:
        """One walk through every page of `kind`; a failed page raises (nothing is written)."""
        method = self._list_method(kind)
        items: dict[str, ListedItem] = {}
        page_counts: list[int] = []
        async for page in self._client.iter_pages(method, page_size=self._page_size):
            page_counts.append(page.count)
            for entry in page.data:
                items.setdefault(entry.id, _item(kind, entry))
        return Listing(kind, items, listing_complete(page_counts, len(items)))

    def _list_method(self, kind: str) -> Callable[..., Any]:
        methods: dict[str, Callable[..., Any]] = {
            TEMPLATE: self._client.list_practice_templates,
            FORM: self._client.list_forms,
            DOCUMENT: self._client.list_documents,
        }
        return methods[kind]


def _all_items(listings: Iterable[Listing]) -> list[ListedItem]:
    return [item for listing in listings for item in listing.items.values()]


def _complete(listings: Iterable[Listing]) -> set[str]:
    return {listing.kind for listing in listings if listing.complete}


def event_payload(kind: str, item_id: str, name: str | None) -> dict[str, Any]:
    """The outbox payload of a content event: ids and the item's name, nothing else."""
    return {"kind": kind, "id": item_id, "name": name}


class ContentStore:
    """The mirror's database work: read what is known, record a run's changes at once."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def known(self) -> dict[tuple[str, str], KnownItem]:
        """Every item ever mirrored, removed ones included."""
        with _translated(), self._sessions() as session:
            return _known(session)

    def apply(self, listings: Iterable[Listing], run_id: int | None = None) -> ContentChanges:
        """Compare the listings with the mirror and record the result, its events and their
        audit entries, in one transaction (so an event exists exactly when its change was
        recorded)."""
        walks = list(listings)
        now = datetime.now(UTC)
        with _translated(), self._sessions.begin() as session:
            changes = compare(_known(session), _all_items(walks), _complete(walks))
            for item in changes.added:
                session.add(
                    ContentItem(
                        kind=item.kind,
                        item_id=item.item_id,
                        name=item.name,
                        content_hash=item.content_hash,
                        payload=_json(item.payload),
                        first_seen_at=now,
                        last_seen_at=now,
                        removed_at=None,
                    )
                )
            for item in [*changes.restored, *changes.changed]:
                session.execute(
                    update(ContentItem)
                    .where(ContentItem.kind == item.kind, ContentItem.item_id == item.item_id)
                    .values(
                        name=item.name,
                        content_hash=item.content_hash,
                        payload=_json(item.payload),
                        last_seen_at=now,
                        removed_at=None,
                    )
                )
            for kind, ids in _ids_by_kind(changes.unchanged).items():
                for chunk in _chunks(ids):
                    session.execute(
                        update(ContentItem)
                        .where(ContentItem.kind == kind, ContentItem.item_id.in_(chunk))
                        .values(last_seen_at=now)
                    )
            for gone in changes.removed:
                session.execute(
                    update(ContentItem)
                    .where(ContentItem.kind == gone.kind, ContentItem.item_id == gone.item_id)
                    .values(removed_at=now)
                )
            for event_type, refs in (
                (EVENT_ADDED, [*changes.added, *changes.restored]),
                (EVENT_CHANGED, changes.changed),
            ):
                for item in refs:
                    _emit(session, event_type, item.kind, item.item_id, item.name, run_id)
            for gone in changes.removed:
                _emit(session, EVENT_REMOVED, gone.kind, gone.item_id, gone.name, run_id)
            return changes


def _emit(
    session: Session,
    event_type: str,
    kind: str,
    item_id: str,
    name: str | None,
    run_id: int | None,
) -> None:
    """The change's outbox event and its id-only audit entry (action = the event type)."""
    emit(
        session,
        event_type=event_type,
        payload=event_payload(kind, item_id, name),
        ordering_key=f"content:{kind}:{item_id}",
    )
    audit(session, JOB_NAME, run_id, event_type, f"content_{kind}", item_id)


def _known(session: Session) -> dict[tuple[str, str], KnownItem]:
    rows = session.execute(
        select(
            ContentItem.kind,
            ContentItem.item_id,
            ContentItem.name,
            ContentItem.content_hash,
            ContentItem.removed_at,
        ).order_by(ContentItem.kind, ContentItem.item_id)
    )
    return {
        (kind, item_id): KnownItem(kind, item_id, name, content_hash, removed_at is not None)
        for kind, item_id, name, content_hash, removed_at in rows
    }


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _ids_by_kind(items: Sequence[ListedItem]) -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item.item_id)
    return by_kind


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def list_content(
    engine: Engine, kind: str | None = None, *, include_removed: bool = True
) -> list[ContentEntry]:
    """The mirrored items (of one kind, or all), ordered by kind, name and id."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    query = select(ContentItem).order_by(ContentItem.kind, ContentItem.name, ContentItem.item_id)
    if kind is not None:
        query = query.where(ContentItem.kind == kind)
    if not include_removed:
        query = query.where(ContentItem.removed_at.is_(None))
    with _translated(), Session(engine) as session:
        return [
            ContentEntry(
                kind=row.kind,
                id=row.item_id,
                name=row.name,
                first_seen_at=row.first_seen_at,
                last_seen_at=row.last_seen_at,
                removed_at=row.removed_at,
            )
            for row in session.scalars(query)
        ]


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"content mirror database failed ({type(exc).__name__})") from exc


__all__ = [
    "DOCUMENT",
    "FORM",
    "JOB_NAME",
    "KINDS",
    "TEMPLATE",
    "ContentEntry",
    "ContentMirror",
    "ContentStore",
    "Listing",
    "MirrorCounts",
    "list_content",
    "listing_complete",
]
