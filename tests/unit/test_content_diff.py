"""The content mirror's pure comparison: added, restored, changed, unchanged, removed."""

from __future__ import annotations

from syncd.content.diff import KnownItem, ListedItem, compare
from syncd.content.mirror import event_payload, listing_complete


def listed(kind: str, item_id: str, text: str = "a") -> ListedItem:
    return ListedItem.of(kind, item_id, f"name {item_id}", {"id": item_id, "content": text})


def known(item: ListedItem, *, removed: bool = False, content_hash: str | None = None) -> KnownItem:
    return KnownItem(item.kind, item.item_id, item.name, content_hash or item.content_hash, removed)


def test_each_item_is_classified_once() -> None:
    """New → added, back after removal → restored, other hash → changed, else unchanged."""
    same, edited, back, new = (listed("template", i) for i in ("1", "2", "3", "4"))
    state = {
        same.ref: known(same),
        edited.ref: known(edited, content_hash="0" * 64),
        back.ref: known(back, removed=True),
    }
    changes = compare(state, [same, edited, back, new, same], {"template"})
    assert changes.added == [new]
    assert changes.restored == [back]
    assert changes.changed == [edited]
    assert changes.unchanged == [same]
    assert changes.removed == []


def test_only_a_complete_kind_removes() -> None:
    """Missing from a complete listing: removed. From an incomplete one: kept."""
    form, document = listed("form", "f"), listed("document", "d")
    state = {form.ref: known(form), document.ref: known(document)}
    changes = compare(state, [], {"form"})
    assert changes.removed == [state[form.ref]]


def test_an_item_already_removed_is_not_removed_again() -> None:
    """A removed item still absent: no second removal."""
    form = listed("form", "f")
    assert compare({form.ref: known(form, removed=True)}, [], {"form"}).removed == []


def test_the_hash_follows_the_json_not_the_key_order() -> None:
    """Equal JSON, equal hash; different text, different hash."""
    a = ListedItem.of("form", "1", None, {"id": "1", "displayName": "x"})
    b = ListedItem.of("form", "1", None, {"displayName": "x", "id": "1"})
    c = ListedItem.of("form", "1", None, {"displayName": "y", "id": "1"})
    assert a.content_hash == b.content_hash != c.content_hash


def test_a_listing_is_complete_when_every_page_agrees_and_all_arrived() -> None:
    """One count on every page and that many distinct items."""
    assert listing_complete([3, 3], 3)
    assert listing_complete([0], 0)
    assert not listing_complete([3, 2], 2)  # the list shrank between pages
    assert not listing_complete([3, 3], 2)  # pages overlapped: one item never seen


def test_event_payload_is_kind_id_and_name() -> None:
    """Content events carry the kind, the id and the name only."""
    assert event_payload("form", "f-1", "Intake") == {"kind": "form", "id": "f-1", "name": "Intake"}
