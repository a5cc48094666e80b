"""The ``vfat`` entry of the filesystem table: FAT12/16/32 by imgkit's one-pass writer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgkit.errors import InputError
from imgkit.filesystems import FilesystemType, report_warnings, size_or_none
from imgkit.settings import INT, SIZE, STR, setting

if TYPE_CHECKING:
    from imgkit.config import FilesystemConfig


@dataclass(frozen=True)
class VfatOptions:
    fat_type: int | None = setting(INT, None, choices=(12, 16, 32),
                                   help="FAT12, FAT16 or FAT32; default: chosen by size")
    cluster_size: str | None = setting(SIZE, None, help="bytes per cluster (e.g. \"4K\"); "
                                       "default: chosen by size")
    uuid: str | None = setting(STR, None, help="volume serial \"XXXX-XXXX\"; default: derived "
                               "from the seed")


def fat_serial(text: str | None, seed: str) -> int:
    """A FAT volume serial: ``"ABCD-1234"`` as given, else derived from the build seed."""
    if text is None:
        return int(seed[:8], 16)
    digits = text.replace("-", "")
    if len(digits) != 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise InputError(f"vfat uuid {text!r}: expected a serial like 'ABCD-1234' (8 hex digits)")
    return int(digits, 16)


class Vfat(FilesystemType):
    """FAT12/16/32 by imgkit's one-pass writer (:mod:`imgkit.formats.fat`)."""

    name = "vfat"
    options = VfatOptions
    help = "FAT12/16/32, e.g. an EFI system partition"
    packages = ("dosfstools", "mtools")

    def _planning(self, fs: FilesystemConfig) -> dict[str, Any]:
        o: VfatOptions = fs.options
        return dict(fat_type=o.fat_type, label=fs.label, skip_special=True,
                    cluster_size=size_or_none(o.cluster_size,
                                               f"[filesystems.{fs.name}] cluster_size"))

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.fat import plan_fat
        return plan_fat(tree, size=None, slack=free, **self._planning(fs)).size

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.fat import write_fat
        if offset:
            raise InputError("vfat is written into a file of its own, not at an offset")
        from imgkit import progress
        with progress.watching(path, f"filesystem {fs.name}", tree.data_size()):
            plan = write_fat(tree, path, size=size,
                             serial=fat_serial(fs.options.uuid, ctx.seed("fat", fs.name)),
                             hidden_sectors=(disk_offset or 0) // 512, **self._planning(fs))
        from imgkit.losses import xattr_loss
        report_warnings(xattr_loss(tree, "FAT"), ctx)
        ctx.progress(f"filesystem {fs.name}: FAT{plan.fat_type}, {plan.size:,} bytes")
        return plan.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.fat.read import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.fat.read import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)
