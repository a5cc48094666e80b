"""The ``erofs`` entry of the filesystem table: an uncompressed erofs written by imgkit itself."""
from __future__ import annotations

from dataclasses import dataclass

from imgkit.errors import InputError
from imgkit.filesystems import FilesystemType
from imgkit.settings import BOOL, STR, setting


@dataclass(frozen=True)
class ErofsOptions:
    uuid: str | None = setting(STR, None, help="volume UUID; default: derived from the seed")
    checksum: bool = setting(BOOL, True, help="store the superblock crc32c (the sb_csum feature)")


class Erofs(FilesystemType):
    """A read-only erofs, uncompressed, laid out from the tree (:mod:`imgkit.formats.erofs`):
    owners, modes, devices, times and xattrs come from the tree, no tool runs."""

    name = "erofs"
    options = ErofsOptions
    help = "erofs, an uncompressed read-only root (owners, modes, devices, xattrs from the tree)"
    packages = ("erofs-utils",)     # fsck.erofs / dump.erofs check it; writing needs none

    def min_size(self, tree, fs, ctx, *, free=0):
        from imgkit.formats.erofs import estimate_size
        return estimate_size(tree) + free

    def write(self, tree, path, offset, size, fs, ctx, *, disk_offset=None):
        from imgkit.formats.erofs import write_erofs
        if offset:
            raise InputError("erofs is written into a file of its own, not at an offset")
        o: ErofsOptions = fs.options
        info = write_erofs(tree, path, label=fs.label, uuid=o.uuid,
                           seed=ctx.seed("erofs", fs.name), checksum=o.checksum)
        if size is not None and info.size > size:
            raise InputError(f"filesystem {fs.name}: the erofs image is {info.size:,} bytes, "
                             f"more than the {size:,} bytes it is given",
                             hint="give the partition more room or leave its size out")
        for warning in info.warnings:
            ctx.progress(f"warning: {warning}")
        ctx.progress(f"filesystem {fs.name}: erofs, {info.size:,} bytes")
        return info.size

    def describe(self, f, offset=0, size=None):
        from imgkit.formats.erofs import describe
        return describe(f, offset=offset, size=size)

    def open_tree(self, path, offset=0, size=None, *, what=None, keep=None):
        from imgkit.formats.erofs import open_tree
        return open_tree(path, offset=offset, size=size, what=what, keep=keep)
