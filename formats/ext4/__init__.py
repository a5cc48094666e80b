"""ext2/3/4: the superblock declared once (:mod:`.c_ext4`), the writer (:mod:`.write`, mke2fs
plus one debugfs pass), the reader (:mod:`.read`) and the debugfs wrapper both use
(:mod:`.debugfs`).

The writer's names are re-exported lazily: the magic sniffer imports :mod:`.c_ext4` and must
not pay for the writer's imports.
"""
from __future__ import annotations

from typing import Any

__all__ = ["write_ext4", "estimate_size", "stage_tree", "e2fsprogs_version",
           "e2fsprogs_command", "Ext4Info"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imgkit.formats.ext4 import write
        return getattr(write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
