"""Hypothesis strategies shared by test modules."""

from __future__ import annotations

from hypothesis import strategies as st


def json_values(
    text: st.SearchStrategy[str], *, max_size: int, max_leaves: int
) -> st.SearchStrategy:
    """Any JSON value `canonical_json` accepts (finite numbers), with `text` for keys and
    strings, containers of at most `max_size` items."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text,
        lambda children: (
            st.lists(children, max_size=max_size)
            | st.dictionaries(text, children, max_size=max_size)
        ),
        max_leaves=max_leaves,
    )
