"""FAT12/16/32: declarations (:mod:`.c_fat`), the one-pass writer (:mod:`.write`) and the
reader (:mod:`.read`).

The writer's public names are re-exported lazily: the magic sniffer imports :mod:`.read`
and must not pay for the writer's imports.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FatPlan", "plan_fat", "write_fat", "fat_size_for"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imgkit.formats.fat import write
        return getattr(write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
