"""How the sandbox answers a list request: order, shuffle, page, and a cache of filtered rows.

The API does not document the order of its lists, so the order is a setting (`ListOptions`),
and a fault may shuffle each answer. Filtered rows are cached per query until the practice
changes (`ListCache`), so paging through a large window costs one scan.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from syncd.sandbox.validation import parse_paging, parse_search_term

ListOrder = Literal["created", "updated_asc", "updated_desc"]
_CACHE_SIZE = 64


@dataclass(slots=True)
class ListOptions:
    """How lists are ordered for one request (the sort order is undocumented by the API)."""

    order: ListOrder = "created"
    shuffle: random.Random | None = None


class ListCache:
    """Filtered rows per query, valid while the practice's change stamp is the same."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._rows: dict[tuple[Any, ...], tuple[tuple[int, int], list[Any]]] = {}

    def get(
        self, key: tuple[Any, ...], stamp: tuple[int, int], compute: Callable[[], list[Any]]
    ) -> list[Any]:
        """The cached rows for `key` when computed at `stamp`, else freshly computed ones."""
        hit = self._rows.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        rows = compute()
        self._rows.pop(key, None)
        self._rows[key] = (stamp, rows)
        if len(self._rows) > self.size:
            self._rows.pop(next(iter(self._rows)))
        return rows


def ordered(rows: list[Any], order: ListOrder, updated_at: Callable[[Any], Any]) -> list[Any]:
    """Rows (in creation order) in the requested list order; ties broken by id."""
    if order == "updated_asc":
        return sorted(rows, key=lambda r: (updated_at(r), r.id))
    if order == "updated_desc":
        return sorted(rows, key=lambda r: (updated_at(r), r.id), reverse=True)
    return rows


def window(rows: list[Any], page: int, size: int, options: ListOptions | None) -> list[Any]:
    """One page of `rows`; shuffled first when the shuffle fault is on."""
    if options is not None and options.shuffle is not None:
        rows = list(rows)
        options.shuffle.shuffle(rows)
    start = page * size
    return rows[start : start + size]


def page_body(items: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The contract's list body."""
    return {"data": items, "count": count}


def list_small(
    items: Iterable[Any],
    query: Mapping[str, str],
    options: ListOptions | None,
    text: Callable[[Any], str],
    render_item: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """List a practice's (few) content items: search, page, render."""
    page, size = parse_paging(query)
    search = parse_search_term(query)
    rows = [item for item in items if search is None or search in text(item).casefold()]
    return page_body([render_item(r) for r in window(rows, page, size, options)], len(rows))
