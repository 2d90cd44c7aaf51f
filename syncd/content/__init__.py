"""The content mirror: Voxares' practice templates, forms and documents, kept locally.

`mirror.ContentMirror` is the `mirror_content` job; `mirror.list_content` serves
`syncd content list`; `diff` holds the pure comparison of a listing with the mirror.
"""

from __future__ import annotations

from syncd.content.mirror import (
    DOCUMENT,
    FORM,
    JOB_NAME,
    KINDS,
    TEMPLATE,
    ContentEntry,
    ContentMirror,
    MirrorCounts,
    list_content,
)

__all__ = [
    "DOCUMENT",
    "FORM",
    "JOB_NAME",
    "KINDS",
    "TEMPLATE",
    "ContentEntry",
    "ContentMirror",
    "MirrorCounts",
    "list_content",
]
