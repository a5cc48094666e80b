"""Open any archive or image as a read-only :class:`Tree`, for ``imgkit ls``."""
from __future__ import annotations

from .sources.archive import read_archive
from .tree import Tree


def open_tree(spec: str) -> Tree:
    """``IMAGE`` or ``IMAGE:PARTITION`` -> its files."""
    return read_archive(spec)
