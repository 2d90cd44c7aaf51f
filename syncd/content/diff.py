"""What changed in Voxares' content since the mirror last looked: a pure comparison.

The mirror lists templates, forms and documents and compares each listing with what it
recorded before. An item is `added` the first time it is seen (or `restored` when it comes
back after being removed), `changed` when its JSON hashes differently, and `removed` when a
COMPLETE listing of its kind no longer has it. An incomplete listing never removes anything.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.hashing import canonical_json, sha256_hex


@dataclass(frozen=True, slots=True)
class ListedItem:
    """One item as a listing returned it."""

    kind: str
    item_id: str
    name: str | None
    payload: Mapping[str, Any] = field(repr=False)
    content_hash: str

    @classmethod
    def of(
        cls, kind: str, item_id: str, name: str | None, payload: Mapping[str, Any]
    ) -> ListedItem:
        """An item with the hash of its canonical JSON."""
        return cls(kind, item_id, name, payload, sha256_hex(canonical_json(dict(payload))))

    @property
    def ref(self) -> tuple[str, str]:
        """(kind, id): an item's identity."""
        return (self.kind, self.item_id)


@dataclass(frozen=True, slots=True)
class KnownItem:
    """One item as the mirror recorded it."""

    kind: str
    item_id: str
    name: str | None
    content_hash: str
    removed: bool


@dataclass(slots=True)
class ContentChanges:
    """The outcome of comparing listings with the mirror."""

    added: list[ListedItem] = field(default_factory=list)
    restored: list[ListedItem] = field(default_factory=list)
    changed: list[ListedItem] = field(default_factory=list)
    unchanged: list[ListedItem] = field(default_factory=list)
    removed: list[KnownItem] = field(default_factory=list)


def compare(
    known: Mapping[tuple[str, str], KnownItem],
    listed: Iterable[ListedItem],
    complete_kinds: Collection[str],
) -> ContentChanges:
    """Classify every listed item, and every known live item of a completely listed kind that
    the listing lacks (removed). Items are in listing order; removals in the order of `known`."""
    changes = ContentChanges()
    seen: set[tuple[str, str]] = set()
    for item in listed:
        if item.ref in seen:
            continue  # a listing whose pages overlapped; the first copy counts
        seen.add(item.ref)
        before = known.get(item.ref)
        if before is None:
            changes.added.append(item)
        elif before.removed:
            changes.restored.append(item)
        elif before.content_hash != item.content_hash:
            changes.changed.append(item)
        else:
            changes.unchanged.append(item)
    for ref, before in known.items():
        if not before.removed and before.kind in complete_kinds and ref not in seen:
            changes.removed.append(before)
    return changes
