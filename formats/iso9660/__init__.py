"""ISO 9660 (with Rock Ridge, Joliet and El Torito): the writer (:mod:`.write`, pycdlib) and
the reader (:mod:`.read`).

The writer's names are re-exported lazily so that importing the package (as the magic sniffer
and ``imgkit inspect`` do) does not import pycdlib.
"""
from __future__ import annotations

from typing import Any

__all__ = ["write_iso", "IsoBoot", "IsoInfo"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imgkit.formats.iso9660 import write
        return getattr(write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
